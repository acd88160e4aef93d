//! Device identity against the fake gateway: the signed challenge, the device
//! token's life (issued, stored 0600, used, refused and dropped), and a key
//! file others can read being refused.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::support::app::spawn_app_env;
use crate::support::fake_gateway::{FakeGateway, FakeOptions};

const T: Duration = Duration::from_secs(10);

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

/// Check `device` in connect params with ring (an independent Ed25519), over
/// the v3 string the gateway verifies (PROTOCOL.md §3.3).
fn verify_device(params: &Value, challenge: &Value, signed_token: &str) {
    let d = &params["device"];
    let id = d["id"].as_str().unwrap();
    let key = b64(d["publicKey"].as_str().unwrap());
    assert_eq!(key.len(), 32);
    let digest = ring::digest::digest(&ring::digest::SHA256, &key);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(id, hex, "device id = hex sha256 of the raw public key");
    assert_eq!(d["nonce"], challenge["nonce"], "this socket's nonce");
    assert_eq!(
        d["signedAt"], challenge["ts"],
        "signedAt = the challenge ts"
    );
    let scopes: Vec<&str> = params["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let payload = format!(
        "v3|{id}|{}|{}|{}|{}|{}|{signed_token}|{}|{}|",
        params["client"]["id"].as_str().unwrap(),
        params["client"]["mode"].as_str().unwrap(),
        params["role"].as_str().unwrap(),
        scopes.join(","),
        d["signedAt"],
        d["nonce"].as_str().unwrap(),
        params["client"]["platform"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase(),
    );
    let sig = b64(d["signature"].as_str().unwrap());
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key)
        .verify(payload.as_bytes(), &sig)
        .unwrap_or_else(|_| panic!("signature does not verify over {payload}"));
}

#[actix_rt::test]
async fn the_device_token_is_stored_used_and_dropped_when_refused() {
    let gw = FakeGateway::start(FakeOptions::with_token("shared-secret"));
    gw.set_device_token(Some("device-token-1"));
    let app = spawn_app_env(
        &gw.url(),
        Some("shared-secret"),
        &[("OPENCLAW_BRIDGE__GATEWAY__DEVICE_IDENTITY", "always")],
    )
    .await;
    assert!(app.wait_connected(T).await, "{:?}", app.status().await);

    // First connect: shared token, signed device.
    let p = gw.last_connect_params().unwrap();
    assert_eq!(p["auth"]["token"], "shared-secret");
    verify_device(&p, &gw.last_challenge().unwrap(), "shared-secret");

    // The issued device token is stored, 0600.
    let file = app.dir.join("device-token.json");
    assert!(
        gw.wait_for(T, |_| file.exists()).await,
        "device token stored"
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key_mode = std::fs::metadata(app.dir.join("device-key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);

    // Next connect uses it (it becomes the signed token).
    gw.drop_tcp();
    assert!(gw.wait_handshakes(2, T).await);
    let p = gw.last_connect_params().unwrap();
    assert_eq!(p["auth"]["deviceToken"], "device-token-1");
    assert!(p["auth"].get("token").is_none(), "{p}");
    verify_device(&p, &gw.last_challenge().unwrap(), "device-token-1");

    // The gateway revokes it: refused, dropped, back to the shared token.
    gw.set_device_token(None);
    gw.drop_tcp();
    assert!(
        gw.wait_handshakes(3, T).await,
        "reconnected with the shared token"
    );
    let p = gw.last_connect_params().unwrap();
    assert_eq!(p["auth"]["token"], "shared-secret");
    assert!(p["auth"].get("deviceToken").is_none());
    let stored = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        !stored.contains("device-token-1"),
        "the refused token is forgotten"
    );
    // The fake counts the handshake when it sends hello-ok; the bridge
    // processes it a moment later.
    assert!(app.wait_connected(T).await, "{:?}", app.status().await);
    app.stop().await;
}

#[actix_rt::test]
async fn a_key_file_others_can_read_is_refused_with_the_fix() {
    let gw = FakeGateway::start(FakeOptions::with_token("t"));
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
            .args(args)
            .env("OPENCLAW_GATEWAY_URL", gw.url())
            .env("OPENCLAW_GATEWAY_TOKEN", "t")
            .env("OPENCLAW_BRIDGE__STATE__DIR", state.path())
            .env("OPENCLAW_BRIDGE__GATEWAY__DEVICE_IDENTITY", "always")
            .env("OPENCLAW_BRIDGE__HTTP__LISTEN", "127.0.0.1:0")
            .env("OPENCLAW_BRIDGE__LOG__FORMAT", "json")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    // A first use creates the key.
    let out = run(&["call", "health"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = state.path().join("device-key");
    let shown = run(&["identity", "show"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("device_id:") && text.contains(&key.display().to_string()),
        "{text}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("config.invalid"), "{all}");
    assert!(
        all.contains("0644") && all.contains(&format!("chmod 600 {}", key.display())),
        "{all}"
    );
}
