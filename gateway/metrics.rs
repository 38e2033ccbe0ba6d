//! Prometheus metrics. Names, labels and buckets are API: they are declared here and only here,
//! and tabled in the README. Handles are resolved once per connection; the data path only does
//! atomic adds on them.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::relay::RelayObserver;
use crate::service::Service;

/// Latency buckets, 100 µs to 60 s.
const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
/// Connection lifetimes: the latency range plus the long tail of SOL and KVM sessions.
const DURATION_BUCKETS: [f64; 21] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: Service,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub service: Service,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub service: Service,
    /// `ok`, or the error kind that ended the phase or connection.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub service: Service,
    /// `to_device` or `to_console`.
    pub direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub service: Service,
    /// `full` or `resumed`.
    pub handshake: &'static str,
}

pub struct Metrics {
    pub(crate) accepted: Family<ServiceLabels, Counter>,
    pub(crate) established: Family<ServiceLabels, Counter>,
    pub(crate) failed: Family<ReasonLabels, Counter>,
    pub(crate) closed: Family<OutcomeLabels, Counter>,
    pub(crate) open: Family<ServiceLabels, Gauge>,
    pub(crate) bytes: Family<DirectionLabels, Counter>,
    pub(crate) handshakes: Family<HandshakeLabels, Counter>,
    pub(crate) connect_seconds: Family<OutcomeLabels, Histogram>,
    pub(crate) handshake_seconds: Family<OutcomeLabels, Histogram>,
    pub(crate) first_byte_seconds: Family<ServiceLabels, Histogram>,
    pub(crate) duration_seconds: Family<OutcomeLabels, Histogram>,
    pub(crate) exchange_seconds: Family<ServiceLabels, Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Metrics {
    /// Create every metric and register it under the `amtgw_` prefix.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            accepted: Family::default(),
            established: Family::default(),
            failed: Family::default(),
            closed: Family::default(),
            open: Family::default(),
            bytes: Family::default(),
            handshakes: Family::default(),
            connect_seconds: Family::new_with_constructor(latency_histogram),
            handshake_seconds: Family::new_with_constructor(latency_histogram),
            first_byte_seconds: Family::new_with_constructor(latency_histogram),
            duration_seconds: Family::new_with_constructor(duration_histogram),
            exchange_seconds: Family::new_with_constructor(latency_histogram),
        };
        let r = registry.sub_registry_with_prefix("amtgw");
        r.register(
            "build",
            "amtgw build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "connections_accepted",
            "Console connections accepted",
            metrics.accepted.clone(),
        );
        r.register(
            "connections_established",
            "Connections relayed after a successful device handshake",
            metrics.established.clone(),
        );
        r.register(
            "connections_failed",
            "Connections that ended before or during relaying, by reason",
            metrics.failed.clone(),
        );
        r.register(
            "connections_closed",
            "Connections closed, by outcome (ok or the failure reason)",
            metrics.closed.clone(),
        );
        r.register(
            "connections_open",
            "Console connections open now",
            metrics.open.clone(),
        );
        r.register_with_unit(
            "relayed",
            "Bytes relayed, by direction",
            Unit::Bytes,
            metrics.bytes.clone(),
        );
        r.register(
            "tls_handshakes",
            "Device TLS handshakes completed, full or resumed",
            metrics.handshakes.clone(),
        );
        r.register_with_unit(
            "device_connect_duration",
            "TCP connect time to the device",
            Unit::Seconds,
            metrics.connect_seconds.clone(),
        );
        r.register_with_unit(
            "tls_handshake_duration",
            "TLS handshake time with the device",
            Unit::Seconds,
            metrics.handshake_seconds.clone(),
        );
        r.register_with_unit(
            "first_byte_duration",
            "Time from the completed handshake to the device's first byte",
            Unit::Seconds,
            metrics.first_byte_seconds.clone(),
        );
        r.register_with_unit(
            "connection_duration",
            "Console connection lifetime, from accept to close",
            Unit::Seconds,
            metrics.duration_seconds.clone(),
        );
        r.register_with_unit(
            "exchange_duration",
            "WS-Man request/response latency: console's last request byte to the device's first response byte",
            Unit::Seconds,
            metrics.exchange_seconds.clone(),
        );
        metrics
    }

    /// Handles for one connection's data path, resolved once. Each lookup is its own
    /// statement: `get_or_create` returns a read guard, and holding one while another lookup
    /// inserts a new label set deadlocks the family's lock.
    pub fn relay_observer(&self, service: Service) -> ConnectionObserver {
        let to_device = self.byte_counter(service, "to_device");
        let to_console = self.byte_counter(service, "to_console");
        let exchange = self
            .exchange_seconds
            .get_or_create(&ServiceLabels { service })
            .clone();
        ConnectionObserver {
            to_device,
            to_console,
            exchange,
        }
    }

    fn byte_counter(&self, service: Service, direction: &'static str) -> Counter {
        self.bytes
            .get_or_create(&DirectionLabels { service, direction })
            .clone()
    }
}

/// Counter and histogram handles of one connection: atomics, no registry lock.
pub struct ConnectionObserver {
    to_device: Counter,
    to_console: Counter,
    exchange: Histogram,
}

impl RelayObserver for ConnectionObserver {
    fn to_device(&self, bytes: u64) {
        self.to_device.inc_by(bytes);
    }
    fn to_console(&self, bytes: u64) {
        self.to_console.inc_by(bytes);
    }
    fn exchange(&self, latency: Duration) {
        self.exchange.observe(latency.as_secs_f64());
    }
}
