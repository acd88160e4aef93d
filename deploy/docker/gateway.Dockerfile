# syntax=docker/dockerfile:1
# An OpenClaw gateway for deploy/docker/compose.yaml: the release the bridge is
# tested against (openclaw@2026.9.6, protocol 4) on Node 24.
FROM node:24-bookworm-slim

ARG OPENCLAW_VERSION=2026.9.6
# --ignore-scripts: the same install the bridge's test suite uses
# (scripts/install-openclaw.sh); the package needs no install scripts to run.
RUN npm install --global --ignore-scripts "openclaw@${OPENCLAW_VERSION}" \
 && npm cache clean --force \
 && mkdir -p /home/node/.openclaw \
 && chown node:node /home/node/.openclaw \
 && chmod 0700 /home/node/.openclaw

# No self-update, telemetry or mDNS announcements from inside a container, and
# no respawning: the process docker started stays the gateway and gets
# `docker stop`'s SIGTERM (compose adds an init to reap tool processes).
ENV OPENCLAW_NO_AUTO_UPDATE=1 \
    DO_NOT_TRACK=1 \
    OPENCLAW_DISABLE_BONJOUR=1 \
    CLAWHUB_DISABLE_TELEMETRY=1 \
    OPENCLAW_NO_RESPAWN=1

# node (uid 1000 in the node images).
USER 1000:1000
WORKDIR /home/node
# Config, pairings and device tokens live here: keep it on a volume, or every
# new container forgets the bridge's approved device.
VOLUME ["/home/node/.openclaw"]
EXPOSE 18789

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:18789/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

# --bind lan listens on 0.0.0.0 so other containers on the compose network can
# connect; the shared token comes from OPENCLAW_GATEWAY_TOKEN.
STOPSIGNAL SIGTERM
ENTRYPOINT ["openclaw"]
CMD ["gateway", "run", "--allow-unconfigured", "--auth", "token", "--bind", "lan", "--port", "18789"]
