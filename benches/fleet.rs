//! Fleet scale: how start-up, reload, memory and the per-connection route lookup grow with the
//! number of devices, listed or by address range, against the alias router.
//!
//! `cargo bench --bench fleet` measures 10,000 devices (`FLEET_DEVICES`) and writes a Markdown
//! table to stdout and to `benches/results/fleet.md` (`FLEET_OUT`). Under
//! `cargo test --all-targets` it runs once with 50 devices as a smoke test, writing nothing.
//!
//! Two halves:
//! - `amtgw run` as a process, one per fleet shape (WS-Man only, so that 10,000 alias
//!   listeners fit the descriptor limit): time from spawn to `/readyz` 200, resident memory
//!   once ready, and the time a SIGHUP reload takes until its "configuration reloaded" line;
//!   memory per device is the difference to a one-device gateway, divided by the devices.
//! - The router in this process: nanoseconds per route lookup by alias, by original
//!   destination among listed devices, by a request's Host name, for a known range device and for a range device's first
//!   use (which builds it); and the memory each range device takes (resident memory before and
//!   after making them all).

// The bench times processes and loops by the wall clock, outside any tokio runtime: the
// one-clock rule (clippy.toml) is for the gateway's data path.
#![allow(clippy::disallowed_types)]

// The e2e bench's facts about processes and limits, not a second copy of them.
#[path = "e2e/machine.rs"]
#[allow(dead_code)]
mod machine;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use amtgw::router::{AddressRouter, NamedHost, RouteQuery, Router};
use amtgw::tls::{Pin, PinStore, TofuStore};
use amtgw::{Config, Service};

const BENCH_DEVICES: usize = 10_000;
const SMOKE_DEVICES: usize = 50;
const RELOADS: usize = 3;
/// Route lookups per timed pass; the median of `PASSES` passes is shown.
const LOOKUPS: usize = 200_000;
const PASSES: usize = 5;

fn main() {
    // cargo bench passes --bench; cargo test --all-targets passes nothing of the kind.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let devices = match std::env::var("FLEET_DEVICES") {
        Ok(n) => n.parse().expect("FLEET_DEVICES: a number of devices"),
        Err(_) if smoke => SMOKE_DEVICES,
        Err(_) => BENCH_DEVICES,
    };
    assert!(
        (2..=60_000).contains(&devices),
        "FLEET_DEVICES: 2 to 60000 (addresses come from one /16)"
    );
    // The alias fleet binds one listener per device; the gateways inherit the limit.
    machine::raise_open_files(devices as u64 + 4096);

    let mut rows = Vec::new();
    let baseline = Gateway::start("baseline", &shape_toml(Shape::ListedByDestination, 1));
    let baseline_rss = baseline.rss_kib();
    drop(baseline);
    for shape in Shape::ALL {
        let mut gateway = Gateway::start(shape.label(), &shape_toml(shape, devices));
        let rss = gateway.rss_kib();
        let reload = gateway.median_reload();
        let per_device = match shape {
            // A range makes devices on first use: at start it holds none.
            Shape::Range => "– (see below)".to_owned(),
            _ => format!(
                "{:.1}",
                (rss.saturating_sub(baseline_rss)) as f64 * 1024.0 / devices as f64
            ),
        };
        rows.push(format!(
            "| {} | {} | {:.0} | {:.1} | {:.0} | {} |",
            shape.label(),
            shape.devices_at_start(devices),
            gateway.started.as_secs_f64() * 1000.0,
            rss as f64 / 1024.0,
            reload.as_secs_f64() * 1000.0,
            per_device,
        ));
    }

    let routing = route_costs(devices);
    let out = report(devices, baseline_rss, &rows, &routing);
    println!("{out}");
    if !smoke {
        let path = std::env::var("FLEET_OUT").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/benches/results/fleet.md").to_owned()
        });
        std::fs::write(&path, &out).expect("write the results");
        eprintln!("fleet: written to {path}");
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// Listed devices, each with its alias address on the gateway: one listener per device.
    ListedByAlias,
    /// Listed devices, consoles diverted by REDIRECT: one listener, routed by the original
    /// destination.
    ListedByDestination,
    /// One `[[ranges]]` entry and no listed device.
    Range,
}

impl Shape {
    const ALL: [Shape; 3] = [
        Shape::ListedByAlias,
        Shape::ListedByDestination,
        Shape::Range,
    ];

    fn label(self) -> &'static str {
        match self {
            Shape::ListedByAlias => "listed, alias routing",
            Shape::ListedByDestination => "listed, routing = \"redirect\"",
            Shape::Range => "one /16 range, routing = \"redirect\"",
        }
    }

    fn devices_at_start(self, devices: usize) -> String {
        match self {
            Shape::Range => "0 (made on first use)".to_owned(),
            _ => devices.to_string(),
        }
    }
}

/// Device `i`'s address (10.20.0.0/16) and its alias on the gateway (127.20.0.0/16).
fn device_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, (i >> 8) as u8, i as u8)
}

fn alias_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 20, (i >> 8) as u8, i as u8)
}

fn shape_toml(shape: Shape, devices: usize) -> String {
    let pin = Pin::of_certificate(b"a device certificate");
    let routing = match shape {
        Shape::ListedByAlias => "",
        _ => "routing = \"redirect\"\nbind = [\"127.0.0.1\"]\n",
    };
    let mut toml = format!(
        "[gateway]\nlog_format = \"json\"\nworkers = 1\npin_store = \"pins.toml\"\n\
         max_range_devices = {devices}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [services.wsman]\nlisten_port = 0\n{routing}\
         [services.redirection]\nenabled = false\n[services.dash]\nenabled = false\n"
    );
    match shape {
        Shape::Range => toml.push_str("[[ranges]]\ncidr = \"10.20.0.0/16\"\ntrust = \"tofu\"\n"),
        _ => {
            for i in 0..devices {
                let alias = match shape {
                    Shape::ListedByAlias => format!("listen = \"{}\"\n", alias_ip(i)),
                    _ => String::new(),
                };
                toml.push_str(&format!(
                    "[[devices]]\nname = \"amt-{i:05}\"\nhost = \"{}\"\n{alias}trust = \"pin\"\npins = [\"{pin}\"]\n",
                    device_ip(i)
                ));
            }
        }
    }
    toml
}

/// One `amtgw run`, killed when dropped.
struct Gateway {
    child: Child,
    _dir: tempfile::TempDir,
    lines: Receiver<String>,
    /// From spawn to the first `/readyz` 200.
    started: Duration,
}

impl Gateway {
    fn start(label: &str, toml: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("amtgw.toml");
        std::fs::write(&config, toml).expect("write the config");
        let spawned = Instant::now();
        let mut command = Command::new(env!("CARGO_BIN_EXE_amtgw"));
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The bench's own environment must not configure the gateways it measures.
        for (name, _) in std::env::vars_os() {
            if name
                .to_string_lossy()
                .to_ascii_uppercase()
                .starts_with(amtgw::config::ENV_PREFIX)
            {
                command.env_remove(name);
            }
        }
        let mut child = command.spawn().expect("spawn amtgw");
        let lines = lines_of(child.stderr.take().expect("stderr"));
        let deadline = Duration::from_secs(120);
        let admin = loop {
            let line = lines
                .recv_timeout(deadline.saturating_sub(spawned.elapsed()))
                .unwrap_or_else(|e| panic!("{label}: amtgw did not start its admin listener: {e}"));
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("admin listening"))
            {
                break event["addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("the admin address");
            }
        };
        // Ready means every listener is bound and the fleet built: poll, the process tells no
        // one else. A millisecond between polls is below what start-up takes here.
        while !ready(admin) {
            assert!(
                spawned.elapsed() < deadline,
                "{label}: /readyz never answered 200"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Gateway {
            child,
            _dir: dir,
            lines,
            started: spawned.elapsed(),
        }
    }

    fn rss_kib(&self) -> u64 {
        machine::rss_kib(self.child.id())
    }

    /// SIGHUP, then the time until the gateway logs the reload done; the median of a few.
    fn median_reload(&mut self) -> Duration {
        let mut times: Vec<Duration> = (0..RELOADS)
            .map(|_| {
                let sent = Instant::now();
                let status = Command::new("kill")
                    .args(["-HUP", &self.child.id().to_string()])
                    .status()
                    .expect("kill -HUP");
                assert!(status.success(), "kill -HUP failed");
                loop {
                    let line = self
                        .lines
                        .recv_timeout(Duration::from_secs(120))
                        .expect("the reload finished");
                    if line.contains("configuration reloaded") {
                        break sent.elapsed();
                    }
                    assert!(
                        !line.contains("reload failed") && !line.contains("\"ERROR\""),
                        "reload failed: {line}"
                    );
                }
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ready(admin: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect(admin) else {
        return false;
    };
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200")
}

fn lines_of(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (send, receive) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// What a route lookup costs, in ns, and the memory of a range device, in bytes.
struct RouteCosts {
    alias: f64,
    destination: f64,
    host: f64,
    range_known: f64,
    range_first_use: f64,
    range_device_bytes: f64,
}

fn route_costs(devices: usize) -> RouteCosts {
    let query = |local: Ipv4Addr, destination: Option<Ipv4Addr>| RouteQuery {
        service: Service::Wsman,
        local: SocketAddr::from((local, 16992)),
        peer: SocketAddr::from(([192, 0, 2, 200], 50000)),
        original_destination: destination.map(|ip| SocketAddr::from((ip, 16992))),
        host: None,
    };
    let config = |shape| {
        Config::from_toml("fleet bench", Path::new("."), &shape_toml(shape, devices))
            .expect("the bench config is valid")
    };

    let alias_config = config(Shape::ListedByAlias);
    let listed = amtgw::fleet::build(&alias_config, None, &[]).expect("fleet");
    let alias_router = AddressRouter::new(&alias_config, &listed);
    let alias_queries: Vec<RouteQuery> =
        spread(devices).map(|i| query(alias_ip(i), None)).collect();
    let alias = ns_per_lookup(&alias_router, &alias_queries);

    let destination_config = config(Shape::ListedByDestination);
    let listed = amtgw::fleet::build(&destination_config, None, &[]).expect("fleet");
    let destination_router = AddressRouter::new(&destination_config, &listed);
    let destination_queries: Vec<RouteQuery> = spread(devices)
        .map(|i| query(Ipv4Addr::LOCALHOST, Some(device_ip(i))))
        .collect();
    let destination = ns_per_lookup(&destination_router, &destination_queries);

    // The same devices, WS-Man routed by the Host header of the first request.
    let host_toml = shape_toml(Shape::ListedByDestination, devices)
        .replace("routing = \"redirect\"", "routing = \"host\"");
    let host_config =
        Config::from_toml("fleet bench", Path::new("."), &host_toml).expect("the bench config");
    let listed = amtgw::fleet::build(&host_config, None, &[]).expect("fleet");
    let host_router = AddressRouter::new(&host_config, &listed);
    let names: Vec<String> = spread(devices).map(|i| format!("amt-{i:05}")).collect();
    let host_queries: Vec<RouteQuery> = names
        .iter()
        .map(|name| RouteQuery {
            host: Some(NamedHost::Name(name)),
            ..query(Ipv4Addr::LOCALHOST, None)
        })
        .collect();
    let host = ns_per_lookup(&host_router, &host_queries);

    let dir = tempfile::tempdir().expect("temporary directory");
    let store = TofuStore::File(Arc::new(
        PinStore::open(&dir.path().join("pins.toml")).expect("pin store"),
    ));
    let range_config = config(Shape::Range);
    let ranges =
        amtgw::fleet::Ranges::new(&range_config, Some(&store), None).expect("the range builds");
    let range_router = AddressRouter::new(&range_config, &[]).with_ranges(Arc::new(ranges));
    let range_queries: Vec<RouteQuery> = (0..devices)
        .map(|i| query(Ipv4Addr::LOCALHOST, Some(device_ip(i))))
        .collect();
    let before = machine::rss_kib(std::process::id());
    let first_use = Instant::now();
    for q in &range_queries {
        range_router.route(q).expect("a range device");
    }
    let range_first_use = first_use.elapsed().as_nanos() as f64 / devices as f64;
    let range_device_bytes = machine::rss_kib(std::process::id()).saturating_sub(before) as f64
        * 1024.0
        / devices as f64;
    let known_queries: Vec<RouteQuery> = spread(devices)
        .map(|i| query(Ipv4Addr::LOCALHOST, Some(device_ip(i))))
        .collect();
    let range_known = ns_per_lookup(&range_router, &known_queries);

    RouteCosts {
        alias,
        destination,
        host,
        range_known,
        range_first_use,
        range_device_bytes,
    }
}

/// Device indices in an order that defeats the CPU's prefetcher (a stride coprime with most
/// fleet sizes), so the lookups touch the table as a fleet's consoles would.
fn spread(devices: usize) -> impl Iterator<Item = usize> {
    (0..devices.min(4096)).map(move |k| (k * 7919) % devices)
}

fn ns_per_lookup(router: &AddressRouter, queries: &[RouteQuery<'_>]) -> f64 {
    let mut passes: Vec<f64> = (0..PASSES)
        .map(|_| {
            let started = Instant::now();
            for k in 0..LOOKUPS {
                let device = router
                    .route(std::hint::black_box(&queries[k % queries.len()]))
                    .expect("routed");
                std::hint::black_box(device);
            }
            started.elapsed().as_nanos() as f64 / LOOKUPS as f64
        })
        .collect();
    passes.sort_by(f64::total_cmp);
    passes[PASSES / 2]
}

fn report(devices: usize, baseline_rss: u64, rows: &[String], routing: &RouteCosts) -> String {
    let date = machine::command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let commit =
        machine::success_output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let mut out = format!(
        "## amtgw fleet scale\n\n\
         - date: {date}; commit {commit}; {devices} devices\n\
         - each gateway: `amtgw run`, WS-Man only, one worker, devices pinned (`trust = \"pin\"`), \
         the range `trust = \"tofu\"`; a one-device gateway takes {:.1} MiB\n\
         - reload: SIGHUP to the \"configuration reloaded\" log line, median of {RELOADS}; the \
         config is unchanged, so every device's TLS client is rebuilt and its status carried over\n\n\
         | fleet | devices at start | start to ready (ms) | memory when ready (MiB) | reload (ms) | memory per device (bytes) |\n\
         |---|---:|---:|---:|---:|---:|\n",
        baseline_rss as f64 / 1024.0
    );
    for row in rows {
        out.push_str(row);
        out.push('\n');
    }
    out.push_str(&format!(
        "\nRoute lookup in process (median of {PASSES} passes of {LOOKUPS} lookups over {} devices):\n\n\
         | lookup | ns per connection |\n|---|---:|\n\
         | alias (the local address), listed devices | {:.0} |\n\
         | original destination, listed devices | {:.0} |\n\
         | Host name of the first request (`routing = \"host\"`), listed devices | {:.0} |\n\
         | original destination, a range device already made | {:.0} |\n\
         | original destination, a range device's first use (makes it) | {:.0} |\n\n\
         A range device, once made, takes {:.0} bytes (resident memory before and after making {devices}).\n",
        devices.min(4096),
        routing.alias,
        routing.destination,
        routing.host,
        routing.range_known,
        routing.range_first_use,
        routing.range_device_bytes,
    ));
    out
}
