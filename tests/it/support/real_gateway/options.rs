//! How to start an instance, and the constants tests share with the harness.

use std::time::Duration;

use serde_json::Value;

/// Environment variable carrying the per-instance marker; used to find every
/// process that belongs to an instance (children inherit it).
pub const INSTANCE_ENV: &str = "OPENCLAW_BRIDGE_TEST_INSTANCE";

/// Default for [`RealGateway::wait_ready`] callers: cold starts take 10–20 s,
/// more on a loaded machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How to start an instance. `Default` gives the standard offline setup.
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    /// TEST-ONLY PATCH, not a gateway feature: the gateway hard-codes
    /// `TICK_INTERVAL_MS = 30000` (no config or env). When set, the guard
    /// rewrites that constant at module load (env
    /// `OPENCLAW_TEST_TICK_INTERVAL_MS`), so `tick` events are sent at this
    /// interval and hello-ok `policy.tickIntervalMs` reports it.
    pub tick_interval_ms: Option<u64>,
    /// Merged (deeply; objects merge, everything else replaces) into the
    /// generated `openclaw.json`.
    pub extra_config: Option<Value>,
    /// Bind to this host as well (`--bind custom`, config
    /// `gateway.bind:"custom"`, `gateway.customBindHost`), e.g. a netns
    /// address. It is also added to the guard's allow-list.
    pub bind_custom_host: Option<String>,
    /// Command prefix for the gateway and `cli`, e.g.
    /// `["nsenter","--net=/run/netns/GW","--"]`. Readiness probes still run
    /// in the test's own network namespace unless [`netns`](Self::netns) is
    /// set too.
    pub command_prefix: Vec<String>,
    /// Run the instance inside this network namespace (`/run/netns/<name>`,
    /// e.g. from [`NetnsPair`]): the gateway, [`RealGateway::cli`],
    /// [`RealGateway::try_hello`] and [`RealGateway::wait_ready`] all go
    /// through `nsenter --net=/run/netns/<name> --` (unless `command_prefix`
    /// is given, which then wins for the gateway and `cli`). The handshake
    /// probe is then a small Node script (the install's `ws` package) run
    /// inside the namespace against its own loopback, because the test's
    /// loopback is another one. The fake model server still runs in the
    /// test's namespace, so agent runs cannot reach it: such an instance is
    /// for handshake/pairing tests. Needs root.
    pub netns: Option<String>,
    /// Extra environment for the gateway process (and `cli`).
    pub extra_env: Vec<(String, String)>,
    /// Pass `--verbose` to `gateway run`.
    pub verbose: bool,
    /// Fixed token instead of a random one.
    pub token: Option<String>,
}

/// Deep merge: objects merge key by key; anything else in `patch` replaces.
pub fn merge_json(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(bv) if bv.is_object() && v.is_object() => merge_json(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}
