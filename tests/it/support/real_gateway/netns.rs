//! Two network namespaces joined by a veth pair, for a gateway that must see a
//! non-loopback peer (PROTOCOL.md §8).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::process::run_bounded;

/// The gateway's address in a [`NetnsPair`].
pub const NETNS_GW_ADDR: &str = "10.213.7.1";
/// The client's address in a [`NetnsPair`].
pub const NETNS_CL_ADDR: &str = "10.213.7.2";
/// Name prefix of the namespaces the harness creates (`ocbit-<pid>-<n>-gw`).
const NETNS_PREFIX: &str = "ocbit-";

static NETNS_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Two network namespaces joined only by a veth pair, exactly the recipe of
/// PROTOCOL.md §8 "A non-loopback peer on one machine": `gw` has
/// [`NETNS_GW_ADDR`]/30, `cl` has [`NETNS_CL_ADDR`]/30, `lo` is up in both,
/// and neither has a route beyond the /30, so nothing inside can reach the
/// network. The host's namespace gets no address: **never connect to
/// 10.213.7.x from the test's own namespace** (it would follow the default
/// route off the machine); run clients with [`cl_prefix`](Self::cl_prefix).
///
/// ```ignore
/// let net = match NetnsPair::create() { Ok(n) => n, Err(why) => { eprintln!("skipping: {why}"); return; } };
/// let gw = RealGateway::start(GatewayOptions { netns: Some(net.gw.clone()),
///     bind_custom_host: Some(NETNS_GW_ADDR.into()), ..Default::default() });
/// gw.wait_ready(READY_TIMEOUT);              // probed from inside `gw`
/// // a client: Command::new("nsenter").args(net.cl_prefix()[1..]) …
/// ```
///
/// Drop SIGKILLs every process still in either namespace (they can only be
/// the test's) and deletes both (which deletes the veth pair). Namespaces
/// left by dead test processes are removed by the next [`create`](Self::create).
/// Declare it before the gateway and the clients, so it drops after them.
pub struct NetnsPair {
    /// The gateway's namespace (`/run/netns/<gw>`).
    pub gw: String,
    /// The client's namespace (`/run/netns/<cl>`).
    pub cl: String,
}

impl NetnsPair {
    /// Creates the pair. `Err(reason)` when this machine cannot (not root,
    /// no `ip netns`, no veth): callers print `skipping: <reason>` and return.
    pub fn create() -> Result<NetnsPair, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if uid != "0" {
            return Err(format!(
                "network namespaces need root (uid is {uid:?}); run the tests as root"
            ));
        }
        let nsenter = Command::new("nsenter")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !nsenter.is_ok_and(|s| s.success()) {
            return Err("`nsenter` (util-linux) is not available".into());
        }
        cleanup_stale_netns();
        let pid = std::process::id();
        let n = NETNS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let pair = NetnsPair {
            gw: format!("{NETNS_PREFIX}{pid}-{n}-gw"),
            cl: format!("{NETNS_PREFIX}{pid}-{n}-cl"),
        };
        // veth names: at most 15 bytes; they only exist inside the namespaces.
        let (vg, vc) = (format!("ocb{pid}g{n}"), format!("ocb{pid}c{n}"));
        let ip = |args: &[&str]| -> Result<(), String> {
            let mut cmd = Command::new("ip");
            cmd.args(args);
            match run_bounded(cmd, Duration::from_secs(10)) {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!(
                    "`ip {}` failed ({}): {}",
                    args.join(" "),
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Err(format!("`ip {}`: {e}", args.join(" "))),
            }
        };
        ip(&["netns", "add", &pair.gw])?;
        if let Err(e) = ip(&["netns", "add", &pair.cl]) {
            let _ = ip(&["netns", "del", &pair.gw]);
            return Err(e);
        }
        // From here on, Drop cleans up.
        let (gw, cl) = (pair.gw.as_str(), pair.cl.as_str());
        let gw_cidr = format!("{NETNS_GW_ADDR}/30");
        let cl_cidr = format!("{NETNS_CL_ADDR}/30");
        let steps: [&[&str]; 7] = [
            &[
                "link", "add", &vg, "netns", gw, "type", "veth", "peer", "name", &vc, "netns", cl,
            ],
            &["-n", gw, "addr", "add", &gw_cidr, "dev", &vg],
            &["-n", cl, "addr", "add", &cl_cidr, "dev", &vc],
            &["-n", gw, "link", "set", "lo", "up"],
            &["-n", gw, "link", "set", &vg, "up"],
            &["-n", cl, "link", "set", "lo", "up"],
            &["-n", cl, "link", "set", &vc, "up"],
        ];
        for step in steps {
            ip(step)?;
        }
        Ok(pair)
    }

    /// `nsenter` prefix into the gateway's namespace.
    pub fn gw_prefix(&self) -> Vec<String> {
        nsenter_prefix(&self.gw)
    }

    /// `nsenter` prefix into the client's namespace.
    pub fn cl_prefix(&self) -> Vec<String> {
        nsenter_prefix(&self.cl)
    }

    /// A command run inside namespace `ns` (one of `gw`, `cl`).
    pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program);
        cmd
    }
}

/// Pids of the processes in network namespace `ns` (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every pid `pids()` lists, again every 50 ms until it lists none
/// (for at most 3 s).
pub(super) fn kill_until_gone(pids: impl Fn() -> Vec<u32>) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = pids();
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs everything in `ns` (bounded wait), then `ip netns del`.
fn remove_netns(ns: &str) {
    kill_until_gone(|| netns_pids(ns));
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Removes harness namespaces (`ocbit-<pid>-…`) of test processes that are gone.
fn cleanup_stale_netns() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            remove_netns(name);
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        remove_netns(&self.cl);
        remove_netns(&self.gw);
    }
}

/// `["nsenter", "--net=/run/netns/<ns>", "--"]`: run a command in a named
/// network namespace (same pid namespace, environment and files; `nsenter`
/// execs the command, so the child's pid is the command's).
pub fn nsenter_prefix(ns: &str) -> Vec<String> {
    vec![
        "nsenter".into(),
        format!("--net=/run/netns/{ns}"),
        "--".into(),
    ]
}
