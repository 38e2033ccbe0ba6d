//! Micro benchmarks of the per-connection and per-byte work: pin verification, the route
//! lookup, and the relay loop with metrics on and off. `cargo bench --bench micro`; under
//! `cargo test --all-targets` each runs once as a smoke test.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use amtgw::config::MetricsSettings;
use amtgw::metrics::Metrics;
use amtgw::relay::{MAX_READ_SIZE, NoObserver, Relay, RelayObserver};
use amtgw::router::{AddressRouter, RouteQuery, Router};
use amtgw::tls::{Fingerprints, Pin};
use amtgw::{Config, Service};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pin_verification(c: &mut Criterion) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["amt.test".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let der = cert.der().clone();
    let pins = vec![
        Pin::of_certificate(b"an older certificate"),
        Pin::of_public_key(b"another key"),
        Pin::of_certificate(der.as_ref()),
    ];
    c.bench_function("pin: fingerprint leaf and match 3 pins", |b| {
        b.iter(|| {
            let presented = Fingerprints::of(black_box(&der)).expect("parses");
            assert!(presented.match_any(&pins));
        })
    });
}

fn route_lookup(c: &mut Criterion) {
    const DEVICES: u32 = 1000;
    let mut toml = String::from("[services.wsman]\nlisten_port = 0\n");
    let pin = Pin::of_certificate(b"x");
    for i in 0..DEVICES {
        toml.push_str(&format!(
            "[[devices]]\nname = \"d{i}\"\nhost = \"192.0.2.1\"\nlisten = \"10.{}.{}.{}\"\ntrust = \"pin\"\npins = [\"{pin}\"]\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    let config = Config::from_toml("bench", Path::new("."), &toml).expect("config");
    let devices = amtgw::fleet::build(&config, None, &[]).expect("fleet");
    let router = AddressRouter::new(&config, &devices);
    let query = RouteQuery {
        service: Service::Wsman,
        local: SocketAddr::from(([10, 0, 3, 100], 16992)),
        peer: SocketAddr::from(([127, 0, 0, 1], 50000)),
        original_destination: None,
        host: None,
    };
    c.bench_function("route: alias lookup among 1000 devices", |b| {
        b.iter(|| router.route(black_box(&query)).expect("routed"))
    });
}

/// Push `total` bytes console -> device through a relay over in-memory pipes.
async fn relay_once(total: usize, observer: &(impl RelayObserver + ?Sized)) {
    let (mut console, mut console_far) = tokio::io::duplex(64 * 1024);
    let (mut device, mut device_far) = tokio::io::duplex(64 * 1024);
    let sink = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = 0;
        while let Ok(n) = device.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen += n;
        }
        device.shutdown().await.ok();
        seen
    });
    let source = tokio::spawn(async move {
        let block = vec![7u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            console.write_all(&block).await.expect("write");
            sent += block.len();
        }
        console.shutdown().await.ok();
        let mut rest = Vec::new();
        console.read_to_end(&mut rest).await.ok();
    });
    let mut relay = Relay::new(MAX_READ_SIZE, Duration::from_secs(60), true, Duration::ZERO);
    relay
        .run(&mut console_far, &mut device_far, observer)
        .await
        .expect("relay");
    source.await.expect("source");
    assert_eq!(sink.await.expect("sink"), total);
}

fn relay_throughput(c: &mut Criterion) {
    const TOTAL: usize = 16 * 1024 * 1024;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut registry = Registry::default();
    // "On" is the most expensive configuration: service counters plus per-device counters.
    let settings = MetricsSettings {
        per_device: true,
        max_device_series: 1000,
        device_series_idle: Duration::from_secs(600),
    };
    let metrics = Arc::new(Metrics::register(&mut registry, settings));
    let series = metrics.devices.enter("amt-bench");
    let observer = metrics.relay_observer(Service::Wsman, series.as_ref());
    let mut group = c.benchmark_group("relay 16 MiB in memory");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.bench_function("metrics off", |b| {
        b.iter(|| runtime.block_on(relay_once(TOTAL, &NoObserver)))
    });
    group.bench_function("metrics on", |b| {
        b.iter(|| runtime.block_on(relay_once(TOTAL, &observer)))
    });
    group.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3));
    targets = pin_verification, route_lookup, relay_throughput
}
criterion_main!(micro);
