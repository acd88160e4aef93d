//! systemd service notifications (`sd_notify(3)`) for `Type=notify` units.
//!
//! What the unit in `deploy/systemd/openclaw-bridge.service` relies on:
//! - [`ready`] (`READY=1`) once the HTTP server listens, so `systemctl start`
//!   returns when `/healthz` answers (not when the gateway is up: a daemon
//!   waiting for its gateway is running, and says so in `STATUS=`);
//! - [`status`] (`STATUS=…`), one line with the link state that
//!   `systemctl status` shows, e.g. `connected to ws://127.0.0.1:18789/
//!   (gateway 2026.9.6, protocol 4)`; [`describe`] builds it;
//! - [`watchdog`] (`WATCHDOG=1`), sent by [`watchdog_loop`] only while a probe
//!   through the actor system answers, so a wedged daemon stops pinging and
//!   systemd restarts it (`WatchdogSec=`, `Restart=on-failure`).
//!   [`spawn_watchdog`] runs it with a `GetStatus` round trip to the
//!   `Supervisor` as the probe, refreshing `STATUS=` on the way;
//! - [`stopping`] (`STOPPING=1`) when shutdown begins.
//!
//! Everything here is a no-op without `NOTIFY_SOCKET` (not under systemd, in
//! a container, in tests) and never fails the daemon: a notification that
//! cannot be sent is logged at debug and forgotten.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use sd_notify::NotifyState;

use crate::actors::messages::LinkState;
use crate::actors::supervisor::{GetStatus, Status, Supervisor};

/// systemd shows `STATUS=` on one line; longer text only hides the state.
const STATUS_MAX_CHARS: usize = 200;

/// A ping period below this would be a busy loop, whatever `WATCHDOG_USEC` says.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// How often `STATUS=` is refreshed when systemd runs no watchdog.
const STATUS_PERIOD: Duration = Duration::from_secs(5);

/// Whether systemd (or anything else) asked for notifications.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn send(state: &[NotifyState<'_>]) {
    if !enabled() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1`: start-up is complete (the HTTP server listens).
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// `STATUS=text`: the one-line state `systemctl status` shows. Newlines and
/// control characters become spaces (the protocol is newline-separated), and
/// the text is cut to 200 characters.
pub fn status(text: &str) {
    if !enabled() {
        return;
    }
    let line = status_line(text);
    send(&[NotifyState::Status(&line)]);
}

/// `WATCHDOG=1`: the daemon is alive. Send it through [`watchdog_loop`].
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `STOPPING=1` (with `STATUS=stopping`): shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC` (as
/// `sd_watchdog_enabled(3)` advises), when the watchdog is on and meant for
/// this process (`WATCHDOG_PID`, if set, is ours). `None` otherwise.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| (d / 2).max(MIN_PERIOD))
}

/// Keep systemd informed while the daemon runs, when `NOTIFY_SOCKET` is set:
/// every [`watchdog_interval`] (else every 5 s) ask the `Supervisor` for its
/// [`Status`] — a round trip through the actor system — then send its
/// [`describe`]d `STATUS=` line and, with a watchdog, `WATCHDOG=1`. A wedged
/// `Supervisor` (or a dead one) stops both. Call inside the actix `System`,
/// after [`ready`]; `None` when there is nobody to notify.
pub fn spawn_watchdog(
    supervisors: Vec<(Arc<str>, Addr<Supervisor>)>,
) -> Option<actix_rt::task::JoinHandle<()>> {
    if !enabled() {
        return None;
    }
    let interval = watchdog_interval();
    let period = interval.unwrap_or(STATUS_PERIOD);
    let probe = move || {
        let supervisors = supervisors.clone();
        async move {
            // Every gateway's supervisor must answer; STATUS= names each
            // gateway when there are several.
            let mut parts = Vec::with_capacity(supervisors.len());
            for (id, supervisor) in &supervisors {
                match supervisor.send(GetStatus).await {
                    Ok(s) if supervisors.len() == 1 => parts.push(describe(&s)),
                    Ok(s) => parts.push(format!("{id}: {}", describe(&s))),
                    Err(_) => return false,
                }
            }
            status(&parts.join("; "));
            true
        }
    };
    let ping = move || {
        if interval.is_some() {
            watchdog();
        }
    };
    Some(actix_rt::spawn(watchdog_loop_with(period, probe, ping)))
}

/// Send `WATCHDOG=1` every `period`, but only when `probe()` resolves to
/// `true` within `period`. Runs until dropped.
///
/// The probe should round-trip a message through the actor system (e.g.
/// `GetStatus` to the `Supervisor`): when an actor is wedged the probe times
/// out, the pings stop, and systemd kills and restarts the daemon after
/// `WatchdogSec`. The first probe runs at once.
pub async fn watchdog_loop<F, Fut>(period: Duration, probe: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    watchdog_loop_with(period, probe, watchdog).await
}

/// [`watchdog_loop`] with the ping injected, for tests.
async fn watchdog_loop_with<F, Fut, P>(period: Duration, probe: F, mut ping: P)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
    P: FnMut(),
{
    let period = period.max(MIN_PERIOD);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokio::time::timeout(period, probe()).await {
            Ok(true) => ping(),
            Ok(false) => {
                tracing::warn!("systemd watchdog: health probe failed; WATCHDOG=1 withheld")
            }
            Err(_) => tracing::warn!(
                period_ms = period.as_millis() as u64,
                "systemd watchdog: the actor system did not answer in time; WATCHDOG=1 withheld"
            ),
        }
    }
}

/// The `STATUS=` line for the link state, e.g. `connected to ws://…/
/// (gateway 2026.9.6, protocol 4)`, `reconnecting to ws://…/ in 1.2 s after
/// 3 failed attempts (last error: …)`, `parked: … — what to do: …`.
pub fn describe(s: &Status) -> String {
    let error = s
        .last_error
        .as_ref()
        .map(|e| (e.message.as_str(), e.action.as_deref()));
    describe_parts(
        s.state,
        &s.gateway.url,
        s.gateway.server_version.as_deref(),
        s.gateway.protocol,
        s.next_attempt_in_ms,
        s.attempt,
        error,
    )
}

fn describe_parts(
    state: LinkState,
    url: &str,
    server_version: Option<&str>,
    protocol: Option<u32>,
    next_attempt_in_ms: Option<u64>,
    attempt: u32,
    error: Option<(&str, Option<&str>)>,
) -> String {
    let last_error = error.map(|(m, _)| m);
    match state {
        LinkState::Connected => {
            let version = server_version.unwrap_or("unknown version");
            match protocol {
                Some(p) => format!("connected to {url} (gateway {version}, protocol {p})"),
                None => format!("connected to {url} (gateway {version})"),
            }
        }
        LinkState::Connecting => match last_error {
            Some(e) if attempt > 0 => {
                format!(
                    "connecting to {url} after {} (last error: {e})",
                    failed(attempt)
                )
            }
            _ => format!("connecting to {url}"),
        },
        LinkState::Backoff => {
            let when = next_attempt_in_ms
                .map(|ms| format!(" in {:.1} s", ms as f64 / 1000.0))
                .unwrap_or_default();
            match last_error {
                Some(e) => format!(
                    "reconnecting to {url}{when} after {} (last error: {e})",
                    failed(attempt)
                ),
                None => format!("reconnecting to {url}{when} after {}", failed(attempt)),
            }
        }
        LinkState::Parked => match error {
            Some((m, Some(action))) => format!("parked: {m} — what to do: {action}"),
            Some((m, None)) => format!("parked: {m}"),
            None => format!("parked: cannot connect to {url}"),
        },
        LinkState::Stopping => "stopping".to_owned(),
    }
}

fn failed(attempts: u32) -> String {
    match attempts {
        1 => "1 failed attempt".to_owned(),
        n => format!("{n} failed attempts"),
    }
}

/// One line, printable, at most [`STATUS_MAX_CHARS`] characters.
fn status_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(STATUS_MAX_CHARS + 1)
        .collect();
    if line.chars().count() > STATUS_MAX_CHARS {
        line = line.chars().take(STATUS_MAX_CHARS - 1).collect();
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn status_line_is_one_printable_line_within_bounds() {
        assert_eq!(status_line("a\nb\r\tc"), "a b  c");
        assert_eq!(status_line("short"), "short");
        let long = "x".repeat(500);
        let cut = status_line(&long);
        assert_eq!(cut.chars().count(), STATUS_MAX_CHARS);
        assert!(cut.ends_with('…'));
        let exact = "é".repeat(STATUS_MAX_CHARS);
        assert_eq!(status_line(&exact), exact);
    }

    #[test]
    fn describe_names_the_state_and_what_to_do() {
        let url = "ws://127.0.0.1:18789/";
        assert_eq!(
            describe_parts(
                LinkState::Connected,
                url,
                Some("2026.9.6"),
                Some(4),
                None,
                0,
                None
            ),
            "connected to ws://127.0.0.1:18789/ (gateway 2026.9.6, protocol 4)"
        );
        assert_eq!(
            describe_parts(LinkState::Connecting, url, None, None, None, 0, None),
            "connecting to ws://127.0.0.1:18789/"
        );
        assert_eq!(
            describe_parts(
                LinkState::Backoff,
                url,
                None,
                None,
                Some(1234),
                3,
                Some(("connection refused", None))
            ),
            "reconnecting to ws://127.0.0.1:18789/ in 1.2 s after 3 failed attempts (last error: connection refused)"
        );
        assert_eq!(
            describe_parts(
                LinkState::Connecting,
                url,
                None,
                None,
                None,
                1,
                Some(("connection refused", None))
            ),
            "connecting to ws://127.0.0.1:18789/ after 1 failed attempt (last error: connection refused)"
        );
        let parked = describe_parts(
            LinkState::Parked,
            url,
            None,
            None,
            Some(60_000),
            1,
            Some((
                "gateway token mismatch",
                Some("set gateway.token, then send SIGHUP"),
            )),
        );
        assert_eq!(
            parked,
            "parked: gateway token mismatch — what to do: set gateway.token, then send SIGHUP"
        );
        assert_eq!(
            describe_parts(LinkState::Stopping, url, None, None, None, 0, None),
            "stopping"
        );
    }

    /// Count pings over a window of `periods` watchdog periods.
    async fn pings_with<F, Fut>(period: Duration, periods: u32, probe: F) -> usize
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let count = Rc::new(Cell::new(0usize));
        let c = count.clone();
        let run = watchdog_loop_with(period, probe, move || c.set(c.get() + 1));
        let _ = tokio::time::timeout(period * periods, run).await;
        count.get()
    }

    #[actix_rt::test]
    async fn pings_only_while_the_probe_answers_true_in_time() {
        let period = Duration::from_millis(40);
        let healthy = pings_with(period, 5, || async { true }).await;
        assert!((2..=6).contains(&healthy), "healthy pings: {healthy}");

        let unhealthy = pings_with(period, 5, || async { false }).await;
        assert_eq!(unhealthy, 0);

        // A wedged actor system: the probe never resolves.
        let wedged = pings_with(period, 5, std::future::pending::<bool>).await;
        assert_eq!(wedged, 0);

        // Slower than the period counts as wedged too.
        let slow = pings_with(period, 5, || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            true
        })
        .await;
        assert_eq!(slow, 0);
    }

    #[test]
    fn nothing_is_sent_without_notify_socket() {
        // The test process has no NOTIFY_SOCKET (cargo test is not a
        // systemd service); these must return quietly.
        if enabled() {
            return;
        }
        ready();
        status("x");
        watchdog();
        stopping();
    }
}
