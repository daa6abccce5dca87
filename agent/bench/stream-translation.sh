#!/usr/bin/env bash
# Time to first chunk of a translated stream against a passthrough stream.
#
#   agent/bench/stream-translation.sh [REQUESTS] [ROUNDS]     # default 2000, 2
#
# Runs the agent (profiling build) with two policies: /passthrough/ goes to
# the project's mock provider serving OpenAI's API (--api openai, on
# 127.0.0.1:18131), /translated/ to one serving Anthropic's (--api
# anthropic, on 127.0.0.1:18132), so the OpenAI app's stream is translated
# from Anthropic events. stream-bench sends the same streamed chat
# completion to each in turn, ROUNDS times, and prints the time to first
# chunk of each run.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
N=${1:-2000}
ROUNDS=${2:-2}
dir=$(mktemp -d)
(cd "$root" && cargo build --profile profiling --locked -p shepherd-agent \
  && cargo build --profile profiling --locked -p shepherd-tests --bin mock-provider --bin stream-bench)
cat >"$dir/policies.json" <<'JSON'
[{"name": "passthrough", "match": {"path_prefix": "/passthrough/"},
  "backends": [{"name": "openai", "base_url": "http://127.0.0.1:18131", "credentials": "env:BENCH_PROVIDER_KEY"}],
  "traffic": {"baseline": "openai"}},
 {"name": "translated", "match": {"path_prefix": "/translated/"},
  "backends": [{"name": "anthropic", "base_url": "http://127.0.0.1:18132", "protocol": "PROTOCOL_ANTHROPIC",
                "credentials": "env:BENCH_PROVIDER_KEY"}],
  "traffic": {"baseline": "anthropic"}}]
JSON
bin="$root/target/profiling"
"$bin/mock-provider" --api openai --listen 127.0.0.1:18131 --name bench >/dev/null &
p1=$!
"$bin/mock-provider" --api anthropic --listen 127.0.0.1:18132 --name bench >/dev/null &
p2=$!
BENCH_PROVIDER_KEY=sk-bench-provider-key "$bin/shepherd-agent" --policy-file "$dir/policies.json" \
  --listen 127.0.0.1:18140 --admin-listen 127.0.0.1:18141 --log warn >"$dir/agent.log" 2>&1 &
agent=$!
trap 'kill $p1 $p2 $agent 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.1:18141/healthz && break; sleep 0.1; done
for round in $(seq 1 "$ROUNDS"); do
  for kind in passthrough translated; do
    echo -n "round $round $kind: "
    "$bin/stream-bench" --url "http://127.0.0.1:18140/$kind/v1/chat/completions" --requests "$N"
  done
done
