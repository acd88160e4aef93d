//! systemd notifications: the daemon, started the way systemd starts a
//! `Type=notify` unit with `WatchdogSec=` (`NOTIFY_SOCKET`, `WATCHDOG_USEC`),
//! says `READY=1`, `STATUS=…` and `WATCHDOG=1`, and on SIGTERM `STOPPING=1`
//! before exiting 0.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Generous for a loaded 2-core CI machine; a healthy start takes well under 1 s.
const T: Duration = Duration::from_secs(15);

/// Kills the daemon if the test fails before it stops by itself.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What systemd's end of `NOTIFY_SOCKET` received: one entry per line.
struct Listener {
    sock: UnixDatagram,
    lines: Vec<String>,
}

impl Listener {
    fn bind(path: &Path) -> Listener {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set read timeout");
        Listener {
            sock,
            lines: Vec::new(),
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            self.lines
                .extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        }
    }

    /// Wait until a received line satisfies `pred`.
    fn wait_for(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.lines.iter().any(|l| pred(l)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.drain();
        }
    }
}

#[test]
fn daemon_sends_ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut notify = Listener::bind(&dir.path().join("notify.sock"));
    // A gateway address nobody listens on: the daemon must still become
    // READY (its HTTP API is up) and report that it is reconnecting.
    let gateway_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log_path = dir.path().join("daemon.log");
    let log = File::create(&log_path).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
        .arg("run")
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .env("OPENCLAW_BRIDGE__HTTP__LISTEN", "127.0.0.1:0")
        .env(
            "OPENCLAW_GATEWAY_URL",
            format!("ws://127.0.0.1:{gateway_port}/"),
        )
        .env("OPENCLAW_GATEWAY_TOKEN", "notify-test-gateway-token")
        .env("OPENCLAW_BRIDGE__STATE__DIR", dir.path().join("state"))
        .env("OPENCLAW_BRIDGE__LOG__FORMAT", "json")
        .env_remove("STATE_DIRECTORY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start openclaw-bridge");
    let mut daemon = Daemon(child);
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    assert!(
        notify.wait_for(T, |l| l == "READY=1"),
        "no READY=1; got {:?}\nlogs:\n{}",
        notify.lines,
        logs()
    );
    assert!(
        notify.wait_for(T, |l| l.starts_with("STATUS=") && l.len() > "STATUS=".len()),
        "no STATUS=; got {:?}\nlogs:\n{}",
        notify.lines,
        logs()
    );
    // WATCHDOG_USEC=2 s: a ping at least every second once running.
    assert!(
        notify.wait_for(T, |l| l == "WATCHDOG=1"),
        "no WATCHDOG=1; got {:?}\nlogs:\n{}",
        notify.lines,
        logs()
    );

    let pid = daemon.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -TERM {pid} failed");
    let deadline = Instant::now() + T;
    let status = loop {
        match daemon.0.try_wait().expect("wait for the daemon") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                panic!("no exit within {T:?} of SIGTERM\nlogs:\n{}", logs())
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    assert_eq!(status.code(), Some(0), "logs:\n{}", logs());
    assert!(
        notify.wait_for(Duration::from_secs(1), |l| l == "STOPPING=1"),
        "no STOPPING=1; got {:?}\nlogs:\n{}",
        notify.lines,
        logs()
    );
}
