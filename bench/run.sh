#!/usr/bin/env bash
# Run every cairn-bench benchmark against a fresh release relay, the way
# docs/benchmarks.md describes. Human output on stdout; one JSON object per
# benchmark appended to $OUT (default /tmp/cairn-benchdata.results.jsonl).
#
#   bash bench/run.sh                      # everything (seeding 1M events takes minutes)
#   SEED_EVENTS=100000 bash bench/run.sh   # a quicker, smaller store for query
#   ABUSE_SECONDS=8 bash bench/run.sh      # longer abuse phases (default 4 s each)
# Other knobs: INGEST_EVENTS, SUBSCRIBERS, IDLE, ABUSE_SEED, MIXED_RATE (2000/s),
# MIXED_SECONDS (20), DATA, URL, OUT, CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
DATA=${DATA:-/tmp/cairn-benchdata}
URL=${URL:-ws://127.0.0.1:7777}
OUT=${OUT:-$DATA.results.jsonl}
SEED_EVENTS=${SEED_EVENTS:-1000000}
IDLE=${IDLE:-10000}
INGEST_EVENTS=${INGEST_EVENTS:-100000}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
ABUSE_SECONDS=${ABUSE_SECONDS:-4}
ABUSE_SEED=${ABUSE_SEED:-20000}
MIXED_RATE=${MIXED_RATE:-2000}
MIXED_SECONDS=${MIXED_SECONDS:-20}

cargo build --release -p cairn-node -p cairn-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

rm -rf "$DATA"
RELAY=
# start_relay <nth "listening" line> [config] [data dir]
start_relay() {
    "$TARGET/release/cairn" serve --config "${2:-bench/bench.toml}" --bind 127.0.0.1:7777 \
        --data-dir "${3:-$DATA}" >>"$DATA.log" 2>&1 &
    RELAY=$!
    for _ in $(seq 100); do
        [ "$(grep -c listening "$DATA.log" 2>/dev/null)" -ge "$1" ] && return
        sleep 0.2
    done
    echo "relay did not start; see $DATA.log" >&2
    exit 1
}
stop_relay() {
    kill "$RELAY" 2>/dev/null || true
    wait "$RELAY" 2>/dev/null || true
}
trap stop_relay EXIT
: >"$DATA.log"
start_relay 1

bench() {
    local name=$1
    shift
    echo "### cairn-bench $name $*"
    timeout 1800 "$TARGET/release/cairn-bench" --url "$URL" "$name" --pid "$RELAY" "$@" --json |
        tee -a "$OUT"
}

# The WAL must stay bounded while writes go on and empty once they stop.
WAL=(--watch-file "$DATA/cairn.db-wal")
bench ingest --connections 50 --events "$INGEST_EVENTS" "${WAL[@]}"
bench fanout --subscribers "$SUBSCRIBERS" --events 200
bench seed --events "$SEED_EVENTS" --authors 1000 --manifest "$DATA.seed.json" "${WAL[@]}"
# The same ingest again, now into the large store.
bench ingest --connections 50 --events "$INGEST_EVENTS" "${WAL[@]}"
bench query --requests 2000 --manifest "$DATA.seed.json"
# The same REQs while fresh events arrive at a steady MIXED_RATE per second.
bench mixed --seconds "$MIXED_SECONDS" --ingest-rate "$MIXED_RATE" --manifest "$DATA.seed.json"
# Memory per idle connection needs a fresh process: memory freed by the
# earlier benchmarks' connections would be reused and hide the growth.
stop_relay
start_relay 2
bench idle --connections "$IDLE"
# Abuse: attacks from 127.0.0.2 while bystanders on 127.0.0.1 work, on a
# fresh store each: first with the cost limits it compares lifted
# ("before"), then with the defaults ("after"); see bench/abuse.toml.
# Deletions are as large as the default max_deletion_targets allows (larger
# ones are refused before their signature is checked).
stop_relay
rm -rf "$DATA-abuse"
export CAIRN_RELAY__LIMITS__MAX_CONCURRENT_QUERIES_PER_IP=0 CAIRN_RELAY__LIMITS__MAX_QUERY_MS=600000 \
    CAIRN_RELAY__NETWORK__MAX_PENDING_PER_IP=100000
start_relay 3 bench/abuse.toml "$DATA-abuse"
unset CAIRN_RELAY__LIMITS__MAX_CONCURRENT_QUERIES_PER_IP CAIRN_RELAY__LIMITS__MAX_QUERY_MS \
    CAIRN_RELAY__NETWORK__MAX_PENDING_PER_IP
echo "### abuse, before (query slots, query time budget and pending-connection cap lifted)"
bench abuse --seconds "$ABUSE_SECONDS" --seed-events "$ABUSE_SEED" --deletion-targets 500
stop_relay
rm -rf "$DATA-abuse"
start_relay 4 bench/abuse.toml "$DATA-abuse"
echo "### abuse, after (defaults)"
bench abuse --seconds "$ABUSE_SECONDS" --seed-events "$ABUSE_SEED" --deletion-targets 500
echo "relay log: $DATA.log; results appended to $OUT"
