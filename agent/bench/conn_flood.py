"""Connection flood against a running agent, and a probe of it.

    python3 conn_flood.py flood PROXY_PORT SILENT SLOW DURATION
        SILENT connections that never send a byte and SLOW connections that
        dribble an HTTP/2 preface (one byte every 2 s), each reopened
        whenever the agent closes it, for DURATION seconds; prints counts.
    python3 conn_flood.py probe PROXY_PORT ADMIN_PORT DURATION
        a well-formed chat completion to the proxy and GET /healthz to the
        admin listener every 50 ms, each on a new connection with a 5 s
        limit; prints what it saw.

Run them as separate processes: a flood's event loop is too busy to time
a probe.
"""

import asyncio
import json
import resource
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
BODY = json.dumps({"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def hold(port, slow, stats, stop):
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.05)
            continue
        stats["opened"] += 1
        try:
            i = 0
            while not stop.is_set():
                if slow:
                    writer.write(PREFACE[i % len(PREFACE):i % len(PREFACE) + 1])
                    await writer.drain()
                    i += 1
                try:
                    data = await asyncio.wait_for(reader.read(4096), 2.0)
                except asyncio.TimeoutError:
                    continue
                if not data:
                    stats["closed_by_agent"] += 1
                    break
        except OSError:
            stats["closed_by_agent"] += 1
        finally:
            writer.close()


async def probe(port, request, want, results, stop):
    while not stop.is_set():
        t = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
            ok = head.startswith(want)
            writer.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            ok = False
        results.append((ok, time.monotonic() - t))
        await asyncio.sleep(0.05)


def summary(results):
    lat = sorted(t for ok, t in results if ok)
    return {
        "sent": len(results),
        "failed": sum(1 for ok, _ in results if not ok),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None,
        "max_ms": round(lat[-1] * 1000, 1) if lat else None,
    }


async def flood(port, silent, slow, duration):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = asyncio.Event()
    stats = {"opened": 0, "closed_by_agent": 0, "connect_errors": 0}
    tasks = [asyncio.create_task(hold(port, False, stats, stop)) for _ in range(silent)]
    tasks += [asyncio.create_task(hold(port, True, stats, stop)) for _ in range(slow)]
    await asyncio.sleep(duration)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"flood": {"silent": silent, "slow_preface": slow, "seconds": duration, **stats}}))


async def probe_both(proxy, admin, duration):
    stop = asyncio.Event()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\n"
               b"authorization: Bearer sk-bench\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(BODY)) + BODY
    healthz = b"GET /healthz HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\r\n"
    proxied, health = [], []
    tasks = [asyncio.create_task(probe(proxy, request, b"HTTP/1.1 200", proxied, stop)),
             asyncio.create_task(probe(admin, healthz, b"HTTP/1.1 200", health, stop))]
    await asyncio.sleep(duration)
    stop.set()
    await asyncio.gather(*tasks)
    print(json.dumps({"requests": summary(proxied), "healthz": summary(health)}))


if sys.argv[1] == "flood":
    asyncio.run(flood(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])))
else:
    asyncio.run(probe_both(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
