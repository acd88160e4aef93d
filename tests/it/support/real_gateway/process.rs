//! Child processes: bounded runs in their own process group, free ports, environments.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` (stdin null, stdout/stderr captured) in its own process group
/// and waits up to `timeout`; on timeout the group is SIGKILLed and an error
/// (with what was printed) returned.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let (out, timed_out) = wait_group_captured(child, timeout).map_err(|e| format!("wait: {e}"))?;
    if timed_out {
        return Err(format!(
            "timed out after {timeout:?} (stdout {:?}, stderr {:?})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

/// Waits up to `timeout` for `child` (spawned as the leader of its own
/// process group, stdout and stderr piped), reading both meanwhile; on
/// timeout the group is SIGKILLed. Leftover members of the group (background
/// children, if any) are SIGKILLed either way. Returns what was printed and
/// whether it timed out.
pub(super) fn wait_group_captured(
    mut child: Child,
    timeout: Duration,
) -> std::io::Result<(Output, bool)> {
    let pid = child.id();
    let kill_group = || {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    };
    let read_all = |mut r: Box<dyn Read + std::marker::Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let t1 = read_all(Box::new(child.stdout.take().expect("stdout piped")));
    let t2 = read_all(Box::new(child.stderr.take().expect("stderr piped")));
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        match child.try_wait()? {
            Some(s) => break (s, false),
            None if Instant::now() >= deadline => {
                kill_group();
                break (child.wait()?, true);
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    kill_group();
    let out = Output {
        status,
        stdout: t1.join().unwrap_or_default(),
        stderr: t2.join().unwrap_or_default(),
    };
    Ok((out, timed_out))
}

/// A free loopback port (not 18789, with room for the gateway's derived
/// ports above it).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0))
            .expect("real_gateway: cannot bind 127.0.0.1:0 to pick a port");
        let port = l
            .local_addr()
            .expect("real_gateway: local_addr of probe listener")
            .port();
        if port != 18789 && port < 65000 && !(18780..=18900).contains(&port) {
            return port;
        }
    }
    panic!("real_gateway: no free port found");
}

/// Parses `k=v` pairs of a process's environment (diagnostics).
pub fn process_env(pid: u32) -> HashMap<String, String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter_map(|kv| {
                    let s = String::from_utf8_lossy(kv);
                    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}
