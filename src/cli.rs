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
use crate::config::{ConfigErrors, Settings};
use crate::telemetry::{self, events as ev};
use crate::{supervisor_config, Application};

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
    },
    /// Ask a running daemon whether it is ready (GET /readyz); exit 0 if so.
    Healthcheck {
        /// Default: http://<http.listen>/readyz.
        #[arg(long)]
        url: Option<String>,
    },
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

pub fn run(cli: Cli) -> u8 {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => match load(cli.config) {
            Ok(s) => run_daemon(s),
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
        } => {
            let settings = match load(cli.config) {
                Ok(s) => s,
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
            call(settings, method, params, wait_final, timeout)
        }
        Command::Healthcheck { url } => {
            let settings = match load(cli.config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            healthcheck(&settings, url)
        }
    }
}

fn run_daemon(settings: Settings) -> u8 {
    telemetry::init(&settings.log, false);
    let system = actix_rt::System::new();
    let code = system.block_on(async move {
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(event = ev::CONFIG_INVALID, key = "http.listen", problem = %e, "cannot start: {e}");
                return EXIT_CONFIG;
            }
        };
        let stopper = app.stopper();
        let supervisor = app.supervisor.clone();
        actix_rt::spawn(async move {
            wait_for_signals(supervisor).await;
            stopper.stop().await;
        });
        match app.run_until_stopped().await {
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

/// Return on SIGTERM or SIGINT; SIGHUP retries a parked or waiting link now.
async fn wait_for_signals(supervisor: actix::Addr<Supervisor>) {
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
            _ = hup.recv() => supervisor.do_send(crate::actors::supervisor::RetryNow),
        }
    }
}

fn call(
    settings: Settings,
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
    let connect_timeout = timeout.unwrap_or(settings.gateway.request_timeout);
    let system = actix_rt::System::new();
    system.block_on(async move {
        let sup = Supervisor::new(
            supervisor_config(&settings, Mode::FailFast),
            Outputs::default(),
        )
        .start();
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
                        settings.gateway.url,
                        cause.message()
                    );
                } else {
                    eprintln!(
                        "openclaw-bridge: could not connect to {}: {}",
                        settings.gateway.url,
                        cause.message()
                    );
                }
                print_error(&obj);
                EXIT_GATEWAY
            }
            Ok(Err(e)) => {
                eprintln!(
                    "openclaw-bridge: could not connect to {}: {e}",
                    settings.gateway.url
                );
                EXIT_GATEWAY
            }
            Err(_) => EXIT_RUNTIME,
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), sup.send(Shutdown)).await;
        code
    })
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
