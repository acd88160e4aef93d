//! The command line (`../shared/CONTRACT.md`, "Binary and CLI").
//!
//! Exit codes: 0 success / clean shutdown, 1 runtime failure, 2 usage or
//! configuration error, 3 could not reach or authenticate to the gateway.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use actix::prelude::Actor;
use clap::{Parser, Subcommand};

use crate::actors::messages::{RequestError, Send};
use crate::actors::supervisor::{Mode, Outputs, ReadyError, Shutdown, Supervisor, WaitReady};
use crate::config::{ConfigErrors, GatewaySettings, Settings};
use crate::telemetry::{self, events as ev};
use crate::{supervisor_config, Application, GatewayStack};

pub const EXIT_OK: u8 = 0;
pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;
pub const EXIT_GATEWAY: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "openclaw-bridge",
    version,
    about = "Keeps Control Center connected to an OpenClaw gateway"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration file (TOML), applied over /etc/openclaw-bridge/config.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration and print it (secrets redacted).
    CheckConfig,
    /// Send one request over a fresh gateway session and print the answer.
    Call {
        /// Gateway method, e.g. agents.list.
        method: String,
        /// Parameters as a JSON object.
        params: Option<String>,
        /// Wait past an `accepted` answer for the final one (method `agent`).
        #[arg(long = "final")]
        wait_final: bool,
        /// Seconds to wait for the connection and for the answer each.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// Which gateway (its id) when several are configured; default: the
        /// one with id `default`, or the only one.
        #[arg(long, value_name = "ID")]
        gateway: Option<String>,
    },
    /// Device identity (for gateways that are not on loopback).
    Identity {
        #[command(subcommand)]
        action: IdentityAction,
    },
    /// Ask a running daemon whether it is ready (GET /readyz); exit 0 if so.
    Healthcheck {
        /// Default: http://<http.listen>/readyz.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentityAction {
    /// Device id, public key, key file, whether a device token is stored.
    Show,
}

/// Parse the command line and run it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(run(cli))
}

fn load(config: Option<PathBuf>) -> Result<Settings, u8> {
    Settings::load(config).map_err(|errors| {
        report_config_errors(&errors);
        EXIT_CONFIG
    })
}

fn report_config_errors(errors: &ConfigErrors) {
    // Logging may not be set up (the log settings may be what is wrong):
    // one JSON line per problem on stderr, with the contract's event name.
    for e in &errors.0 {
        let line = serde_json::json!({
            "level": "ERROR", "event": ev::CONFIG_INVALID, "key": e.key, "problem": e.problem,
            "message": format!("invalid configuration: {e}"),
        });
        eprintln!("{line}");
    }
}

/// The gateway `--gateway ID` names, else the primary one.
fn pick_gateway<'a>(settings: &'a Settings, id: Option<&str>) -> Result<&'a GatewaySettings, u8> {
    let ids = || {
        settings
            .gateways
            .iter()
            .map(|g| g.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match id {
        Some(id) => settings.gateway(id).ok_or_else(|| {
            eprintln!("openclaw-bridge: no gateway {id:?} is configured; ids: {}", ids());
            EXIT_CONFIG
        }),
        None => settings.primary().ok_or_else(|| {
            eprintln!(
                "openclaw-bridge: several gateways are configured; choose one with --gateway ID (ids: {})",
                ids()
            );
            EXIT_CONFIG
        }),
    }
}

pub fn run(cli: Cli) -> u8 {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => match load(cli.config.clone()) {
            Ok(s) => run_daemon(s, cli.config),
            Err(code) => code,
        },
        Command::CheckConfig => match load(cli.config) {
            Ok(s) => {
                print!("{}", s.to_redacted_toml());
                EXIT_OK
            }
            Err(code) => code,
        },
        Command::Call {
            method,
            params,
            wait_final,
            timeout,
            gateway,
        } => {
            let settings = match load(cli.config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let gateway = match pick_gateway(&settings, gateway.as_deref()) {
                Ok(g) => g.clone(),
                Err(code) => return code,
            };
            let params = match params
                .as_deref()
                .map(serde_json::from_str::<serde_json::Value>)
            {
                None => None,
                Some(Ok(v)) if v.is_object() => Some(v),
                Some(_) => {
                    eprintln!("openclaw-bridge: PARAMS_JSON must be a JSON object, e.g. '{{\"agentId\":\"main\"}}'");
                    return EXIT_CONFIG;
                }
            };
            let timeout = match timeout {
                None => None,
                Some(t) if t.is_finite() && t > 0.0 && t <= 86_400.0 => {
                    Some(Duration::from_secs_f64(t))
                }
                Some(_) => {
                    eprintln!("openclaw-bridge: --timeout must be a number of seconds above 0");
                    return EXIT_CONFIG;
                }
            };
            call(settings, &gateway, method, params, wait_final, timeout)
        }
        Command::Identity {
            action: IdentityAction::Show,
        } => match load(cli.config) {
            Ok(s) => identity_show(&s),
            Err(code) => code,
        },
        Command::Healthcheck { url } => {
            let settings = match load(cli.config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            healthcheck(&settings, url)
        }
    }
}

fn run_daemon(settings: Settings, config_path: Option<PathBuf>) -> u8 {
    telemetry::init(&settings.log, false);
    let settings_now = settings.clone();
    let system = actix_rt::System::new();
    let code = system.block_on(async move {
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => {
                let key = e.key();
                tracing::error!(event = ev::CONFIG_INVALID, key, problem = %e, "cannot start: {e}");
                return EXIT_CONFIG;
            }
        };
        let stopper = app.stopper();
        let gateways = app.gateways.clone();
        // The HTTP server is bound: tell systemd (no-op without NOTIFY_SOCKET).
        crate::notify::ready();
        let watchdog = crate::notify::spawn_watchdog(
            app.gateways
                .iter()
                .map(|g| (g.id.clone(), g.supervisor.clone()))
                .collect(),
        );
        let stopping = actix_rt::spawn(async move {
            wait_for_signals(gateways, config_path, settings_now).await;
            crate::notify::stopping();
            if let Some(w) = watchdog {
                w.abort();
            }
            stopper.stop().await;
        });
        let served = app.run_until_stopped().await;
        // The server future ends as soon as it is told to stop: wait for the
        // rest of the stop sequence (the store flush) before exiting.
        let _ = stopping.await;
        match served {
            Ok(()) => {
                tracing::info!(event = ev::BRIDGE_STOPPED, "openclaw-bridge stopped");
                EXIT_OK
            }
            Err(e) => {
                tracing::error!("{e}");
                EXIT_RUNTIME
            }
        }
    });
    code
}

/// Return on SIGTERM or SIGINT. SIGHUP reloads the configuration (see
/// [`reload`]) and retries a parked or waiting link at once.
async fn wait_for_signals(
    gateways: Vec<GatewayStack>,
    config_path: Option<PathBuf>,
    mut current: Settings,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!(event = ev::BRIDGE_STOPPING, signal = "SIGTERM", "stopping"); return; }
            _ = int.recv() => { tracing::info!(event = ev::BRIDGE_STOPPING, signal = "SIGINT", "stopping"); return; }
            _ = hup.recv() => {
                if let Some(next) = reload(&current, config_path.clone(), &gateways) {
                    current = next;
                }
                for g in &gateways {
                    g.supervisor.do_send(crate::actors::supervisor::RetryNow);
                }
            }
        }
    }
}

/// Re-read every configuration layer (token files included). Applied at run
/// time: gateway tokens and connection settings (from the next connection
/// attempt on), reconnect bounds, log level. `http.*`, `state.*` and
/// `events.*` need a restart; a change there is logged. An invalid new
/// configuration is reported and the running one kept.
fn reload(
    current: &Settings,
    config_path: Option<PathBuf>,
    gateways: &[GatewayStack],
) -> Option<Settings> {
    let next = match Settings::load(config_path) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(event = ev::CONFIG_INVALID, key = %e.key, problem = %e.problem, "SIGHUP: the new configuration is invalid; keeping the running one");
            }
            return None;
        }
    };
    let mut changed: Vec<String> = Vec::new();
    let mut restart_needed: Vec<String> = Vec::new();
    let multi = gateways.len() > 1 || next.multi_gateway();
    // Compared for the gateways that run: a gateway added or removed since
    // the start needs a restart, however many reloads ago that was.
    for stack in gateways {
        let (Some(g), Some(n)) = (current.gateway(&stack.id), next.gateway(&stack.id)) else {
            continue;
        };
        let name = |what: &str| {
            if multi {
                format!("{what} ({})", g.id)
            } else {
                what.to_owned()
            }
        };
        if g.token != n.token {
            changed.push(name("gateway.token"));
        }
        if g.url != n.url {
            changed.push(name("gateway.url"));
        }
        if g.scopes != n.scopes
            || g.client_id != n.client_id
            || g.client_mode != n.client_mode
            || g.display_name != n.display_name
        {
            changed.push(name("gateway client/scopes"));
        }
        if g.request_timeout != n.request_timeout || g.handshake_timeout != n.handshake_timeout {
            changed.push(name("gateway timeouts"));
        }
        if stack.required != n.required {
            restart_needed.push(name("gateway.required"));
        }
    }
    let same_ids = gateways.len() == next.gateways.len()
        && gateways.iter().all(|s| next.gateway(&s.id).is_some());
    let (r, m) = (&current.reconnect, &next.reconnect);
    if r.backoff != m.backoff || r.stable_after != m.stable_after || r.park_retry != m.park_retry {
        changed.push("reconnect".into());
    }
    if current.log.level != next.log.level {
        match telemetry::set_level(&next.log.level) {
            Ok(()) => changed.push("log.level".into()),
            Err(e) => tracing::warn!("SIGHUP: log.level not changed: {e}"),
        }
    }
    restart_needed.extend(
        [
            ("http.listen", current.http.listen != next.http.listen),
            ("http.token", current.http.token != next.http.token),
            ("state.dir", current.state.dir != next.state.dir),
            (
                "events",
                current.events.buffer != next.events.buffer
                    || current.events.subscriber_queue != next.events.subscriber_queue,
            ),
            ("log.format", current.log.format != next.log.format),
            ("gateways added or removed", !same_ids),
            ("nats", nats_changed(current, &next)),
        ]
        .into_iter()
        .filter_map(|(k, c)| c.then_some(k.to_owned())),
    );
    // Every running gateway's new settings must be usable before any is applied.
    let mut apply = Vec::new();
    for stack in gateways {
        let Some(g) = next.gateway(&stack.id) else {
            continue;
        };
        match supervisor_config(&next, g, Mode::Daemon) {
            Ok(cfg) => apply.push((stack.supervisor.clone(), cfg)),
            Err(e) => {
                tracing::error!(gateway = %stack.id, event = ev::CONFIG_INVALID, key = e.key(), problem = %e, "SIGHUP: keeping the running configuration");
                return None;
            }
        }
    }
    for (supervisor, cfg) in apply {
        supervisor.do_send(crate::actors::supervisor::Reconfigure(cfg));
    }
    tracing::info!(event = ev::CONFIG_RELOADED, changed = %changed.join(", "), restart_needed = %restart_needed.join(", "), "SIGHUP: configuration reloaded");
    Some(next)
}

/// Whether `[nats]` differs (applied at the next start only).
fn nats_changed(a: &Settings, b: &Settings) -> bool {
    match (&a.nats, &b.nats) {
        (None, None) => false,
        (Some(x), Some(y)) => {
            x.url != y.url
                || x.stream != y.stream
                || x.subject_prefix != y.subject_prefix
                || x.kv_bucket != y.kv_bucket
                || x.max_age != y.max_age
                || x.max_bytes != y.max_bytes
                || x.buffer != y.buffer
                || x.token != y.token
                || x.credentials_file != y.credentials_file
        }
        _ => true,
    }
}

fn call(
    settings: Settings,
    gateway: &GatewaySettings,
    method: String,
    params: Option<serde_json::Value>,
    wait_final: bool,
    timeout: Option<Duration>,
) -> u8 {
    // Logs to stderr, quiet by default: stdout is the answer only.
    let mut log = settings.log.clone();
    if std::env::var_os("RUST_LOG").is_none() && log.level == "info" {
        log.level = "warn".into();
    }
    telemetry::init(&log, true);
    let connect_timeout = timeout.unwrap_or(gateway.request_timeout);
    let url = gateway.url.clone();
    let system = actix_rt::System::new();
    system.block_on(async move {
        let cfg = match supervisor_config(&settings, gateway, Mode::FailFast) {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!("openclaw-bridge: {e}");
                return EXIT_CONFIG;
            }
        };
        let sup = Supervisor::new(cfg, Outputs::default()).start();
        let ready = sup
            .send(WaitReady {
                timeout: connect_timeout,
            })
            .await;
        let code = match ready {
            Ok(Ok(())) => {
                let mut msg = Send::new(method, params).expect_final(wait_final);
                msg.timeout = timeout;
                match sup.send(msg).await {
                    Ok(Ok(payload)) => {
                        let pretty = serde_json::from_str::<serde_json::Value>(payload.get())
                            .ok()
                            .and_then(|v| serde_json::to_string_pretty(&v).ok())
                            .unwrap_or_else(|| payload.get().to_owned());
                        println!("{pretty}");
                        EXIT_OK
                    }
                    Ok(Err(e)) => {
                        print_error(&e.to_value());
                        match e {
                            RequestError::NotConnected { .. }
                            | RequestError::Disconnected { .. } => EXIT_GATEWAY,
                            _ => EXIT_RUNTIME,
                        }
                    }
                    Err(_) => EXIT_RUNTIME,
                }
            }
            Ok(Err(ReadyError::Failed(cause))) => {
                let mut obj = serde_json::json!({"code": cause.code(), "message": cause.message()});
                if let crate::actors::messages::DisconnectCause::Rejected { error } = &cause {
                    obj = error.to_value();
                }
                if let crate::actors::messages::RetryClass::Park { action, .. } =
                    cause.retry_class()
                {
                    eprintln!(
                        "openclaw-bridge: could not connect to {}: {}\nwhat to do: {action}",
                        url,
                        cause.message()
                    );
                } else {
                    eprintln!(
                        "openclaw-bridge: could not connect to {}: {}",
                        url,
                        cause.message()
                    );
                }
                print_error(&obj);
                EXIT_GATEWAY
            }
            Ok(Err(e)) => {
                eprintln!("openclaw-bridge: could not connect to {url}: {e}");
                EXIT_GATEWAY
            }
            Err(_) => EXIT_RUNTIME,
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), sup.send(Shutdown)).await;
        code
    })
}

fn identity_show(settings: &Settings) -> u8 {
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
                let token = match store.load(&g.url, crate::ROLE) {
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

fn print_error(obj: &serde_json::Value) {
    eprintln!(
        "{}",
        serde_json::to_string_pretty(obj).unwrap_or_else(|_| obj.to_string())
    );
}

fn healthcheck(settings: &Settings, url: Option<String>) -> u8 {
    let url = url.unwrap_or_else(|| {
        let mut addr = settings.http.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{addr}/readyz")
    });
    let system = actix_rt::System::new();
    system.block_on(async move {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(5))
            .finish();
        match client.get(url.as_str()).send().await {
            Ok(mut res) => {
                let body = res.body().await.unwrap_or_default();
                let text = String::from_utf8_lossy(&body);
                if res.status().is_success() {
                    println!("{text}");
                    EXIT_OK
                } else {
                    eprintln!("not ready ({}): {text}", res.status().as_u16());
                    EXIT_RUNTIME
                }
            }
            Err(e) => {
                eprintln!("openclaw-bridge: cannot reach {url}: {e}");
                EXIT_RUNTIME
            }
        }
    })
}
