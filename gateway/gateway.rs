//! `Gateway`: binds every listener for a validated config, runs the accept loops and the admin
//! server, and drains on shutdown.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::fleet::{self, FleetError};
use crate::listener;
use crate::metrics::Metrics;
use crate::proxy::ListenerContext;
use crate::router::{AddressRouter, Router};
use crate::service::Service;
use crate::shutdown::Lifecycle;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(
        "cannot listen for {service} on {addr}: {source}{}",
        bind_hint(source, addr)
    )]
    Bind {
        service: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
}

impl GatewayError {
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::Fleet(e) => e.kind(),
            GatewayError::Bind { .. } => "bind_failed",
        }
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

/// How the drain at shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions still open at the drain deadline, cut then.
    pub cut: usize,
}

impl DrainReport {
    pub fn drained(&self) -> bool {
        self.cut == 0
    }
}

pub struct Gateway {
    config: Config,
    listeners: Vec<(Arc<ListenerContext>, TcpListener)>,
    admin: Option<(TcpListener, Arc<AdminState>)>,
    metrics: Arc<Metrics>,
    lifecycle: Lifecycle,
}

impl Gateway {
    /// Build every device's TLS config and bind every listener. Nothing is accepted until `run`.
    pub async fn bind(config: Config) -> Result<Gateway, GatewayError> {
        let devices = fleet::build(&config)?;
        let router: Arc<dyn Router> = Arc::new(AddressRouter::new(&config, &devices));
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry, config.metrics.clone()));
        for identity in config
            .devices
            .iter()
            .filter_map(|d| d.tls.client_identity.as_ref())
        {
            if let Some(not_after) = identity.chain.first().and_then(crate::tls::not_after) {
                metrics.set_client_certificate_expiry(
                    &identity.cert_path.display().to_string(),
                    not_after,
                );
            }
        }
        let lifecycle = Lifecycle::default();
        let global_limit = Arc::new(Semaphore::new(config.gateway.max_connections));

        let mut listeners = Vec::new();
        for service in &config.services {
            let ctx = Arc::new(ListenerContext {
                service: service.clone(),
                gateway: config.gateway.clone(),
                router: router.clone(),
                metrics: metrics.clone(),
                lifecycle: lifecycle.clone(),
                global_limit: global_limit.clone(),
            });
            for ip in listen_addresses(&config, service.service) {
                let addr = SocketAddr::new(ip, service.listen_port);
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| GatewayError::Bind {
                            service: service.service.as_str(),
                            addr,
                            source,
                        })?;
                listeners.push((ctx.clone(), listener));
            }
        }
        let admin = match config.admin {
            None => None,
            Some(addr) => {
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| GatewayError::Bind {
                            service: "admin",
                            addr,
                            source,
                        })?;
                let state = Arc::new(AdminState {
                    registry,
                    lifecycle: lifecycle.clone(),
                    devices: devices.clone(),
                });
                Some((listener, state))
            }
        };
        Ok(Gateway {
            config,
            listeners,
            admin,
            metrics,
            lifecycle,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every bound plain-TCP listener, with its real port (port 0 in the config picks one).
    pub fn local_addrs(&self) -> Vec<BoundAddress> {
        self.listeners
            .iter()
            .filter_map(|(ctx, listener)| {
                Some(BoundAddress {
                    service: ctx.service.service,
                    addr: listener.local_addr().ok()?,
                })
            })
            .collect()
    }

    /// The bound address of `service` on `ip`.
    pub fn local_addr(&self, service: Service, ip: IpAddr) -> Option<SocketAddr> {
        self.local_addrs()
            .into_iter()
            .find(|b| b.service == service && b.addr.ip() == ip)
            .map(|b| b.addr)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref()?.0.local_addr().ok()
    }

    /// Serve until `shutdown` is cancelled, then drain.
    pub async fn run(self, shutdown: CancellationToken) -> DrainReport {
        let connections = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        let ids = Arc::new(AtomicU64::new(1));
        for (ctx, listener) in self.listeners {
            accept_loops.spawn(listener::accept_loop(
                listener,
                ctx,
                connections.clone(),
                ids.clone(),
            ));
        }
        accept_loops.close();
        let admin_stop = CancellationToken::new();
        if self.metrics.devices.enabled() {
            let metrics = self.metrics.clone();
            let stop = admin_stop.clone();
            tokio::spawn(async move {
                let mut sweep = tokio::time::interval(metrics.devices.sweep_interval());
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = sweep.tick() => {
                            let expired = metrics.devices.expire_idle();
                            if expired > 0 {
                                tracing::debug!(expired, "per-device metric series expired");
                            }
                        }
                    }
                }
            });
        }
        let admin_task = self.admin.map(|(listener, state)| {
            tokio::spawn(admin::serve(listener, state, admin_stop.clone()))
        });

        shutdown.cancelled().await;
        let deadline = self.config.gateway.shutdown_timeout;
        tracing::info!(
            open = connections.len(),
            deadline_s = deadline.as_secs_f64(),
            "shutting down: no new connections, draining"
        );
        self.lifecycle.begin_drain();
        accept_loops.wait().await;
        connections.close();
        let mut cut = 0;
        if tokio::time::timeout(deadline, connections.wait())
            .await
            .is_err()
        {
            cut = connections.len();
            tracing::warn!(
                cut,
                "drain deadline reached; cutting the remaining sessions"
            );
            self.lifecycle.abort();
            connections.wait().await;
        }
        admin_stop.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        DrainReport { cut }
    }
}

/// A service listens on its `bind` addresses and on every device's alias address, unless a
/// wildcard bind already covers them.
fn listen_addresses(config: &Config, service: Service) -> BTreeSet<IpAddr> {
    let Some(settings) = config.services.iter().find(|s| s.service == service) else {
        return BTreeSet::new();
    };
    let mut addresses: BTreeSet<IpAddr> = settings.bind.iter().copied().collect();
    if !addresses.iter().any(IpAddr::is_unspecified) {
        addresses.extend(config.devices.iter().filter_map(|d| d.listen));
    }
    addresses
}
