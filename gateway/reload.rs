//! Reload: asking a running gateway for a new configuration, and what a reload changed.
//!
//! A reload builds the new snapshot and binds new listeners first; only when all of that
//! worked does the gateway swap and close the listeners no longer wanted. A reload that fails
//! (bad config, unreadable certificate, an address that cannot be bound) changes nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, ConfigError};
use crate::fleet::Device;
use crate::listener::{BindError, BoundAddress};
use crate::metrics::Metrics;
use crate::state::{Snapshot, SnapshotError};

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

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub devices_added: Vec<String>,
    pub devices_removed: Vec<String>,
    pub listeners_added: Vec<BoundAddress>,
    pub listeners_removed: usize,
}

impl ReloadSummary {
    /// The devices `after` has that `before` had not, and the other way round.
    pub(crate) fn of_devices(before: &Snapshot, after: &Snapshot) -> ReloadSummary {
        let names = |devices: &[Arc<Device>]| -> BTreeSet<String> {
            devices.iter().map(|d| d.name().to_owned()).collect()
        };
        let (before, after) = (names(&before.devices), names(&after.devices));
        ReloadSummary {
            devices_added: after.difference(&before).cloned().collect(),
            devices_removed: before.difference(&after).cloned().collect(),
            ..ReloadSummary::default()
        }
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
            Ok(summary) => tracing::info!(?summary, "configuration reloaded"),
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
