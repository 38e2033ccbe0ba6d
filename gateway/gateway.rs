//! `Gateway`: binds every listener for a validated config, runs the accept loops, the admin
//! server and the file watcher, applies reloads, and drains on shutdown.
//!
//! Reload has one swap point: an `ArcSwap<Snapshot>` holding the config, the devices (with
//! their TLS configs) and the router. Each new connection loads it once; live sessions keep the
//! `Arc<Device>` they started with and are never touched. A reload that fails (bad config,
//! unreadable certificate, an address that cannot be bound) changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError, ServiceSettings};
use crate::fleet::{self, Device, FleetError};
use crate::listener;
use crate::metrics::Metrics;
use crate::proxy::ListenerContext;
use crate::router::{AddressRouter, Router};
use crate::service::Service;
use crate::shutdown::Lifecycle;
use crate::tls::{self, PinStore, PinStoreError};
use crate::workers::Workers;

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
    #[error("pin store: {0}")]
    PinStore(#[from] PinStoreError),
}

impl GatewayError {
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::Fleet(e) => e.kind(),
            GatewayError::Bind { .. } => "bind_failed",
            GatewayError::PinStore(e) => e.kind(),
        }
    }
}

/// Why a reload was rejected; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("the configuration is embedded, not a file: there is nothing to re-read")]
    NoFile,
    #[error("the gateway has stopped")]
    Stopped,
}

impl ReloadError {
    pub fn kind(&self) -> &'static str {
        match self {
            ReloadError::Config(e) => e.kind(),
            ReloadError::Gateway(e) => e.kind(),
            ReloadError::NoFile => "no_config_file",
            ReloadError::Stopped => "stopped",
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

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub devices_added: Vec<String>,
    pub devices_removed: Vec<String>,
    pub listeners_added: Vec<BoundAddress>,
    pub listeners_removed: usize,
}

/// Everything a new connection needs, swapped whole on reload.
pub(crate) struct Snapshot {
    pub(crate) config: Config,
    pub(crate) devices: Vec<Arc<Device>>,
    pub(crate) router: Arc<dyn Router>,
    pub(crate) pin_store: Option<Arc<PinStore>>,
}

impl Snapshot {
    pub(crate) fn service(&self, service: Service) -> Option<&ServiceSettings> {
        self.config.services.iter().find(|s| s.service == service)
    }
}

/// State shared by every listener and connection.
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Counts successful reloads, for whoever needs to wait for one.
    pub(crate) generation: tokio::sync::watch::Sender<u64>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) global_limit: Arc<Semaphore>,
}

/// A listener's identity across reloads: the service and the *configured* address (port 0
/// stays 0, so an ephemeral listener is not rebound on every reload).
type ListenerKey = (Service, IpAddr, u16);

struct Listening {
    bound: BoundAddress,
    stop: CancellationToken,
}

struct Request {
    config: Option<Config>,
    reply: oneshot::Sender<Result<ReloadSummary, ReloadError>>,
}

/// Asks a running gateway to reload. Cloneable; usable from signal handlers and tests.
#[derive(Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<Request>,
}

impl ReloadHandle {
    /// Re-read the configuration file (and everything it names) and apply it.
    pub async fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        self.send(None).await
    }

    /// Apply a configuration built elsewhere.
    pub async fn apply(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        self.send(Some(config)).await
    }

    async fn send(&self, config: Option<Config>) -> Result<ReloadSummary, ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { config, reply })
            .await
            .map_err(|_| ReloadError::Stopped)?;
        answer.await.map_err(|_| ReloadError::Stopped)?
    }
}

pub struct Gateway {
    shared: Arc<Shared>,
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
        let watched = FileStamps::of(config.watched_files());
        let pin_store = open_pin_store(&config, None)?;
        let devices = fleet::build(&config, pin_store.as_ref(), &[])?;
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry, config.metrics.clone()));
        record_client_certificates(&metrics, &config);
        let mut pending = Vec::new();
        for key in listener_keys(&config) {
            pending.push((key, bind(key).await?));
        }
        let admin_listener = match config.admin {
            None => None,
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| GatewayError::Bind {
                            service: "admin",
                            addr,
                            source,
                        })?,
                )
            }
        };
        let global_limit = Arc::new(Semaphore::new(config.gateway.max_connections));
        let router: Arc<dyn Router> = Arc::new(AddressRouter::new(&config, &devices));
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot {
                config,
                devices,
                router,
                pin_store,
            }),
            metrics,
            lifecycle: Lifecycle::default(),
            global_limit,
            generation: tokio::sync::watch::Sender::new(0),
        });
        let admin = admin_listener.map(|listener| {
            let state = Arc::new(AdminState {
                registry,
                shared: shared.clone(),
            });
            (listener, state)
        });
        let (sender, requests) = mpsc::channel(4);
        Ok(Gateway {
            shared,
            watched,
            pending,
            admin,
            requests,
            handle: ReloadHandle { requests: sender },
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
            .filter_map(|((service, _, _), listener)| {
                Some(BoundAddress {
                    service: *service,
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

    /// A handle to reload the running gateway (SIGHUP, the file watcher, tests).
    pub fn reload_handle(&self) -> ReloadHandle {
        self.handle.clone()
    }

    /// Serve until `shutdown` is cancelled, then drain.
    pub async fn run(mut self, shutdown: CancellationToken) -> DrainReport {
        let connections = TaskTracker::new();
        let accept_loops = TaskTracker::new();
        let ids = Arc::new(AtomicU64::new(1));
        let mut listening: BTreeMap<ListenerKey, Listening> = BTreeMap::new();
        for (key, listener) in std::mem::take(&mut self.pending) {
            let entry = self.spawn_accept_loop(key, listener, &accept_loops, &connections, &ids);
            listening.insert(key, entry);
        }
        let background = CancellationToken::new();
        let admin_task = self.admin.take().map(|(listener, state)| {
            tokio::spawn(admin::serve(listener, state, background.clone()))
        });
        self.spawn_device_series_sweep(&background);
        tokio::spawn(watch_files(
            self.shared.clone(),
            std::mem::take(&mut self.watched),
            self.handle.clone(),
            background.clone(),
        ));

        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(request) = self.requests.recv() => {
                    let result = self
                        .reload(request.config, &mut listening, &accept_loops, &connections, &ids)
                        .await;
                    self.shared.metrics.observe_reload(result.as_ref().err().map(ReloadError::kind));
                    match &result {
                        Ok(summary) => tracing::info!(?summary, "configuration reloaded"),
                        Err(e) => tracing::error!(reason = e.kind(), error = %e, "reload rejected; the running configuration stays in force"),
                    }
                    let _ = request.reply.send(result);
                }
            }
        }

        let deadline = self.shared.snapshot.load().config.gateway.shutdown_timeout;
        tracing::info!(
            open = connections.len(),
            deadline_s = deadline.as_secs_f64(),
            "shutting down: no new connections, draining"
        );
        self.shared.lifecycle.begin_drain();
        accept_loops.close();
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
            self.shared.lifecycle.abort();
            connections.wait().await;
        }
        background.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        DrainReport { cut }
    }

    fn spawn_accept_loop(
        &self,
        key: ListenerKey,
        listener: TcpListener,
        accept_loops: &TaskTracker,
        connections: &TaskTracker,
        ids: &Arc<AtomicU64>,
    ) -> Listening {
        let stop = CancellationToken::new();
        let bound = BoundAddress {
            service: key.0,
            addr: listener
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::new(key.1, key.2)),
        };
        tracing::info!(service = key.0.as_str(), addr = %bound.addr, "listening");
        let ctx = Arc::new(ListenerContext {
            service: key.0,
            shared: self.shared.clone(),
        });
        accept_loops.spawn(listener::accept_loop(
            listener,
            ctx,
            stop.clone(),
            connections.clone(),
            ids.clone(),
            self.workers.clone(),
        ));
        Listening { bound, stop }
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
        config: Option<Config>,
        listening: &mut BTreeMap<ListenerKey, Listening>,
        accept_loops: &TaskTracker,
        connections: &TaskTracker,
        ids: &Arc<AtomicU64>,
    ) -> Result<ReloadSummary, ReloadError> {
        let current = self.shared.snapshot.load_full();
        let config = match config {
            Some(config) => config,
            None => {
                let path = current.config.path.clone().ok_or(ReloadError::NoFile)?;
                tokio::task::spawn_blocking(move || Config::load(&path))
                    .await
                    .map_err(|_| ReloadError::Stopped)??
            }
        };
        let pin_store =
            open_pin_store(&config, current.pin_store.as_ref()).map_err(GatewayError::from)?;
        let devices = fleet::build(&config, pin_store.as_ref(), &current.devices)
            .map_err(GatewayError::from)?;
        let wanted: BTreeSet<ListenerKey> = listener_keys(&config).into_iter().collect();
        let mut fresh = Vec::new();
        for key in wanted.iter().filter(|k| !listening.contains_key(k)) {
            fresh.push((*key, bind(*key).await?));
        }

        let names = |devices: &[Arc<Device>]| -> BTreeSet<String> {
            devices.iter().map(|d| d.name().to_owned()).collect()
        };
        let (before, after) = (names(&current.devices), names(&devices));
        let mut summary = ReloadSummary {
            devices_added: after.difference(&before).cloned().collect(),
            devices_removed: before.difference(&after).cloned().collect(),
            ..ReloadSummary::default()
        };
        resize(
            &self.shared.global_limit,
            current.config.gateway.max_connections,
            config.gateway.max_connections,
        );
        record_client_certificates(&self.shared.metrics, &config);
        if let Some(workers) = &self.workers
            && workers.len() != config.gateway.workers
        {
            tracing::warn!(
                running = workers.len(),
                configured = config.gateway.workers,
                "gateway.workers changed; it takes effect at the next restart"
            );
        }
        let router: Arc<dyn Router> = Arc::new(AddressRouter::new(&config, &devices));
        self.shared.snapshot.store(Arc::new(Snapshot {
            config,
            devices,
            router,
            pin_store,
        }));

        for (key, listener) in fresh {
            let entry = self.spawn_accept_loop(key, listener, accept_loops, connections, ids);
            summary.listeners_added.push(entry.bound);
            listening.insert(key, entry);
        }
        self.shared.generation.send_modify(|g| *g += 1);
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

/// Keep the global limit at the configured size. Permits held by open sessions can't be taken
/// back; `forget_permits` takes what is free and the rest disappears as sessions close.
fn resize(limit: &Semaphore, old: usize, new: usize) {
    if new > old {
        limit.add_permits(new - old);
    } else if old > new {
        limit.forget_permits(old - new);
    }
}

/// Export each client certificate's expiry and warn about those inside the warning window.
fn record_client_certificates(metrics: &Metrics, config: &Config) {
    let mut files = BTreeMap::new();
    for identity in config
        .devices
        .iter()
        .filter_map(|d| d.tls.client_identity.as_ref())
    {
        if let Some(not_after) = identity.chain.first().and_then(crate::tls::not_after) {
            files.insert(identity.cert_path.display().to_string(), not_after);
        }
    }
    let mut expiring = 0;
    for (file, not_after) in &files {
        metrics.set_client_certificate_expiry(file, *not_after);
        if let Some(days) = expires_within(*not_after, config.gateway.expiry_warning) {
            expiring += 1;
            tracing::warn!(certificate = %file, days_left = days, "client certificate expires soon; devices in mutual-TLS mode will refuse it then");
        }
    }
    metrics.expiring("client").set(expiring);
}

/// Days left when `not_after` (unix seconds) falls within `window` from now (negative: expired).
pub(crate) fn expires_within(not_after: i64, window: std::time::Duration) -> Option<i64> {
    let left = not_after - tls::unix_now() as i64;
    (left < window.as_secs() as i64).then_some(left.div_euclid(86_400))
}

/// The pin store, if any device trusts on first use: the current one (re-read) when the path is
/// unchanged, else opened anew.
fn open_pin_store(
    config: &Config,
    current: Option<&Arc<PinStore>>,
) -> Result<Option<Arc<PinStore>>, PinStoreError> {
    if !config.uses_pin_store() {
        return Ok(None);
    }
    let path = &config.gateway.pin_store;
    match current {
        Some(store) if store.path() == path.as_path() => {
            store.reload()?;
            Ok(Some(store.clone()))
        }
        _ => Ok(Some(Arc::new(PinStore::open(path)?))),
    }
}

async fn bind(key: ListenerKey) -> Result<TcpListener, GatewayError> {
    let addr = SocketAddr::new(key.1, key.2);
    TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind {
            service: key.0.as_str(),
            addr,
            source,
        })
}

/// A service listens on its `bind` addresses and on every device's alias address, unless a
/// wildcard bind already covers them.
fn listener_keys(config: &Config) -> Vec<ListenerKey> {
    let mut keys = Vec::new();
    for settings in &config.services {
        let mut addresses: BTreeSet<IpAddr> = settings.bind.iter().copied().collect();
        // A wildcard covers the aliases of its own address family only.
        let covered = |alias: &IpAddr| {
            addresses
                .iter()
                .any(|a| a.is_unspecified() && a.is_ipv4() == alias.is_ipv4())
        };
        let aliases: Vec<IpAddr> = config
            .devices
            .iter()
            .filter_map(|d| d.listen)
            .filter(|alias| !covered(alias))
            .collect();
        addresses.extend(aliases);
        keys.extend(
            addresses
                .into_iter()
                .map(|ip| (settings.service, ip, settings.listen_port)),
        );
    }
    keys
}

/// Modification time and size of each watched file (`None`: missing or unreadable).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct FileStamps(Vec<(PathBuf, Option<(SystemTime, u64)>)>);

impl FileStamps {
    fn of(files: Vec<PathBuf>) -> FileStamps {
        FileStamps(
            files
                .into_iter()
                .map(|file| {
                    let stamp = std::fs::metadata(&file)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())));
                    (file, stamp)
                })
                .collect(),
        )
    }

    fn files(&self) -> Vec<PathBuf> {
        self.0.iter().map(|(f, _)| f.clone()).collect()
    }

    /// Files whose stamp differs from `earlier`'s.
    fn changed_since<'a>(&'a self, earlier: &FileStamps) -> Vec<&'a PathBuf> {
        self.0
            .iter()
            .filter(|(file, stamp)| {
                earlier
                    .0
                    .iter()
                    .find(|(f, _)| f == file)
                    .is_none_or(|(_, s)| s != stamp)
            })
            .map(|(file, _)| file)
            .collect()
    }

    /// The stamps for `files`: taken from `self` where known (so a change made while a reload
    /// was reading them is seen next time), fresh for files new to the list.
    fn carried_to(&self, files: Vec<PathBuf>) -> FileStamps {
        let fresh = FileStamps::of(
            files
                .iter()
                .filter(|f| !self.0.iter().any(|(known, _)| known == *f))
                .cloned()
                .collect(),
        );
        FileStamps(
            files
                .into_iter()
                .map(|file| {
                    let stamp = self
                        .0
                        .iter()
                        .chain(fresh.0.iter())
                        .find(|(f, _)| *f == file)
                        .and_then(|(_, s)| *s);
                    (file, stamp)
                })
                .collect(),
        )
    }
}

/// Poll the watched files' modification times; a change to the pin store alone re-reads the
/// store (the TOFU verifiers read it per handshake), any other change reloads everything.
async fn watch_files(
    shared: Arc<Shared>,
    mut seen: FileStamps,
    handle: ReloadHandle,
    stop: CancellationToken,
) {
    loop {
        let interval = shared.snapshot.load().config.gateway.watch_interval;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let now = FileStamps::of(seen.files());
        let changed = now.changed_since(&seen);
        if changed.is_empty() {
            continue;
        }
        let snapshot = shared.snapshot.load_full();
        let store_path = snapshot.pin_store.as_ref().map(|s| s.path().to_path_buf());
        let only_store = changed.iter().all(|f| Some(*f) == store_path.as_ref());
        if let (true, Some(store)) = (only_store, &snapshot.pin_store) {
            // The gateway's own writes (pins learned on first use) change the file too; only
            // a change made elsewhere (`amtgw pin --replace`) changes what is in memory.
            let before = store.snapshot();
            match store.reload() {
                Ok(()) if *store.snapshot() == *before => {}
                Ok(()) => {
                    tracing::info!(store = %store.path().display(), "pin store changed by another process; re-read");
                    shared.generation.send_modify(|g| *g += 1);
                }
                Err(e) => {
                    tracing::error!(error = %e, "pin store re-read failed; keeping the pins in memory")
                }
            }
        } else {
            tracing::info!(changed = ?changed, "watched files changed; reloading");
            // The result is logged and counted by the reload itself.
            let _ = handle.reload().await;
        }
        seen = now.carried_to(shared.snapshot.load().config.watched_files());
    }
}
