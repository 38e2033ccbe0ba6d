//! Shutdown: SIGTERM or SIGINT starts a graceful drain.
//!
//! Sequence: `/readyz` turns 503 -> listeners stop accepting -> connections still connecting
//! or handshaking are cancelled -> relaying sessions drain until `gateway.shutdown_timeout` ->
//! the rest are cut.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;

use crate::gateway::ReloadHandle;

/// Waits for SIGTERM or SIGINT and names the one that came. Meanwhile each SIGHUP reloads the
/// configuration through `reload`, when given (the outcome is logged and counted there).
pub async fn signal(reload: Option<&ReloadHandle>) -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok("SIGTERM"),
            _ = int.recv() => return Ok("SIGINT"),
            _ = hup.recv() => match reload {
                Some(reload) => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = reload.reload().await;
                }
                None => tracing::info!("SIGHUP ignored: this configuration is not reloadable"),
            },
        }
    }
}

/// The shared state of the gateway's shutdown, cloned into every connection.
#[derive(Clone, Default)]
pub(crate) struct Lifecycle {
    stop: CancellationToken,
    abort: CancellationToken,
    draining: Arc<AtomicBool>,
}

impl Lifecycle {
    pub(crate) async fn stopping(&self) {
        self.stop.cancelled().await
    }

    pub(crate) async fn aborted(&self) {
        self.abort.cancelled().await
    }

    pub(crate) fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.stop.cancel();
    }

    pub(crate) fn abort(&self) {
        self.abort.cancel();
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
