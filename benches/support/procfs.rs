//! Process measurements from `/proc` (Linux only; zeros elsewhere).

/// Clock ticks per second of `/proc/*/stat` times (`sysconf(_SC_CLK_TCK)`,
/// 100 on every mainstream Linux).
const CLK_TCK: f64 = 100.0;

fn stat_cpu(path: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // `comm` (field 2) may hold spaces: fields after the last ')' start at 3.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime is field 14, stime field 15: indexes 11 and 12 after the state.
    (ticks(11) + ticks(12)) as f64 / CLK_TCK
}

/// User + system CPU seconds of this process so far.
pub fn process_cpu() -> f64 {
    stat_cpu("/proc/self/stat")
}

/// User + system CPU seconds of the calling thread so far.
pub fn thread_cpu() -> f64 {
    stat_cpu("/proc/thread-self/stat")
}

/// A `Vm*` line of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: &str, field: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Peak resident set of this process (VmHWM), KiB.
pub fn peak_rss_kib() -> u64 {
    status_kib("self", "VmHWM")
}
