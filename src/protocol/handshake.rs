//! Handshake: `connect.challenge` → `connect` request → hello-ok.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The only protocol this client speaks.
pub const PROTOCOL_VERSION: u32 = 4;

/// The role the bridge connects as; device tokens are kept per gateway and role.
pub const ROLE: &str = "operator";

/// Payload of the `connect.challenge` event.
#[derive(Debug, Clone, Deserialize)]
pub struct Challenge {
    pub nonce: String,
    #[serde(default)]
    pub ts: Option<u64>,
}

/// `client` in the connect params (a closed schema on the gateway side: only
/// the fields below are sent).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    pub id: String,
    pub version: String,
    pub platform: String,
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_family: Option<String>,
}

/// `auth` in the connect params. Never logged: `Debug` redacts.
#[derive(Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConnectAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
}

impl std::fmt::Debug for ConnectAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectAuth")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "device_token",
                &self.device_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A signed device identity (§3.3).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceProof {
    pub id: String,
    pub public_key: String,
    pub signature: String,
    pub signed_at: u64,
    pub nonce: String,
}

/// `params` of the `connect` request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectParams {
    pub min_protocol: u32,
    pub max_protocol: u32,
    pub client: ClientInfo,
    pub role: String,
    pub scopes: Vec<String>,
    pub auth: ConnectAuth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceProof>,
}

/// hello-ok `server`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloServer {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub build_id: Option<String>,
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(default)]
    pub conn_id: Option<String>,
}

/// hello-ok `policy`. Defaults are the gateway's documented values, used when
/// a field is missing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloPolicy {
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    #[serde(default = "default_tick")]
    pub tick_interval_ms: u64,
}

fn default_max_payload() -> usize {
    26_214_400
}
fn default_tick() -> u64 {
    30_000
}

impl Default for HelloPolicy {
    fn default() -> Self {
        HelloPolicy {
            max_payload: default_max_payload(),
            tick_interval_ms: default_tick(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HelloAuthWire {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    device_token: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct HelloFeaturesWire {
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Deserialize)]
struct HelloWire {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    protocol: u32,
    #[serde(default)]
    server: HelloServer,
    #[serde(default)]
    features: HelloFeaturesWire,
    #[serde(default)]
    auth: HelloAuthWire,
    #[serde(default)]
    policy: HelloPolicy,
    #[serde(default)]
    snapshot: Option<Value>,
}

/// What the rest of the program needs from hello-ok.
#[derive(Clone)]
pub struct HelloOk {
    pub protocol: u32,
    pub server: HelloServer,
    pub policy: HelloPolicy,
    /// Effective scopes: possibly narrower than asked, even empty (§3.2).
    pub scopes: Vec<String>,
    pub auth_method: Option<String>,
    pub role: Option<String>,
    /// Issued to paired devices only. Secret: never logged.
    pub device_token: Option<String>,
    pub methods_count: usize,
    pub events_count: usize,
    /// `snapshot.health`, if present (has a summary of agents).
    pub health: Option<Value>,
}

impl std::fmt::Debug for HelloOk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelloOk")
            .field("protocol", &self.protocol)
            .field("server", &self.server)
            .field("policy", &self.policy)
            .field("scopes", &self.scopes)
            .field("auth_method", &self.auth_method)
            .field(
                "device_token",
                &self.device_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl HelloOk {
    /// Parse a hello-ok payload. Fails on a wrong `type` or a protocol we do not
    /// speak, with a message fit for the log.
    pub fn parse(raw: &str) -> Result<HelloOk, String> {
        let w: HelloWire =
            serde_json::from_str(raw).map_err(|e| format!("hello-ok does not parse: {e}"))?;
        if let Some(kind) = &w.kind {
            if kind != "hello-ok" {
                return Err(format!("expected hello-ok, got type {kind:?}"));
            }
        }
        if w.protocol != PROTOCOL_VERSION {
            return Err(format!(
                "gateway answered protocol {}, this bridge speaks {PROTOCOL_VERSION}",
                w.protocol
            ));
        }
        let health = w
            .snapshot
            .as_ref()
            .and_then(|s| s.get("health"))
            .filter(|h| !h.is_null())
            .cloned();
        Ok(HelloOk {
            protocol: w.protocol,
            server: w.server,
            policy: w.policy,
            scopes: w.auth.scopes,
            auth_method: w.auth.method,
            role: w.auth.role,
            device_token: w.auth.device_token,
            methods_count: w.features.methods.len(),
            events_count: w.features.events.len(),
            health,
        })
    }

    /// Requested scopes that the gateway did not grant (see [`missing_scopes`]).
    pub fn missing_scopes(&self, requested: &[String]) -> Vec<String> {
        missing_scopes(&self.scopes, requested)
    }
}

/// Requested scopes not covered by the granted ones. `operator.write`
/// implies `operator.read` and `operator.talk`; `operator.admin` implies
/// everything (PROTOCOL.md §3.1).
pub fn missing_scopes(granted: &[String], requested: &[String]) -> Vec<String> {
    let has = |s: &str| granted.iter().any(|g| g == s);
    let admin = has("operator.admin");
    requested
        .iter()
        .filter(|want| {
            let w = want.as_str();
            let implied =
                admin || (has("operator.write") && matches!(w, "operator.read" | "operator.talk"));
            !has(w) && !implied
        })
        .cloned()
        .collect()
}

/// The connect params the bridge sends, for tests elsewhere in the crate.
#[cfg(test)]
impl ConnectParams {
    pub(crate) fn sample(platform: &str, token: Option<&str>, device_token: Option<&str>) -> Self {
        ConnectParams {
            min_protocol: 4,
            max_protocol: 4,
            client: ClientInfo {
                id: "gateway-client".into(),
                version: "0.1.0".into(),
                platform: platform.into(),
                mode: "backend".into(),
                display_name: Some("openclaw-bridge".into()),
                device_family: None,
            },
            role: "operator".into(),
            scopes: vec!["operator.read".into(), "operator.write".into()],
            auth: ConnectAuth {
                token: token.map(Into::into),
                device_token: device_token.map(Into::into),
            },
            device: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HELLO: &str = r#"{"type":"hello-ok","protocol":4,
 "server":{"version":"2026.9.6","buildId":"2026.9.6-release-eb377ac59e6c","bootId":"6d6455ab","connId":"4701281d"},
 "features":{"methods":["health","agents.list"],"events":["tick"]},"snapshot":{"presence":[],"health":{"ok":true,"agents":[{"agentId":"main"}]},"stateVersion":{"presence":1,"health":1}},
 "auth":{"method":"token","role":"operator","scopes":["operator.read"]},
 "policy":{"maxPayload":26214400,"maxBufferedBytes":52428800,"tickIntervalMs":30000,"attachments":{"maxBytes":19464192}}}"#;

    #[test]
    fn parses_the_documented_hello_ok() {
        let h = HelloOk::parse(HELLO).unwrap();
        assert_eq!(h.protocol, 4);
        assert_eq!(h.server.version, "2026.9.6");
        assert_eq!(h.server.boot_id.as_deref(), Some("6d6455ab"));
        assert_eq!(h.server.conn_id.as_deref(), Some("4701281d"));
        assert_eq!(h.policy.max_payload, 26_214_400);
        assert_eq!(h.policy.tick_interval_ms, 30_000);
        assert_eq!(h.scopes, vec!["operator.read"]);
        assert_eq!(h.methods_count, 2);
        assert_eq!(h.health.unwrap()["agents"][0]["agentId"], "main");
    }

    #[test]
    fn refuses_another_protocol_and_garbage() {
        let v3 = HELLO.replace("\"protocol\":4", "\"protocol\":3");
        assert!(HelloOk::parse(&v3).unwrap_err().contains("protocol 3"));
        assert!(HelloOk::parse("{}").is_err());
        assert!(HelloOk::parse(r#"{"type":"nope","protocol":4}"#).is_err());
    }

    #[test]
    fn missing_scopes_respects_implication() {
        let mut h = HelloOk::parse(HELLO).unwrap();
        let want = vec!["operator.read".to_string(), "operator.write".to_string()];
        assert_eq!(h.missing_scopes(&want), vec!["operator.write"]);
        h.scopes = vec![];
        assert_eq!(h.missing_scopes(&want), want);
        h.scopes = vec!["operator.write".into()];
        assert!(h.missing_scopes(&want).is_empty());
        h.scopes = vec!["operator.admin".into()];
        assert!(h.missing_scopes(&want).is_empty());
    }

    #[test]
    fn connect_params_serialise_as_the_gateway_expects_and_debug_hides_token() {
        let p = ConnectParams::sample("linux", Some("sekrit"), None);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            json!({"minProtocol":4,"maxProtocol":4,"client":{"id":"gateway-client","version":"0.1.0","platform":"linux","mode":"backend","displayName":"openclaw-bridge"},"role":"operator","scopes":["operator.read","operator.write"],"auth":{"token":"sekrit"}})
        );
        assert!(!format!("{p:?}").contains("sekrit"));
    }
}
