//! One console connection, start to finish: limits, route, device connect and handshake,
//! relay. What happened is told to a [`Recorder`], which keeps the metrics, the device's
//! status and exactly one summary line (the access log) at close.

mod record;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, info_span};

use crate::fleet::Device;
use crate::metrics::Metrics;
use crate::reason::Reason;
use crate::relay::{MAX_READ_SIZE, Relay, RelayError};
use crate::router::{RouteError, RouteQuery};
use crate::service::Service;
use crate::shutdown::Lifecycle;
use crate::socket;
use crate::state::Snapshot;
use crate::upstream::{self, UpstreamError};

use record::Recorder;

/// What one connection needs from the gateway, and nothing more. The snapshot is the one in
/// force when the connection was accepted: a reload applies to the next connection.
pub(crate) struct Context {
    pub(crate) service: Service,
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) metrics: Arc<Metrics>,
    /// `gateway.max_connections`.
    pub(crate) global_limit: Arc<Semaphore>,
    pub(crate) lifecycle: Lifecycle,
}

/// Why a connection failed; [`ConnectionError::reason`] names it in logs and metrics.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("gateway.max_connections ({max}) reached")]
    Limit { max: usize },
    /// A reload disabled the service whose listener accepted the connection.
    #[error("service {service} is disabled")]
    ServiceDisabled { service: Service },
    #[error(transparent)]
    ConsoleAddress(io::Error),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("max_connections ({max}) for device `{device}` reached")]
    DeviceLimit { device: String, max: usize },
    #[error("gateway is shutting down")]
    ShuttingDown,
    #[error("console closed the connection before the device handshake finished")]
    ConsoleLeft,
    /// Boxed: it is the largest variant by far, and every connection returns this type.
    #[error(transparent)]
    Upstream(Box<UpstreamError>),
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error("cut at the end of the shutdown drain")]
    CutAtDrain,
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
            ConnectionError::ServiceDisabled { .. } => Reason::NoRoute,
            ConnectionError::ConsoleAddress(_) => Reason::ConsoleReset,
            ConnectionError::Route(e) => e.reason(),
            ConnectionError::DeviceLimit { .. } => Reason::DeviceLimit,
            ConnectionError::ShuttingDown | ConnectionError::CutAtDrain => Reason::Shutdown,
            ConnectionError::ConsoleLeft => Reason::ConsoleClosed,
            ConnectionError::Upstream(e) => e.reason(),
            ConnectionError::Relay(e) => e.reason(),
        }
    }
}

pub(crate) async fn serve(console: TcpStream, peer: SocketAddr, id: u64, ctx: Context) {
    let service = ctx.service;
    let span =
        info_span!("conn", id, service = service.as_str(), %peer, device = tracing::field::Empty);
    async move {
        let mut recorder = Recorder::accepted(&ctx);
        let mut console = console;
        let result = connection(&mut console, peer, &ctx, &mut recorder).await;
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
    let local = console
        .local_addr()
        .map_err(ConnectionError::ConsoleAddress)?;
    let device = snapshot.router.route(&RouteQuery {
        service,
        local,
        peer,
    })?;
    recorder.routed(&device);
    let _open = device.status.open_guard();
    let _device_permit = device_permit(&device)?;
    socket::tune(console, gateway.tcp_keepalive);

    // Connections still setting up when shutdown starts are cancelled, not drained; so are
    // those whose console leaves before the device answers.
    let connecting = upstream::connect(&device, service, gateway, recorder.upstream_timings());
    let connected = tokio::select! {
        result = connecting => result,
        () = ctx.lifecycle.stopping() => return Err(ConnectionError::ShuttingDown),
        () = console_gone(console) => return Err(ConnectionError::ConsoleLeft),
    };
    recorder.device_leg(&device, connected.as_ref());
    let mut tls = connected?;

    recorder.established();
    let observer = recorder.relay_observer();
    let mut relay = Relay::new(
        MAX_READ_SIZE,
        settings.idle_timeout,
        service.measures_exchanges(),
        gateway.busy_poll,
    );
    let relayed = tokio::select! {
        result = relay.run(console, &mut tls, &observer) => Some(result),
        () = ctx.lifecycle.aborted() => None,
    };
    recorder.relayed(&relay, relayed.is_some());
    relayed.ok_or(ConnectionError::CutAtDrain)??;
    Ok(())
}

/// A place under the device's own `max_connections`, if it has one.
fn device_permit(device: &Device) -> Result<Option<OwnedSemaphorePermit>, ConnectionError> {
    let Some(limit) = &device.limit else {
        return Ok(None);
    };
    match limit.clone().try_acquire_owned() {
        Ok(permit) => Ok(Some(permit)),
        Err(_) => Err(ConnectionError::DeviceLimit {
            device: device.name().to_owned(),
            max: device.settings.max_connections.unwrap_or_default(),
        }),
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
