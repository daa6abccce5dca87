#!/usr/bin/env bash
# Fleet benchmark: 1,000 and 10,000 simulated agents against one
# control-plane replica, on SQLite and on Postgres. Results go to stdout;
# BENCHMARKS.md records them.
#
#   control-plane/bench/fleet.sh [postgres-server-url]
#
# The Postgres URL (default postgres://postgres@127.0.0.1:5432/postgres)
# names a server where a scratch database "shepherd_fleet_bench" is created
# and dropped for each run.
set -euo pipefail
cd "$(dirname "$0")/../.."
server=${1:-postgres://postgres@127.0.0.1:5432/postgres}
base=${server%/*}
cargo build --release -q -p shepherd-control-plane -p shepherd-tests --bin shepherd-control-plane --bin fleet-bench
bench=target/release/fleet-bench
cp=target/release/shepherd-control-plane

scratch() {
  PGOPTIONS="-c client_min_messages=warning" psql "$server" -q -c "DROP DATABASE IF EXISTS shepherd_fleet_bench" -c "$1" >/dev/null
}

for agents in 1000 10000; do
  echo "== sqlite, $agents agents"
  "$bench" --cp-bin "$cp" --agents "$agents" --rounds 20 --report-seconds 10
  echo "== postgres, $agents agents"
  scratch "CREATE DATABASE shepherd_fleet_bench"
  "$bench" --cp-bin "$cp" --agents "$agents" --rounds 20 --report-seconds 10 \
    --database-url "$base/shepherd_fleet_bench"
  scratch "SELECT 1"
done
