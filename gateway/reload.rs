//! Reload: asking a running gateway for a new configuration, and what a reload changed.
//!
//! A reload builds the new snapshot and binds new listeners first; only when all of that
//! worked does the gateway swap and close the listeners no longer wanted. A reload that fails
//! (bad config, unreadable certificate, an address that cannot be bound) changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, ConfigError, DeviceSettings};
use crate::fleet::Device;
use crate::listener::{BindError, BoundAddress};
use crate::metrics::Metrics;
use crate::state::{Snapshot, SnapshotError};
use crate::tls::Trust;

/// Why a reload was rejected; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A listener would change its transparency (`routing = "tproxy"` or not) while bound.
    #[error(
        "services.{service}.routing changed to or from \"tproxy\" on {addr}, which is bound: a \
         listener is made transparent before it binds, so restart amtgw to apply this"
    )]
    Transparency {
        service: crate::service::Service,
        addr: std::net::SocketAddr,
    },
    #[error("the configuration is embedded, not a file: there is nothing to re-read")]
    NoFile,
    #[error("the gateway has stopped")]
    Stopped,
}

impl ReloadError {
    pub fn kind(&self) -> &'static str {
        match self {
            ReloadError::Config(e) => e.kind(),
            ReloadError::Snapshot(e) => e.kind(),
            ReloadError::Bind(e) => e.kind(),
            ReloadError::Transparency { .. } => "restart_needed",
            ReloadError::NoFile => "no_config_file",
            ReloadError::Stopped => "stopped",
        }
    }
}

/// What a reload changed. Its `Display` is the log line's `summary`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub devices_added: Vec<String>,
    pub devices_removed: Vec<String>,
    /// Devices in both configurations whose settings differ, with what differs (`host`,
    /// `ports`, `listen`, `server_name`, `trust`, `tls`, `client_certificate`, `limits`).
    pub devices_changed: Vec<(String, Vec<&'static str>)>,
    pub listeners_added: Vec<BoundAddress>,
    pub listeners_removed: usize,
}

impl ReloadSummary {
    /// The devices `after` has that `before` had not, the other way round, and those in both
    /// whose settings changed.
    pub(crate) fn of_devices(before: &Snapshot, after: &Snapshot) -> ReloadSummary {
        let by_name = |devices: &[Arc<Device>]| -> BTreeMap<String, Arc<Device>> {
            devices
                .iter()
                .map(|d| (d.name().to_owned(), d.clone()))
                .collect()
        };
        let (before, after) = (by_name(&before.devices), by_name(&after.devices));
        let names = |devices: &BTreeMap<String, Arc<Device>>| -> BTreeSet<String> {
            devices.keys().cloned().collect()
        };
        let devices_changed = after
            .iter()
            .filter_map(|(name, new)| {
                let old = before.get(name)?;
                let changed = settings_changed(&old.settings, &new.settings);
                (!changed.is_empty()).then(|| (name.clone(), changed))
            })
            .collect();
        ReloadSummary {
            devices_added: names(&after).difference(&names(&before)).cloned().collect(),
            devices_removed: names(&before).difference(&names(&after)).cloned().collect(),
            devices_changed,
            ..ReloadSummary::default()
        }
    }
}

/// Which of a device's settings differ between two configurations.
fn settings_changed(old: &DeviceSettings, new: &DeviceSettings) -> Vec<&'static str> {
    let trust = |settings: &DeviceSettings| match &settings.tls.trust {
        Trust::Pin(pins) => format!(
            "pin {}",
            pins.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        Trust::Ca { ca_file, .. } => format!("ca {}", ca_file.display()),
        Trust::Tofu => "tofu".to_owned(),
    };
    let client = |settings: &DeviceSettings| {
        settings
            .tls
            .client_identity
            .as_ref()
            // A renewed certificate in the same file counts as a change too.
            .map(|identity| (identity.cert_path.clone(), identity.chain.clone()))
    };
    [
        ("host", old.host != new.host),
        ("ports", old.ports != new.ports),
        ("listen", old.listen != new.listen),
        ("server_name", old.server_name != new.server_name),
        ("trust", trust(old) != trust(new)),
        (
            "tls",
            old.tls.backend != new.tls.backend || old.tls.versions != new.tls.versions,
        ),
        ("client_certificate", client(old) != client(new)),
        (
            "limits",
            (old.max_connections, old.max_connections_per_source)
                != (new.max_connections, new.max_connections_per_source),
        ),
    ]
    .into_iter()
    .filter_map(|(what, changed)| changed.then_some(what))
    .collect()
}

/// One line for the log: `devices added: b; removed: a; changed: c (host, ports); listeners
/// added: wsman 127.0.0.3:16992; listeners removed: 1`, or that nothing changed in either.
impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.devices_added.is_empty() {
            parts.push(format!("devices added: {}", self.devices_added.join(", ")));
        }
        if !self.devices_removed.is_empty() {
            parts.push(format!("removed: {}", self.devices_removed.join(", ")));
        }
        if !self.devices_changed.is_empty() {
            let changed: Vec<String> = self
                .devices_changed
                .iter()
                .map(|(name, what)| format!("{name} ({})", what.join(", ")))
                .collect();
            parts.push(format!("changed: {}", changed.join(", ")));
        }
        if !self.listeners_added.is_empty() {
            let added: Vec<String> = self
                .listeners_added
                .iter()
                .map(|b| format!("{} {}", b.service, b.addr))
                .collect();
            parts.push(format!("listeners added: {}", added.join(", ")));
        }
        if self.listeners_removed > 0 {
            parts.push(format!("listeners removed: {}", self.listeners_removed));
        }
        if parts.is_empty() {
            return f.write_str("no device or listener changed");
        }
        f.write_str(&parts.join("; "))
    }
}

/// A reload asked of the gateway; `config: None` re-reads the configuration file.
pub(crate) struct Request {
    pub(crate) config: Option<Config>,
    reply: oneshot::Sender<Result<ReloadSummary, ReloadError>>,
}

impl Request {
    /// Log, count and answer the outcome.
    pub(crate) fn answer(self, metrics: &Metrics, result: Result<ReloadSummary, ReloadError>) {
        metrics.observe_reload(result.as_ref().err().map(ReloadError::kind));
        match &result {
            Ok(summary) => tracing::info!(summary = %summary, "configuration reloaded"),
            Err(e) => {
                tracing::error!(reason = e.kind(), error = %e, "reload rejected; the running configuration stays in force")
            }
        }
        // Whoever asked may have stopped waiting; the reload stands either way.
        let _ = self.reply.send(result);
    }
}

/// Asks a running gateway to reload. Cloneable; usable from signal handlers and tests.
#[derive(Clone)]
pub struct ReloadHandle {
    requests: mpsc::Sender<Request>,
}

/// A handle and the receiving end the gateway serves.
pub(crate) fn channel() -> (ReloadHandle, mpsc::Receiver<Request>) {
    let (requests, received) = mpsc::channel(4);
    (ReloadHandle { requests }, received)
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

/// The configuration a reload asks for: the one given, or the running one's file re-read (off
/// the async threads: it reads certificates and keys too).
pub(crate) async fn next_config(
    current: &Snapshot,
    requested: Option<Config>,
) -> Result<Config, ReloadError> {
    if let Some(config) = requested {
        return Ok(config);
    }
    let path = current.config.path.clone().ok_or(ReloadError::NoFile)?;
    Ok(tokio::task::spawn_blocking(move || Config::load(&path))
        .await
        .map_err(|_| ReloadError::Stopped)??)
}
