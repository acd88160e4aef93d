//! Configuration rules as an operator meets them.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, toml).unwrap();
    Settings::load_from(&Sources {
        system_file: None,
        file: Some(file),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

fn problems(toml: &str, env: &[(&str, &str)]) -> String {
    load(toml, env).unwrap_err().to_string()
}

#[test]
fn defaults_are_the_documented_ones() {
    let s = load("", &[]).unwrap();
    assert_eq!(s.gateways[0].url, "ws://127.0.0.1:18789/");
    assert_eq!(s.gateways[0].client_id, "gateway-client");
    assert_eq!(s.gateways[0].client_mode, "backend");
    assert_eq!(
        s.gateways[0].scopes,
        vec!["operator.read", "operator.write"]
    );
    assert_eq!(s.gateways[0].request_timeout, Duration::from_millis(30_000));
    assert_eq!(s.reconnect.backoff.initial(), Duration::from_millis(250));
    assert_eq!(s.reconnect.backoff.max(), Duration::from_millis(30_000));
    assert_eq!(s.http.listen.to_string(), "127.0.0.1:18800");
    assert_eq!(s.events.buffer, 10_000);
    assert_eq!(s.events.subscriber_queue, 1024);
    assert_eq!(s.events.buffer_bytes, 16 << 20);
    assert_eq!(s.http.max_sse_subscribers, 1024);
    assert_eq!(s.state.dir, PathBuf::from("./state"));
    assert!(!s.gateways[0].uses_device_identity());
}

#[test]
fn layering_file_then_env_then_well_known_env() {
    let toml = "[gateway]\nurl = \"ws://127.0.0.1:1000/\"\nrequest_timeout_ms = 5\n[http]\nlisten = \"127.0.0.1:1\"\n";
    let s = load(toml, &[]).unwrap();
    assert_eq!(s.gateways[0].url, "ws://127.0.0.1:1000/");
    let s = load(
        toml,
        &[
            ("OPENCLAW_BRIDGE__GATEWAY__URL", "ws://127.0.0.1:2000/"),
            ("OPENCLAW_BRIDGE__HTTP__LISTEN", "127.0.0.1:2"),
        ],
    )
    .unwrap();
    assert_eq!(s.gateways[0].url, "ws://127.0.0.1:2000/");
    assert_eq!(s.http.listen.port(), 2);
    assert_eq!(s.gateways[0].request_timeout, Duration::from_millis(5));
    let s = load(
        toml,
        &[
            ("OPENCLAW_BRIDGE__GATEWAY__URL", "ws://127.0.0.1:2000/"),
            ("OPENCLAW_GATEWAY_URL", "ws://127.0.0.1:3000/"),
            ("OPENCLAW_GATEWAY_TOKEN", "from-env"),
            ("OPENCLAW_BRIDGE__GATEWAY__SCOPES", "operator.read"),
        ],
    )
    .unwrap();
    assert_eq!(s.gateways[0].url, "ws://127.0.0.1:3000/");
    assert_eq!(s.gateways[0].token.as_ref().unwrap().expose(), "from-env");
    assert_eq!(s.gateways[0].scopes, vec!["operator.read"]);
}

#[test]
fn every_bad_key_is_reported_at_once() {
    let p = problems(
        "[gateway]\nurl = \"http://x:1/\"\nclient_id = \"nope\"\n[http]\nlisten = \"nowhere\"\n[events]\nbuffer = 0\n",
        &[],
    );
    assert!(
        p.contains("gateway.url: \"http://x:1/\" is an HTTP URL; use ws://"),
        "{p}"
    );
    assert!(
        p.contains("gateway.client_id: \"nope\" is not allowed; use one of: webchat-ui"),
        "{p}"
    );
    assert!(p.contains("http.listen: \"nowhere\" is not allowed"), "{p}");
    assert!(
        p.contains("events.buffer: \"0\" is not allowed; use a whole number from 1"),
        "{p}"
    );
}

#[test]
fn url_rules() {
    assert!(
        problems("[gateway]\nurl = \"ws://127.0.0.1:70000/\"\n", &[])
            .contains("use a port from 1 to 65535")
    );
    assert!(
        problems("[gateway]\nurl = \"tcp://h/\"\n", &[]).contains("use ws://HOST:PORT/ or wss://")
    );
    assert!(problems("[gateway]\nurl = \"ws:///x\"\n", &[]).contains("has no host"));
    assert!(load("[gateway]\nurl = \"wss://gw.example.com/\"\n", &[])
        .unwrap()
        .gateways[0]
        .uses_device_identity());
    assert!(!load("[gateway]\nurl = \"ws://[::1]:18789/\"\n", &[])
        .unwrap()
        .gateways[0]
        .uses_device_identity());
    assert!(url_is_loopback("ws://localhost:1/"));
}

#[test]
fn unknown_keys_and_sections_are_named() {
    let p = problems("[gateway]\nurll = \"x\"\n[gatway]\nx = 1\n", &[]);
    assert!(
        p.contains("gateway.urll: unknown key; keys of [gateway]: id, required, url, token"),
        "{p}"
    );
    assert!(p.contains("gatway: unknown section"), "{p}");
}

#[test]
fn token_files_and_empty_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("tok");
    std::fs::write(&tf, "s3cret-token\nsecond line\n").unwrap();
    set_mode(&tf, 0o600);
    let s = load(
        &format!("[gateway]\ntoken_file = {:?}\n", tf.display().to_string()),
        &[],
    )
    .unwrap();
    assert_eq!(
        s.gateways[0].token.as_ref().unwrap().expose(),
        "s3cret-token"
    );
    let p = problems("[gateway]\ntoken_file = \"/nonexistent/tok\"\n", &[]);
    assert!(
        p.contains("gateway.token_file: cannot read /nonexistent/tok"),
        "{p}"
    );
    std::fs::write(&tf, "\n").unwrap();
    let p = problems(
        &format!("[gateway]\ntoken_file = {:?}\n", tf.display().to_string()),
        &[],
    );
    assert!(p.contains("is empty"), "{p}");
    let p = problems("[gateway]\ntoken = \"  \"\n", &[]);
    assert!(p.contains("gateway.token: is empty"), "{p}");
    let p = problems("[gateway]\ntoken = \"abc\"\ntoken_file = \"/x\"\n", &[]);
    assert!(p.contains("not both"), "{p}");
    assert!(!p.contains("abc"));
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_token_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("tok");
    std::fs::write(&tf, "s3cret-token\n").unwrap();
    for mode in [0o644, 0o640, 0o604] {
        set_mode(&tf, mode);
        let p = problems(
            &format!("[http]\ntoken_file = {:?}\n", tf.display().to_string()),
            &[],
        );
        assert!(
            p.contains("http.token_file:") && p.contains("chmod 600"),
            "{mode:o}: {p}"
        );
        assert!(!p.contains("s3cret"), "{p}");
    }
    set_mode(&tf, 0o400);
    let s = load(
        &format!("[http]\ntoken_file = {:?}\n", tf.display().to_string()),
        &[],
    )
    .unwrap();
    assert_eq!(s.http.token.as_ref().unwrap().expose(), "s3cret-token");
}

#[test]
fn userinfo_in_urls_is_redacted_wherever_shown() {
    assert_eq!(
        redact_url("ws://bob:pa55@gw.example:18789/x?a=b@c"),
        "ws://<redacted>@gw.example:18789/x?a=b@c"
    );
    assert_eq!(
        redact_url("nats://tok@127.0.0.1:4222"),
        "nats://<redacted>@127.0.0.1:4222"
    );
    assert_eq!(redact_url("ws://127.0.0.1:1/"), "ws://127.0.0.1:1/");
    let s = load(
        "[gateway]\nurl = \"ws://bob:pa55@127.0.0.1:18789/\"\n[nats]\nurl = \"nats://u:natspass@127.0.0.1:4222\"\n",
        &[],
    )
    .unwrap();
    let shown = s.to_redacted_toml();
    assert!(
        !shown.contains("pa55") && !shown.contains("natspass"),
        "{shown}"
    );
    assert!(
        shown.contains("ws://<redacted>@127.0.0.1:18789/"),
        "{shown}"
    );
    // A bad URL's error message (logged as config.invalid) hides it too.
    let p = problems("[gateway]\nurl = \"ws://bob:pa55@host:99999/\"\n", &[]);
    assert!(p.contains("gateway.url") && !p.contains("pa55"), "{p}");
}

#[test]
fn non_loopback_listen_needs_a_token() {
    let p = problems("[http]\nlisten = \"0.0.0.0:18800\"\n", &[]);
    assert!(
        p.contains(
            "http.token: required when http.listen (0.0.0.0:18800) is not a loopback address"
        ),
        "{p}"
    );
    assert!(load("[http]\nlisten = \"0.0.0.0:18800\"\ntoken = \"t\"\n", &[]).is_ok());
}

#[test]
fn backoff_bounds_and_log_values() {
    let p = problems("[reconnect]\ninitial_ms = 500\nmax_ms = 100\n", &[]);
    assert!(
        p.contains("reconnect.max_ms: maximum delay (100 ms) must not be below"),
        "{p}"
    );
    let p = problems("[log]\nformat = \"xml\"\n", &[]);
    assert!(
        p.contains("log.format: \"xml\" is not allowed; use json or pretty"),
        "{p}"
    );
    let p = problems("[gateway]\nscopes = [\"operator.read\", \"root\"]\n", &[]);
    assert!(p.contains("\"root\" is not a scope"), "{p}");
}

#[test]
fn a_syntax_error_names_the_place_not_the_secret() {
    let p = problems("[gateway]\ntoken = \"s3cr3t-TOKEN-value\n[http]\n", &[]);
    assert!(p.contains("TOML syntax error at line 2"), "{p}");
    assert!(!p.contains("s3cr3t"), "{p}");
}

#[test]
fn state_dir_fallbacks() {
    let s = load(
        "",
        &[("STATE_DIRECTORY", "/var/lib/openclaw-bridge:/other")],
    )
    .unwrap();
    assert_eq!(s.state.dir, PathBuf::from("/var/lib/openclaw-bridge"));
    let s = load("", &[("XDG_STATE_HOME", "/home/u/.local/state")]).unwrap();
    assert_eq!(
        s.state.dir,
        PathBuf::from("/home/u/.local/state/openclaw-bridge")
    );
}

#[test]
fn redacted_toml_hides_every_secret() {
    let s = load(
        "[gateway]\ntoken = \"gw-secret-1\"\n[http]\ntoken = \"http-secret-2\"\n",
        &[],
    )
    .unwrap();
    let out = s.to_redacted_toml();
    assert!(
        !out.contains("gw-secret-1") && !out.contains("http-secret-2"),
        "{out}"
    );
    assert_eq!(out.matches("\"<redacted>\"").count(), 2, "{out}");
    assert!(out.contains("url = \"ws://127.0.0.1:18789/\""), "{out}");
    // The output is itself a valid config.
    assert!(toml::from_str::<toml::Table>(&out).is_ok());
    assert!(!format!("{s:?}").contains("gw-secret-1"));
}

#[test]
fn nats_is_off_by_default_and_validated() {
    assert!(load("", &[]).unwrap().nats.is_none());
    let s = load("[nats]\nurl = \"nats://127.0.0.1:4222\"\n", &[]).unwrap();
    let n = s.nats.as_ref().unwrap();
    assert_eq!(n.stream, "OPENCLAW");
    assert_eq!(n.subject_prefix, "openclaw");
    assert_eq!(n.max_age, Duration::from_secs(86_400));
    assert_eq!(n.max_bytes, 1 << 30);
    assert_eq!(n.kv_bucket, "openclaw_agents");
    assert_eq!(n.buffer, 10_000);
    assert_eq!(n.duplicate_window, Duration::from_secs(120));
    assert!(!n.rpc, "RPC over NATS is opt-in");
    assert!(n.rpc_methods.iter().any(|m| m == "agents.list"));
    for write in [
        "agent",
        "chat.send",
        "chat.abort",
        "agent.wait",
        "wake",
        "sessions.subscribe",
    ] {
        assert!(
            !n.rpc_methods.iter().any(|m| m == write),
            "{write} is not a read method"
        );
    }
    let s = load(
        "[nats]\nurl = \"nats://127.0.0.1:4222\"\nrpc = true\nrpc_methods = [\"health\", \"agent\"]\nduplicate_window_s = 30\n",
        &[],
    )
    .unwrap();
    let n = s.nats.as_ref().unwrap();
    assert!(n.rpc);
    assert_eq!(n.rpc_methods, ["health", "agent"]);
    assert_eq!(n.duplicate_window, Duration::from_secs(30));
    let out = s.to_redacted_toml();
    assert!(out.contains("duplicate_window_s = 30"), "{out}");
    let s = load(
        "[nats]\nurl = \"nats://127.0.0.1:4222\"\nuser = \"bridge\"\n",
        &[("OPENCLAW_BRIDGE__NATS__PASSWORD", "nats-pw-7")],
    )
    .unwrap();
    let n = s.nats.as_ref().unwrap();
    assert_eq!(
        n.user.as_ref().map(|(u, p)| (u.as_str(), p.expose())),
        Some(("bridge", "nats-pw-7"))
    );
    let out = s.to_redacted_toml();
    assert!(
        !out.contains("nats-pw-7") && out.contains("user = \"bridge\""),
        "{out}"
    );
    let p = problems(
        "[nats]\nurl = \"nats://127.0.0.1:4222\"\nuser = \"bridge\"\n",
        &[],
    );
    assert!(
        p.contains("nats.password: is required with nats.user"),
        "{p}"
    );
    let p = problems(
        "[nats]\nurl = \"nats://127.0.0.1:4222\"\nrpc = \"maybe\"\nmax_age_s = 60\nduplicate_window_s = 120\n",
        &[],
    );
    assert!(
        p.contains("nats.rpc: is not allowed; use true or false"),
        "{p}"
    );
    assert!(
        p.contains("nats.duplicate_window_s: must not be longer than nats.max_age_s"),
        "{p}"
    );
    let s = load(
        "[nats]\nurl = \"nats://127.0.0.1:4222\"\ntoken = \"nats-secret-3\"\n",
        &[],
    )
    .unwrap();
    let out = s.to_redacted_toml();
    assert!(!out.contains("nats-secret-3"), "{out}");
    assert!(out.contains("[nats]"), "{out}");
    let p = problems(
        "[nats]\nurl = \"http://x\"\nsubject_prefix = \"a.*\"\ngateway_id = \"a.b\"\nstream = \"A B\"\nbuffer = 0\nbogus = 1\n",
        &[],
    );
    for want in [
        "nats.url: \"http://x\" is not allowed",
        "nats.subject_prefix: \"a.*\" is not allowed",
        // The gateway's id names it in subjects now (gateway.id / [[gateways]] id).
        "nats.gateway_id: was replaced by the gateway's own id: set gateway.id",
        "nats.stream: \"A B\" is not allowed",
        "nats.buffer: \"0\" is not allowed",
        "nats.bogus: unknown key",
    ] {
        assert!(p.contains(want), "{want} in {p}");
    }
    let p = problems("[nats]\nstream = \"X\"\n", &[]);
    assert!(p.contains("nats.url: is required"), "{p}");
}

#[test]
fn a_single_gateway_is_default_and_can_be_named() {
    let s = load("", &[]).unwrap();
    assert_eq!(s.gateways.len(), 1);
    assert_eq!(s.gateways[0].id, "default");
    assert!(s.gateways[0].required);
    assert_eq!(s.primary().map(|g| g.id.as_str()), Some("default"));
    assert!(!s.multi_gateway());
    let s = load("[gateway]\nid = \"eu-1\"\n", &[]).unwrap();
    assert_eq!(s.gateways[0].id, "eu-1");
    // The only gateway is the primary one whatever its id.
    assert_eq!(s.primary().map(|g| g.id.as_str()), Some("eu-1"));
    let p = problems("[gateway]\nid = \"a.b\"\n", &[]);
    assert!(
        p.contains("gateway.id: \"a.b\" is not allowed; use 1 to 64 letters"),
        "{p}"
    );
    assert!(problems("[gateway]\nid = \"rpc\"\n", &[]).contains("gateway.id"));
}

#[test]
fn gateways_entries_take_defaults_from_gateway() {
    let toml = "[gateway]\nscopes = [\"operator.read\"]\ntoken = \"shared-1\"\n\
        [[gateways]]\nid = \"default\"\nurl = \"ws://127.0.0.1:1001/\"\n\
        [[gateways]]\nid = \"eu-1\"\nurl = \"ws://127.0.0.1:1002/\"\ntoken = \"own-2\"\nrequired = false\nrequest_timeout_ms = 7\n";
    let s = load(toml, &[]).unwrap();
    assert_eq!(s.gateways.len(), 2);
    let (a, b) = (&s.gateways[0], &s.gateways[1]);
    assert_eq!(
        (a.id.as_str(), a.url.as_str()),
        ("default", "ws://127.0.0.1:1001/")
    );
    assert_eq!(
        (b.id.as_str(), b.url.as_str()),
        ("eu-1", "ws://127.0.0.1:1002/")
    );
    assert_eq!(a.scopes, vec!["operator.read"]);
    assert_eq!(b.scopes, vec!["operator.read"]);
    assert_eq!(a.token.as_ref().unwrap().expose(), "shared-1");
    assert_eq!(b.token.as_ref().unwrap().expose(), "own-2");
    assert!(a.required && !b.required);
    assert_eq!(a.request_timeout, Duration::from_millis(30_000));
    assert_eq!(b.request_timeout, Duration::from_millis(7));
    assert!(s.multi_gateway());
    assert_eq!(s.primary().map(|g| g.id.as_str()), Some("default"));
    // check-config shows every entry, secrets redacted, and reads back the same.
    let out = s.to_redacted_toml();
    assert!(out.contains("[[gateways]]"), "{out}");
    assert!(!out.contains("own-2") && !out.contains("shared-1"), "{out}");
    let back: toml::Table = toml::from_str(&out).unwrap();
    assert_eq!(back["gateways"].as_array().unwrap().len(), 2);
    // Without an entry called default there is no primary.
    let s = load(&toml.replace("id = \"default\"", "id = \"us-1\""), &[]).unwrap();
    assert!(s.primary().is_none());
}

#[test]
fn bad_gateways_entries_are_each_named() {
    let p = problems(
        "[gateway]\nurl = \"ws://127.0.0.1:9/\"\n\
         [[gateways]]\nurl = \"ws://127.0.0.1:1/\"\n\
         [[gateways]]\nid = \"a\"\n\
         [[gateways]]\nid = \"b\"\nurl = \"http://x/\"\nurll = 1\n\
         [[gateways]]\nid = \"b\"\nurl = \"ws://127.0.0.1:2/\"\n\
         [[gateways]]\nid = \"c d\"\nurl = \"ws://127.0.0.1:3/\"\nrequired = \"maybe\"\n",
        &[
            ("OPENCLAW_GATEWAY_URL", "ws://127.0.0.1:5/"),
            ("OPENCLAW_GATEWAY_TOKEN", "one-gateways-secret"),
        ],
    );
    assert!(!p.contains("one-gateways-secret"), "{p}");
    for want in [
        "gateways[0].id: is required",
        "gateways[1].url: is required",
        "gateways[2].url: \"http://x/\" is an HTTP URL",
        "gateways[2].urll: unknown key; keys of [[gateways]]",
        "gateways[3].id: \"b\" is used by another [[gateways]] entry",
        "gateways[4].id: \"c d\" is not allowed",
        "gateway.url: is not used when [[gateways]] entries are present",
        "OPENCLAW_GATEWAY_URL: applies to a single [gateway] only",
        "OPENCLAW_GATEWAY_TOKEN: applies to a single [gateway] only",
    ] {
        assert!(p.contains(want), "{want} in {p}");
    }
    let p = problems(
        "[[gateways]]\nid = \"x\"\nurl = \"ws://127.0.0.1:3/\"\nrequired = \"maybe\"\n",
        &[],
    );
    assert!(
        p.contains("gateways[0].required: is not allowed; use true or false"),
        "{p}"
    );
}
