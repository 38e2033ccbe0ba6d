//! Shutdown: SIGTERM or SIGINT starts a graceful drain; SIGHUP is reported as a reload request.
//!
//! Sequence: `/readyz` turns 503 -> listeners keep accepting and serving for
//! `gateway.shutdown_delay` (load balancers and Kubernetes endpoints take that long to stop
//! sending new connections; a second SIGTERM/SIGINT ends the delay early) -> listeners stop
//! accepting -> connections still connecting or handshaking are cancelled -> relaying sessions
//! drain until `gateway.shutdown_timeout` -> the rest are cut.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::signal::unix::{self, SignalKind};
use tokio_util::sync::CancellationToken;

/// What an operator asked for with a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGTERM or SIGINT (named): drain and stop.
    Stop(&'static str),
}

/// The signals the gateway answers, installed once. What a signal leads to is the caller's
/// business: this module knows nothing of reloads.
pub struct Signals {
    term: unix::Signal,
    int: unix::Signal,
    hup: unix::Signal,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            term: unix::signal(SignalKind::terminate())?,
            int: unix::signal(SignalKind::interrupt())?,
            hup: unix::signal(SignalKind::hangup())?,
        })
    }

    /// The next signal that came.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

/// Ends a running gateway's `gateway.shutdown_delay` early, so the drain starts at once (what a
/// second SIGTERM or SIGINT does). Taken from the gateway before it runs; skipping before the
/// shutdown began makes the coming shutdown skip its delay.
#[derive(Clone, Default)]
pub struct DelaySkip(CancellationToken);

impl DelaySkip {
    pub fn skip(&self) {
        self.0.cancel()
    }

    pub(crate) async fn skipped(&self) {
        self.0.cancelled().await
    }
}

/// The shared state of the gateway's shutdown, cloned into every connection.
#[derive(Clone, Default)]
pub(crate) struct Lifecycle {
    stop: CancellationToken,
    abort: CancellationToken,
    /// Set at the first stop request, before the delay: `/readyz` answers 503 from then on.
    withdrawn: Arc<AtomicBool>,
}

impl Lifecycle {
    pub(crate) async fn stopping(&self) {
        self.stop.cancelled().await
    }

    pub(crate) async fn aborted(&self) {
        self.abort.cancelled().await
    }

    /// Not ready any more (`/readyz` 503), while everything keeps serving.
    pub(crate) fn withdraw(&self) {
        self.withdrawn.store(true, Ordering::Release);
    }

    pub(crate) fn begin_drain(&self) {
        self.withdraw();
        self.stop.cancel();
    }

    pub(crate) fn abort(&self) {
        self.abort.cancel();
    }

    /// Whether shutdown has begun: in the delay before the drain, or draining.
    pub(crate) fn is_withdrawn(&self) -> bool {
        self.withdrawn.load(Ordering::Acquire)
    }

    /// Whether the listeners have stopped accepting.
    pub(crate) fn is_draining(&self) -> bool {
        self.stop.is_cancelled()
    }
}
