#!/usr/bin/env bash
# The agent's added latency, throughput and memory, measured with ../shared/bench
# side by side with direct (no proxy), nginx and Envoy, in alternating rounds,
# plus time to first chunk of streams (and of plain responses) sent one at a
# time over one connection at 200/s (tests/src/bin/stream-bench.rs).
#
#   agent/bench/compare.sh                          # 2 rounds: direct nginx envoy shepherd
#   ROUNDS=3 PEERS="direct nginx shepherd" agent/bench/compare.sh
#   PEERS="shepherd shepherd-shadow" agent/bench/compare.sh   # 10% shadow on and off
#
# Needs ../shared/bench/setup.sh run once. The agent runs the realistic policy in
# agent/bench/policy.json: a 90/10 sticky split between two backends (both the
# mock), credentials injected, a model map, retries, a breaker, telemetry;
# "shepherd-shadow" runs agent/bench/policy-shadow.json, the same plus 10% of
# requests mirrored to a third backend (the mock again).
# Results: $RESULTS (default $BENCH_HOME/results-agent), summary in summary.md.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$(cd "$root/../shared/bench" && pwd)}
export RESULTS=${RESULTS:-${BENCH_HOME:-${TMPDIR:-/tmp}/shepherd-bench}/results-agent}
source "$BENCH/lib.sh"
PEERS=${PEERS:-"direct nginx envoy shepherd"}
ROUNDS=${ROUNDS:-2}
PORT=18110
AGENT="$root/target/release/shepherd-agent"

(cd "$root" && cargo build --release --locked -p shepherd-agent -p shepherd-tests --bin shepherd-agent --bin stream-bench)

start_shepherd() {
  BENCH_PROVIDER_KEY=sk-bench-provider-key nohup "$AGENT" --policy-file "$root/agent/bench/$1" \
    --listen "127.0.0.1:$PORT" --admin-listen 127.0.0.1:18111 --log warn >"$RUN/shepherd.log" 2>&1 &
  echo $! >"$RUN/shepherd.pid"
  wait_ready "http://127.0.0.1:$PORT" 30 "$(cat "$RUN/shepherd.pid")" || { tail "$RUN/shepherd.log"; exit 1; }
}
stop_shepherd() {
  [ -f "$RUN/shepherd.pid" ] || return 0
  kill -TERM "$(cat "$RUN/shepherd.pid")" 2>/dev/null || true
  while is_alive "$(cat "$RUN/shepherd.pid")"; do sleep 0.1; done
  rm -f "$RUN/shepherd.pid"
}
cleanup() { stop_shepherd; "$BENCH/peers.sh" stop all || true; }
trap cleanup EXIT INT TERM

"$BENCH/versions.sh" >"$RESULTS/versions.txt" 2>&1 || true
"$BENCH/peers.sh" start mock
MOCK_PID=$(cat "$RUN/mock.pid")
MOCK_URL="http://127.0.0.1:$MOCK_PORT"

for round in $(seq 1 "$ROUNDS"); do
  order=$PEERS
  if [ $((round % 2)) -eq 0 ]; then order=$(echo "$PEERS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  log "round $round: $order"
  for p in $order; do
    if [ "$p" = shepherd ] || [ "$p" = shepherd-shadow ]; then
      policy=$([ "$p" = shepherd ] && echo policy.json || echo policy-shadow.json)
      start_shepherd "$policy"; url="http://127.0.0.1:$PORT"; pids=$(cat "$RUN/shepherd.pid")
    else
      "$BENCH/peers.sh" start "$p"; url=$("$BENCH/peers.sh" url "$p"); pids=$("$BENCH/peers.sh" pids "$p")
    fi
    curl -s -o /dev/null -X POST "$MOCK_URL/stats/reset"
    "$BENCH/run.sh" "$url" "$p-r$round" --pid "$pids" --mock-pid "$MOCK_PID" | tee -a "$RESULTS/digest.txt"
    curl -s "$MOCK_URL/stats" >"$RESULTS/$p-r$round/mock-stats.json"
    for mode in stream plain; do
      flag=$([ "$mode" = plain ] && echo "--no-stream true" || true)
      "$root/target/release/stream-bench" --url "$url/v1/chat/completions" --requests 2000 --rate 200 $flag \
        | sed "s/^/$p-r$round $mode: /" | tee -a "$RESULTS/$p-r$round/stream.txt" "$RESULTS/stream-digest.txt"
    done
    if [ "${p%-shadow}" = shepherd ]; then stop_shepherd; elif [ "$p" != direct ]; then "$BENCH/peers.sh" stop "$p"; fi
    sleep 3
  done
done
"$BENCH/peers.sh" stop mock
python3 "$BENCH/summarize.py" "$RESULTS" >"$RESULTS/summary.md"
log "done: $RESULTS/summary.md"
