//! The process's own resources, read from `/proc/self` at every scrape, under the names every
//! Prometheus client library uses (`process_open_fds`, `process_max_fds`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//! `process_cpu_seconds_total`, `process_start_time_seconds`), so existing dashboards and
//! alerts apply. Descriptors matter most: each console connection holds two (console and
//! device legs), and the soft `RLIMIT_NOFILE` is what caps the gateway's connections first.
//!
//! Where `/proc` cannot be read (not Linux, or hidden), the affected series are left out of the
//! scrape rather than reported as zero.

use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// What one scrape read from `/proc`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ProcessStats {
    pub(crate) open_fds: Option<i64>,
    pub(crate) max_fds: Option<i64>,
    pub(crate) resident_bytes: Option<i64>,
    pub(crate) virtual_bytes: Option<i64>,
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) start_time_seconds: Option<f64>,
}

/// The collector registered with the metrics registry; it holds only the system's constants.
#[derive(Debug)]
pub(crate) struct ProcessCollector {
    /// `sysconf(_SC_CLK_TCK)`: the unit of CPU times and the start time in `/proc/self/stat`
    /// (from the auxiliary vector, through rustix: no unsafe code here).
    ticks_per_second: u64,
    /// The unit of the resident set size in `/proc/self/stat`.
    page_size: u64,
}

impl ProcessCollector {
    pub(crate) fn new() -> ProcessCollector {
        ProcessCollector {
            ticks_per_second: rustix::param::clock_ticks_per_second().max(1),
            page_size: rustix::param::page_size() as u64,
        }
    }

    pub(crate) fn read(&self) -> ProcessStats {
        let proc = Path::new("/proc");
        let stat = std::fs::read_to_string(proc.join("self/stat")).ok();
        let stat = stat.as_deref().and_then(parse_stat);
        let boot_time = std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|text| parse_boot_time(&text));
        let ticks = self.ticks_per_second as f64;
        ProcessStats {
            open_fds: std::fs::read_dir(proc.join("self/fd"))
                .ok()
                .map(|entries| entries.count() as i64),
            max_fds: std::fs::read_to_string(proc.join("self/limits"))
                .ok()
                .and_then(|text| parse_soft_nofile(&text)),
            resident_bytes: stat.map(|s| (s.rss_pages.saturating_mul(self.page_size)) as i64),
            virtual_bytes: stat.map(|s| s.vsize_bytes as i64),
            cpu_seconds: stat.map(|s| (s.utime_ticks + s.stime_ticks) as f64 / ticks),
            start_time_seconds: stat
                .zip(boot_time)
                .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / ticks),
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.read();
        let gauges = [
            (
                "process_open_fds",
                "Open file descriptors (two per console connection, plus listeners)",
                None,
                stats.open_fds,
            ),
            (
                "process_max_fds",
                "The soft limit on open file descriptors (RLIMIT_NOFILE)",
                None,
                stats.max_fds,
            ),
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                stats.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                stats.virtual_bytes,
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                let metric =
                    encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        if let Some(seconds) = stats.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            let metric = encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        if let Some(start) = stats.start_time_seconds {
            let gauge = ConstGauge::new(start);
            let metric = encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since the unix epoch",
                Some(&Unit::Seconds),
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// The fields of `/proc/self/stat` used here (proc(5): utime 14, stime 15, starttime 22,
/// vsize 23, rss 24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) utime_ticks: u64,
    pub(crate) stime_ticks: u64,
    pub(crate) start_ticks: u64,
    pub(crate) vsize_bytes: u64,
    pub(crate) rss_pages: u64,
}

pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may itself hold spaces and ')': the
    // fields are counted from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // `rest` starts at field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// `btime` of `/proc/stat`: boot time, unix seconds.
pub(crate) fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`. "unlimited" cannot be set for
/// descriptors on Linux (it is bounded by fs.nr_open), so it reads as unknown.
pub(crate) fn parse_soft_nofile(text: &str) -> Option<i64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a ')' of its own, as a process may name itself.
        let text = "4242 (amt gw) x) S 1 4242 4242 0 -1 4194560 1800 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 104857600 2560 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17096 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime_ticks: 250,
                stime_ticks: 75,
                start_ticks: 123456,
                vsize_bytes: 104857600,
                rss_pages: 2560,
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn boot_time_and_descriptor_limit_are_read_from_their_lines() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nctxt 99\nbtime 1764900000\nprocesses 7\n"),
            Some(1_764_900_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63432                63432                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_soft_nofile(limits), Some(1024));
        assert_eq!(
            parse_soft_nofile(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn clock_ticks_agree_with_getconf() {
        let Ok(out) = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
        else {
            eprintln!("skipped: no getconf");
            return;
        };
        let getconf: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert_eq!(ProcessCollector::new().ticks_per_second, getconf);
    }

    #[test]
    fn this_process_reads_as_sane() {
        let stats = ProcessCollector::new().read();
        let open = stats.open_fds.unwrap();
        assert!(open > 0 && open <= stats.max_fds.unwrap(), "{stats:?}");
        assert!(stats.resident_bytes.unwrap() > 1 << 20, "{stats:?}");
        assert!(stats.virtual_bytes.unwrap() >= stats.resident_bytes.unwrap());
        assert!(stats.cpu_seconds.unwrap() >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = stats.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
    }
}
