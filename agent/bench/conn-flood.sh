#!/usr/bin/env bash
# The agent under a connection flood, with a 1,024 open-file limit: 10,000
# connections that never send a byte and 1,000 that dribble an HTTP/2
# preface, each reopened as soon as the agent closes it, while a probe sends
# a chat completion to the proxy and GET /healthz to the admin listener
# every 50 ms (conn_flood.py). Prints what the probe saw and the agent's
# connection metrics.
#
#   agent/bench/conn-flood.sh [SECONDS]     # default 60
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$(cd "$root/../shared/bench" && pwd)}
source "$BENCH/lib.sh"
seconds=${1:-60}
(cd "$root" && cargo build --profile profiling --locked -p shepherd-agent)
curl -sf -o /dev/null "http://127.0.0.1:$MOCK_PORT/health" || "$BENCH/peers.sh" start mock
log=$(mktemp)
(
  ulimit -n 1024
  BENCH_PROVIDER_KEY=sk-bench-provider-key exec "$root/target/profiling/shepherd-agent" \
    --policy-file "$root/agent/bench/policy.json" \
    --listen 127.0.0.1:18140 --admin-listen 127.0.0.1:18141 --log warn
) >"$log" 2>&1 &
agent=$!
trap 'kill $agent 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18141/readyz && break; sleep 0.1; done
echo "open-file limit of the agent: $(awk '/Max open files/ {print $4}' /proc/$agent/limits)"
# The flood runs 10 s longer than the probe, which starts once it is up.
python3 "$root/agent/bench/conn_flood.py" flood 18140 10000 1000 "$((seconds + 15))" &
flooder=$!
sleep 5
python3 "$root/agent/bench/conn_flood.py" probe 18140 18141 "$seconds"
wait $flooder
curl -s http://127.0.0.1:18141/metrics | grep -E '^shepherd_agent_connections_'
echo "agent log lines: $(wc -l <"$log") ($(grep -c 'accept failed' "$log" || true) accept failures)"
