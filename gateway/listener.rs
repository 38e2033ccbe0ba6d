//! The plain-TCP listeners: which addresses to listen on, binding them, and the accept loop.
//!
//! The accept loop only accepts and spawns: limits, routing, the device connect and the
//! handshake all happen in the connection's own task, so a slow device never delays other
//! consoles. With data-path workers (`amtgw run`), the connection's task runs on one of them;
//! otherwise on the runtime the gateway runs on.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Routing};
use crate::limits::SourceCounts;
use crate::proxy;
use crate::recent_failures::RecentFailures;
use crate::refusals::Refusals;
use crate::service::Service;
use crate::shutdown::Lifecycle;
use crate::state::Shared;
use crate::workers::Workers;

/// After an accept error that is not one connection's (EMFILE, ENOMEM), the listener waits this
/// long before trying again, doubling up to `MAX_ACCEPT_BACKOFF`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts with backoff on errors of the listener itself, for the plain-TCP and the admin
/// listeners alike.
pub(crate) struct Acceptor {
    listener: TcpListener,
    /// Names the listener in the log: a service, or `admin`.
    what: &'static str,
    backoff: Duration,
}

impl Acceptor {
    pub(crate) fn new(listener: TcpListener, what: &'static str) -> Acceptor {
        Acceptor {
            listener,
            what,
            backoff: ACCEPT_BACKOFF,
        }
    }

    /// The next connection, or `None` after an error: at once when the error was one
    /// connection's (the console gave up between SYN and accept), after the backoff when it was
    /// the listener's (out of descriptors or memory: waiting beats spinning). Cancel-safe.
    pub(crate) async fn accept(&mut self) -> Option<(TcpStream, SocketAddr)> {
        match self.listener.accept().await {
            Ok(accepted) => {
                self.backoff = ACCEPT_BACKOFF;
                Some(accepted)
            }
            Err(e) if is_per_connection(&e) => None,
            Err(e) => {
                tracing::warn!(listener = self.what, error = %e, backoff_ms = self.backoff.as_millis() as u64, "accept failed; backing off");
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(MAX_ACCEPT_BACKOFF);
                None
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen for {service} on {addr}: {source}{}",
    bind_hint(source, addr)
)]
pub struct BindError {
    /// A service name, or `admin`.
    pub service: &'static str,
    pub addr: SocketAddr,
    pub source: io::Error,
}

impl BindError {
    pub fn kind(&self) -> &'static str {
        "bind_failed"
    }
}

fn bind_hint(error: &io::Error, addr: &SocketAddr) -> String {
    match error.kind() {
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            " (port {} is privileged: run with CAP_NET_BIND_SERVICE, or choose a port >= 1024)",
            addr.port()
        ),
        io::ErrorKind::AddrInUse => {
            " (another process listens there; stop it or change the port)".into()
        }
        io::ErrorKind::AddrNotAvailable => format!(
            " ({} is on no interface of this host; add it, e.g. `ip addr add {}/32 dev lo`)",
            addr.ip(),
            addr.ip()
        ),
        _ => String::new(),
    }
}

/// One bound plain-TCP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundAddress {
    pub service: Service,
    pub addr: SocketAddr,
}

/// A listener's identity across reloads: the service, the *configured* address (port 0 stays
/// 0, so an ephemeral listener is not rebound on every reload) and whether it is transparent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ListenerKey {
    pub(crate) service: Service,
    pub(crate) ip: IpAddr,
    pub(crate) port: u16,
    /// `IP_TRANSPARENT`, for `routing = "tproxy"`: TPROXY hands such a listener connections
    /// addressed to any address (the devices'), and their local address is that address.
    pub(crate) transparent: bool,
}

impl ListenerKey {
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }
}

/// A service listens on its `bind` addresses, and with alias routing on every device's alias
/// address too, unless a wildcard bind already covers them.
pub(crate) fn listener_keys(config: &Config) -> BTreeSet<ListenerKey> {
    let mut keys = BTreeSet::new();
    for settings in &config.services {
        let mut addresses: BTreeSet<IpAddr> = settings.bind.iter().copied().collect();
        // A wildcard covers the aliases of its own address family only.
        let covered = |alias: &IpAddr| {
            addresses
                .iter()
                .any(|a| a.is_unspecified() && a.is_ipv4() == alias.is_ipv4())
        };
        // Consoles of a service routed by original destination dial the devices' own
        // addresses: an alias would only be one more address to reach the gateway itself.
        // Behind a load balancer (PROXY protocol) the aliases are addresses consoles dial on
        // the balancer; the header's destination carries them, and the gateway need not own
        // them.
        let aliases: Vec<IpAddr> = match settings.routing {
            Routing::Alias if settings.proxy_protocol.is_none() => config
                .devices
                .iter()
                .filter_map(|d| d.listen)
                .filter(|alias| !covered(alias))
                .collect(),
            // With routing by Host, consoles reach the bind addresses by device names that
            // resolve to them; an alias would select nothing.
            Routing::Alias | Routing::Redirect | Routing::Tproxy | Routing::Host => Vec::new(),
        };
        addresses.extend(aliases);
        keys.extend(addresses.into_iter().map(|ip| ListenerKey {
            service: settings.service,
            ip,
            port: settings.listen_port,
            transparent: settings.routing == Routing::Tproxy,
        }));
    }
    keys
}

pub(crate) async fn bind(
    service: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        service,
        addr,
        source,
    })
}

pub(crate) async fn bind_key(key: ListenerKey) -> Result<TcpListener, BindError> {
    let service = key.service.as_str();
    match key.transparent {
        false => bind(service, key.addr()).await,
        true => bind_transparent(key.addr()).map_err(|source| BindError {
            service,
            addr: key.addr(),
            source,
        }),
    }
}

/// A listener TPROXY can hand connections for any address to. `IP_TRANSPARENT` (the same flag
/// as `IPV6_TRANSPARENT`, which a dual-stack `::` listener is given) must be set before the
/// bind, and needs `CAP_NET_ADMIN`.
fn bind_transparent(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    let options = SockRef::from(&socket);
    match addr {
        SocketAddr::V4(_) => options.set_ip_transparent_v4(true),
        SocketAddr::V6(_) => options.set_ip_transparent_v6(true),
    }
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot make it transparent (IP_TRANSPARENT, for routing = \"tproxy\"; needs CAP_NET_ADMIN): {e}"),
        )
    })?;
    socket.bind(addr)?;
    // The kernel caps it at net.core.somaxconn.
    socket.listen(4096)
}

/// What every connection on one listener shares.
pub(crate) struct ListenerContext {
    pub(crate) service: Service,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sources: Arc<SourceCounts>,
    pub(crate) refusals: Arc<Refusals>,
    pub(crate) recent_failures: Arc<RecentFailures>,
    pub(crate) lifecycle: Lifecycle,
}

impl ListenerContext {
    /// The context of a connection accepted now: the configuration in force at this moment.
    fn connection(&self) -> proxy::Context {
        proxy::Context {
            service: self.service,
            snapshot: self.shared.snapshot.load_full(),
            metrics: self.shared.metrics.clone(),
            global_limit: self.shared.global_limit.clone(),
            sources: self.sources.clone(),
            refusals: self.refusals.clone(),
            recent_failures: self.recent_failures.clone(),
            lifecycle: self.lifecycle.clone(),
        }
    }
}

/// Accept until the gateway shuts down or a reload removes this listener (`stop`).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: ListenerContext,
    stop: CancellationToken,
    connections: TaskTracker,
    ids: Arc<AtomicU64>,
    workers: Option<Arc<Workers>>,
) {
    let mut acceptor = Acceptor::new(listener, ctx.service.as_str());
    loop {
        let accepted = tokio::select! {
            biased;
            () = ctx.lifecycle.stopping() => break,
            () = stop.cancelled() => break,
            accepted = acceptor.accept() => accepted,
        };
        let Some((socket, peer)) = accepted else {
            continue;
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let connection = ctx.connection();
        let Some(workers) = &workers else {
            connections.spawn(proxy::serve(socket, peer, id, connection));
            continue;
        };
        let handed = workers.spawn_connection(&connections, socket, move |socket| {
            proxy::serve(socket, peer, id, connection)
        });
        if let Err(error) = handed {
            tracing::warn!(service = ctx.service.as_str(), %peer, reason = "worker_handoff", %error, "connection closed: it could not be handed to a worker");
        }
    }
}

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
