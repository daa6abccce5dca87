#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind's callgrind:
# repeatable whatever else the machine is doing (unlike timings on a shared VM).
#
#   agent/bench/instructions.sh [REQUESTS]      # default 4000
#   PROVIDER=openai|anthropic agent/bench/instructions.sh [REQUESTS]
#
# Runs the agent (profiling build, 1 worker) with agent/bench/policy.json in
# front of the bench mock on 127.0.0.1:18000 (started by ../shared/bench/peers.sh
# if needed), warms up with 500 requests, then counts REQUESTS requests from oha
# (8 connections). Prints the count and the top functions by inclusive cost.
#
# With PRICED=1, both backends of agent/bench/policy.json get prices, so every
# answer is priced from its usage (compare with a run without it).
#
# With PROVIDER set, the upstream is the project's mock provider serving that
# one API strictly (--api) on 127.0.0.1:18130, behind a one-backend policy of
# that protocol: PROVIDER=openai is a passthrough, PROVIDER=anthropic
# translates every request (OpenAI chat completions to Anthropic messages and
# the answers back). The request is the bench's req.json either way.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$(cd "$root/../shared/bench" && pwd)}
source "$BENCH/lib.sh"
N=${1:-4000}
out=${OUT:-$(mktemp -d)/callgrind.out}
(cd "$root" && cargo build --profile profiling --locked -p shepherd-agent)
policy="$root/agent/bench/policy.json"
provider_pid=
if [[ -n "${PROVIDER:-}" ]]; then
  (cd "$root" && cargo build --profile profiling --locked -p shepherd-tests --bin mock-provider)
  protocol=PROTOCOL_OPENAI; [[ $PROVIDER == anthropic ]] && protocol=PROTOCOL_ANTHROPIC
  policy=$(dirname "$out")/policy.json
  cat >"$policy" <<JSON
{"name": "bench", "match": {"path_prefix": "/v1/"},
 "backends": [{"name": "$PROVIDER", "base_url": "http://127.0.0.1:18130", "protocol": "$protocol",
               "credentials": "env:BENCH_PROVIDER_KEY"}],
 "traffic": {"baseline": "$PROVIDER"}}
JSON
  "$root/target/profiling/mock-provider" --api "$PROVIDER" --listen 127.0.0.1:18130 --name bench >/dev/null &
  provider_pid=$!
else
  curl -sf -o /dev/null "http://127.0.0.1:$MOCK_PORT/health" || "$BENCH/peers.sh" start mock
  if [[ -n "${PRICED:-}" ]]; then
    priced=$(dirname "$out")/policy.json
    python3 - "$policy" "$priced" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
p["currency"] = "USD"
for b in p["backends"]:
    b["prices"] = {"input_per_million": 2.5, "output_per_million": 8.0, "cached_input_per_million": 1.25}
json.dump(p, open(sys.argv[2], "w"))
PY
    policy=$priced
  fi
fi
BENCH_PROVIDER_KEY=sk-bench-provider-key valgrind --tool=callgrind --callgrind-out-file="$out" \
  "$root/target/profiling/shepherd-agent" --policy-file "$policy" \
  --listen 127.0.0.1:18120 --admin-listen 127.0.0.1:18121 --workers 1 --log warn >"$out.log" 2>&1 &
vg=$!
trap 'kill $vg $provider_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do curl -sf -o /dev/null http://127.0.0.1:18121/healthz && break; sleep 0.2; done
req=(--no-tui -c 8 -m POST -H 'content-type: application/json' -D "$BENCH/req.json" http://127.0.0.1:18120/v1/chat/completions)
"$OHA" -n 500 "${req[@]}" >/dev/null
callgrind_control -z "$vg" >/dev/null
# oha's summary is read whole first: grep -q quitting early would break oha's pipe.
summary=$("$OHA" -n "$N" "${req[@]}")
grep -q 'Success rate:.*100' <<<"$summary" || { echo "some requests failed" >&2; exit 1; }
callgrind_control -d "$vg" >/dev/null
kill "$vg"; wait "$vg" 2>/dev/null || true
total=$(callgrind_annotate --threshold=100 "$out.1" | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "instructions per request: $((total / N)) (user space, $N requests)"
callgrind_annotate --inclusive=yes --threshold=100 "$out.1" | grep -E '^\s*[0-9,]+ \(' \
  | sed -E 's|/root/.cargo/registry/src/[^/]+/||' | sed -n '10,40p' | cut -c1-160
