//! What one connection tells operators: the connection metrics, the device's `/devices`
//! status and per-device series, and one summary line when it closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;
use tracing::Level;

use crate::expiry::expires_within;
use crate::fleet::{Device, HandshakeRecord};
use crate::metrics::{
    ConnectionObserver, DeviceSeries, HandshakeLabels, HandshakeOutcomeLabels, OutcomeLabels,
    ProxyHeaderLabels, ReasonLabels, ServiceLabels,
};
use crate::proxy_protocol::{Addresses, Header};
use crate::reason::Reason;
use crate::recent_failures::Failure;
use crate::relay::{Relay, RelayObserver};
use crate::tls::DeviceStream;
use crate::tls::{self, Backend, Trust};
use crate::upstream::{UpstreamError, UpstreamTimings};

use super::{ConnectionError, Context};

/// Collects what the summary line reports while the connection runs, and writes it all at
/// [`Recorder::finish`].
pub(super) struct Recorder<'a> {
    ctx: &'a Context,
    accepted: Instant,
    open: Gauge,
    device_series: Option<DeviceSeries>,
    /// The device routed to, named in the status page's recent failures.
    device: Option<Arc<Device>>,
    upstream: UpstreamTimings,
    /// Where the console was going, when the network diverted it to the gateway.
    destination: Option<SocketAddr>,
    first_byte: Option<Duration>,
    to_device: u64,
    to_console: u64,
    /// Set once relaying ended: whether the device closed with TLS close_notify.
    device_close_notify: Option<bool>,
}

impl<'a> Recorder<'a> {
    pub(super) fn accepted(ctx: &'a Context) -> Recorder<'a> {
        let labels = ServiceLabels {
            service: ctx.service,
        };
        ctx.metrics.accepted.get_or_create(&labels).inc();
        let open = ctx.metrics.open.get_or_create_owned(&labels);
        open.inc();
        Recorder {
            ctx,
            accepted: Instant::now(),
            open,
            device_series: None,
            device: None,
            upstream: UpstreamTimings::default(),
            destination: None,
            first_byte: None,
            to_device: 0,
            to_console: 0,
            device_close_notify: None,
        }
    }

    /// A load balancer's PROXY protocol header was read.
    pub(super) fn proxy_header(&self, header: &Header) {
        let labels = ProxyHeaderLabels {
            service: self.ctx.service,
            version: header.version.as_str(),
            addresses: match header.addresses {
                Addresses::Proxied { .. } => "proxied",
                Addresses::Local => "local",
            },
        };
        self.ctx.metrics.proxy_headers.get_or_create(&labels).inc();
    }

    /// The original destination, for the summary line (also when no device has it).
    pub(super) fn destination(&mut self, destination: Option<SocketAddr>) {
        self.destination = destination;
    }

    pub(super) fn routed(&mut self, device: &Arc<Device>) {
        tracing::Span::current().record("device", device.name());
        self.device_series = self.ctx.metrics.devices.enter(device.name());
        self.device = Some(device.clone());
    }

    /// Filled by the upstream as far as it gets, failures included.
    pub(super) fn upstream_timings(&mut self) -> &mut UpstreamTimings {
        &mut self.upstream
    }

    /// The device leg is up or has failed: phase histograms, the device's status.
    pub(super) fn device_leg(
        &mut self,
        device: &Device,
        connected: Result<&DeviceStream, &UpstreamError>,
    ) {
        let error = connected.err();
        self.observe_setup(error);
        let leaf = connected
            .ok()
            .and_then(DeviceStream::peer_certificates)
            .and_then(|chain| chain.first());
        self.observe_device(device, error, leaf);
    }

    /// Counted when relaying starts. A TLS 1.3 device that refuses the client certificate
    /// does so only after this point, so such a connection is also counted as failed.
    pub(super) fn established(&self) {
        self.ctx
            .metrics
            .established
            .get_or_create(&ServiceLabels {
                service: self.ctx.service,
            })
            .inc();
    }

    /// Handles for the relay's per-buffer counting, resolved once.
    pub(super) fn relay_observer(&self) -> ConnectionObserver {
        self.ctx
            .metrics
            .relay_observer(self.ctx.service, self.device_series.as_ref())
    }

    /// `finished`: the relay ran to its end (it was not cut at the drain deadline).
    pub(super) fn relayed(&mut self, relay: &Relay, finished: bool) {
        self.first_byte = relay.first_device_byte();
        self.to_device = relay.bytes_to_device();
        self.to_console = relay.bytes_to_console();
        if finished {
            self.device_close_notify = Some(!relay.device_closed_uncleanly());
        }
    }

    /// Connect and handshake histograms, labelled with the phase's own outcome: a failed
    /// handshake still had a successful connect.
    fn observe_setup(&self, error: Option<&UpstreamError>) {
        let (metrics, service, timings) = (&self.ctx.metrics, self.ctx.service, &self.upstream);
        let in_phase = |handshake_phase: bool| {
            Reason::outcome(
                error
                    .filter(|e| e.is_handshake_phase() == handshake_phase)
                    .map(UpstreamError::reason),
            )
        };
        if let Some(connect) = timings.connect {
            metrics
                .connect_seconds
                .get_or_create(&OutcomeLabels {
                    service,
                    outcome: in_phase(false),
                })
                .observe(connect.as_secs_f64());
        }
        if let Some(handshake) = timings.handshake {
            let tls_backend = timings.backend.map_or("rustls", Backend::as_str);
            metrics
                .handshake_seconds
                .get_or_create(&HandshakeOutcomeLabels {
                    service,
                    outcome: in_phase(true),
                    tls_backend,
                })
                .observe(handshake.as_secs_f64());
            if error.is_none() {
                metrics
                    .handshakes
                    .get_or_create(&HandshakeLabels {
                        service,
                        handshake: if timings.resumed { "resumed" } else { "full" },
                        tls_backend,
                    })
                    .inc();
            }
        }
    }

    /// The device's `/devices` status and, when enabled, its per-device series.
    fn observe_device(
        &self,
        device: &Device,
        error: Option<&UpstreamError>,
        leaf: Option<&CertificateDer<'_>>,
    ) {
        let timings = &self.upstream;
        let Some(handshake) = timings.handshake else {
            return; // The TCP connect failed: nothing was learnt about the device's TLS.
        };
        let not_after = device
            .status
            .record_handshake(
                HandshakeRecord {
                    at: tls::unix_now(),
                    result: Reason::outcome(error.map(UpstreamError::reason)),
                    error: error.map(ToString::to_string),
                    tls_backend: timings.backend.map_or("rustls", Backend::as_str),
                    tls_version: timings.version,
                    cipher: timings.cipher,
                    resumed: timings.resumed,
                    certificate: None,
                },
                leaf,
            )
            // After a failed handshake the recorded certificate is the previous one: no fresh
            // date.
            .filter(|_| error.is_none());
        // Pinned and tofu certificates are trusted whatever their dates (AMT's own may be set
        // from an unconfigured BIOS clock); only CA-validated ones stop working when they
        // expire.
        if let (Some(not_after), Trust::Ca { .. }) = (not_after, &device.settings.tls.trust) {
            let window = self.ctx.snapshot.config.gateway.expiry_warning;
            let days_left = expires_within(not_after, window);
            if device.status.set_expiring(days_left.is_some()) {
                let gauge = self.ctx.metrics.expiring("device");
                match days_left {
                    Some(days) => {
                        gauge.inc();
                        tracing::warn!(
                            days_left = days,
                            "device certificate expires soon; connections will fail then"
                        );
                    }
                    None => {
                        gauge.dec();
                    }
                }
            }
        }
        if let Some(series) = &self.device_series {
            self.ctx
                .metrics
                .devices
                .observe_handshake(series, handshake.as_secs_f64(), not_after);
        }
    }

    /// Count the connection's end and write its summary line.
    pub(super) fn finish(mut self, failure: Option<ConnectionError>) {
        self.open.dec();
        let (metrics, service) = (&self.ctx.metrics, self.ctx.service);
        let duration = self.accepted.elapsed();
        let reason = failure.as_ref().map(ConnectionError::reason);
        let outcome = Reason::outcome(reason);
        // A session cut at the drain deadline lost whatever it was doing (a SOL console, an
        // IDE-R transfer): a failure like any other. Only connections cancelled before they
        // reached a device are the routine part of stopping.
        let cut = matches!(failure, Some(ConnectionError::CutAtDrain));
        let error = failure.map(|e| e.to_string());
        // The status page lists the failures worth a look: those the log reports as warnings
        // (refusals a flood keeps out of the log included), not routine ends. Kept before the
        // metrics are counted, so whoever saw the count finds the entry.
        if let Some(reason) = reason.filter(|r| cut || !r.is_routine()) {
            self.ctx.recent_failures.push(Failure {
                at: tls::unix_now(),
                service,
                device: self.device.as_ref().map(|d| d.name().to_owned()),
                reason,
                error: error.clone().unwrap_or_default(),
            });
        }
        if let Some(reason) = reason {
            metrics
                .failed
                .get_or_create(&ReasonLabels { service, reason })
                .inc();
        }
        let labels = OutcomeLabels { service, outcome };
        if let Some(first_byte) = self.first_byte {
            metrics
                .first_byte_seconds
                .get_or_create(&labels)
                .observe(first_byte.as_secs_f64());
        }
        if let Some(series) = self.device_series.take() {
            metrics.devices.leave(series, outcome);
        }
        metrics.closed.get_or_create(&labels).inc();
        metrics
            .duration_seconds
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        let level = match reason {
            None => Level::INFO,
            Some(_) if cut => Level::WARN,
            // Under a flood only the first refusal of each kind per interval gets a line of
            // its own; `refusals` summarises the rest.
            Some(reason) if reason.is_refusal() && !self.ctx.refusals.count(service, reason) => {
                Level::DEBUG
            }
            Some(reason) if reason.is_routine() => Level::INFO,
            Some(_) => Level::WARN,
        };
        self.summary(level, outcome, error.as_deref(), duration);
    }

    /// The access log line.
    fn summary(&self, level: Level, outcome: &str, error: Option<&str>, duration: Duration) {
        // Milliseconds with microsecond resolution: readable, and no float noise in the log.
        let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
        let t = &self.upstream;
        macro_rules! summary {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    outcome,
                    error,
                    destination = self.destination.map(tracing::field::display),
                    device_addr = t.addr.map(tracing::field::display),
                    connect_ms = t.connect.map(ms),
                    handshake_ms = t.handshake.map(ms),
                    first_byte_ms = self.first_byte.map(ms),
                    duration_ms = ms(duration),
                    bytes_to_device = self.to_device,
                    bytes_to_console = self.to_console,
                    tls_backend = t.backend.map(Backend::as_str),
                    tls_version = t.version,
                    cipher = t.cipher,
                    resumed = t.handshake.map(|_| t.resumed),
                    device_close_notify = self.device_close_notify,
                    "connection closed"
                )
            };
        }
        // `tracing` fixes an event's level where the event is written: one per level.
        if level == Level::WARN {
            summary!(Level::WARN);
        } else if level == Level::INFO {
            summary!(Level::INFO);
        } else {
            summary!(Level::DEBUG);
        }
    }
}

impl RelayObserver for ConnectionObserver {
    fn to_device(&self, bytes: u64) {
        self.to_device.inc_by(bytes);
        if let Some((to_device, _)) = &self.device {
            to_device.inc_by(bytes);
        }
    }
    fn to_console(&self, bytes: u64) {
        self.to_console.inc_by(bytes);
        if let Some((_, to_console)) = &self.device {
            to_console.inc_by(bytes);
        }
    }
    fn exchange(&self, latency: Duration) {
        self.exchange.observe(latency.as_secs_f64());
    }
}
