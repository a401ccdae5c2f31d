#!/usr/bin/env bash
# Side by side (docs/benchmarks.md, "Against other relays"): the same
# cairn-bench runs against Cairn and against peer relays in one run, each
# relay on a fresh store and the same port, the relays taking turns
# (interleaved, RUNS rounds) so that a machine that gets busier mid-run
# does not favour one of them. Human output on stdout; one JSON object per
# run, with a "relay" field, appended to $OUT.
#
# Nothing is built or downloaded here. Build the peers first, each the way
# its own README says, and name their binaries:
#   STRFRY_BIN=/path/to/strfry STRFRY_CONF=/path/to/strfry/strfry.conf
#       (strfry's own config file from its source tree; this script copies it
#       and changes db, port, nofiles = 0 and maxReqFilterSize, see below)
#   NOSTR_RS_RELAY_BIN=/path/to/nostr-rs-relay
#       (e.g. `cargo install nostr-rs-relay --version 0.8.12 --root /opt/nrr`)
# A relay whose variable is unset is left out; Cairn always runs (release
# build: `cargo build --release -p cairn-node -p cairn-bench` first).
#
#   STRFRY_BIN=… STRFRY_CONF=… bash bench/peers.sh                 # ingest, 2 rounds
#   BENCHES="ingest query" SEED_EVENTS=200000 bash bench/peers.sh
#   QUIET=/tmp/w/quiet.sh bash bench/peers.sh                      # wrap each run
# Knobs: RUNS (2), BENCHES ("ingest"; "query" seeds SEED_EVENTS
# first, default 100000), INGEST_EVENTS (40000), CONNECTIONS (50),
# REQUESTS (2000), PORT (7790), DATA, OUT, CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}
PORT=${PORT:-7790}
URL=ws://127.0.0.1:$PORT
DATA=${DATA:-/tmp/cairn-peers}
OUT=${OUT:-$DATA.results.jsonl}
RUNS=${RUNS:-2}
BENCHES=${BENCHES:-ingest}
INGEST_EVENTS=${INGEST_EVENTS:-40000}
CONNECTIONS=${CONNECTIONS:-50}
SEED_EVENTS=${SEED_EVENTS:-100000}
REQUESTS=${REQUESTS:-2000}
QUIET=${QUIET:-}
BENCH=$TARGET/release/cairn-bench
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

RELAYS=(cairn)
[ -n "${STRFRY_BIN:-}" ] && RELAYS+=(strfry)
[ -n "${NOSTR_RS_RELAY_BIN:-}" ] && RELAYS+=(nostr-rs-relay)

PID=
stop_relay() {
    [ -n "$PID" ] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
    PID=
}
trap stop_relay EXIT

# start_relay NAME DIR: the relay on a fresh store in DIR, listening on $PORT.
start_relay() {
    local name=$1 dir=$2
    rm -rf "$dir" && mkdir -p "$dir/db"
    case $name in
    cairn)
        "$TARGET/release/cairn" serve --config bench/bench.toml --bind "127.0.0.1:$PORT" \
            --data-dir "$dir/db" >"$dir.log" 2>&1 &
        ;;
    strfry)
        # Its defaults, but: the store in $dir, our port, no open-files
        # raise (strfry refuses to start when the limit is below its
        # 524288), and filters of up to 1,000 values (default 200: the
        # 500-author follow feed of a `query` would be refused).
        sed -e "s|^db = .*|db = \"$dir/db/\"|" -e "s|^\(\s*\)port = .*|\1port = $PORT|" \
            -e "s|^\(\s*\)nofiles = .*|\1nofiles = 0|" \
            -e "s|^\(\s*\)maxReqFilterSize = .*|\1maxReqFilterSize = 1000|" \
            "${STRFRY_CONF:?set STRFRY_CONF to strfry.conf from its source tree}" >"$dir/strfry.conf"
        "$STRFRY_BIN" --config="$dir/strfry.conf" relay >"$dir.log" 2>&1 &
        ;;
    nostr-rs-relay)
        # Its defaults (no rate limits unless configured), SQLite in $dir.
        cat >"$dir/config.toml" <<EOF
[database]
data_directory = "$dir/db"
[network]
address = "127.0.0.1"
port = $PORT
EOF
        "$NOSTR_RS_RELAY_BIN" --config "$dir/config.toml" >"$dir.log" 2>&1 &
        ;;
    esac
    PID=$!
    for _ in $(seq 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return
        kill -0 "$PID" 2>/dev/null || { cat "$dir.log" >&2; exit 1; }
        sleep 0.2
    done
    echo "$name did not start listening on $PORT; see $dir.log" >&2
    exit 1
}

bench() {
    local relay=$1 name=$2
    shift 2
    echo "### $relay: cairn-bench --url $URL $name $* --pid $PID"
    $QUIET timeout 900 "$BENCH" --url "$URL" "$name" "$@" --pid "$PID" --json |
        sed "s/^{/{\"relay\":\"$relay\",/" | tee -a "$OUT"
}

needs_seed=false
case " $BENCHES " in *" query "*) needs_seed=true ;; esac
for round in $(seq "$RUNS"); do
    for relay in "${RELAYS[@]}"; do
        dir=$DATA/$relay
        start_relay "$relay" "$dir"
        echo "## round $round: $relay (pid $PID)"
        for b in $BENCHES; do
            case $b in
            ingest) bench "$relay" ingest --connections "$CONNECTIONS" --events "$INGEST_EVENTS" ;;
            esac
        done
        if $needs_seed; then
            # Seeding is set-up, not a measurement: not wrapped in $QUIET.
            echo "### $relay: seeding $SEED_EVENTS events"
            timeout 1800 "$BENCH" --url "$URL" seed --events "$SEED_EVENTS" \
                --manifest "$dir.seed.json" --json >>"$dir.seed.log"
            for b in $BENCHES; do
                case $b in
                query) bench "$relay" query --requests "$REQUESTS" --manifest "$dir.seed.json" ;;
                esac
            done
        fi
        stop_relay
    done
done
echo "results appended to $OUT; relay logs in $DATA/*.log"
