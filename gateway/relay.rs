//! The byte-transparent relay between a console and a device.
//!
//! One future polls both directions on the unsplit streams, so there is no lock on the per-byte
//! path (`tokio::io::split` would take one per poll). Each direction reads into its worker
//! thread's scratch buffer and writes straight from it; only what the writer cannot take at once
//! is copied into the direction's own backlog, which is released once the direction goes quiet.
//! An idle connection so holds no relay buffer at all, which is most of what a proxy's memory per
//! idle connection would otherwise be. An EOF becomes a write shutdown on the other side
//! (half-close: TCP FIN towards the console, TLS close_notify plus FIN towards the device). When
//! a direction has nothing more to read it flushes, so small messages (SOL keystrokes) leave
//! at once. Counts live in `Relay` and survive an error or an abort.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
// tokio's clock, not std's: the idle timer and the activity stamps must share one clock
// (and tests can pause it).
use tokio::time::{Instant, Sleep};

use crate::reason::Reason;
use crate::tls::{self, HandshakeFailure};

/// The largest single read. Four TLS records' worth: towards the device rustls then seals four
/// records per write and sends them in one `writev`, where 16 KiB reads (one record) cost a
/// syscall and a TCP segment each (measured: 0.88 -> 0.38 CPU-s/GiB). It costs no memory per
/// connection: the buffer is per thread.
pub const MAX_READ_SIZE: usize = 64 * 1024;

thread_local! {
    /// Shared by every relay on this thread: a read and the writes from it happen within one
    /// poll, so no relay ever holds it across a suspension.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_READ_SIZE].into_boxed_slice());
}

/// Receives what the relay sees, as it happens. Implementations must be cheap: they run on
/// every buffer.
pub trait RelayObserver {
    /// Bytes written from the console to the device.
    fn to_device(&self, bytes: u64);
    /// Bytes written from the device to the console.
    fn to_console(&self, bytes: u64);
    /// Time from the console's last request byte to the device's first answering byte.
    fn exchange(&self, latency: Duration);
}

/// An observer that records nothing.
pub struct NoObserver;

impl RelayObserver for NoObserver {
    fn to_device(&self, _: u64) {}
    fn to_console(&self, _: u64) {}
    fn exchange(&self, _: Duration) {}
}

/// One end of a relayed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Console,
    Device,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("console connection failed: {0}")]
    Console(io::Error),
    #[error("device connection failed: {0}")]
    Device(io::Error),
    /// Under TLS 1.3 a device refuses the client certificate after the client considers the
    /// handshake done; the refusal arrives as an alert on the first read.
    #[error("device rejected the client certificate: {0}")]
    ClientCertificateRejected(io::Error),
    #[error("no bytes in either direction for {0:?}")]
    Idle(Duration),
}

impl RelayError {
    pub fn reason(&self) -> Reason {
        match self {
            RelayError::Console(_) => Reason::ConsoleReset,
            RelayError::Device(error) => match tls::rustls_error(error) {
                Some(tls_error) => HandshakeFailure::of(tls_error).into(),
                None => Reason::DeviceReset,
            },
            RelayError::ClientCertificateRejected(_) => Reason::ClientCertRejected,
            RelayError::Idle(_) => Reason::IdleTimeout,
        }
    }

    /// Which side ended the session abortively (a TCP reset, seen as a reset on read or a
    /// broken pipe on write), so the other side can be reset too.
    pub fn reset_by(&self) -> Option<Peer> {
        let is_reset = |error: &io::Error| {
            matches!(
                error.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            )
        };
        match self {
            RelayError::Console(error) if is_reset(error) => Some(Peer::Console),
            RelayError::Device(error) if is_reset(error) => Some(Peer::Device),
            _ => None,
        }
    }

    /// Whether the device refused the session during (TLS 1.3: just after) the handshake, which
    /// counts as a handshake failure rather than a failure of an established session.
    pub fn is_handshake_failure(&self) -> bool {
        matches!(self, RelayError::ClientCertificateRejected(_))
    }
}

struct Direction {
    /// Accept an EOF without TLS close_notify as the end of the stream (see `Relay::run`).
    lenient_eof: bool,
    /// Whether the stream ended that way.
    unclean_eof: bool,
    read_size: usize,
    /// Bytes read but not yet taken by the writer, written from `backlog_start`. Empty (and
    /// without capacity once the direction is idle) in the common case.
    backlog: Vec<u8>,
    backlog_start: usize,
    eof: bool,
    done: bool,
    unflushed: bool,
    bytes: u64,
}

enum Side {
    Read(io::Error),
    Write(io::Error),
}

/// What one read-and-forward step left behind.
enum Step {
    /// Everything read was written; read again.
    Forwarded,
    /// The writer took only part; the rest is in the backlog and the writer's waker is set.
    WriterBlocked,
    /// Nothing to read now; the reader's waker is set.
    Idle,
}

impl Direction {
    fn new(read_size: usize, lenient_eof: bool) -> Direction {
        Direction {
            lenient_eof,
            unclean_eof: false,
            read_size: read_size.clamp(1, MAX_READ_SIZE),
            backlog: Vec::new(),
            backlog_start: 0,
            eof: false,
            done: false,
            unflushed: false,
            bytes: 0,
        }
    }

    fn wrote(&mut self, n: usize, on_write: &mut impl FnMut(usize)) {
        self.bytes += n as u64;
        self.unflushed = true;
        on_write(n);
    }

    /// Move bytes until the reader is exhausted for now (Pending) or finished (Ready(Ok)).
    /// `on_read` sees each chunk's length as it arrives; `on_write` each written amount.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        mut on_read: impl FnMut(usize),
        mut on_write: impl FnMut(usize),
    ) -> Poll<Result<(), Side>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.backlog_start < self.backlog.len() {
                let pending = &self.backlog[self.backlog_start..];
                let n = ready!(writer.as_mut().poll_write(cx, pending)).map_err(Side::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(Side::Write(io::ErrorKind::WriteZero.into())));
                }
                self.backlog_start += n;
                self.wrote(n, &mut on_write);
            }
            self.backlog.clear();
            self.backlog_start = 0;
            if self.eof {
                ready!(writer.as_mut().poll_shutdown(cx)).map_err(Side::Write)?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let step = SCRATCH.with_borrow_mut(|scratch| {
                self.read_and_forward(
                    cx,
                    &mut scratch[..self.read_size],
                    reader.as_mut(),
                    writer.as_mut(),
                    &mut on_read,
                    &mut on_write,
                )
            })?;
            match step {
                Step::Forwarded => {}
                Step::WriterBlocked => return Poll::Pending,
                Step::Idle => {
                    self.backlog = Vec::new();
                    if self.unflushed {
                        ready!(writer.as_mut().poll_flush(cx)).map_err(Side::Write)?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn read_and_forward<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        on_read: &mut impl FnMut(usize),
        on_write: &mut impl FnMut(usize),
    ) -> Result<Step, Side>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        let mut read_buf = ReadBuf::new(scratch);
        let read = match reader.as_mut().poll_read(cx, &mut read_buf) {
            Poll::Pending => return Ok(Step::Idle),
            Poll::Ready(Err(error))
                if self.lenient_eof && error.kind() == io::ErrorKind::UnexpectedEof =>
            {
                self.unclean_eof = true;
                0
            }
            Poll::Ready(Err(error)) => return Err(Side::Read(error)),
            Poll::Ready(Ok(())) => read_buf.filled().len(),
        };
        if read == 0 {
            self.eof = true;
            return Ok(Step::Forwarded);
        }
        on_read(read);
        let mut start = 0;
        while start < read {
            match writer.as_mut().poll_write(cx, &scratch[start..read]) {
                Poll::Ready(Ok(0)) => return Err(Side::Write(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    start += n;
                    self.wrote(n, on_write);
                }
                Poll::Ready(Err(error)) => return Err(Side::Write(error)),
                Poll::Pending => {
                    self.backlog.extend_from_slice(&scratch[start..read]);
                    return Ok(Step::WriterBlocked);
                }
            }
        }
        Ok(Step::Forwarded)
    }
}

/// One console-device pairing. Create it, `run` it (possibly inside a `select!` that may drop
/// the run future), then read the counts.
pub struct Relay {
    to_device: Direction,
    to_console: Direction,
    idle_timeout: Duration,
    idle_timer: Pin<Box<Sleep>>,
    last_activity: Instant,
    established: Instant,
    first_device_byte: Option<Duration>,
    awaiting_answer_since: Option<Instant>,
    measure_exchanges: bool,
    busy_poll: Duration,
}

impl Relay {
    /// `read_size` caps each read (at most `MAX_READ_SIZE`); tests use tiny ones. After each
    /// read the relay keeps polling for `busy_poll` (zero: never) before it lets the thread sleep.
    pub fn new(
        read_size: usize,
        idle_timeout: Duration,
        measure_exchanges: bool,
        busy_poll: Duration,
    ) -> Relay {
        let now = Instant::now();
        Relay {
            to_device: Direction::new(read_size, false),
            // Embedded TLS stacks, AMT's among them, often close TCP without close_notify
            // (after a 401, say). The byte stream is relayed transparently either way, and
            // the console could not be told the difference, so it ends like a clean close and
            // the summary says it was unclean.
            to_console: Direction::new(read_size, true),
            idle_timeout,
            idle_timer: Box::pin(tokio::time::sleep(idle_timeout)),
            last_activity: now,
            established: now,
            first_device_byte: None,
            awaiting_answer_since: None,
            measure_exchanges,
            busy_poll,
        }
    }

    pub fn bytes_to_device(&self) -> u64 {
        self.to_device.bytes
    }

    pub fn bytes_to_console(&self) -> u64 {
        self.to_console.bytes
    }

    /// Whether the device ended its stream without TLS close_notify.
    pub fn device_closed_uncleanly(&self) -> bool {
        self.to_console.unclean_eof
    }

    /// Time from the start of the relay to the device's first byte.
    pub fn first_device_byte(&self) -> Option<Duration> {
        self.first_device_byte
    }

    /// Relay until both directions have finished (each side sent EOF and it was passed on), a
    /// side fails, or nothing moved for the idle timeout.
    pub async fn run<C, D, O>(
        &mut self,
        console: &mut C,
        device: &mut D,
        observer: &O,
    ) -> Result<(), RelayError>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        D: AsyncRead + AsyncWrite + Unpin + ?Sized,
        O: RelayObserver + ?Sized,
    {
        loop {
            let polled =
                poll_fn(
                    |cx| match self.poll_run(cx, &mut *console, &mut *device, observer) {
                        Poll::Ready(result) => Poll::Ready(Some(result)),
                        // Zero first: with busy polling off (the default) a wake-up that finds
                        // nothing to do reads no clock.
                        Poll::Pending
                            if !self.busy_poll.is_zero()
                                && self.last_activity.elapsed() < self.busy_poll =>
                        {
                            Poll::Ready(None)
                        }
                        Poll::Pending => Poll::Pending,
                    },
                )
                .await;
            match polled {
                Some(result) => return result,
                // Busy polling: on a single-threaded runtime, yielding makes the scheduler poll
                // the I/O driver without blocking before it polls this task again, so the next
                // packet is seen without the thread going to sleep and being woken.
                None => tokio::task::yield_now().await,
            }
        }
    }

    fn poll_run<C, D, O>(
        &mut self,
        cx: &mut Context<'_>,
        console: &mut C,
        device: &mut D,
        observer: &O,
    ) -> Poll<Result<(), RelayError>>
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        D: AsyncRead + AsyncWrite + Unpin + ?Sized,
        O: RelayObserver + ?Sized,
    {
        let Relay {
            to_device,
            last_activity,
            awaiting_answer_since,
            measure_exchanges,
            ..
        } = self;

        let up = to_device.poll_copy(
            cx,
            Pin::new(&mut *console),
            Pin::new(&mut *device),
            |_| {
                let now = Instant::now();
                *last_activity = now;
                if *measure_exchanges {
                    *awaiting_answer_since = Some(now);
                }
            },
            |n| observer.to_device(n as u64),
        );
        if let Poll::Ready(Err(side)) = up {
            return Poll::Ready(Err(match side {
                Side::Read(e) => RelayError::Console(e),
                Side::Write(e) => self.device_error(e),
            }));
        }

        let established = self.established;
        let first_device_byte = &mut self.first_device_byte;
        let last_activity = &mut self.last_activity;
        let awaiting = &mut self.awaiting_answer_since;
        let down = self.to_console.poll_copy(
            cx,
            Pin::new(&mut *device),
            Pin::new(&mut *console),
            |_| {
                let now = Instant::now();
                *last_activity = now;
                first_device_byte.get_or_insert_with(|| now - established);
                if let Some(since) = awaiting.take() {
                    observer.exchange(now - since);
                }
            },
            |n| observer.to_console(n as u64),
        );
        if let Poll::Ready(Err(side)) = down {
            return Poll::Ready(Err(match side {
                Side::Read(e) => self.device_error(e),
                Side::Write(e) => RelayError::Console(e),
            }));
        }

        if up.is_ready() && down.is_ready() {
            return Poll::Ready(Ok(()));
        }

        // The timer is re-armed from the last activity only when it fires, so busy
        // connections never touch it.
        while self.idle_timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last_activity + self.idle_timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(Err(RelayError::Idle(self.idle_timeout)));
            }
            self.idle_timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    fn device_error(&self, error: io::Error) -> RelayError {
        let refused_certificate = self.first_device_byte.is_none()
            && tls::rustls_error(&error).is_some_and(|e| {
                matches!(e, rustls::Error::AlertReceived(alert) if tls::rejects_client_certificate(*alert))
            });
        if refused_certificate {
            RelayError::ClientCertificateRejected(error)
        } else {
            RelayError::Device(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn copies_both_ways_and_propagates_half_close() {
        let (mut console, mut console_far) = duplex(64);
        let (mut device, mut device_far) = duplex(64);
        let relay = tokio::spawn(async move {
            let mut relay = Relay::new(16, Duration::from_secs(60), false, Duration::ZERO);
            let result = relay
                .run(&mut console_far, &mut device_far, &NoObserver)
                .await;
            (result, relay.bytes_to_device(), relay.bytes_to_console())
        });
        console
            .write_all(b"request bytes, more than one buffer")
            .await
            .unwrap();
        console.shutdown().await.unwrap();
        let mut got = Vec::new();
        device.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request bytes, more than one buffer");
        // The console half-closed; the device can still answer.
        device.write_all(b"answer").await.unwrap();
        device.shutdown().await.unwrap();
        let mut answer = Vec::new();
        console.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
        let (result, up, down) = relay.await.unwrap();
        result.unwrap();
        assert_eq!((up, down), (35, 6));
    }

    /// A writer that takes only part of a read leaves the rest in the direction's backlog; the
    /// bytes still arrive whole and in order, and the backlog's memory goes once the direction
    /// is idle again.
    #[tokio::test]
    async fn a_blocked_writer_keeps_order_and_the_backlog_is_released_when_idle() {
        let (mut console, mut console_far) = duplex(1024);
        let (mut device, mut device_far) = duplex(8);
        let mut relay = Relay::new(64, Duration::from_secs(60), false, Duration::ZERO);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let sent: Vec<u8> = (0..100u8).collect();
        console.write_all(&sent).await.unwrap();

        let mut received = Vec::new();
        while received.len() < sent.len() {
            let poll = relay.poll_run(&mut cx, &mut console_far, &mut device_far, &NoObserver);
            assert!(poll.is_pending());
            if received.is_empty() {
                assert!(
                    relay.to_device.backlog.capacity() > 0,
                    "the writer took it all"
                );
            }
            let mut chunk = [0u8; 8];
            let n = device.read(&mut chunk).await.unwrap();
            received.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(received, sent);
        let poll = relay.poll_run(&mut cx, &mut console_far, &mut device_far, &NoObserver);
        assert!(poll.is_pending());
        assert_eq!(relay.to_device.backlog.capacity(), 0);
        assert_eq!(relay.bytes_to_device(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_only_after_silence() {
        let (mut console, mut console_far) = duplex(64);
        let (_device, mut device_far) = duplex(64);
        let started = tokio::time::Instant::now();
        let relay = tokio::spawn(async move {
            let mut relay = Relay::new(16, Duration::from_secs(30), false, Duration::ZERO);
            relay
                .run(&mut console_far, &mut device_far, &NoObserver)
                .await
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        console.write_all(b"x").await.unwrap();
        let err = relay.await.unwrap().unwrap_err();
        assert_eq!(err.reason(), Reason::IdleTimeout);
        // Activity at 20 s pushed the deadline to 50 s.
        assert!(
            started.elapsed() >= Duration::from_secs(50),
            "{:?}",
            started.elapsed()
        );
    }
}
