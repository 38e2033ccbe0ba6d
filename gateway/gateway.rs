//! `Gateway`: binds every listener for a validated config, runs the accept loops, the admin
//! server and the file watcher, applies reloads, and drains on shutdown.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activation::{ActivationError, InheritedListeners};
use crate::admin::{self, AdminLimits, AdminState};
use crate::config::Config;
use crate::expiry;
use crate::limits::SourceCounts;
use crate::listener::{self, BindError, BoundAddress, ListenerContext, ListenerKey};
use crate::metrics::Metrics;
use crate::recent_failures::RecentFailures;
use crate::refusals::{self, Refusals};
use crate::reload::{self, ReloadError, ReloadHandle, ReloadSummary, Request};
use crate::shutdown::{DelaySkip, Lifecycle};
use crate::state::{Shared, Snapshot, SnapshotError};
use crate::watch::{self, FileStamps};
use crate::workers::Workers;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Activation(#[from] ActivationError),
}

impl GatewayError {
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::Snapshot(e) => e.kind(),
            GatewayError::Bind(e) => e.kind(),
            GatewayError::Activation(e) => e.kind(),
        }
    }
}

/// The listener systemd passed for `addr`, if it did.
fn take(
    inherited: &mut InheritedListeners,
    service: &'static str,
    addr: SocketAddr,
) -> Result<Option<TcpListener>, BindError> {
    inherited.take(addr).map_err(|source| BindError {
        service,
        addr,
        source,
    })
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

/// A running accept loop, and how to stop it when a reload removes its address.
struct Listening {
    bound: BoundAddress,
    stop: CancellationToken,
}

pub struct Gateway {
    shared: Arc<Shared>,
    /// Open connections per console address, across reloads.
    sources: Arc<SourceCounts>,
    refusals: Arc<Refusals>,
    /// Written by connections, read by the status page.
    recent_failures: Arc<RecentFailures>,
    lifecycle: Lifecycle,
    /// Ends `gateway.shutdown_delay` early (a second stop signal).
    skip: DelaySkip,
    /// The watched files as they were when the config was loaded: the watcher's baseline, so
    /// an edit made before `run` starts is not missed.
    watched: FileStamps,
    pending: Vec<(ListenerKey, TcpListener)>,
    admin: Option<(TcpListener, Arc<AdminState>)>,
    requests: mpsc::Receiver<Request>,
    handle: ReloadHandle,
    /// Where connections run; `None` runs them on the runtime `run` is called on.
    workers: Option<Arc<Workers>>,
}

impl Gateway {
    /// Build every device's TLS config and bind every listener. Nothing is accepted until `run`.
    pub async fn bind(config: Config) -> Result<Gateway, GatewayError> {
        Gateway::bind_inheriting(config, InheritedListeners::default()).await
    }

    /// Like [`Gateway::bind`], taking the listeners systemd passed (socket activation) for the
    /// addresses they are bound to, binding the rest.
    pub async fn bind_inheriting(
        config: Config,
        mut inherited: InheritedListeners,
    ) -> Result<Gateway, GatewayError> {
        let watched = FileStamps::of(config.watched_files());
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry, config.metrics.clone()));
        let snapshot = Snapshot::build(config, None, metrics.clone()).await?;
        expiry::record_client_certificates(&metrics, &snapshot.config);
        metrics.set_connection_limit(snapshot.config.gateway.max_connections);
        let mut pending = Vec::new();
        for key in listener::listener_keys(&snapshot.config) {
            let listener = match take(&mut inherited, key.service.as_str(), key.addr())? {
                Some(listener) => listener,
                None => listener::bind_key(key).await?,
            };
            pending.push((key, listener));
        }
        let admin_listener = match snapshot.config.admin {
            None => None,
            Some(addr) => Some(match take(&mut inherited, "admin", addr)? {
                Some(listener) => listener,
                None => listener::bind("admin", addr).await?,
            }),
        };
        inherited.all_taken()?;
        let shared = Arc::new(Shared::new(snapshot, metrics));
        let lifecycle = Lifecycle::default();
        let recent_failures = Arc::new(RecentFailures::default());
        let admin = admin_listener.map(|listener| {
            let state = Arc::new(AdminState {
                registry,
                shared: shared.clone(),
                lifecycle: lifecycle.clone(),
                limits: AdminLimits::default(),
                recent_failures: recent_failures.clone(),
                started: tokio::time::Instant::now(),
            });
            (listener, state)
        });
        let (handle, requests) = reload::channel();
        Ok(Gateway {
            shared,
            sources: Arc::default(),
            refusals: Arc::default(),
            recent_failures,
            lifecycle,
            skip: DelaySkip::default(),
            watched,
            pending,
            admin,
            requests,
            handle,
            workers: None,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::new(self.shared.snapshot.load().config.clone())
    }

    /// Every bound plain-TCP listener, with its real port (port 0 in the config picks one).
    pub fn local_addrs(&self) -> Vec<BoundAddress> {
        self.pending
            .iter()
            .filter_map(|(key, listener)| {
                Some(BoundAddress {
                    service: key.service,
                    addr: listener.local_addr().ok()?,
                })
            })
            .collect()
    }

    /// The bound address of `service` on `ip`.
    pub fn local_addr(&self, service: crate::Service, ip: IpAddr) -> Option<SocketAddr> {
        self.local_addrs()
            .into_iter()
            .find(|b| b.service == service && b.addr.ip() == ip)
            .map(|b| b.addr)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref()?.0.local_addr().ok()
    }

    /// Changes (counting up) after every successful reload, and after the pin store was
    /// re-read because another process changed it.
    pub fn reload_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// Run every connection on these data-path workers instead of the caller's runtime.
    pub fn with_workers(mut self, workers: Arc<Workers>) -> Gateway {
        self.workers = Some(workers);
        self
    }

    /// Bound the admin listener differently from [`AdminLimits::default`] (tests use short
    /// timeouts and a small cap).
    pub fn with_admin_limits(mut self, limits: AdminLimits) -> Gateway {
        if let Some((_, state)) = &mut self.admin
            && let Some(state) = Arc::get_mut(state)
        {
            state.limits = limits;
        }
        self
    }

    /// Ends `gateway.shutdown_delay` early once `run`'s shutdown has begun (or, used before,
    /// makes the shutdown skip it): the drain starts at once.
    pub fn delay_skip(&self) -> DelaySkip {
        self.skip.clone()
    }

    /// A handle to reload the running gateway (SIGHUP, the file watcher, tests).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.handle.clone()
    }

    /// Serve until `shutdown` is cancelled; then, not ready any more, serve on for
    /// `gateway.shutdown_delay` (or until [`Gateway::delay_skip`] is used), then drain.
    pub async fn run(mut self, shutdown: CancellationToken) -> DrainReport {
        let tasks = Tasks {
            connections: TaskTracker::new(),
            accept_loops: TaskTracker::new(),
            ids: Arc::new(AtomicU64::new(1)),
        };
        let mut listening: BTreeMap<ListenerKey, Listening> = BTreeMap::new();
        for (key, listener) in std::mem::take(&mut self.pending) {
            let entry = self.spawn_accept_loop(key, listener, &tasks);
            listening.insert(key, entry);
        }
        let background = CancellationToken::new();
        let admin_task = self.admin.take().map(|(listener, state)| {
            tokio::spawn(admin::serve(listener, state, background.clone()))
        });
        self.spawn_device_series_sweep(&background);
        self.spawn_refusal_summaries(&background);
        tokio::spawn(watch::watch_files(
            self.shared.clone(),
            std::mem::take(&mut self.watched),
            self.handle.clone(),
            background.clone(),
        ));

        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(mut request) = self.requests.recv() => {
                    let result = self.reload(request.config.take(), &mut listening, &tasks).await;
                    request.answer(&self.shared.metrics, result);
                }
            }
        }

        self.withdraw(&mut listening, &tasks).await;
        let report = self.drain(&tasks).await;
        background.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        report
    }

    /// Not ready (`/readyz` 503) but serving exactly as before, reloads included, for
    /// `gateway.shutdown_delay`: a load balancer or Kubernetes' endpoints need that long to
    /// stop sending new connections, and a connection sent meanwhile must still be served,
    /// not refused.
    async fn withdraw(&mut self, listening: &mut BTreeMap<ListenerKey, Listening>, tasks: &Tasks) {
        self.lifecycle.withdraw();
        let delay = self.shared.snapshot.load().config.gateway.shutdown_delay;
        if delay.is_zero() {
            return;
        }
        tracing::info!(
            delay_s = delay.as_secs_f64(),
            open = tasks.connections.len(),
            "shutting down: /readyz is 503; still accepting until the delay ends (a second SIGTERM or SIGINT ends it)"
        );
        let until = tokio::time::sleep(delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                () = &mut until => return,
                () = self.skip.skipped() => {
                    tracing::info!("shutdown delay skipped");
                    return;
                }
                Some(mut request) = self.requests.recv() => {
                    let result = self.reload(request.config.take(), listening, tasks).await;
                    request.answer(&self.shared.metrics, result);
                }
            }
        }
    }

    /// Stop accepting, cancel connections still setting up, let relaying sessions finish
    /// until `gateway.shutdown_timeout`, then cut the rest.
    async fn drain(&self, tasks: &Tasks) -> DrainReport {
        let deadline = self.shared.snapshot.load().config.gateway.shutdown_timeout;
        tracing::info!(
            open = tasks.connections.len(),
            deadline_s = deadline.as_secs_f64(),
            "shutting down: no new connections, draining"
        );
        self.lifecycle.begin_drain();
        tasks.accept_loops.close();
        tasks.accept_loops.wait().await;
        tasks.connections.close();
        let mut cut = 0;
        if tokio::time::timeout(deadline, tasks.connections.wait())
            .await
            .is_err()
        {
            cut = tasks.connections.len();
            tracing::warn!(
                cut,
                "drain deadline reached; cutting the remaining sessions"
            );
            self.lifecycle.abort();
            tasks.connections.wait().await;
        }
        DrainReport { cut }
    }

    fn spawn_accept_loop(
        &self,
        key: ListenerKey,
        listener: TcpListener,
        tasks: &Tasks,
    ) -> Listening {
        let stop = CancellationToken::new();
        let bound = BoundAddress {
            service: key.service,
            addr: listener
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::new(key.ip, key.port)),
        };
        tracing::info!(service = key.service.as_str(), addr = %bound.addr, transparent = key.transparent, "listening");
        let ctx = ListenerContext {
            service: key.service,
            shared: self.shared.clone(),
            sources: self.sources.clone(),
            refusals: self.refusals.clone(),
            recent_failures: self.recent_failures.clone(),
            lifecycle: self.lifecycle.clone(),
        };
        tasks.accept_loops.spawn(listener::accept_loop(
            listener,
            ctx,
            stop.clone(),
            tasks.connections.clone(),
            tasks.ids.clone(),
            self.workers.clone(),
        ));
        Listening { bound, stop }
    }

    fn spawn_refusal_summaries(&self, stop: &CancellationToken) {
        let refusals = self.refusals.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(refusals::INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = every.tick() => refusals.summarise(refusals::INTERVAL),
                }
            }
            refusals.summarise(refusals::INTERVAL);
        });
    }

    fn spawn_device_series_sweep(&self, stop: &CancellationToken) {
        if !self.shared.metrics.devices.enabled() {
            return;
        }
        let metrics = self.shared.metrics.clone();
        let stop = stop.clone();
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

    /// Build the new snapshot and bind new listeners first; only when all of that worked, swap
    /// and close the listeners no longer wanted.
    async fn reload(
        &self,
        requested: Option<Config>,
        listening: &mut BTreeMap<ListenerKey, Listening>,
        tasks: &Tasks,
    ) -> Result<ReloadSummary, ReloadError> {
        let current = self.shared.snapshot.load_full();
        let config = reload::next_config(&current, requested).await?;
        let next = Snapshot::build(config, Some(&current), self.shared.metrics.clone()).await?;
        let wanted = listener::listener_keys(&next.config);
        let mut fresh = Vec::new();
        for key in wanted.iter().filter(|k| !listening.contains_key(k)) {
            if let Some(held) = listening.keys().find(|held| {
                (held.service, held.ip, held.port) == (key.service, key.ip, key.port)
                    && key.port != 0
            }) {
                return Err(ReloadError::Transparency {
                    service: held.service,
                    addr: SocketAddr::new(held.ip, held.port),
                });
            }
            fresh.push((*key, listener::bind_key(*key).await?));
        }

        let mut summary = ReloadSummary::of_devices(&current, &next);
        expiry::record_client_certificates(&self.shared.metrics, &next.config);
        self.shared
            .metrics
            .set_connection_limit(next.config.gateway.max_connections);
        if let Some(workers) = &self.workers
            && workers.len() != next.config.gateway.workers
        {
            tracing::warn!(
                running = workers.len(),
                configured = next.config.gateway.workers,
                "gateway.workers changed; it takes effect at the next restart"
            );
        }
        self.shared.install(next);

        for (key, listener) in fresh {
            let entry = self.spawn_accept_loop(key, listener, tasks);
            summary.listeners_added.push(entry.bound);
            listening.insert(key, entry);
        }
        self.shared.bump_generation();
        listening.retain(|key, entry| {
            let keep = wanted.contains(key);
            if !keep {
                entry.stop.cancel();
                summary.listeners_removed += 1;
            }
            keep
        });
        Ok(summary)
    }
}

/// The gateway's tasks and connection ids, for the life of `run`.
struct Tasks {
    connections: TaskTracker,
    accept_loops: TaskTracker,
    ids: Arc<AtomicU64>,
}
