//! End-to-end benchmark: amtgw against the programs an operator would otherwise deploy in its
//! place (stunnel4 in client mode, HAProxy `mode tcp` with `ssl verify required`, nginx
//! `stream` with `proxy_ssl_verify`), all forwarding plain TCP to the same TLS upstream and all
//! pinned to its exact certificate. amtgw and HAProxy also run a second time with busy polling
//! on (`amtgw-busy-poll`, `haproxy-busy-polling`): on a VM waking a sleeping CPU is slow, and
//! those columns show what not sleeping gains and costs. amtgw runs a third time with its legacy
//! (OpenSSL) backend toward upstreams of its own that speak only TLS 1.2 with RSA key exchange,
//! as AMT 11 and 12 do (`amtgw-legacy`): what reaching such devices costs. See
//! `benches/README.md` for what each figure means.
//!
//! `cargo bench --bench e2e` runs the full comparison and writes `benches/results/latest.md`;
//! under `cargo test --all-targets` (no `--bench` argument) it runs a seconds-long smoke: one
//! tiny measurement per installed proxy, asserting only that the bytes arrived. Sizes come from
//! `E2E_*` environment variables (listed in the README).
//!
//! `run` below reads top-down. The modules: `machine` (host facts, CPU pinning, process
//! accounting), `upstream` (the TLS upstreams, rustls and legacy OpenSSL, and the plain one),
//! `kinds` (the columns: programs and their configurations), `proxies` (their configuration
//! files, start, pause, stop), `setup` (certificate, upstreams, simulator; proxies checked and
//! started; bare forwarders), `helpers` (work run as a copy of this binary on a chosen CPU: the
//! bare forwarder, rustls in memory), `measurements` and `wsman` (one measurement against one
//! target), `figures` (each figure for every column, recorded) and `report` (the results, the
//! table, the markdown around it).

// The harness times other processes by the wall clock, outside any tokio runtime: the one-clock
// rule (clippy.toml) is for the gateway's data path, where paused-time tests must see it.
#![allow(clippy::disallowed_types)]

#[path = "../../tests/common/loopback.rs"]
mod loopback;

mod figures;
mod helpers;
mod kinds;
mod machine;
mod measurements;
mod proxies;
mod report;
mod setup;
mod upstream;
mod wsman;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// Every amtgw item the bench imports is imported here, once; the modules take them from the
// crate root (`use crate::Pin`). amtgw::tls's two functions are called by their full path.
use amtgw::tls::{Backend, Pin, TlsSettings, TlsVersion, Trust};
use amtgw_sim::{
    CertStyle, DEMO_PASSWORD, DEMO_USERNAME, KeyType, SimConfig, SimDevice, SimIdentity,
    generate_amt_identity,
};

use crate::figures::Bench;
use crate::helpers::{HELPER_ARG, run_helper};
use crate::kinds::{Kind, program_versions};
use crate::machine::{HARNESS_CPU, clock_ticks, pinned_cpus, raise_open_files};
use crate::proxies::stop_after_run;
use crate::report::{Comparison, Results, publish, render};
use crate::setup::{Stage, locate_proxies, start_forwarders};

/// Bound on every wait for a proxy or a connection: a hang fails the run, it never paces it.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// The run's sizes and choices, from the E2E_* variables (see the README).
struct Options {
    smoke: bool,
    proxies: Vec<Kind>,
    reps: usize,
    bulk_mb: u64,
    conns: usize,
    concurrency: usize,
    latency_samples: usize,
    idle: Vec<usize>,
    wsman: usize,
    out: Option<PathBuf>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Options {
    fn from_env(smoke: bool) -> Options {
        let proxies = match std::env::var("E2E_PROXIES") {
            Ok(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| Kind::parse(s.trim()))
                .collect(),
            Err(_) => Kind::ALL.to_vec(),
        };
        fn s<T>(smoke: bool, full: T, small: T) -> T {
            if smoke { small } else { full }
        }
        let mut idle: Vec<usize> = std::env::var("E2E_IDLE")
            .unwrap_or_else(|_| s(smoke, "1000", "20").to_owned())
            .split(',')
            .filter(|x| !x.trim().is_empty())
            .map(|x| x.trim().parse().expect("E2E_IDLE: comma-separated counts"))
            .collect();
        if !smoke && std::env::var("E2E_IDLE_10K").is_ok_and(|v| v == "1") {
            idle.push(10_000);
        }
        let default_out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/latest.md");
        Options {
            smoke,
            proxies,
            reps: env_or("E2E_REPS", s(smoke, 3, 1)),
            bulk_mb: env_or("E2E_BULK_MB", s(smoke, 256, 1)),
            conns: env_or("E2E_CONNS", s(smoke, 1000, 8)),
            concurrency: env_or("E2E_CONCURRENCY", 4).max(1),
            latency_samples: env_or("E2E_LATENCY_SAMPLES", s(smoke, 10_000, 20)),
            idle,
            wsman: env_or("E2E_WSMAN", s(smoke, 400, 4)),
            out: match std::env::var("E2E_OUT") {
                Ok(path) if path.is_empty() || path == "-" => None,
                Ok(path) => Some(PathBuf::from(path)),
                Err(_) => (!smoke).then_some(default_out),
            },
        }
    }

    /// The largest idle-connection count.
    fn max_idle(&self) -> usize {
        self.idle.iter().copied().max().unwrap_or(0)
    }

    /// Cap the idle-connection counts to what `open_files` descriptors hold: a proxy holds two
    /// descriptors per idle connection, and so does this process.
    fn cap_idle(&mut self, open_files: u64) {
        let usable = open_files.saturating_sub(512) / 2;
        for n in &mut self.idle {
            if *n as u64 > usable {
                eprintln!(
                    "e2e: RLIMIT_NOFILE is {open_files}: {n} idle connections capped to {usable}"
                );
                *n = usable as usize;
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == HELPER_ARG) {
        run_helper(&args[2..]);
        return;
    }
    // cargo bench passes --bench; cargo test --all-targets passes nothing of the kind.
    let smoke = !args.iter().any(|a| a == "--bench");
    let options = Options::from_env(smoke);
    let max_idle = options.max_idle() as u64;
    // Each idle connection holds two descriptors here (client, upstream) and two in the proxy.
    let limit = raise_open_files(2 * max_idle + 4096);
    if pinned_cpus() {
        // Before the runtime starts its threads, so they inherit the mask.
        let pid = std::process::id().to_string();
        let ok = Command::new("taskset")
            .args(["-a", "-p", "-c", HARNESS_CPU, &pid])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "E2E_TASKSET=1: taskset could not pin the harness to CPU 0"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(options, limit));
}

async fn run(mut options: Options, open_files: u64) {
    options.cap_idle(open_files);
    let mut notes = Vec::new();
    let available = locate_proxies(&options.proxies, &mut notes);
    let ticks = clock_ticks();
    let max_idle = options.max_idle();

    let stage = Stage::set_up().await;
    // Fairness check first: every proxy must refuse an upstream that is not the pinned one.
    stage.check_refusals(&available).await;
    let versions = program_versions(&available);
    let (proxies, amtgw_negotiated) = stage.start_proxies(&available, max_idle, &mut notes).await;
    let in_memory_suite = stage
        .in_memory_suite(amtgw_negotiated, options.bulk_mb, &mut notes)
        .await;
    let forwarders = start_forwarders(stage.plain_upstream).await;

    let mut results = Results::default();
    let started = Instant::now();
    let bench = Bench {
        options: &options,
        stage: &stage,
        available: &available,
        proxies: &proxies,
        forwarders: &forwarders,
        ticks,
    };
    bench.idle_memory(max_idle, &mut results).await;
    for rep in 0..options.reps {
        bench.bulk(&mut results).await;
        bench
            .bulk_against_rustls(in_memory_suite, &mut results)
            .await;
        progress("bulk", rep, started);
        bench.connections(&mut results).await;
        progress("connections", rep, started);
        bench.latencies(&mut results).await;
        progress("latency", rep, started);
        if options.wsman > 0 {
            bench.wsman_requests(&mut results).await;
            progress("WS-Man", rep, started);
        }
    }

    stop_after_run(proxies);
    drop(forwarders);
    stage.shut_down().await;

    let mut columns = vec!["direct"];
    columns.extend(available.iter().map(|(k, _)| k.name()));
    let comparisons = Comparison::for_kinds(available.iter().map(|(k, _)| *k));
    let report = render(
        &options,
        &results,
        &columns,
        &comparisons,
        &versions,
        &notes,
        started.elapsed(),
    );
    publish(&report, options.out.as_deref());
}

/// "e2e: bulk rep 0 done (12s)": a repetition's step is over.
fn progress(what: &str, rep: usize, started: Instant) {
    println!("e2e: {what} rep {rep} done ({:.0?})", started.elapsed());
}
