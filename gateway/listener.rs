//! The accept loop of one plain-TCP listener. It only accepts and spawns: limits, routing,
//! the device connect and the handshake all happen in the connection's own task, so a slow
//! device never delays other consoles. With data-path workers (`amtgw run`), the connection's
//! task runs on one of them; otherwise on the runtime the gateway runs on.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::{self, ListenerContext};
use crate::workers::Workers;

const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Accept until the gateway shuts down or a reload removes this listener (`stop`).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
    stop: CancellationToken,
    connections: TaskTracker,
    ids: Arc<AtomicU64>,
    workers: Option<Arc<Workers>>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            () = ctx.shared.lifecycle.stopping() => break,
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, peer)) => {
                backoff = Duration::from_millis(5);
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let ctx = ctx.clone();
                let Some(workers) = &workers else {
                    connections.spawn(proxy::serve(socket, peer, id, ctx));
                    continue;
                };
                let service = ctx.service;
                let handed = workers.spawn_connection(&connections, socket, move |socket| {
                    proxy::serve(socket, peer, id, ctx)
                });
                if let Err(error) = handed {
                    tracing::warn!(service = service.as_str(), %peer, reason = "worker_handoff", %error, "connection closed: it could not be handed to a worker");
                }
            }
            // The console gave up between SYN and accept: nothing to do.
            Err(e) if is_per_connection(&e) => {}
            // Out of file descriptors or memory: wait instead of spinning, then try again.
            Err(e) => {
                tracing::warn!(service = ctx.service.as_str(), error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    () = ctx.shared.lifecycle.stopping() => break,
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
            }
        }
    }
}

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}
