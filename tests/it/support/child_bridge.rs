//! The bridge binary as a child process, as operators run it (so it can be
//! SIGKILLed, and so it has its own process-wide metrics recorder).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::app::state_dir;

pub struct ChildBridge {
    child: Child,
    dir: PathBuf,
    /// Where its HTTP API listens (127.0.0.1).
    pub port: u16,
}

impl ChildBridge {
    /// `openclaw-bridge run` on `gateway_url` with a fresh state dir, quick
    /// reconnects, a free HTTP port and `extra` TOML appended (its own
    /// sections, e.g. `[nats]`). Output goes nowhere.
    pub fn start(gateway_url: &str, extra: &str) -> ChildBridge {
        let dir = state_dir();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = dir.join("bridge.toml");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nurl = {gateway_url:?}\nhandshake_timeout_ms = 2000\n\
                 [reconnect]\ninitial_ms = 20\nmax_ms = 300\n\
                 [http]\nlisten = \"127.0.0.1:{port}\"\n[state]\ndir = {:?}\n{extra}",
                dir.display().to_string()
            ),
        )
        .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("OPENCLAW_GATEWAY_TOKEN")
            .env_remove("OPENCLAW_GATEWAY_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the bridge binary starts");
        ChildBridge { child, dir, port }
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildBridge {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
