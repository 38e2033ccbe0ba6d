//! One console connection, start to finish: limits, route, device connect and handshake,
//! relay. What happened is told to a [`Recorder`], which keeps the metrics, the device's
//! status and exactly one summary line (the access log) at close.

mod host;
mod record;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, info_span};

use crate::config::Routing;
use crate::fleet::Device;
use crate::http_head::HeadError;
use crate::limits::{Source, SourceCounts};
use crate::metrics::Metrics;
use crate::proxy_protocol::{self, Addresses, ReadHeaderError};
use crate::reason::Reason;
use crate::recent_failures::RecentFailures;
use crate::refusals::Refusals;
use crate::relay::{MAX_READ_SIZE, Peer, Relay, RelayError};
use crate::router::{RouteError, RouteQuery};
use crate::service::Service;
use crate::shutdown::Lifecycle;
use crate::socket;
use crate::state::Snapshot;
use crate::upstream::{self, UpstreamError};
use crate::vnc::{self, KvmError, ViewerError};

use record::Recorder;

/// What one connection needs from the gateway, and nothing more. The snapshot is the one in
/// force when the connection was accepted: a reload applies to the next connection.
pub(crate) struct Context {
    pub(crate) service: Service,
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) metrics: Arc<Metrics>,
    /// `gateway.max_connections`.
    pub(crate) global_limit: Arc<Semaphore>,
    /// Open connections per console address, gateway-wide.
    pub(crate) sources: Arc<SourceCounts>,
    pub(crate) refusals: Arc<Refusals>,
    /// The status page's list of failed connections.
    pub(crate) recent_failures: Arc<RecentFailures>,
    pub(crate) lifecycle: Lifecycle,
}

/// Why a connection failed; [`ConnectionError::reason`] names it in logs and metrics.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("gateway.max_connections ({max}) reached")]
    Limit { max: usize },
    #[error("{from} has {max} connections open, its limit ({key})")]
    SourceLimit {
        from: Source,
        max: usize,
        key: &'static str,
    },
    /// The listener expects PROXY protocol, and the connection comes from outside
    /// `proxy_protocol_from`: its header would be believed from anyone.
    #[error(
        "{from} is no load balancer of services.{service}.proxy_protocol_from, so its PROXY protocol header cannot be believed"
    )]
    ProxyUntrusted { from: SocketAddr, service: Service },
    #[error(transparent)]
    ProxyHeader(ReadHeaderError),
    #[error("the console sent nothing for {after:?} (gateway.console_first_byte_timeout)")]
    ConsoleTimeout { after: Duration },
    /// A reload disabled the service whose listener accepted the connection.
    #[error("service {service} is disabled")]
    ServiceDisabled { service: Service },
    /// The console's socket failed before relaying.
    #[error(transparent)]
    Console(io::Error),
    #[error(transparent)]
    Route(#[from] RouteError),
    /// `routing = "redirect"`, and the kernel could not say where the console was going.
    #[error(
        "routing = \"redirect\", but the kernel knows no original destination for this connection ({0}); is the NAT REDIRECT rule in place?"
    )]
    OriginalDestination(io::Error),
    #[error("max_connections ({max}) for device `{device}` reached")]
    DeviceLimit { device: String, max: usize },
    #[error("gateway is shutting down")]
    ShuttingDown,
    #[error("console reset the connection before the device handshake finished")]
    ConsoleLeft,
    #[error("console closed the connection without sending anything")]
    ConsoleSilent,
    #[error("console closed the connection before its request head was complete")]
    ConsoleClosedInHead,
    /// `routing = "host"`: the console's first request head was refused.
    #[error("first request refused: {0} ({kind})", kind = .0.kind())]
    FirstRequest(HeadError),
    /// `routing = "host"`: a later request on the connection was refused; the requests before
    /// it were relayed and answered.
    #[error("later request refused, connection closed: {0} ({kind})", kind = .0.kind())]
    LaterRequest(HeadError),
    #[error(
        "the request names {host}, port {port}: routing by Host takes no port, 16992 or the port the console reached ({reached})"
    )]
    HostPort {
        host: String,
        port: u16,
        reached: u16,
    },
    /// Boxed: it is the largest variant by far, and every connection returns this type.
    #[error(transparent)]
    Upstream(Box<UpstreamError>),
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error("cut at the end of the shutdown drain")]
    CutAtDrain,
    /// `services.vnc`: the viewer's side of the RFB handshake failed.
    #[error("VNC viewer: {0} ({kind})", kind = .0.kind())]
    Viewer(ViewerError),
    /// `services.vnc`: opening KVM on the device failed.
    #[error("KVM: {0} ({kind})", kind = .0.kind())]
    Kvm(KvmError),
}

impl From<UpstreamError> for ConnectionError {
    fn from(error: UpstreamError) -> ConnectionError {
        ConnectionError::Upstream(Box::new(error))
    }
}

impl ConnectionError {
    pub(crate) fn reason(&self) -> Reason {
        match self {
            ConnectionError::Limit { .. } => Reason::Limit,
            ConnectionError::SourceLimit { .. } => Reason::SourceLimit,
            ConnectionError::ProxyUntrusted { .. } => Reason::ProxyUntrusted,
            ConnectionError::ProxyHeader(_) => Reason::ProxyHeader,
            ConnectionError::ConsoleTimeout { .. } => Reason::ConsoleTimeout,
            ConnectionError::ServiceDisabled { .. } => Reason::NoRoute,
            ConnectionError::Console(_) => Reason::ConsoleReset,
            ConnectionError::Route(e) => e.reason(),
            ConnectionError::OriginalDestination(_) => Reason::NoRoute,
            ConnectionError::DeviceLimit { .. } => Reason::DeviceLimit,
            ConnectionError::ShuttingDown | ConnectionError::CutAtDrain => Reason::Shutdown,
            ConnectionError::ConsoleLeft
            | ConnectionError::ConsoleSilent
            | ConnectionError::ConsoleClosedInHead => Reason::ConsoleClosed,
            ConnectionError::FirstRequest(e) | ConnectionError::LaterRequest(e) => match e {
                HeadError::TooLarge => Reason::HeadTooLarge,
                HeadError::HostMismatch { .. } => Reason::HostMismatch,
                _ => Reason::BadRequest,
            },
            ConnectionError::HostPort { .. } => Reason::NoRoute,
            ConnectionError::Upstream(e) => e.reason(),
            ConnectionError::Relay(e) => e.reason(),
            ConnectionError::Viewer(e) => e.reason(),
            ConnectionError::Kvm(e) => e.reason(),
        }
    }

    /// With routing by `Host`, the HTTP status a console is answered with when its connection
    /// fails after its first request head was read and before relaying began; `None` for
    /// failures that get no answer.
    fn http_status(&self) -> Option<u16> {
        match self {
            ConnectionError::FirstRequest(e) => Some(e.status()),
            ConnectionError::HostPort { .. } => Some(421),
            ConnectionError::Route(e) if e.reason() == Reason::NoRoute => Some(421),
            ConnectionError::Route(_)
            | ConnectionError::DeviceLimit { .. }
            | ConnectionError::SourceLimit { .. } => Some(503),
            ConnectionError::Upstream(_) => Some(502),
            _ => None,
        }
    }
}

pub(crate) async fn serve(console: TcpStream, peer: SocketAddr, id: u64, ctx: Context) {
    let service = ctx.service;
    let empty = tracing::field::Empty;
    let span = info_span!(
        "conn",
        id,
        service = service.as_str(),
        peer = empty,
        via = empty,
        device = empty
    );
    // Behind a load balancer the socket's peer is the balancer (`via`); the console (`peer`)
    // is known once its header is read.
    let behind_balancer = ctx
        .snapshot
        .service(service)
        .is_some_and(|s| s.proxy_protocol.is_some());
    span.record(
        if behind_balancer { "via" } else { "peer" },
        tracing::field::display(peer),
    );
    async move {
        let mut recorder = Recorder::accepted(&ctx);
        let mut console = console;
        let mut answers_http = false;
        let result = connection(&mut console, peer, &ctx, &mut recorder, &mut answers_http).await;
        let status = match &result {
            Err(error) if answers_http => error.http_status(),
            _ => None,
        };
        if let (Some(status), Err(error)) = (status, &result) {
            // Boxed: its 4 KiB drain buffer would otherwise be part of every connection's
            // future, answered or not.
            Box::pin(host::answer(&mut console, status, error)).await;
        }
        // Logged and counted before the console sees the close, so whoever watches the
        // console can rely on both.
        recorder.finish(result.err());
        drop(console);
    }
    .instrument(span)
    .await
}

async fn connection(
    console: &mut TcpStream,
    peer: SocketAddr,
    ctx: &Context,
    recorder: &mut Recorder<'_>,
    answers_http: &mut bool,
) -> Result<(), ConnectionError> {
    let (service, snapshot) = (ctx.service, &ctx.snapshot);
    let gateway = &snapshot.config.gateway;
    let _global_permit =
        ctx.global_limit
            .clone()
            .try_acquire_owned()
            .map_err(|_| ConnectionError::Limit {
                max: gateway.max_connections,
            })?;
    let settings = snapshot
        .service(service)
        .ok_or(ConnectionError::ServiceDisabled { service })?;
    let mut local = console.local_addr().map_err(ConnectionError::Console)?;
    let mut peer = peer;
    // The address the console dialled, as a load balancer's header gives it.
    let mut header_destination = None;
    if let Some(behind) = &settings.proxy_protocol {
        if !behind.trusts(peer.ip()) {
            return Err(ConnectionError::ProxyUntrusted {
                from: peer,
                service,
            });
        }
        // Boxed, like every step only some listeners take: each connection's future is as
        // large as its largest step, held for the connection's life.
        let read = Box::pin(proxy_protocol::read_header(
            console,
            behind.accept,
            gateway.proxy_header_timeout,
        ));
        let header = tokio::select! {
            header = read => header.map_err(ConnectionError::ProxyHeader)?,
            () = ctx.lifecycle.stopping() => return Err(ConnectionError::ShuttingDown),
        };
        recorder.proxy_header(&header);
        // LOCAL (the balancer's own health check) keeps the socket's addresses.
        if let Addresses::Proxied {
            source,
            destination,
        } = header.addresses
        {
            peer = canonical(source);
            local = canonical(destination);
            header_destination = Some(local);
            tracing::Span::current().record("peer", tracing::field::display(peer));
        }
    }
    let source = Source::of(peer.ip());
    let _from_source = ctx
        .sources
        .try_enter(source, gateway.max_connections_per_source)
        .ok_or(ConnectionError::SourceLimit {
            from: source,
            max: gateway.max_connections_per_source,
            key: "gateway.max_connections_per_source",
        })?;
    let original_destination = match (settings.routing, header_destination) {
        (Routing::Alias | Routing::Host, _) => None,
        // Behind a load balancer the kernel knows only the balancer's connection: the
        // header says where the console was going.
        (Routing::Redirect | Routing::Tproxy, Some(destination)) => Some(destination),
        (Routing::Redirect, None) => Some(
            socket::original_destination(console, local)
                .map_err(ConnectionError::OriginalDestination)?,
        ),
        // TPROXY leaves the addresses alone: the transparent listener accepted it as the
        // device's address.
        (Routing::Tproxy, None) => Some(local),
    }
    .map(canonical);
    recorder.destination(original_destination.or(header_destination));
    // With routing by Host the console's first request head names the device: it is read
    // whole (in the time a console has for its first byte) before anything is routed.
    let first_request = match settings.routing {
        Routing::Host => {
            let limit = gateway.console_first_byte_timeout;
            let read = tokio::select! {
                read = tokio::time::timeout(limit, Box::pin(host::first_request(console))) => read,
                () = ctx.lifecycle.stopping() => return Err(ConnectionError::ShuttingDown),
            };
            let first = read.map_err(|_| ConnectionError::ConsoleTimeout { after: limit })?;
            *answers_http = matches!(first, Ok(_) | Err(ConnectionError::FirstRequest(_)));
            let first = first?;
            first.check_port(local.port())?;
            Some(first)
        }
        _ => None,
    };
    let device = snapshot.router.route(&RouteQuery {
        service,
        local,
        peer,
        original_destination,
        host: first_request.as_ref().map(host::FirstRequest::named_host),
    })?;
    recorder.routed(&device);
    let _open = device.status.open_guard();
    socket::tune(console, gateway.tcp_keepalive);

    // The console speaks first in every AMT protocol. Until it has, the device is not
    // contacted: AMT firmware holds only a few TLS sessions, and an idle console must not
    // occupy one. (With routing by Host it has already sent a whole request head.)
    // A VNC viewer waits for the server instead: the gateway authenticates it, and only then
    // is the device contacted.
    let mut viewer = None;
    if !service.console_speaks_first() {
        let credentials = device.settings.amt_credentials.clone().ok_or_else(|| {
            ConnectionError::Kvm(KvmError::NoCredentials {
                device: device.name().to_owned(),
            })
        })?;
        let password = device
            .settings
            .vnc_password
            .as_ref()
            .or(settings.password.as_ref());
        let handshake = Box::pin(vnc::viewer_handshake(
            console,
            password.map(|p| p.expose()),
            vnc::VIEWER_HANDSHAKE_TIMEOUT,
        ));
        let greeted = tokio::select! {
            greeted = handshake => greeted.map_err(ConnectionError::Viewer)?,
            () = ctx.lifecycle.stopping() => return Err(ConnectionError::ShuttingDown),
        };
        viewer = Some((greeted, credentials));
    } else if first_request.is_none() {
        tokio::select! {
            spoke = first_byte(console, gateway.console_first_byte_timeout) => spoke?,
            () = ctx.lifecycle.stopping() => return Err(ConnectionError::ShuttingDown),
        }
    }
    let max_from_source = device.settings.max_connections_per_source;
    let _device_from_source = device
        .status
        .sources
        .try_enter(source, max_from_source)
        .ok_or(ConnectionError::SourceLimit {
            from: source,
            max: max_from_source,
            key: "max_connections_per_source",
        })?;
    let _device_permit = device_permit(&device)?;

    // Connections still setting up when shutdown starts are cancelled, not drained; so are
    // those whose console resets before the device answers.
    // Boxed: the handshake's state is large and is over once connected; inline, every idle
    // connection would carry its space for life.
    let connecting = Box::pin(upstream::connect(
        &device,
        service,
        gateway,
        recorder.upstream_timings(),
    ));
    let connected = tokio::select! {
        result = connecting => result,
        () = ctx.lifecycle.stopping() => return Err(ConnectionError::ShuttingDown),
        () = console_reset(console) => return Err(ConnectionError::ConsoleLeft),
    };
    recorder.device_leg(&device, connected.as_ref());
    let mut tls = connected?;
    if let Some((greeted, credentials)) = viewer {
        // Boxed like the connect: its state is over once KVM runs.
        let opening = Box::pin(vnc::open_kvm(
            &mut tls,
            &credentials,
            greeted.shared,
            gateway.handshake_timeout,
        ));
        let init = tokio::select! {
            init = opening => init.map_err(ConnectionError::Kvm)?,
            () = ctx.lifecycle.stopping() => return Err(ConnectionError::ShuttingDown),
        };
        vnc::server_init(console, &init)
            .await
            .map_err(ConnectionError::Viewer)?;
    }

    recorder.established();
    let observer = recorder.relay_observer();
    let mut relay = Relay::new(
        MAX_READ_SIZE,
        settings.idle_timeout,
        service.measures_exchanges(),
        gateway.busy_poll,
    );
    let mut later_request = None;
    let relayed = match first_request {
        None => tokio::select! {
            result = relay.run(console, &mut tls, &observer) => Some(result),
            () = ctx.lifecycle.aborted() => None,
        },
        Some(first) => {
            let mut guarded = first.guard(console);
            let relayed = tokio::select! {
                result = Box::pin(relay.run(&mut guarded, &mut tls, &observer)) => Some(result),
                () = ctx.lifecycle.aborted() => None,
            };
            later_request = guarded.failure();
            relayed
        }
    };
    recorder.relayed(&relay, relayed.is_some());
    let relayed = relayed.ok_or(ConnectionError::CutAtDrain)?;
    // AMT ends a KVM session only when the viewer does (or with a clean close, for its own
    // SessionTimeout): a device that vanished without TLS close_notify dropped it.
    if service == Service::Vnc && relayed.is_ok() && relay.device_closed_uncleanly() {
        return Err(ConnectionError::Kvm(KvmError::Dropped));
    }
    if let (Ok(()), Some(refused)) = (&relayed, later_request) {
        return Err(ConnectionError::LaterRequest(refused));
    }
    if let Err(error) = &relayed {
        // An abortive close reaches the other side as one: a console must not take a device
        // crash mid-answer for a complete answer, nor a device a console's for a finished
        // request.
        match error.reset_by() {
            Some(Peer::Device) => socket::reset_on_close(console),
            Some(Peer::Console) => socket::reset_on_close(tls.tcp()),
            None => {}
        }
    }
    Ok(relayed?)
}

/// A dual-stack listener reports IPv4 addresses as ::ffff:a.b.c.d, and so may a v1 TCP6 header.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A place under the device's own `max_connections`.
fn device_permit(device: &Device) -> Result<OwnedSemaphorePermit, ConnectionError> {
    device
        .limit
        .clone()
        .try_acquire_owned()
        .map_err(|_| ConnectionError::DeviceLimit {
            device: device.name().to_owned(),
            max: device.settings.max_connections,
        })
}

/// Waits until the console has sent something (left in the socket for the relay).
async fn first_byte(console: &TcpStream, limit: Duration) -> Result<(), ConnectionError> {
    let mut probe = [0u8; 1];
    match tokio::time::timeout(limit, console.peek(&mut probe)).await {
        Err(_) => Err(ConnectionError::ConsoleTimeout { after: limit }),
        Ok(Ok(0)) => Err(ConnectionError::ConsoleSilent),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(ConnectionError::Console(error)),
    }
}

/// Resolves when the console resets. Its first bytes wait unread in the socket for the relay,
/// so reading (or peeking) would only ever see them: the socket's error state is watched
/// instead. An orderly close is not an error and stays unseen, rightly: a console that sent its
/// request and closed its side may well be waiting for the answer (half-close).
async fn console_reset(console: &TcpStream) {
    // Resolves only with error readiness (the interest is ERROR alone), or when polling fails.
    let _ = console.ready(Interest::ERROR).await;
}

/// The pipeline alone, over loopback: no `Gateway`, no admin, no reload; a snapshot, metrics,
/// a limit and a lifecycle, as the listener hands them over.
#[cfg(test)]
mod tests {
    use super::*;

    use prometheus_client::registry::Registry;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use crate::config::Config;
    use crate::tls::Pin;

    /// A TLS echo device with a fresh self-signed certificate.
    struct EchoDevice {
        addr: SocketAddr,
        certificate: CertificateDer<'static>,
    }

    async fn echo_device() -> EchoDevice {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["amt".to_owned()]).unwrap();
        let certificate = params.self_signed(&key).unwrap().der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certificate.clone()], key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (mut rx, mut tx) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut rx, &mut tx).await;
                    let _ = tx.shutdown().await;
                });
            }
        });
        EchoDevice { addr, certificate }
    }

    /// A pipeline for one wsman device at `device`, pinned to `pinned`.
    struct Pipeline {
        registry: Registry,
        ctx_parts: (Arc<Snapshot>, Arc<Metrics>, Arc<Semaphore>, Lifecycle),
        console_side: TcpListener,
        recent_failures: Arc<RecentFailures>,
    }

    async fn pipeline(device: SocketAddr, pinned: &CertificateDer<'_>, max: usize) -> Pipeline {
        let toml = format!(
            r#"
[gateway]
max_connections = {max}
connect_timeout = "2s"
handshake_timeout = "2s"

[services.wsman]
listen_port = 0
default_device = "dut"

[services.redirection]
enabled = false

[services.dash]
enabled = false

[[devices]]
name = "dut"
host = "{ip}"
ports = {{ wsman = {port} }}
trust = "pin"
pins = ["{pin}"]
"#,
            ip = device.ip(),
            port = device.port(),
            pin = Pin::of_certificate(pinned.as_ref()),
        );
        let config = Config::from_toml("pipeline test", std::path::Path::new("."), &toml).unwrap();
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry, config.metrics.clone()));
        let limit = Arc::new(Semaphore::new(config.gateway.max_connections));
        let snapshot = Arc::new(
            Snapshot::build(config, None, Arc::new(crate::tls::NoEvents))
                .await
                .unwrap(),
        );
        Pipeline {
            registry,
            ctx_parts: (snapshot, metrics, limit, Lifecycle::default()),
            console_side: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            recent_failures: Arc::default(),
        }
    }

    impl Pipeline {
        /// Connect a console, serve that one connection to its end, and return what the
        /// console received after sending `request` and closing its sending side.
        async fn exchange(&self, request: &[u8]) -> Vec<u8> {
            let mut console = TcpStream::connect(self.console_side.local_addr().unwrap())
                .await
                .unwrap();
            let (accepted, peer) = self.console_side.accept().await.unwrap();
            let (snapshot, metrics, global_limit, lifecycle) = self.ctx_parts.clone();
            let ctx = Context {
                service: Service::Wsman,
                snapshot,
                metrics,
                global_limit,
                sources: Arc::default(),
                refusals: Arc::default(),
                recent_failures: self.recent_failures.clone(),
                lifecycle,
            };
            let served = tokio::spawn(serve(accepted, peer, 1, ctx));
            console.write_all(request).await.unwrap();
            console.shutdown().await.unwrap();
            let mut answer = Vec::new();
            // A refused console may see a reset instead of a clean close.
            let _ = console.read_to_end(&mut answer).await;
            served.await.unwrap();
            answer
        }

        /// The value of the sample whose line starts with `series`, when there is one.
        fn sample(&self, series: &str) -> Option<f64> {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
            text.lines()
                .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        }
    }

    #[tokio::test]
    async fn relays_both_ways_and_records_an_ok_close() {
        let device = echo_device().await;
        let pipeline = pipeline(device.addr, &device.certificate, 10).await;
        assert_eq!(pipeline.exchange(b"hello, device").await, b"hello, device");
        let closed = r#"amtgw_connections_closed_total{service="wsman",outcome="ok"}"#;
        assert_eq!(pipeline.sample(closed), Some(1.0));
        let relayed = r#"amtgw_relayed_bytes_total{service="wsman",direction="to_device"}"#;
        assert_eq!(pipeline.sample(relayed), Some(13.0));
        assert_eq!(
            pipeline.sample(r#"amtgw_connections_failed_total{"#),
            None,
            "nothing failed"
        );
    }

    #[tokio::test]
    async fn a_full_gateway_refuses_with_reason_limit_before_dialling() {
        let device = echo_device().await;
        let pipeline = pipeline(device.addr, &device.certificate, 1).await;
        let _the_one_place = pipeline.ctx_parts.2.clone().try_acquire_owned().unwrap();
        assert_eq!(pipeline.exchange(b"x").await, b"");
        let failed = r#"amtgw_connections_failed_total{service="wsman",reason="limit"}"#;
        assert_eq!(pipeline.sample(failed), Some(1.0));
        let connect = r#"amtgw_connect_duration_seconds_count{"#;
        assert_eq!(
            pipeline.sample(connect),
            None,
            "the device was never dialled"
        );
    }

    #[tokio::test]
    async fn a_device_presenting_another_certificate_is_refused_as_pin_mismatch() {
        let (device, impostor) = (echo_device().await, echo_device().await);
        let pipeline = pipeline(impostor.addr, &device.certificate, 10).await;
        assert_eq!(pipeline.exchange(b"secret").await, b"");
        let failed = r#"amtgw_connections_failed_total{service="wsman",reason="pin_mismatch"}"#;
        assert_eq!(pipeline.sample(failed), Some(1.0));
        let handshake = r#"amtgw_tls_handshake_duration_seconds_count{service="wsman",outcome="pin_mismatch",tls_backend="rustls"}"#;
        assert_eq!(pipeline.sample(handshake), Some(1.0));
    }

    #[tokio::test]
    async fn a_failed_connection_is_kept_for_the_status_page_with_its_device_and_reason() {
        let (device, impostor) = (echo_device().await, echo_device().await);
        let pipeline = pipeline(impostor.addr, &device.certificate, 10).await;
        pipeline.exchange(b"secret").await;
        let kept = pipeline.recent_failures.newest_first();
        let [failure] = kept.as_slice() else {
            panic!("one failure kept: {kept:?}");
        };
        assert_eq!(
            (failure.service, failure.device.as_deref(), failure.reason),
            (Service::Wsman, Some("dut"), Reason::PinMismatch)
        );
        assert!(failure.error.contains("matches no pin"), "{failure:?}");
    }

    #[tokio::test]
    async fn a_connection_still_connecting_at_shutdown_is_cancelled_with_reason_shutdown() {
        // A device that accepts TCP and never answers the TLS handshake.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                held.push(tcp);
            }
        });
        let unrelated = echo_device().await;
        let pipeline = pipeline(silent_addr, &unrelated.certificate, 10).await;
        let lifecycle = pipeline.ctx_parts.3.clone();
        let exchange = pipeline.exchange(b"anyone there?");
        let stop = async {
            // Shutdown begins once the connection is waiting on the device.
            let accepted = r#"amtgw_connections_accepted_total{service="wsman"}"#;
            while pipeline.sample(accepted).is_none() {
                tokio::task::yield_now().await;
            }
            lifecycle.begin_drain();
        };
        let (answer, ()) = tokio::join!(exchange, stop);
        assert_eq!(answer, b"");
        let failed = r#"amtgw_connections_failed_total{service="wsman",reason="shutdown"}"#;
        assert_eq!(pipeline.sample(failed), Some(1.0));
        // The routine part of stopping: no failure for the status page to list.
        assert_eq!(pipeline.recent_failures.newest_first(), vec![]);
        held.abort();
    }
}
