//! `call`: one request over a fresh session that gives up at the first
//! final failure. Only the answer goes to stdout, so it can be piped; errors
//! go to stderr, the gateway's error object as JSON.

use std::time::Duration;

use actix::prelude::Actor;

use super::{EXIT_CONFIG, EXIT_GATEWAY, EXIT_OK, EXIT_RUNTIME};
use crate::actors::messages::{Answer, RequestError, Rpc, RunFailure, Send};
use crate::actors::supervisor::{Mode, Outputs, ReadyError, Shutdown, Supervisor, WaitReady};
use crate::app::supervisor_config;
use crate::config::{GatewaySettings, Settings};
use crate::telemetry;

pub(super) fn call(
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
                match sup.send(Rpc(msg)).await {
                    Ok(Ok(Answer {
                        payload,
                        reattached,
                    })) => {
                        if reattached {
                            // stdout stays the payload alone (pipes).
                            eprintln!("openclaw-bridge: reattached: the link dropped after the run was accepted; this is the run's outcome from agent.wait");
                        }
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
                            | RequestError::Disconnected { .. }
                            | RequestError::Run {
                                failure: RunFailure::Disconnected { .. },
                                ..
                            } => EXIT_GATEWAY,
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

fn print_error(obj: &serde_json::Value) {
    eprintln!(
        "{}",
        serde_json::to_string_pretty(obj).unwrap_or_else(|_| obj.to_string())
    );
}
