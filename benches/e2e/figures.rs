//! The figures: each step measures one figure for the direct column and for every proxy in its
//! turn, and records the values (and the proxy's CPU time) in the results. The run calls idle
//! memory once, then the others once per repetition, in this file's order.

use std::path::PathBuf;

use rustls::SupportedCipherSuite;

use crate::Options;
use crate::helpers::{BareForwarder, rustls_in_memory};
use crate::kinds::Kind;
use crate::machine::{cpu_ticks, rss_kib};
use crate::measurements::{
    Target, added_latency_us, bulk_to_console, bulk_to_device, connection_rate, latency,
    one_connection, open_idle, percentile, timed,
};
use crate::proxies::Proxy;
use crate::report::{Results, Verdict};
use crate::setup::Stage;
use crate::wsman::wsman_mix;

/// The target for bulk throughput: within 2× of rustls' in-memory rate.
const BULK_TARGET_SHARE_OF_RUSTLS: f64 = 0.5;

/// What the figures are measured with.
pub(crate) struct Bench<'a> {
    pub(crate) options: &'a Options,
    pub(crate) stage: &'a Stage,
    /// Every column's kind and program, for the fresh processes of the idle-memory figure.
    pub(crate) available: &'a [(Kind, PathBuf)],
    /// The proxies started once for the whole run, at rest outside their turns.
    pub(crate) proxies: &'a [Proxy],
    pub(crate) forwarders: &'a [BareForwarder],
    /// Clock ticks per second.
    pub(crate) ticks: f64,
}

impl Bench<'_> {
    /// CPU seconds the process tree of `pid` has used.
    fn cpu(&self, pid: u32) -> f64 {
        cpu_ticks(pid) as f64 / self.ticks
    }

    /// Idle memory: a fresh process per proxy and repetition (an allocator keeps what earlier
    /// connections freed, which would hide the next ones' cost), warmed by one connection.
    pub(crate) async fn idle_memory(&self, max_idle: usize, results: &mut Results) {
        for &n in &self.options.idle {
            if n == 0 {
                continue;
            }
            for rep in 0..self.options.reps {
                for (kind, program) in self.available {
                    let proxy = self
                        .stage
                        .proxy(*kind, program, "idle", max_idle + 1024)
                        .await;
                    let target = Target::Plain(proxy.routes.resumed.0);
                    drop(timed("warm-up connection", one_connection(&target)).await);
                    let before = rss_kib(proxy.pid());
                    let held = timed("idle connections", open_idle(&target, n)).await;
                    assert_eq!(held.len(), n);
                    let at = rss_kib(proxy.pid());
                    drop(held);
                    drop(proxy);
                    let name = kind.name();
                    results.record(
                        "RSS of a fresh process after one connection",
                        "MiB",
                        false,
                        1,
                        name,
                        before as f64 / 1024.0,
                    );
                    results.record(
                        &format!("RSS at {n} idle"),
                        "MiB",
                        false,
                        1,
                        name,
                        at as f64 / 1024.0,
                    );
                    results.record(
                        &format!("RSS per idle connection, {n}"),
                        "KiB",
                        false,
                        1,
                        name,
                        (at.saturating_sub(before)) as f64 / n as f64,
                    );
                    println!("e2e: idle {n} rep {rep} {name}: {before} -> {at} KiB");
                }
            }
        }
    }

    /// Bulk both ways, direct and through each proxy (with its CPU per GB).
    pub(crate) async fn bulk(&self, results: &mut Results) {
        let mb = self.options.bulk_mb * 1024 * 1024;
        for bulk_direction in ["to device", "to console"] {
            let run_bulk = |target: Target| async move {
                if bulk_direction == "to device" {
                    timed("bulk", bulk_to_device(&target, mb)).await
                } else {
                    timed("bulk", bulk_to_console(&target, mb)).await
                }
            };
            let elapsed = run_bulk(self.stage.direct(self.stage.upstreams.resumed_addr)).await;
            let name = format!("bulk {bulk_direction}");
            results.record(
                &name,
                "MB/s",
                true,
                0,
                "direct",
                mb as f64 / 1e6 / elapsed.as_secs_f64(),
            );
            for proxy in self.proxies {
                let _turn = proxy.turn();
                let c0 = self.cpu(proxy.pid());
                let elapsed = run_bulk(Target::Plain(proxy.routes.resumed.0)).await;
                let used = self.cpu(proxy.pid()) - c0;
                let p = proxy.kind.name();
                results.record(
                    &name,
                    "MB/s",
                    true,
                    0,
                    p,
                    mb as f64 / 1e6 / elapsed.as_secs_f64(),
                );
                results.record(
                    &format!("CPU, bulk {bulk_direction}"),
                    "CPU-s/GB",
                    false,
                    2,
                    p,
                    used / (mb as f64 / 1e9),
                );
            }
        }
    }

    /// rustls' in-memory rates with `suite`, and every column's bulk figure of this repetition
    /// against them: the issue wants amtgw's within 2× of them. After `bulk`.
    pub(crate) async fn bulk_against_rustls(
        &self,
        suite: SupportedCipherSuite,
        results: &mut Results,
    ) {
        let (encrypt, decrypt) = rustls_in_memory(suite, self.options.bulk_mb).await;
        let rustls_rates = [
            ("to device", "encrypt", encrypt),
            ("to console", "decrypt", decrypt),
        ];
        for (_, operation, rate) in rustls_rates {
            let name = format!("rustls in memory, {operation}");
            results.record_as(&name, "MB/s", Verdict::Nothing, 0, "direct", rate);
        }
        for (direction, operation, rate) in rustls_rates {
            let bulk = format!("bulk {direction}");
            let share = format!("bulk {direction} ÷ rustls {operation} rate");
            let verdict = Verdict::AtLeast(BULK_TARGET_SHARE_OF_RUSTLS);
            let columns =
                std::iter::once("direct").chain(self.proxies.iter().map(|p| p.kind.name()));
            for column in columns {
                if let Some(bulk_rate) = results.latest(&bulk, column) {
                    results.record_as(&share, "×", verdict, 2, column, bulk_rate / rate);
                }
            }
        }
    }

    /// Connection rates with a full handshake and resumed, direct and through each proxy (with
    /// its CPU per connection and how many of its upstream handshakes resumed), each against its
    /// own upstreams.
    pub(crate) async fn connections(&self, results: &mut Results) {
        let options = self.options;
        let stage = self.stage;
        for (label, resumed) in [("full handshake", false), ("resumed", true)] {
            let name = format!("connections, {label}");
            let (upstream_addr, _) = stage.upstreams.pick(resumed);
            let elapsed = timed(
                "connections",
                connection_rate(
                    &stage.direct(upstream_addr),
                    options.conns,
                    options.concurrency,
                ),
            )
            .await;
            results.record(
                &name,
                "conn/s",
                true,
                0,
                "direct",
                options.conns as f64 / elapsed.as_secs_f64(),
            );
            for proxy in self.proxies {
                let _turn = proxy.turn();
                let listen = if resumed {
                    proxy.routes.resumed.0
                } else {
                    proxy.routes.full.0
                };
                let (_, counts) = stage.upstreams_of(proxy.kind).pick(resumed);
                let (h0, r0) = counts.snapshot();
                let c0 = self.cpu(proxy.pid());
                let elapsed = timed(
                    "connections",
                    connection_rate(&Target::Plain(listen), options.conns, options.concurrency),
                )
                .await;
                let used = self.cpu(proxy.pid()) - c0;
                let (h1, r1) = counts.snapshot();
                let p = proxy.kind.name();
                results.record(
                    &name,
                    "conn/s",
                    true,
                    0,
                    p,
                    options.conns as f64 / elapsed.as_secs_f64(),
                );
                results.record(
                    &format!("CPU per connection, {label}"),
                    "CPU-ms",
                    false,
                    3,
                    p,
                    used * 1000.0 / options.conns as f64,
                );
                if resumed {
                    let share = (r1 - r0) as f64 * 100.0 / (h1 - h0).max(1) as f64;
                    results.record_as(
                        "upstream handshakes resumed (diagnostic)",
                        "%",
                        Verdict::Nothing,
                        0,
                        p,
                        share,
                    );
                }
            }
        }
    }

    /// What each proxy adds to a round trip, and what each bare forwarder adds (diagnostic).
    pub(crate) async fn latencies(&self, results: &mut Results) {
        for proxy in self.proxies {
            let _turn = proxy.turn();
            let (base, via) = timed(
                "latency",
                latency(
                    &self.stage.direct_to_resumed(proxy.kind),
                    &Target::Plain(proxy.routes.resumed.0),
                    self.options.latency_samples,
                ),
            )
            .await;
            for (p, label) in [(50.0, "p50"), (99.0, "p99"), (99.9, "p99.9")] {
                let name = format!("latency {label}, added by the proxy");
                // The direct column is the rustls round trip; amtgw-legacy's OpenSSL baseline
                // would blend another client and upstream into its median.
                if !proxy.kind.legacy() {
                    let direct_us = percentile(&base, p) / 1e3;
                    results.record(&name, "µs", false, 1, "direct", direct_us);
                }
                let added = added_latency_us(&base, &via, p);
                results.record(&name, "µs", false, 1, proxy.kind.name(), added);
            }
        }
        for forwarder in self.forwarders {
            let (base, via) = timed(
                "latency",
                latency(
                    &Target::Plain(self.stage.plain_upstream),
                    &Target::Plain(forwarder.addr),
                    self.options.latency_samples,
                ),
            )
            .await;
            for (p, label) in [(50.0, "p50"), (99.0, "p99")] {
                results.record_as(
                    &format!(
                        "latency {label}, added by a bare TCP forwarder{} (diagnostic)",
                        forwarder.placement
                    ),
                    "µs",
                    Verdict::Nothing,
                    1,
                    "direct",
                    added_latency_us(&base, &via, p),
                );
            }
        }
    }

    /// WS-Man requests (a console's power-state polling and enumeration) with and without
    /// keep-alive, direct and through each proxy (with its CPU per request).
    pub(crate) async fn wsman_requests(&self, results: &mut Results) {
        let options = self.options;
        for keep_alive in [true, false] {
            let label = if keep_alive {
                "keep-alive"
            } else {
                "no keep-alive"
            };
            // Keep-alive requests cost a fraction of the others: run ten times as many.
            let requests = if keep_alive {
                10 * options.wsman
            } else {
                options.wsman
            };
            let elapsed = timed(
                "WS-Man",
                wsman_mix(
                    &self.stage.direct(self.stage.sim.wsman_addr()),
                    requests,
                    options.concurrency,
                    keep_alive,
                ),
            )
            .await;
            let name = format!("WS-Man requests, {label}");
            results.record(
                &name,
                "requests/s",
                true,
                0,
                "direct",
                requests as f64 / elapsed.as_secs_f64(),
            );
            for proxy in self.proxies {
                let p = proxy.kind.name();
                if !proxy.kind.runs_wsman_mix() {
                    results.not_applicable(&name, p);
                    results.not_applicable(&format!("CPU per request, {label}"), p);
                    continue;
                }
                let _turn = proxy.turn();
                let c0 = self.cpu(proxy.pid());
                let elapsed = timed(
                    "WS-Man",
                    wsman_mix(
                        &Target::Plain(proxy.routes.sim.0),
                        requests,
                        options.concurrency,
                        keep_alive,
                    ),
                )
                .await;
                let used = self.cpu(proxy.pid()) - c0;
                results.record(
                    &name,
                    "requests/s",
                    true,
                    0,
                    p,
                    requests as f64 / elapsed.as_secs_f64(),
                );
                results.record(
                    &format!("CPU per request, {label}"),
                    "CPU-ms",
                    false,
                    3,
                    p,
                    used * 1000.0 / requests as f64,
                );
            }
        }
    }
}
