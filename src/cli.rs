//! The command line (CONTRACT.md, "Binary and CLI").
//!
//! Exit codes: 0 success / clean shutdown, 1 runtime failure, 2 usage or
//! configuration error, 3 could not reach or authenticate to the gateway.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::Application;
use crate::config::{ConfigErrors, GatewaySettings, Settings};
use crate::telemetry::{self, events as ev};

mod call;
mod identity;
mod signals;

use call::call;
use identity::identity_show;
use signals::{wait_for_signals, Signals};

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
        let signals = Signals::install();
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
        let api_token = app.api_token.clone();
        // The HTTP server is bound: tell systemd (no-op without NOTIFY_SOCKET).
        crate::notify::ready();
        let watchdog = crate::notify::spawn_watchdog(
            app.gateways
                .iter()
                .map(|g| (g.id.clone(), g.supervisor.clone()))
                .collect(),
        );
        let stopping = actix_rt::spawn(async move {
            wait_for_signals(signals, gateways, api_token, config_path, settings_now).await;
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
