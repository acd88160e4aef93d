#!/usr/bin/env bash
# Records src/link-order.txt: the functions the release binary runs from
# start-up to idle (connected, /readyz, /healthz and /metrics answered), which
# build.rs has LLD place first in .text so that idle RSS stays small (README
# "Performance"). Run it after changes that rename or add much start-up code,
# or after a toolchain upgrade; a stale list only costs idle RSS.
#
# Needs valgrind (callgrind lists every function that ran) and curl. Records
# the release build and the bench build (`cargo bench` builds the binary with
# its own profile, whose symbol names differ) and keeps both lists, in the
# order the functions first ran. About 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "link-order: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
command -v curl >/dev/null || { echo "link-order: needs curl" >&2; exit 1; }

work=$(mktemp -d)
gw_pid=""
cleanup() { [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# trace BIN OUT: the defined functions BIN runs until idle, first-run order.
trace() {
    local bin=$1 out=$2 state port
    state=$(mktemp -d -p "$work"); port=$(free_port)
    OPENCLAW_GATEWAY_URL="ws://127.0.0.1:$gw_port/" OPENCLAW_GATEWAY_TOKEN=bench-token \
    OPENCLAW_BRIDGE__HTTP__LISTEN="127.0.0.1:$port" OPENCLAW_BRIDGE__STATE__DIR="$state" \
    OPENCLAW_BRIDGE__LOG__LEVEL=warn \
        valgrind --tool=callgrind --demangle=no --dump-instr=no \
        --callgrind-out-file="$state/cg.out" "$bin" run >/dev/null 2>"$state/vg.err" &
    local pid=$! code=""
    for _ in $(seq 600); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    [ "$code" = 200 ] || { echo "link-order: $bin never became ready" >&2; kill "$pid"; exit 1; }
    curl -s -o /dev/null "http://127.0.0.1:$port/healthz" || true
    curl -s -o /dev/null "http://127.0.0.1:$port/metrics" || true
    sleep 1
    kill -INT "$pid"; wait "$pid" || true
    nm "$bin" | awk '$2 ~ /^[tTwW]$/ {print $3}' | sort -u >"$state/defined"
    grep -oE '^c?fn=\([0-9]+\) .*' "$state/cg.out" | sed -E 's/^c?fn=\([0-9]+\) //' \
        | awk 'NR==FNR {d[$0]=1; next} d[$0] && !seen[$0]++' "$state/defined" - >"$out"
}

# Both builds write target/release/openclaw-bridge: keep a copy of each.
echo "link-order: release build"
cargo build --release --bin openclaw-bridge -q
cp target/release/openclaw-bridge "$work/release-bin"
echo "link-order: bench build"
bench_bin=$(cargo bench --bench bridge --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="bridge" and m.get("executable"): print(m["executable"])' | tail -1)
cp target/release/openclaw-bridge "$work/bench-bin"
if cmp -s "$work/release-bin" "$work/bench-bin"; then
    echo "link-order: the bench build did not replace the release binary" >&2; exit 1
fi

# The bench's synthetic gateway (real handshake, loopback) to connect to; it
# stops when its stdin closes.
gw_port=$(free_port)
mkfifo "$work/gw.in"
"$bench_bin" --child gateway 1000 "$gw_port" <"$work/gw.in" >/dev/null 2>&1 &
gw_pid=$!
exec 9>"$work/gw.in"
sleep 1

trace "$work/release-bin" "$work/release"
trace "$work/bench-bin" "$work/bench"

cat "$work/release" "$work/bench" | awk '!seen[$0]++' >src/link-order.txt
echo "link-order: src/link-order.txt holds $(wc -l <src/link-order.txt) functions" \
     "(release $(wc -l <"$work/release"), bench $(wc -l <"$work/bench"))"
