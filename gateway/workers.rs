//! The data path's worker threads: each runs its own single-threaded tokio runtime with its own
//! I/O driver, and every connection lives on one worker from hand-off to close.
//!
//! Why not one work-stealing runtime: a session's wake-ups then stay on the thread that owns
//! its sockets (no cross-thread hand-offs mid-exchange), and busy polling
//! (`gateway.busy_poll`) polls the very driver those sockets are registered with. In a
//! work-stealing runtime only one worker at a time holds the driver, so a spinning worker
//! usually cannot see its own connection's events.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("cannot start data-path worker {index}: {source}")]
    Start { index: usize, source: io::Error },
}

impl WorkersError {
    pub fn kind(&self) -> &'static str {
        match self {
            WorkersError::Start { .. } => "worker_start",
        }
    }
}

/// The running worker threads. Dropping this stops them (after the gateway has drained).
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    /// Connections handed to this worker and not yet finished.
    open: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Workers {
    /// Start `count` worker threads, named `amtgw-worker-N`.
    pub fn start(count: usize) -> Result<Workers, WorkersError> {
        let mut workers = Vec::with_capacity(count);
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| WorkersError::Start { index, source })?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("amtgw-worker-{index}"))
                .spawn(move || {
                    // Either a stop message or the sender's drop ends the worker.
                    let _ = runtime.block_on(stopped);
                })
                .map_err(|source| WorkersError::Start { index, source })?;
            workers.push(Worker {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Workers { workers })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Run an accepted connection's task on the worker with the fewest open connections
    /// (sessions last from seconds to hours, so counting beats taking turns). The socket moves
    /// to that worker's I/O driver. An error means the socket could not be moved; it is closed.
    pub(crate) fn spawn_connection<F, Fut>(
        &self,
        tracker: &TaskTracker,
        socket: TcpStream,
        serve: F,
    ) -> io::Result<()>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|worker| worker.open.load(Ordering::Relaxed))
        else {
            return Err(io::Error::other("no data-path workers"));
        };
        let socket = socket.into_std()?;
        let open = OpenConnection::new(worker.open.clone());
        tracker.spawn_on(
            async move {
                let _open = open;
                match TcpStream::from_std(socket) {
                    Ok(socket) => serve(socket).await,
                    Err(error) => tracing::warn!(
                        reason = "worker_register",
                        %error,
                        "connection closed: the worker could not register its socket"
                    ),
                }
            },
            &worker.handle,
        );
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(());
            }
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Counts a connection against its worker until the connection's task ends.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: Arc<AtomicUsize>) -> OpenConnection {
        open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Connections go to the least-loaded worker, run on that worker's thread, and are counted
    /// until they end.
    #[tokio::test]
    async fn connections_spread_over_workers_and_run_there() {
        let workers = Workers::start(2).unwrap();
        let tracker = TaskTracker::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut consoles = Vec::new();
        for _ in 0..2 {
            let console = TcpStream::connect(addr).await.unwrap();
            let (socket, _) = listener.accept().await.unwrap();
            workers
                .spawn_connection(&tracker, socket, |mut socket| async move {
                    let name = std::thread::current().name().unwrap_or("").to_owned();
                    let mut byte = [0u8; 1];
                    // Held open until the console writes, so both count as open at once.
                    if socket.read_exact(&mut byte).await.is_ok() {
                        let _ = socket.write_all(name.as_bytes()).await;
                    }
                })
                .unwrap();
            consoles.push(console);
        }
        assert_eq!(
            workers
                .workers
                .iter()
                .map(|w| w.open.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
            [1, 1]
        );
        let mut names = Vec::new();
        for mut console in consoles {
            console.write_all(b"x").await.unwrap();
            let mut name = String::new();
            console.read_to_string(&mut name).await.unwrap();
            names.push(name);
        }
        names.sort();
        assert_eq!(names, ["amtgw-worker-0", "amtgw-worker-1"]);
        tracker.close();
        tracker.wait().await;
        assert!(
            workers
                .workers
                .iter()
                .all(|w| w.open.load(Ordering::Relaxed) == 0)
        );
    }
}
