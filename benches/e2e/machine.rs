//! Facts about the machine and its processes: commands' output, the CPU, descriptor limits,
//! CPU pinning (E2E_TASKSET), and the CPU time and RSS of a proxy's process tree.

use std::path::Path;
use std::process::{Command, Stdio};

pub(crate) fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    Some(String::from_utf8_lossy(&text).trim().to_owned())
}

/// stdout of a command that succeeded.
pub(crate) fn success_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub(crate) fn clock_ticks() -> f64 {
    command_output("getconf", &["CLK_TCK"])
        .and_then(|s| s.parse().ok())
        .unwrap_or(100.0)
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The soft and hard RLIMIT_NOFILE of this process.
pub(crate) fn open_files_limits() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .map(|v| v.parse().unwrap_or(u64::MAX))
                .collect()
        })
        .unwrap_or_default();
    match fields[..] {
        [soft, hard] => (soft, hard),
        _ => (1024, 1024),
    }
}

/// Raise RLIMIT_NOFILE for this process (and so for the proxies it starts) with the `prlimit`
/// program: the crate has no libc binding and denies unsafe code. Raising the hard limit
/// needs CAP_SYS_RESOURCE; without it the soft limit goes up to the hard one.
pub(crate) fn raise_open_files(wanted: u64) -> u64 {
    let (soft, hard) = open_files_limits();
    if soft >= wanted {
        return soft;
    }
    let pid = std::process::id().to_string();
    for target in [wanted, hard.min(wanted)] {
        let limit = format!("--nofile={target}:{}", target.max(hard));
        let ok = Command::new("prlimit")
            .args(["--pid", &pid, &limit])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
    }
    let (soft, hard) = open_files_limits();
    if soft < wanted {
        eprintln!(
            "e2e: RLIMIT_NOFILE is {soft} (hard {hard}), wanted {wanted}: raising the hard limit \
             needs root with CAP_SYS_RESOURCE (or `ulimit -Hn` before cargo)"
        );
    }
    soft
}

/// E2E_TASKSET=1 pins the harness to CPU 0 and every proxy to CPU 1: placement stops varying
/// from run to run (on a VM, a wake-up across CPUs can cost tens of µs), at the price of one
/// core per proxy whatever its thread count.
pub(crate) fn pinned_cpus() -> bool {
    std::env::var("E2E_TASKSET").is_ok_and(|v| v == "1")
}

/// The harness's CPU under E2E_TASKSET=1 ...
pub(crate) const HARNESS_CPU: &str = "0";
/// ... and the proxies', which the helpers measuring what a proxy could do share.
pub(crate) const PROXY_CPU: &str = "1";

/// A command running `program` on `cpu` under E2E_TASKSET=1, unpinned otherwise. `taskset`
/// execs the program, so the child's pid is the program's.
pub(crate) fn command_on_cpu(cpu: &str, program: &Path) -> Command {
    if pinned_cpus() {
        let mut command = Command::new("taskset");
        command.args(["-c", cpu]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

pub(crate) fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

// Process accounting: CPU and RSS of a proxy's whole process tree (nginx and HAProxy may fork)

pub(crate) fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                    all.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
        i += 1;
    }
    all.sort_unstable();
    all.dedup();
    all
}

/// utime + stime of every process in the tree, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    tree(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| {
            // Fields after "(comm)": state is field 3, utime 14, stime 15.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    tree(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}
