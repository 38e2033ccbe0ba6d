//! The upstream: an in-process TLS server with the AMT-like certificate, and the same modes over
//! plain TCP for the bare-forwarder diagnostic. The first byte a client sends picks the mode:
//!
//! ```text
//! 'E' echo everything;  'S' + u64 n: sink n bytes, answer n as u64;
//! 'O' + u64 n: send n bytes;  'R': request/response, 1 KiB in, 1 KiB out, repeatedly.
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::{HandshakeKind, NamedGroup, ProtocolVersion, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Bytes per read and write of the bulk modes.
pub(crate) const BLOCK: usize = 64 * 1024;
/// Bytes each way of one request/response exchange.
pub(crate) const EXCHANGE: usize = 1024;

#[derive(Default)]
pub(crate) struct Handshakes {
    total: AtomicU64,
    resumed: AtomicU64,
    last: std::sync::Mutex<Option<Negotiated>>,
}

impl Handshakes {
    pub(crate) fn snapshot(&self) -> (u64, u64) {
        (
            self.total.load(Ordering::Relaxed),
            self.resumed.load(Ordering::Relaxed),
        )
    }

    /// What the latest handshake agreed on.
    pub(crate) fn last_negotiated(&self) -> Option<Negotiated> {
        *self.last.lock().ok()?
    }
}

/// What a handshake agreed on: printed per proxy, and the cipher suite the rustls in-memory
/// measurement uses.
#[derive(Clone, Copy)]
pub(crate) struct Negotiated {
    pub(crate) version: ProtocolVersion,
    /// None for a resumed TLS 1.2 handshake.
    group: Option<NamedGroup>,
    pub(crate) suite: SupportedCipherSuite,
}

impl std::fmt::Display for Negotiated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}, ", self.version)?;
        match self.group {
            Some(group) => write!(f, "{group:?}, ")?,
            None => f.write_str("no key exchange, ")?,
        }
        write!(f, "{:?}", self.suite.suite())
    }
}

/// Accept forever; every connection gets TCP_NODELAY and a task of its own running `handle`.
fn spawn_acceptor<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of descriptors, say: back off instead of spinning.
                    eprintln!("e2e: upstream accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            tcp.set_nodelay(true).ok();
            tokio::spawn(handle(tcp));
        }
    });
}

pub(crate) async fn start_upstream(
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
    resumption: bool,
) -> (SocketAddr, Arc<Handshakes>) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.clone_key())
        .expect("upstream certificate and key");
    if resumption {
        // Stateless tickets (reusable) plus a session-ID cache for TLS 1.2 clients.
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(65_536);
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().expect("ticketer");
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    let counts = Arc::new(Handshakes::default());
    let task_counts = counts.clone();
    spawn_acceptor(listener, move |tcp| {
        let acceptor = acceptor.clone();
        let counts = task_counts.clone();
        async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            counts.total.fetch_add(1, Ordering::Relaxed);
            let conn = stream.get_ref().1;
            if let (Some(version), Some(suite)) =
                (conn.protocol_version(), conn.negotiated_cipher_suite())
            {
                let group = conn.negotiated_key_exchange_group().map(|g| g.name());
                if let Ok(mut last) = counts.last.lock() {
                    *last = Some(Negotiated {
                        version,
                        group,
                        suite,
                    });
                }
            }
            if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
                counts.resumed.fetch_add(1, Ordering::Relaxed);
            }
            // Errors are the client going away mid-stream; the client side reports them.
            let _ = serve(stream).await;
        }
    });
    (addr, counts)
}

/// The upstream's modes over plain TCP: the far end of the bare-forwarder diagnostic, where
/// no TLS is in the way.
pub(crate) async fn start_plain_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind plain upstream");
    let addr = listener.local_addr().expect("plain upstream address");
    spawn_acceptor(listener, |tcp| async move {
        let _ = serve(tcp).await;
    });
    addr
}

pub(crate) async fn read_u64<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<u64> {
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await?;
    Ok(u64::from_be_bytes(n))
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> io::Result<()> {
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode).await?;
    let mut buf = vec![0u8; BLOCK];
    match mode[0] {
        b'E' => loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await?;
            s.flush().await?;
        },
        b'S' => {
            let total = read_u64(&mut s).await?;
            let mut left = total;
            while left > 0 {
                let want = left.min(BLOCK as u64) as usize;
                let n = s.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                left -= n as u64;
            }
            s.write_all(&total.to_be_bytes()).await?;
            s.flush().await?;
            while s.read(&mut buf).await? > 0 {}
        }
        b'O' => {
            let mut left = read_u64(&mut s).await?;
            buf.fill(0x5a);
            while left > 0 {
                let n = left.min(BLOCK as u64) as usize;
                s.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            s.flush().await?;
            while s.read(&mut buf).await? > 0 {}
        }
        b'R' => {
            let mut exchange = [0u8; EXCHANGE];
            while s.read_exact(&mut exchange).await.is_ok() {
                s.write_all(&exchange).await?;
                s.flush().await?;
            }
        }
        _ => {}
    }
    s.shutdown().await.ok();
    Ok(())
}
