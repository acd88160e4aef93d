//! `identity show`: the device identity, and per gateway whether it is used
//! and which device token is stored for it.

use super::{EXIT_OK, EXIT_RUNTIME};
use crate::config::{GatewaySettings, Settings};

pub(super) fn identity_show(settings: &Settings) -> u8 {
    use crate::identity::{DeviceIdentity, DeviceTokenStore, KEY_FILE};
    let dir = &settings.state.dir;
    let multi = settings.multi_gateway();
    // One line per gateway; with a single gateway the lines keep their
    // original names.
    let label = |name: &str, g: &GatewaySettings| {
        if multi {
            format!("{name}[{}]:", g.id)
        } else {
            format!("{name}:")
        }
    };
    let used = |g: &GatewaySettings| {
        let mode = match g.device_identity {
            crate::config::DeviceIdentityMode::Auto => "auto",
            crate::config::DeviceIdentityMode::Always => "always",
            crate::config::DeviceIdentityMode::Never => "never",
        };
        let yes = if g.uses_device_identity() {
            "yes"
        } else {
            "no"
        };
        println!(
            "{:<16} {yes} (gateway.device_identity = {mode})",
            label("used_for_gateway", g)
        );
    };
    match DeviceIdentity::load(dir) {
        Ok(Some(id)) => {
            let store = DeviceTokenStore::new(dir, id.device_id());
            println!("device_id:       {}", id.device_id());
            println!("public_key:      {}", id.public_key_b64url());
            println!("key_file:        {}", id.key_path().display());
            for g in &settings.gateways {
                let token = match store.load(&g.url, crate::protocol::ROLE) {
                    Ok(Some(t)) => format!(
                        "yes (scopes {}, issued at {} ms)",
                        t.scopes.join(","),
                        t.issued_at_ms
                    ),
                    Ok(None) => "no".to_owned(),
                    Err(e) => format!("unreadable: {e}"),
                };
                println!("{:<16} {token} (for {})", label("device_token", g), g.url);
                used(g);
            }
            EXIT_OK
        }
        Ok(None) => {
            println!("device_id:       none yet");
            println!(
                "key_file:        {} (created on the first run that uses a device identity)",
                dir.join(KEY_FILE).display()
            );
            for g in &settings.gateways {
                used(g);
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("openclaw-bridge: {e}");
            EXIT_RUNTIME
        }
    }
}
