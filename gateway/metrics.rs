//! Prometheus metrics. Names, labels and buckets are API: they are declared here and only here,
//! and tabled in the README. Handles are resolved once per connection; the data path only does
//! atomic adds on them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

mod process;

use crate::config::MetricsSettings;
use crate::reason::Reason;
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
    pub reason: Reason,
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
    /// `rustls` or `legacy` (OpenSSL).
    pub tls_backend: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeOutcomeLabels {
    pub service: Service,
    /// `ok`, or the reason the handshake failed.
    pub outcome: &'static str,
    /// `rustls` or `legacy` (OpenSSL).
    pub tls_backend: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProxyHeaderLabels {
    pub service: Service,
    /// `v1` or `v2`.
    pub version: &'static str,
    /// `proxied` (a console's addresses, used from then on) or `local` (the load balancer's own
    /// connection: v2 LOCAL or AF_UNSPEC, v1 UNKNOWN; the socket's addresses are used).
    pub addresses: &'static str,
}

pub struct Metrics {
    pub(crate) accepted: Family<ServiceLabels, Counter>,
    pub(crate) proxy_headers: Family<ProxyHeaderLabels, Counter>,
    pub(crate) established: Family<ServiceLabels, Counter>,
    pub(crate) failed: Family<ReasonLabels, Counter>,
    pub(crate) closed: Family<OutcomeLabels, Counter>,
    pub(crate) open: Family<ServiceLabels, Gauge>,
    pub(crate) bytes: Family<DirectionLabels, Counter>,
    pub(crate) handshakes: Family<HandshakeLabels, Counter>,
    pub(crate) connect_seconds: Family<OutcomeLabels, Histogram>,
    pub(crate) handshake_seconds: Family<HandshakeOutcomeLabels, Histogram>,
    pub(crate) first_byte_seconds: Family<OutcomeLabels, Histogram>,
    pub(crate) duration_seconds: Family<OutcomeLabels, Histogram>,
    pub(crate) exchange_seconds: Family<ServiceLabels, Histogram>,
    pub(crate) client_certificate_expiry: Family<CertificateLabels, Gauge>,
    pub(crate) reloads: Family<ReloadLabels, Counter>,
    pub(crate) pin_store_errors: Family<PinStoreErrorLabels, Counter>,
    /// 1 while the PostgreSQL pin store is connected, 0 while not; absent with a file store.
    pub(crate) pin_store_connected: Family<PinStoreLabels, Gauge>,
    pub(crate) expiring: Family<ExpiringLabels, Gauge>,
    pub(crate) last_reload_success: Gauge,
    /// 1 when the last reload was applied (or none was tried), 0 when it was rejected.
    pub(crate) last_reload_successful: Gauge,
    /// `gateway.max_connections` in force, for alerts on how close `connections_open` is.
    pub(crate) connections_max: Gauge,
    pub devices: DeviceMetrics,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExpiringLabels {
    /// `client` (certificates the gateway presents) or `device` (CA-validated device
    /// certificates, as last seen in a handshake).
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PinStoreErrorLabels {
    /// Why re-reading the store failed (`pin_store_lost`, `pin_store_syntax`, ...).
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PinStoreLabels {
    /// `postgres` (the file store has no connection to report).
    pub backend: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok`, or why the reload was rejected.
    pub result: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

impl Metrics {
    /// Create every metric and register it under the `amtgw_` prefix.
    pub fn register(registry: &mut Registry, settings: MetricsSettings) -> Metrics {
        let devices = DeviceMetrics::register(registry, settings);
        let metrics = Metrics {
            accepted: Family::default(),
            proxy_headers: Family::default(),
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
            client_certificate_expiry: Family::default(),
            reloads: Family::default(),
            pin_store_errors: Family::default(),
            pin_store_connected: Family::default(),
            expiring: Family::default(),
            last_reload_success: Gauge::default(),
            last_reload_successful: Gauge::default(),
            connections_max: Gauge::default(),
            devices,
        };
        // Unprefixed: the `process_*` names every client library exports.
        registry.register_collector(Box::new(process::ProcessCollector::new()));
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
            "proxy_headers",
            "PROXY protocol headers read from load balancers, by version and whether they carried a console's addresses",
            metrics.proxy_headers.clone(),
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
        r.register(
            "connections_max",
            "gateway.max_connections: console connections allowed open at once, all services",
            metrics.connections_max.clone(),
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
            "connect_duration",
            "TCP connect time to the device, DNS included",
            Unit::Seconds,
            metrics.connect_seconds.clone(),
        );
        // The name before 0.2, inside the amtgw_device_ namespace the README keeps for
        // per-device series: the same histogram (one set of atomics, two names) until it goes
        // in the release after.
        r.register_with_unit(
            "device_connect_duration",
            "Deprecated: amtgw_connect_duration_seconds, under its old name for one release",
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
        r.register(
            "client_certificate_expiry_timestamp_seconds",
            "notAfter of each client certificate the gateway presents, unix seconds",
            metrics.client_certificate_expiry.clone(),
        );
        r.register(
            "certificates_expiring",
            "Certificates expiring within gateway.expiry_warning, by kind",
            metrics.expiring.clone(),
        );
        r.register(
            "pin_store_errors",
            "Re-reads of the pin store that failed, by kind; the pins in memory stay in force",
            metrics.pin_store_errors.clone(),
        );
        r.register(
            "pin_store_connected",
            "1 while the shared (PostgreSQL) pin store is connected, 0 while it is not: known pins stay in force, first uses are refused",
            metrics.pin_store_connected.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads, by result (ok or why it was rejected)",
            metrics.reloads.clone(),
        );
        r.register(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully, unix seconds",
            metrics.last_reload_success.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 if the last configuration reload was applied (or none was tried yet), 0 if it was rejected",
            metrics.last_reload_successful.clone(),
        );
        metrics
            .last_reload_success
            .set(crate::tls::unix_now() as i64);
        metrics.last_reload_successful.set(1);
        // Both kinds exported from the start: an alert on `> 0` must not see "no data" as
        // "nothing expiring" before the first warning.
        for kind in ["client", "device"] {
            metrics.expiring(kind);
        }
        metrics
    }

    /// Count a reload; `rejected` is the reason when it failed.
    pub(crate) fn observe_reload(&self, rejected: Option<&'static str>) {
        self.reloads
            .get_or_create_owned(&ReloadLabels {
                result: rejected.unwrap_or("ok"),
            })
            .inc();
        if rejected.is_none() {
            self.last_reload_success.set(crate::tls::unix_now() as i64);
        }
        self.last_reload_successful
            .set(i64::from(rejected.is_none()));
    }

    /// `gateway.max_connections` of the configuration in force (at start and every reload).
    /// Console connections open now, every service together (`amtgw_connections_open`
    /// summed), for the status page. Reads only the series that exist.
    pub(crate) fn open_connections(&self) -> i64 {
        Service::ALL
            .iter()
            .filter_map(|&service| self.open.get(&ServiceLabels { service }).map(|g| g.get()))
            .sum()
    }

    pub(crate) fn set_connection_limit(&self, max_connections: usize) {
        self.connections_max
            .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
    }

    pub(crate) fn observe_pin_store_error(&self, kind: &'static str) {
        self.pin_store_errors
            .get_or_create(&PinStoreErrorLabels { kind })
            .inc();
    }

    pub(crate) fn expiring(&self, kind: &'static str) -> Gauge {
        self.expiring.get_or_create_owned(&ExpiringLabels { kind })
    }

    /// Record a client certificate's expiry, labelled by its file.
    pub fn set_client_certificate_expiry(&self, certificate: &str, not_after: i64) {
        self.client_certificate_expiry
            .get_or_create_owned(&CertificateLabels {
                certificate: certificate.to_owned(),
            })
            .set(not_after);
    }

    /// Handles for one connection's data path, resolved once (`get_or_create_owned` holds
    /// no guard, so lookups can't deadlock against an insert).
    pub fn relay_observer(
        &self,
        service: Service,
        device: Option<&DeviceSeries>,
    ) -> ConnectionObserver {
        let bytes = |direction| {
            self.bytes
                .get_or_create_owned(&DirectionLabels { service, direction })
        };
        ConnectionObserver {
            to_device: bytes("to_device"),
            to_console: bytes("to_console"),
            device: device.map(|d| (d.to_device.clone(), d.to_console.clone())),
            exchange: self
                .exchange_seconds
                .get_or_create_owned(&ServiceLabels { service }),
        }
    }
}

/// Counter and histogram handles of one connection: atomics, no registry lock.
pub struct ConnectionObserver {
    pub(crate) to_device: Counter,
    pub(crate) to_console: Counter,
    /// The per-device byte counters, when per-device metrics are on.
    pub(crate) device: Option<(Counter, Counter)>,
    pub(crate) exchange: Histogram,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub device: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceOutcomeLabels {
    pub device: String,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceDirectionLabels {
    pub device: String,
    pub direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// The client certificate's file.
    pub certificate: String,
}

/// The label shared by devices beyond `metrics.max_device_series`.
pub const OVERFLOW_DEVICE: &str = "_overflow";

/// Opt-in per-device series, bounded: at most `max_device_series` devices have their own
/// label at once, and a device's series go when it has had no connection for
/// `device_series_idle`. Touched once per connection start and end, never per byte.
pub struct DeviceMetrics {
    settings: MetricsSettings,
    tracked: DashMap<String, Tracked>,
    /// Slots taken in `tracked`, reserved before inserting so the cap is never exceeded.
    slots: AtomicUsize,
    connections: Family<DeviceOutcomeLabels, Counter>,
    bytes: Family<DeviceDirectionLabels, Counter>,
    handshake_seconds: Family<DeviceLabels, Histogram>,
    certificate_expiry: Family<DeviceLabels, Gauge>,
    overflowed: Counter,
    series: Gauge,
}

struct Tracked {
    active: u32,
    last_used: Instant,
    /// Outcome labels this device has used, so expiry can remove every series it has.
    outcomes: Vec<&'static str>,
}

/// One connection's per-device handles.
pub struct DeviceSeries {
    device: String,
    to_device: Counter,
    to_console: Counter,
}

impl DeviceMetrics {
    pub fn register(registry: &mut Registry, settings: MetricsSettings) -> DeviceMetrics {
        let metrics = DeviceMetrics {
            settings,
            tracked: DashMap::new(),
            slots: AtomicUsize::new(0),
            connections: Family::default(),
            bytes: Family::default(),
            handshake_seconds: Family::new_with_constructor(latency_histogram),
            certificate_expiry: Family::default(),
            overflowed: Counter::default(),
            series: Gauge::default(),
        };
        if !metrics.settings.per_device {
            return metrics;
        }
        let r = registry.sub_registry_with_prefix("amtgw_device");
        r.register(
            "connections",
            "Connections per device, by outcome (per-device metrics)",
            metrics.connections.clone(),
        );
        r.register_with_unit(
            "relayed",
            "Bytes relayed per device, by direction (per-device metrics)",
            Unit::Bytes,
            metrics.bytes.clone(),
        );
        r.register_with_unit(
            "tls_handshake_duration",
            "TLS handshake time per device (per-device metrics)",
            Unit::Seconds,
            metrics.handshake_seconds.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the certificate the device presented, unix seconds (per-device metrics)",
            metrics.certificate_expiry.clone(),
        );
        r.register(
            "series_overflowed",
            "Connections counted under device=\"_overflow\" because metrics.max_device_series was reached",
            metrics.overflowed.clone(),
        );
        r.register(
            "series",
            "Devices with their own series now",
            metrics.series.clone(),
        );
        metrics
    }

    /// A connection to `device` starts. `None` when per-device metrics are off.
    pub fn enter(&self, device: &str) -> Option<DeviceSeries> {
        if !self.settings.per_device {
            return None;
        }
        let now = Instant::now();
        let label = match self.tracked.get_mut(device) {
            Some(mut tracked) => {
                tracked.active += 1;
                tracked.last_used = now;
                device
            }
            None if self.reserve_slot() => {
                let mut raced = false;
                self.tracked
                    .entry(device.to_owned())
                    .and_modify(|t| {
                        raced = true;
                        t.active += 1;
                        t.last_used = now;
                    })
                    .or_insert(Tracked {
                        active: 1,
                        last_used: now,
                        outcomes: Vec::new(),
                    });
                if raced {
                    self.slots.fetch_sub(1, Ordering::AcqRel);
                }
                self.series.set(self.slots.load(Ordering::Acquire) as i64);
                device
            }
            None => {
                self.overflowed.inc();
                OVERFLOW_DEVICE
            }
        };
        let bytes = |direction| {
            self.bytes.get_or_create_owned(&DeviceDirectionLabels {
                device: label.to_owned(),
                direction,
            })
        };
        Some(DeviceSeries {
            device: label.to_owned(),
            to_device: bytes("to_device"),
            to_console: bytes("to_console"),
        })
    }

    fn reserve_slot(&self) -> bool {
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.settings.max_device_series).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn observe_handshake(&self, series: &DeviceSeries, seconds: f64, not_after: Option<i64>) {
        let labels = DeviceLabels {
            device: series.device.clone(),
        };
        self.handshake_seconds
            .get_or_create_owned(&labels)
            .observe(seconds);
        if let Some(not_after) = not_after {
            self.certificate_expiry
                .get_or_create_owned(&labels)
                .set(not_after);
        }
    }

    /// The connection ended with `outcome`.
    pub fn leave(&self, series: DeviceSeries, outcome: &'static str) {
        self.connections
            .get_or_create_owned(&DeviceOutcomeLabels {
                device: series.device.clone(),
                outcome,
            })
            .inc();
        if let Some(mut tracked) = self.tracked.get_mut(&series.device) {
            tracked.active = tracked.active.saturating_sub(1);
            tracked.last_used = Instant::now();
            if !tracked.outcomes.contains(&outcome) {
                tracked.outcomes.push(outcome);
            }
        }
    }

    /// Drop the series of devices idle for `device_series_idle`; returns how many went.
    pub fn expire_idle(&self) -> usize {
        let now = Instant::now();
        let idle = self.settings.device_series_idle;
        let mut expired = Vec::new();
        self.tracked.retain(|device, tracked| {
            let keep = tracked.active > 0 || now.duration_since(tracked.last_used) < idle;
            if !keep {
                expired.push((device.clone(), std::mem::take(&mut tracked.outcomes)));
            }
            keep
        });
        for (device, outcomes) in &expired {
            for outcome in outcomes {
                self.connections.remove(&DeviceOutcomeLabels {
                    device: device.clone(),
                    outcome,
                });
            }
            for direction in ["to_device", "to_console"] {
                self.bytes.remove(&DeviceDirectionLabels {
                    device: device.clone(),
                    direction,
                });
            }
            let labels = DeviceLabels {
                device: device.clone(),
            };
            self.handshake_seconds.remove(&labels);
            self.certificate_expiry.remove(&labels);
        }
        self.slots.fetch_sub(expired.len(), Ordering::AcqRel);
        self.series.set(self.slots.load(Ordering::Acquire) as i64);
        expired.len()
    }

    pub fn enabled(&self) -> bool {
        self.settings.per_device
    }

    /// How often `expire_idle` should run.
    pub fn sweep_interval(&self) -> Duration {
        (self.settings.device_series_idle / 4)
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// The PostgreSQL pin store reports its connection and background failures here.
impl crate::tls::StoreEvents for Metrics {
    fn connected(&self, up: bool) {
        self.pin_store_connected
            .get_or_create(&PinStoreLabels {
                backend: "postgres",
            })
            .set(i64::from(up));
    }

    fn error(&self, kind: &'static str) {
        self.observe_pin_store_error(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_metrics(cap: usize, idle: Duration) -> (Registry, DeviceMetrics) {
        let mut registry = Registry::default();
        let metrics = DeviceMetrics::register(
            &mut registry,
            MetricsSettings {
                per_device: true,
                max_device_series: cap,
                device_series_idle: idle,
            },
        );
        (registry, metrics)
    }

    fn device_labels(registry: &Registry) -> std::collections::BTreeSet<String> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .filter_map(|line| {
                let start = line.find("device=\"")? + 8;
                let end = start + line[start..].find('"')?;
                Some(line[start..end].to_owned())
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn per_device_series_stay_under_the_cap_for_10000_devices_and_expire() {
        let (registry, metrics) = device_metrics(1000, Duration::from_secs(600));
        for i in 0..10_000 {
            let series = metrics.enter(&format!("amt-{i:05}")).unwrap();
            metrics.observe_handshake(&series, 0.002, Some(2_000_000_000));
            metrics.leave(series, "ok");
        }
        let labels = device_labels(&registry);
        assert_eq!(labels.len(), 1001, "1000 devices plus the overflow label");
        assert!(labels.contains(OVERFLOW_DEVICE));
        assert_eq!(metrics.overflowed.get(), 9000);
        assert_eq!(metrics.series.get(), 1000);

        // Idle devices go; the overflow series stays.
        tokio::time::advance(Duration::from_secs(601)).await;
        assert_eq!(metrics.expire_idle(), 1000);
        assert_eq!(
            device_labels(&registry).into_iter().collect::<Vec<_>>(),
            [OVERFLOW_DEVICE]
        );
        assert_eq!(metrics.series.get(), 0);

        // Freed slots are reused by new devices.
        let series = metrics.enter("amt-new").unwrap();
        metrics.leave(series, "ok");
        assert!(device_labels(&registry).contains("amt-new"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_with_an_open_connection_never_expires() {
        let (registry, metrics) = device_metrics(10, Duration::from_secs(60));
        let long_session = metrics.enter("amt-sol").unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(metrics.expire_idle(), 0);
        metrics.leave(long_session, "ok");
        assert!(device_labels(&registry).contains("amt-sol"));
    }

    #[test]
    fn per_device_metrics_are_off_by_default() {
        // The defaults of a config that says nothing about metrics.
        let config = crate::Config::from_toml(
            "minimal.toml",
            std::path::Path::new("config"),
            include_str!("../config/minimal.toml"),
        )
        .unwrap();
        let mut registry = Registry::default();
        let metrics = DeviceMetrics::register(&mut registry, config.metrics);
        assert!(metrics.enter("amt-1").is_none());
        assert!(device_labels(&registry).is_empty());
    }
}
