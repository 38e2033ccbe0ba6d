//! WS-Man routed by `Host` (`services.wsman.routing = "host"`): reading the console's first
//! request head before routing, following the later ones while relaying, and answering a
//! refused request in HTTP.
//!
//! Only this routing mode pays for it: the other modes hand the console's socket to the relay
//! as it is. Here the relay reads the console through a [`Guarded`] stream, which runs every
//! byte through `http_head::Requests` (a few comparisons per body byte, one `httparse` call per
//! head) and holds a head back until it is complete and names the connection's host.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use crate::http_head::{Authority, HeadError, HostName, Requests, Step};
use crate::router::NamedHost;
use crate::service::Service;

use super::ConnectionError;

/// The first request, read whole before the device is chosen.
pub(super) struct FirstRequest {
    requests: Requests,
    /// The host and port it names.
    authority: Authority,
    /// The head, then whatever the console sent after it in the same reads.
    head: Vec<u8>,
    after: Vec<u8>,
}

impl FirstRequest {
    pub(super) fn authority(&self) -> &Authority {
        &self.authority
    }

    pub(super) fn named_host(&self) -> NamedHost<'_> {
        match &self.authority().host {
            HostName::Name(name) => NamedHost::Name(name),
            HostName::Ip(ip) => NamedHost::Ip(*ip),
        }
    }

    /// The port a `Host` may carry: none, the WS-Man plain port consoles dial (16992), or the
    /// port this connection reached (a gateway listening elsewhere). Any other port was meant
    /// for something else.
    pub(super) fn check_port(&self, reached: u16) -> Result<(), ConnectionError> {
        match self.authority().port {
            None => Ok(()),
            Some(port) if port == Service::Wsman.legacy_port() || port == reached => Ok(()),
            Some(port) => Err(ConnectionError::HostPort {
                host: self.authority().to_string(),
                port,
                reached,
            }),
        }
    }

    /// The stream the relay reads the console through: this head and what followed it first.
    pub(super) fn guard<S>(self, console: &mut S) -> Guarded<'_, S> {
        let mut guarded = Guarded {
            inner: console,
            requests: self.requests,
            ready: self.head,
            ready_start: 0,
            failed: None,
        };
        let mut after = self.after;
        // With the head waiting in `ready`, everything scanned goes after it, in order.
        let kept = guarded.scan(&mut after);
        debug_assert_eq!(kept, 0);
        guarded
    }
}

/// Reads until the first request head is complete (at most `http_head::MAX_HEAD` bytes).
/// The caller bounds it in time.
pub(super) async fn first_request<S: AsyncRead + Unpin>(
    console: &mut S,
) -> Result<FirstRequest, ConnectionError> {
    let mut requests = Requests::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = console
            .read(&mut chunk)
            .await
            .map_err(ConnectionError::Console)?;
        if n == 0 {
            return Err(if requests.holds_partial_head() {
                ConnectionError::ConsoleClosedInHead
            } else {
                ConnectionError::ConsoleSilent
            });
        }
        let mut at = 0;
        while at < n {
            match requests.step(&chunk[at..n]) {
                Ok(Step::Partial(used)) => at += used,
                Ok(Step::Head(used)) => {
                    let head = requests.take_head();
                    let authority = requests
                        .authority()
                        .cloned()
                        .ok_or(ConnectionError::FirstRequest(HeadError::NoHost))?;
                    return Ok(FirstRequest {
                        requests,
                        authority,
                        head,
                        after: chunk[at + used..n].to_vec(),
                    });
                }
                // A new connection starts with a head; nothing passes before it.
                Ok(Step::Body(_)) => {
                    return Err(ConnectionError::FirstRequest(HeadError::Malformed(
                        "no request head",
                    )));
                }
                Err(error) => return Err(ConnectionError::FirstRequest(error)),
            }
        }
    }
}

/// Answers a request the gateway refused (`status`), then closes: the FIN goes out and what
/// the console still sends is read and dropped for a moment, so that closing over unread bytes
/// does not reset the connection before the console has read the answer.
pub(super) async fn answer(console: &mut TcpStream, status: u16, error: &ConnectionError) {
    let phrase = match status {
        400 => "Bad Request",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        _ => "Service Unavailable",
    };
    let body = format!(
        "amtgw: {} ({})\n",
        error.to_string().escape_debug(),
        error.reason()
    );
    let response = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        console.write_all(response.as_bytes()).await?;
        console.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        while drained < 256 * 1024 {
            match console.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        io::Result::Ok(())
    })
    .await;
}

/// The console as the relay reads it with routing by `Host`: bodies pass straight through the
/// relay's own buffer; a head is held until complete and checked, then passed whole. A head
/// that is invalid or names another host ends the console's stream there (an EOF to the relay,
/// so the device is told the requests are over and still finishes its answer to the previous
/// request); [`Guarded::failure`] says why afterwards.
pub(super) struct Guarded<'a, S> {
    inner: &'a mut S,
    requests: Requests,
    /// Checked bytes waiting for the relay: a head and what followed it in the same read.
    ready: Vec<u8>,
    ready_start: usize,
    failed: Option<HeadError>,
}

impl<S> Guarded<'_, S> {
    pub(super) fn failure(&mut self) -> Option<HeadError> {
        self.failed.take()
    }

    /// Runs `input` through the request follower. Body bytes before any head stay at the
    /// front of `input` (the count is returned); a completed head and everything after it go
    /// to `ready`; bytes of an incomplete head are held by the follower.
    fn scan(&mut self, input: &mut [u8]) -> usize {
        let (mut at, mut kept) = (0, 0);
        while at < input.len() {
            match self.requests.step(&input[at..]) {
                Ok(Step::Body(n)) => {
                    if self.ready.is_empty() {
                        input.copy_within(at..at + n, kept);
                        kept += n;
                    } else {
                        self.ready.extend_from_slice(&input[at..at + n]);
                    }
                    at += n;
                }
                Ok(Step::Partial(n)) => at += n,
                Ok(Step::Head(n)) => {
                    let head = self.requests.take_head();
                    self.ready.extend_from_slice(&head);
                    at += n;
                }
                Err(error) => {
                    self.failed = Some(error);
                    break;
                }
            }
        }
        kept
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_start < this.ready.len() {
                let pending = &this.ready[this.ready_start..];
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                this.ready_start += n;
                if this.ready_start == this.ready.len() {
                    // Its memory goes too: an idle connection holds none.
                    this.ready = Vec::new();
                    this.ready_start = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.failed.is_some() || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut *this.inner).poll_read(cx, buf))?;
            let read = buf.filled().len() - before;
            if read == 0 {
                return Poll::Ready(Ok(())); // The console's EOF, passed on.
            }
            let kept = this.scan(&mut buf.filled_mut()[before..]);
            buf.set_filled(before + kept);
            if kept > 0 {
                return Poll::Ready(Ok(()));
            }
            // Everything went to `ready` or into an unfinished head: hand over the one, or
            // read on for the other.
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::duplex;

    /// Reads everything the relay would get through a guard over `sent`, delivered in pieces
    /// of `piece` bytes; and the failure, if any.
    async fn through_guard(sent: &[u8], piece: usize) -> (Vec<u8>, Option<HeadError>) {
        let (mut console, mut far) = duplex(1 << 16);
        let writer = async {
            for part in sent.chunks(piece) {
                console.write_all(part).await.unwrap();
            }
            console.shutdown().await.unwrap();
            console
        };
        let reader = async {
            let first = first_request(&mut far).await.unwrap();
            let mut guarded = first.guard(&mut far);
            let mut got = Vec::new();
            let mut buf = [0u8; 7];
            loop {
                let n = guarded.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            (got, guarded.failure())
        };
        let (_console, got) = tokio::join!(writer, reader);
        got
    }

    #[tokio::test]
    async fn the_relay_reads_the_console_unchanged_up_to_a_request_for_another_host() {
        let good = "POST /wsman HTTP/1.1\r\nHost: amt\r\nContent-Length: 4\r\n\r\nbody\
POST /wsman HTTP/1.1\r\nHost: AMT\r\nTransfer-Encoding: chunked\r\n\r\n\
1f\r\nGET / HTTP/1.1\r\nHost: other\r\n\r\n\r\n0\r\n\r\n";
        let stream = format!("{good}GET / HTTP/1.1\r\nHost: other\r\n\r\n");
        for piece in [1, 3, 64, 4096] {
            let (got, failure) = through_guard(good.as_bytes(), piece).await;
            assert_eq!(String::from_utf8_lossy(&got), good, "pieces of {piece}");
            assert_eq!(failure, None);
            let (got, failure) = through_guard(stream.as_bytes(), piece).await;
            assert_eq!(String::from_utf8_lossy(&got), good, "pieces of {piece}");
            assert_eq!(failure.map(|e| e.kind()), Some("host_mismatch"));
        }
    }
}
