//! The command line as an operator meets it: check-config, --version, usage
//! errors and exit codes.

use std::process::{Command, Output};

fn bridge(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"));
    c.args(args)
        .env_remove("OPENCLAW_GATEWAY_TOKEN")
        .env_remove("OPENCLAW_GATEWAY_URL")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run openclaw-bridge")
}

/// The command exited 0 (its stderr in the failure message).
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("http-token");
    std::fs::write(&tf, "http-secret-xyz\n").unwrap();
    std::fs::set_permissions(&tf, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[http]\nlisten = \"0.0.0.0:18800\"\ntoken_file = {:?}\n",
            tf.display().to_string()
        ),
    )
    .unwrap();
    let out = bridge(
        &["check-config", "--config", cfg.to_str().unwrap()],
        &[
            ("OPENCLAW_GATEWAY_TOKEN", "gw-secret-abc"),
            ("OPENCLAW_BRIDGE__EVENTS__BUFFER", "42"),
        ],
    );
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let t: toml::Table = toml::from_str(&text).expect("valid TOML");
    assert_eq!(t["gateway"]["token"].as_str(), Some("<redacted>"));
    assert_eq!(t["http"]["token"].as_str(), Some("<redacted>"));
    assert_eq!(t["http"]["listen"].as_str(), Some("0.0.0.0:18800"));
    assert_eq!(
        t["events"]["buffer"].as_integer(),
        Some(42),
        "environment layer applied"
    );
    assert!(
        !text.contains("gw-secret-abc") && !text.contains("http-secret-xyz"),
        "{text}"
    );
}

#[test]
fn a_bad_value_exits_2_naming_the_key_and_what_is_allowed() {
    let out = bridge(
        &["check-config"],
        &[
            ("OPENCLAW_BRIDGE__HTTP__LISTEN", "0.0.0.0:18800"),
            ("OPENCLAW_GATEWAY_URL", "http://gw:18789/"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines.iter().all(|l| l["event"] == "config.invalid"));
    let keys: Vec<&str> = lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, vec!["gateway.url", "http.token"]);
    assert!(lines[0]["problem"]
        .as_str()
        .unwrap()
        .contains("use ws://HOST:PORT/ or wss://"));
    // The daemon refuses to start the same way.
    let out = bridge(
        &["run"],
        &[("OPENCLAW_BRIDGE__HTTP__LISTEN", "0.0.0.0:18800")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"event\":\"config.invalid\"") && err.contains("\"key\":\"http.token\""),
        "{err}"
    );
}

#[test]
fn version_and_usage_errors() {
    let out = bridge(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("openclaw-bridge {}", env!("CARGO_PKG_VERSION"))
    );
    let out = bridge(&["no-such-command"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = bridge(&["call", "health", "[1,2]"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be a JSON object"));
}

#[test]
fn healthcheck_exits_nonzero_when_nothing_answers() {
    let port = crate::support::real_gateway::free_port();
    let out = bridge(
        &[
            "healthcheck",
            "--url",
            &format!("http://127.0.0.1:{port}/readyz"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

/// A config file with two gateways: `a` (unreachable) and `b` at `b_url`.
fn two_gateways(dir: &std::path::Path, b_url: &str, b_token: &str, a_id: &str) -> String {
    let cfg = dir.join("two.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[gateways]]\nid = {a_id:?}\nurl = \"ws://127.0.0.1:9/\"\ntoken = \"secret-of-a\"\n\
             [[gateways]]\nid = \"b\"\nurl = {b_url:?}\ntoken = {b_token:?}\nrequired = false\n\
             [state]\ndir = {:?}\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
    cfg.display().to_string()
}

#[test]
fn check_config_and_call_with_several_gateways() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_gateways(dir.path(), "ws://127.0.0.1:10/", "secret-of-b", "a");
    let out = bridge(&["check-config", "--config", &cfg], &[]);
    assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let t: toml::Table = toml::from_str(&text).expect("valid TOML");
    let gws = t["gateways"].as_array().expect("[[gateways]]");
    assert_eq!(gws.len(), 2, "{text}");
    assert_eq!(gws[0]["id"].as_str(), Some("a"));
    assert_eq!(gws[1]["id"].as_str(), Some("b"));
    assert_eq!(gws[1]["required"].as_bool(), Some(false));
    assert_eq!(gws[1]["token"].as_str(), Some("<redacted>"));
    assert!(!text.contains("secret-of-"), "{text}");

    // No gateway called default: `call` must be told which one.
    let out = bridge(&["call", "health", "--config", &cfg], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--gateway ID") && err.contains("a, b"),
        "{err}"
    );
    let out = bridge(
        &["call", "health", "--gateway", "zz", "--config", &cfg],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no gateway \"zz\"") && err.contains("a, b"),
        "{err}"
    );
}

#[test]
fn call_reaches_the_gateway_named_by_gateway_flag() {
    use crate::support::real_gateway::{shared, RealGateway};
    if !RealGateway::available() {
        return;
    }
    let gw = shared();
    let dir = tempfile::tempdir().unwrap();
    // `default` is unreachable; `--gateway b` is the real one.
    let cfg = two_gateways(dir.path(), &gw.url(), gw.token(), "default");
    let out = bridge(
        &["call", "agents.list", "--gateway", "b", "--config", &cfg],
        &[],
    );
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["defaultId"], "main", "{v}");
    // Without the flag: the default gateway, which is not there (exit 3).
    let out = bridge(&["call", "health", "--timeout", "2", "--config", &cfg], &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"));
}
