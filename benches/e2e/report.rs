//! The results: every value recorded per figure and column, the medians' table with the ÷
//! columns, and the markdown report around it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::Options;
use crate::kinds::{Kind, Program};
use crate::machine::{command_output, cpu_model, pinned_cpus, success_output};

/// What the ÷ columns say about a figure.
#[derive(Clone, Copy)]
pub(crate) enum Verdict {
    /// The compared amtgw column ÷ the best peer; ✓ when amtgw is at least as good.
    BestPeer { higher_is_better: bool },
    /// The compared amtgw column against a fixed target of the issue's; ✓ when it reaches it.
    AtLeast(f64),
    /// Nothing: a diagnostic.
    Nothing,
}

struct Metric {
    name: String,
    unit: &'static str,
    verdict: Verdict,
    decimals: usize,
    values: BTreeMap<&'static str, Vec<f64>>,
}

impl Metric {
    fn median(&self, target: &str) -> Option<f64> {
        self.values.get(target).map(|v| median(v))
    }
}

/// One ÷ column: an amtgw configuration against the best peer. Busy-polling peers count only
/// against a busy-polling amtgw, so each amtgw is judged against peers configured like it:
/// the default against the defaults, amtgw-busy-poll against all of them. amtgw-legacy talks to
/// other upstreams (TLS 1.2, RSA key exchange) than the peers (TLS 1.3), so it is set against
/// amtgw instead: what the legacy backend costs, with no verdict.
pub(crate) struct Comparison {
    subject: Kind,
}

impl Comparison {
    /// One per amtgw configuration in `kinds`, in their order; amtgw-legacy's only beside
    /// amtgw.
    pub(crate) fn for_kinds(kinds: impl IntoIterator<Item = Kind>) -> Vec<Comparison> {
        let kinds: Vec<Kind> = kinds.into_iter().collect();
        kinds
            .iter()
            .copied()
            .filter(|k| k.program() == Program::Amtgw)
            .filter(|k| !k.legacy() || kinds.contains(&Kind::Amtgw))
            .map(|subject| Comparison { subject })
            .collect()
    }

    fn heading(&self) -> String {
        if self.subject.legacy() {
            return format!("{} ÷ {}", self.subject.name(), Kind::Amtgw.name());
        }
        let included = if self.subject.busy_polls() {
            ", busy-polling included"
        } else {
            ""
        };
        format!("{} ÷ best peer{included}", self.subject.name())
    }

    fn is_peer(&self, kind: Kind) -> bool {
        kind.program() != Program::Amtgw && (self.subject.busy_polls() || !kind.busy_polls())
    }

    /// The cell for `m`, if there is anything to say.
    fn cell(&self, m: &Metric) -> Option<String> {
        let mark = |good: bool| if good { "✓" } else { "✗" };
        let subject = m.median(self.subject.name())?;
        if self.subject.legacy() {
            // A cost, not a verdict: only where amtgw's column is judged against peers.
            let Verdict::BestPeer { .. } = m.verdict else {
                return None;
            };
            let amtgw = m.median(Kind::Amtgw.name())?;
            return (amtgw.abs() > f64::EPSILON).then(|| format!("{:.2}", subject / amtgw));
        }
        match m.verdict {
            Verdict::Nothing => None,
            Verdict::AtLeast(target) => {
                Some(format!("target ≥ {target} {}", mark(subject >= target)))
            }
            Verdict::BestPeer { higher_is_better } => {
                let peers = Kind::ALL
                    .into_iter()
                    .filter(|k| self.is_peer(*k))
                    .filter_map(|k| m.median(k.name()).map(|v| (k.name(), v)));
                let (peer, best) = if higher_is_better {
                    peers.max_by(|a, b| a.1.total_cmp(&b.1))
                } else {
                    peers.min_by(|a, b| a.1.total_cmp(&b.1))
                }?;
                if best.abs() <= f64::EPSILON {
                    return None;
                }
                let ratio = subject / best;
                let better = if higher_is_better {
                    ratio >= 1.0
                } else {
                    ratio <= 1.0
                };
                Some(format!("{ratio:.2} vs {peer} {}", mark(better)))
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Results {
    metrics: Vec<Metric>,
    /// (figure, column) cells that cannot be measured in this setup: "n/a", not "–".
    not_applicable: Vec<(String, &'static str)>,
}

impl Results {
    /// A figure the ÷ columns compare with the best peer.
    pub(crate) fn record(
        &mut self,
        name: &str,
        unit: &'static str,
        higher_is_better: bool,
        decimals: usize,
        target: &'static str,
        value: f64,
    ) {
        let verdict = Verdict::BestPeer { higher_is_better };
        self.record_as(name, unit, verdict, decimals, target, value);
    }

    /// One value of `target` (a column) for the figure `name`; the table shows the median.
    pub(crate) fn record_as(
        &mut self,
        name: &str,
        unit: &'static str,
        verdict: Verdict,
        decimals: usize,
        target: &'static str,
        value: f64,
    ) {
        let index = match self.metrics.iter().position(|m| m.name == name) {
            Some(i) => i,
            None => {
                self.metrics.push(Metric {
                    name: name.to_owned(),
                    unit,
                    verdict,
                    decimals,
                    values: BTreeMap::new(),
                });
                self.metrics.len() - 1
            }
        };
        self.metrics[index]
            .values
            .entry(target)
            .or_default()
            .push(value);
    }

    /// `target` (a column) cannot measure the figure `name` here; a note says why.
    pub(crate) fn not_applicable(&mut self, name: &str, target: &'static str) {
        let cell = (name.to_owned(), target);
        if !self.not_applicable.contains(&cell) {
            self.not_applicable.push(cell);
        }
    }

    /// The value of `target` recorded last for `name` (this repetition's).
    pub(crate) fn latest(&self, name: &str, target: &str) -> Option<f64> {
        let metric = self.metrics.iter().find(|m| m.name == name)?;
        metric.values.get(target)?.last().copied()
    }

    fn table(&self, columns: &[&'static str], comparisons: &[Comparison]) -> String {
        let mut out = String::from("| figure |");
        for c in columns {
            let _ = write!(out, " {c} |");
        }
        for comparison in comparisons {
            let _ = write!(out, " {} |", comparison.heading());
        }
        out.push_str("\n|---|");
        for _ in 0..columns.len() + comparisons.len() {
            out.push_str("---:|");
        }
        out.push('\n');
        for m in &self.metrics {
            let _ = write!(out, "| {} ({}) |", m.name, m.unit);
            for c in columns {
                match m.median(c) {
                    Some(v) => {
                        let _ = write!(out, " {v:.*} |", m.decimals);
                    }
                    None if self.not_applicable.contains(&(m.name.clone(), *c)) => {
                        out.push_str(" n/a |");
                    }
                    None => out.push_str(" – |"),
                }
            }
            for comparison in comparisons {
                let cell = comparison.cell(m).unwrap_or_else(|| "–".into());
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(crate) fn render(
    options: &Options,
    results: &Results,
    columns: &[&'static str],
    comparisons: &[Comparison],
    versions: &[String],
    notes: &[String],
    took: Duration,
) -> String {
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let commit = success_output("git", &["-C", manifest, "rev-parse", "--short", "HEAD"])
        .or_else(|| std::env::var("E2E_COMMIT").ok())
        .unwrap_or_else(|| "unknown".into());
    let dirty = success_output(
        "git",
        &[
            "-C",
            manifest,
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_some_and(|s| !s.is_empty());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Not available_parallelism: under E2E_TASKSET=1 this process's mask is one CPU.
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    let placement = if pinned_cpus() {
        "; harness pinned to CPU 0, each proxy to CPU 1 (E2E_TASKSET=1)"
    } else {
        "; no CPU pinning"
    };
    // Inherited by every process of the run alike (harness, upstream, proxies); it changes
    // how glibc copies memory, which moves the bulk figures on some CPUs (see the README).
    let tunables = match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if !t.is_empty() => format!("; GLIBC_TUNABLES={t} for every process"),
        _ => String::new(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## amtgw end-to-end comparison{}\n",
        if options.smoke {
            " (smoke run: sizes too small to mean anything)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "- machine: {cores} cores, {}, Linux {}{placement}{tunables}\n- date: {date}; commit {commit}{}\n- proxies: {}\n\
         - sizes: {} repetitions (medians shown), bulk {} MiB per run, {} connections per \
         connection run ({} at a time), {} latency samples of 1 KiB each way, idle {:?}, \
         {} WS-Man requests per run; took {:.0?}",
        cpu_model(),
        kernel.trim(),
        if dirty { " with local changes" } else { "" },
        versions.join(", "),
        options.reps,
        options.bulk_mb,
        options.conns,
        options.concurrency,
        options.latency_samples,
        options.idle,
        options.wsman,
        took
    );
    for note in notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(
        out,
        "- every proxy pins the same RSA-2048 AMT-like certificate and was checked to refuse \
         another one; each ÷ best peer column compares the amtgw column it names with the best \
         peer (busy-polling peers only against amtgw-busy-poll), ✓ where amtgw is at least as good \
         (or, where a target is named, reaches it); in the latency rows the direct column is the \
         absolute round trip of a TLS client talking to the upstream itself, the proxy columns \
         what each proxy adds to it; the rustls in-memory and bare-forwarder rows involve no \
         proxy and show in the direct column\n"
    );
    out.push_str(&results.table(columns, comparisons));
    out
}

/// Print the report and write it to `out`, if given.
pub(crate) fn publish(report: &str, out: Option<&Path>) {
    println!("\n{report}");
    if let Some(out) = out {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).expect("results directory");
        }
        std::fs::write(out, report).expect("write results");
        println!("e2e: written to {}", out.display());
    }
}
