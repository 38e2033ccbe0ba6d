//! One console connection, start to finish: limits, route, device connect and handshake,
//! relay, and exactly one summary line (the access log) plus metrics at close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, Level, info_span};

use crate::fleet::{Device, HandshakeRecord};
use crate::gateway::Shared;
use crate::metrics::{DeviceSeries, HandshakeLabels, OutcomeLabels, ReasonLabels, ServiceLabels};
use crate::relay::{MAX_READ_SIZE, Relay};
use crate::router::RouteQuery;
use crate::service::Service;
use crate::socket;
use crate::tls::{self, Trust};
use crate::upstream::{self, UpstreamError, UpstreamTimings};

/// What every connection on one listener shares. The configuration comes from the shared
/// snapshot, loaded once per connection, so a reload applies to the next connection.
pub(crate) struct ListenerContext {
    pub(crate) service: Service,
    pub(crate) shared: Arc<Shared>,
}

/// How a connection ended.
enum Outcome {
    /// Both sides closed after relaying.
    Closed,
    /// Refused or failed before any relaying.
    Rejected { reason: &'static str, error: String },
    /// Failed or cut while relaying.
    Broken { reason: &'static str, error: String },
}

pub(crate) async fn serve(
    console: TcpStream,
    peer: SocketAddr,
    id: u64,
    ctx: Arc<ListenerContext>,
) {
    let service = ctx.service;
    let span =
        info_span!("conn", id, service = service.as_str(), %peer, device = tracing::field::Empty);
    async move {
        let accepted = Instant::now();
        let labels = ServiceLabels { service };
        let metrics = &ctx.shared.metrics;
        metrics.accepted.get_or_create(&labels).inc();
        let open = metrics.open.get_or_create_owned(&labels);
        open.inc();
        let mut console = console;
        let mut record = Record::default();
        let outcome = connection(&mut console, peer, &ctx, &mut record).await;
        open.dec();
        // Logged and counted before the console sees the close, so whoever watches the
        // console can rely on both.
        finish(&ctx, accepted, record, outcome);
        drop(console);
    }
    .instrument(span)
    .await
}

/// What the summary line reports beyond the outcome.
#[derive(Default)]
struct Record {
    device_series: Option<DeviceSeries>,
    upstream: UpstreamTimings,
    first_byte: Option<Duration>,
    to_device: u64,
    to_console: u64,
    /// Set once relaying ended: whether the device closed with TLS close_notify.
    device_close_notify: Option<bool>,
}

async fn connection(
    console: &mut TcpStream,
    peer: SocketAddr,
    ctx: &ListenerContext,
    record: &mut Record,
) -> Outcome {
    let service = ctx.service;
    let snapshot = ctx.shared.snapshot.load_full();
    let gateway = &snapshot.config.gateway;
    let Ok(_global_permit) = ctx.shared.global_limit.clone().try_acquire_owned() else {
        return Outcome::Rejected {
            reason: "limit",
            error: format!(
                "gateway.max_connections ({}) reached",
                gateway.max_connections
            ),
        };
    };
    // A reload may have just disabled the service whose listener accepted this connection.
    let Some(settings) = snapshot.service(service) else {
        return Outcome::Rejected {
            reason: "no_route",
            error: format!("service {service} is disabled"),
        };
    };
    let local = match console.local_addr() {
        Ok(local) => local,
        Err(e) => {
            return Outcome::Rejected {
                reason: "console_reset",
                error: e.to_string(),
            };
        }
    };
    let device = match snapshot.router.route(&RouteQuery {
        service,
        local,
        peer,
    }) {
        Ok(device) => device,
        Err(e) => {
            return Outcome::Rejected {
                reason: e.kind(),
                error: e.to_string(),
            };
        }
    };
    tracing::Span::current().record("device", device.name());
    let _open = device.status.open_guard();
    record.device_series = ctx.shared.metrics.devices.enter(device.name());
    let _device_permit: Option<OwnedSemaphorePermit> = match &device.limit {
        None => None,
        Some(limit) => match limit.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                return Outcome::Rejected {
                    reason: "device_limit",
                    error: format!(
                        "max_connections ({}) for device `{}` reached",
                        device.settings.max_connections.unwrap_or_default(),
                        device.name()
                    ),
                };
            }
        },
    };
    socket::tune(console, gateway.tcp_keepalive);

    // Connections still setting up when shutdown starts are cancelled, not drained; so are
    // those whose console leaves before the device answers.
    let connecting = upstream::connect(&device, service, gateway, &mut record.upstream);
    let connected = tokio::select! {
        result = connecting => result,
        () = ctx.shared.lifecycle.stopping() => {
            return Outcome::Rejected { reason: "shutdown", error: "gateway is shutting down".into() };
        }
        () = console_gone(console) => {
            return Outcome::Rejected {
                reason: "console_closed",
                error: "console closed the connection before the device handshake finished".into(),
            };
        }
    };
    observe_setup(ctx, &record.upstream, connected.as_ref().err());
    let leaf = connected
        .as_ref()
        .ok()
        .and_then(|tls| tls.get_ref().1.peer_certificates())
        .and_then(|chain| chain.first());
    observe_device(
        ctx,
        &device,
        record,
        connected.as_ref().err(),
        leaf,
        gateway.expiry_warning,
    );
    let mut tls = match connected {
        Ok(tls) => tls,
        Err(e) => {
            return Outcome::Rejected {
                reason: e.kind(),
                error: e.to_string(),
            };
        }
    };

    // Counted when relaying starts. A TLS 1.3 device that refuses the client certificate
    // does so only after this point, so such a connection is also counted as failed.
    ctx.shared
        .metrics
        .established
        .get_or_create(&ServiceLabels { service })
        .inc();
    let observer = ctx
        .shared
        .metrics
        .relay_observer(service, record.device_series.as_ref());
    let mut relay = Relay::new(
        MAX_READ_SIZE,
        settings.idle_timeout,
        service.measures_exchanges(),
        gateway.busy_poll,
    );
    let result = tokio::select! {
        result = relay.run(console, &mut tls, &observer) => Some(result),
        () = ctx.shared.lifecycle.aborted() => None,
    };
    record.first_byte = relay.first_device_byte();
    record.to_device = relay.bytes_to_device();
    record.to_console = relay.bytes_to_console();
    let Some(result) = result else {
        return Outcome::Broken {
            reason: "shutdown",
            error: "cut at the end of the shutdown drain".into(),
        };
    };
    record.device_close_notify = Some(!relay.device_closed_uncleanly());
    match result {
        Ok(()) => Outcome::Closed,
        Err(e) if e.is_handshake_failure() => Outcome::Rejected {
            reason: e.kind(),
            error: e.to_string(),
        },
        Err(e) => Outcome::Broken {
            reason: e.kind(),
            error: e.to_string(),
        },
    }
}

/// The device's `/devices` status and, when enabled, its per-device series.
fn observe_device(
    ctx: &ListenerContext,
    device: &Device,
    record: &Record,
    error: Option<&UpstreamError>,
    leaf: Option<&rustls_pki_types::CertificateDer<'_>>,
    expiry_warning: Duration,
) {
    let timings = &record.upstream;
    let Some(handshake) = timings.handshake else {
        return; // The TCP connect failed: nothing was learnt about the device's TLS.
    };
    let not_after = device
        .status
        .record_handshake(
            HandshakeRecord {
                at: tls::unix_now(),
                result: error.map_or("ok", UpstreamError::kind),
                error: error.map(ToString::to_string),
                tls_version: timings.version,
                cipher: timings.cipher,
                resumed: timings.resumed,
                certificate: None,
            },
            leaf,
        )
        // After a failed handshake the recorded certificate is the previous one: no fresh date.
        .filter(|_| error.is_none());
    // Pinned and tofu certificates are trusted whatever their dates (AMT's own may be set from
    // an unconfigured BIOS clock); only CA-validated ones stop working when they expire.
    if let (Some(not_after), Trust::Ca { .. }) = (not_after, &device.settings.tls.trust) {
        let days_left = crate::gateway::expires_within(not_after, expiry_warning);
        if device.status.set_expiring(days_left.is_some()) {
            let gauge = ctx.shared.metrics.expiring("device");
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
    if let Some(series) = &record.device_series {
        ctx.shared
            .metrics
            .devices
            .observe_handshake(series, handshake.as_secs_f64(), not_after);
    }
}

/// Resolves when the console closes or resets; stays pending once it has sent data (which
/// waits in the socket for the relay), so it never consumes bytes.
async fn console_gone(console: &TcpStream) {
    let mut probe = [0u8; 1];
    match console.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Connect and handshake histograms, labelled with the phase's own outcome: a failed handshake
/// still had a successful connect.
fn observe_setup(ctx: &ListenerContext, timings: &UpstreamTimings, error: Option<&UpstreamError>) {
    let service = ctx.service;
    let phase_outcome = |in_phase: bool| match error {
        Some(e) if in_phase => e.kind(),
        _ => "ok",
    };
    if let Some(connect) = timings.connect {
        let outcome = phase_outcome(error.is_some_and(|e| !e.is_handshake_phase()));
        ctx.shared
            .metrics
            .connect_seconds
            .get_or_create(&OutcomeLabels { service, outcome })
            .observe(connect.as_secs_f64());
    }
    if let Some(handshake) = timings.handshake {
        let outcome = phase_outcome(error.is_some_and(UpstreamError::is_handshake_phase));
        ctx.shared
            .metrics
            .handshake_seconds
            .get_or_create(&OutcomeLabels { service, outcome })
            .observe(handshake.as_secs_f64());
        if error.is_none() {
            ctx.shared
                .metrics
                .handshakes
                .get_or_create(&HandshakeLabels {
                    service,
                    handshake: if timings.resumed { "resumed" } else { "full" },
                })
                .inc();
        }
    }
}

fn finish(ctx: &ListenerContext, accepted: Instant, mut record: Record, outcome: Outcome) {
    let service = ctx.service;
    let duration = accepted.elapsed();
    let (outcome_label, error, level) = match &outcome {
        Outcome::Closed => ("ok", None, Level::INFO),
        Outcome::Rejected { reason, error } | Outcome::Broken { reason, error } => {
            ctx.shared
                .metrics
                .failed
                .get_or_create(&ReasonLabels { service, reason })
                .inc();
            let level = if matches!(*reason, "console_reset" | "shutdown") {
                Level::INFO
            } else {
                Level::WARN
            };
            (*reason, Some(error.as_str()), level)
        }
    };
    if let Some(first_byte) = record.first_byte {
        ctx.shared
            .metrics
            .first_byte_seconds
            .get_or_create(&OutcomeLabels {
                service,
                outcome: outcome_label,
            })
            .observe(first_byte.as_secs_f64());
    }
    if let Some(series) = record.device_series.take() {
        ctx.shared.metrics.devices.leave(series, outcome_label);
    }
    ctx.shared
        .metrics
        .closed
        .get_or_create(&OutcomeLabels {
            service,
            outcome: outcome_label,
        })
        .inc();
    ctx.shared
        .metrics
        .duration_seconds
        .get_or_create(&OutcomeLabels {
            service,
            outcome: outcome_label,
        })
        .observe(duration.as_secs_f64());

    // Milliseconds with microsecond resolution: readable, and no float noise in the log.
    let ms = |d: Duration| d.as_micros() as f64 / 1000.0;
    let t = &record.upstream;
    macro_rules! summary {
        ($level:expr) => {
            tracing::event!(
                $level,
                outcome = outcome_label,
                error,
                device_addr = t.addr.map(tracing::field::display),
                connect_ms = t.connect.map(ms),
                handshake_ms = t.handshake.map(ms),
                first_byte_ms = record.first_byte.map(ms),
                duration_ms = ms(duration),
                bytes_to_device = record.to_device,
                bytes_to_console = record.to_console,
                tls_version = t.version,
                cipher = t.cipher,
                resumed = t.handshake.map(|_| t.resumed),
                device_close_notify = record.device_close_notify,
                "connection closed"
            )
        };
    }
    if level == Level::WARN {
        summary!(Level::WARN);
    } else {
        summary!(Level::INFO);
    }
}
