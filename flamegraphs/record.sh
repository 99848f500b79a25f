#!/usr/bin/env bash
# Records a flamegraph of the relay under one load scenario.
#   flamegraphs/record.sh SCENARIO NAME [loadtest flags...]
# The relay runs pinned to core 0 under `perf record -e cpu-clock -g`, the
# load driver pinned to core 1; the SVG lands in flamegraphs/NAME.svg.
# RELAY_BIN=path records another build of the relay (e.g. an older commit's,
# for a before/after pair); the default is this tree's release build.
# Needs: perf (Debian linux-perf), inferno (cargo install inferno).
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=$1; name=$2; shift 2
port=${PORT:-9190}
relay_bin=${RELAY_BIN:-target/release/bitstream-relay}
if [ -z "${RELAY_BIN:-}" ]; then cargo build --release --bin bitstream-relay >/dev/null; fi
cargo build --release -p loadtest >/dev/null
tmp=$(mktemp -d)
taskset -c 0 perf record -e cpu-clock -F 999 -g -o "$tmp/perf.data" -- \
    "$relay_bin" --addr 127.0.0.1:$port --max-receivers 100000 \
    --max-connections-per-ip 100000 --max-channels-per-ip 100000 --stats-interval-ms 0 2>"$tmp/relay.log" &
perf_pid=$!
# perf starts the relay: wait (up to 10 s) until it is there.
relay_pid=
for _ in $(seq 100); do
    relay_pid=$(pgrep -f "^$relay_bin --addr 127.0.0.1:$port" | head -1 || true)
    [ -n "$relay_pid" ] && break
    sleep 0.1
done
[ -n "$relay_pid" ] || { echo "record.sh: the relay did not start, see $tmp/relay.log" >&2; kill "$perf_pid"; exit 1; }
sleep 0.5
taskset -c 1 target/release/loadtest "$scenario" --out target/loadtest/flame --url ws://127.0.0.1:$port --relay-pid "$relay_pid" "$@"
kill -INT "$relay_pid"
wait "$perf_pid" || true
perf script -i "$tmp/perf.data" 2>/dev/null | inferno-collapse-perf > "$tmp/stacks.folded"
inferno-flamegraph --title "bitstream-relay: $scenario ($name)" < "$tmp/stacks.folded" > "flamegraphs/$name.svg"
cp "$tmp/stacks.folded" "target/$name.folded"
echo "flamegraphs/$name.svg"
