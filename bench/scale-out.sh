#!/usr/bin/env bash
# Issue 14's scale-out benchmark (docs/benchmarks.md, "Scale-out on Postgres"):
# fan-out and ingest against one `cairn serve` process on a fresh Postgres
# database, then against three processes on another fresh database
# (subscribers / ingest connections spread over them, the fan-out publisher on
# the first). Human output on stdout; one JSON object per run appended to $OUT.
#
#   bash bench/scale-out.sh                 # needs Postgres at $PG (trust auth)
#   RUNS=1 bash bench/scale-out.sh          # one run of each instead of three
#   QUIET=/tmp/w/quiet.sh bash bench/scale-out.sh   # wrap each run (e.g. pause builds)
# Other knobs: PG (default postgres://postgres@127.0.0.1:5432), SUBSCRIBERS,
# FANOUT_EVENTS, INGEST_EVENTS, CONNECTIONS, DATA, OUT, CARGO_TARGET_DIR.
# Builds nothing: run `cargo build --release -p cairn-node -p cairn-bench` first.
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
DATA=${DATA:-/tmp/cairn-scaleout}
OUT=${OUT:-$DATA.results.jsonl}
RUNS=${RUNS:-3}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
FANOUT_EVENTS=${FANOUT_EVENTS:-200}
INGEST_EVENTS=${INGEST_EVENTS:-40000}
CONNECTIONS=${CONNECTIONS:-50}
QUIET=${QUIET:-}
PORTS=(7801 7802 7803)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PIDS=()
DBS=()
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
cleanup() {
    stop_all
    for db in "${DBS[@]}"; do
        psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
    done
}
trap cleanup EXIT

# start_cluster N: a fresh database and N `cairn serve` processes on it, each
# with its own port and data directory (as node/tests/scale_out.rs does).
start_cluster() {
    local n=$1 db="cairn_scaleout_$$_${#DBS[@]}"
    psql "$PG/postgres" -qc "CREATE DATABASE $db" >/dev/null
    DBS+=("$db")
    URLS=()
    for i in $(seq 0 $((n - 1))); do
        local dir="$DATA/$db-$i" log="$DATA/$db-$i.log"
        rm -rf "$dir" && mkdir -p "$dir"
        CAIRN_DATABASE_URL="$PG/$db" "$TARGET/release/cairn" serve --config bench/bench.toml \
            --bind "127.0.0.1:${PORTS[$i]}" --data-dir "$dir" >"$log" 2>&1 &
        PIDS+=($!)
        URLS+=("ws://127.0.0.1:${PORTS[$i]}")
        # Started one after another: the first creates the schema.
        for _ in $(seq 300); do
            grep -q "cluster listener connected" "$log" && break
            kill -0 "${PIDS[-1]}" 2>/dev/null || { cat "$log" >&2; exit 1; }
            sleep 0.1
        done
        grep -q "cluster listener connected" "$log" || { echo "no listener; see $log" >&2; exit 1; }
    done
}

bench() {
    local label=$1 name=$2
    shift 2
    local urls=() pids=()
    for u in "${URLS[@]}"; do urls+=(--url "$u"); done
    for p in "${PIDS[@]}"; do pids+=(--pid "$p"); done
    echo "### $label: cairn-bench ${urls[*]} $name $* ${pids[*]}"
    $QUIET timeout 600 "$TARGET/release/cairn-bench" "${urls[@]}" "$name" "$@" "${pids[@]}" --json |
        sed "s/^{/{\"label\":\"$label\",/" | tee -a "$OUT"
}

mkdir -p "$DATA"
for procs in 1 3; do
    start_cluster "$procs"
    for r in $(seq "$RUNS"); do
        bench "fanout-$procs-proc-run$r" fanout --subscribers "$SUBSCRIBERS" --events "$FANOUT_EVENTS"
    done
    for r in $(seq "$RUNS"); do
        bench "ingest-$procs-proc-run$r" ingest --connections "$CONNECTIONS" --events "$INGEST_EVENTS"
    done
    stop_all
done
echo "results appended to $OUT; relay logs in $DATA"
