//! The upstream: an in-process TLS server with the AMT-like certificate (rustls, or OpenSSL
//! speaking what AMT 11 and 12 do, for amtgw-legacy), and the same modes over plain TCP for the
//! bare-forwarder diagnostic. The first byte a client sends picks the mode:
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

use openssl::pkey::PKey;
use openssl::ssl::{
    Ssl, SslAcceptor, SslMethod, SslOptions, SslRef, SslSessionCacheMode, SslVersion,
};
use openssl::x509::X509;
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
        self.last.lock().ok()?.clone()
    }

    fn negotiated(&self, negotiated: Negotiated) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(negotiated);
        }
    }
}

/// What a handshake agreed on: printed per proxy, and (from a rustls upstream) the cipher
/// suite the rustls in-memory measurement uses.
#[derive(Clone)]
pub(crate) enum Negotiated {
    Rustls {
        version: ProtocolVersion,
        /// None for a resumed TLS 1.2 handshake.
        group: Option<NamedGroup>,
        suite: SupportedCipherSuite,
    },
    /// As OpenSSL names them: "TLSv1.2", "RSA" (its `Kx=` field), the IANA suite name.
    OpenSsl {
        version: &'static str,
        /// None for a resumed handshake.
        key_exchange: Option<String>,
        suite: &'static str,
    },
}

impl Negotiated {
    /// The suite, if rustls negotiated it (and so rustls in memory can run it).
    pub(crate) fn rustls_suite(&self) -> Option<SupportedCipherSuite> {
        match self {
            Negotiated::Rustls { suite, .. } => Some(*suite),
            Negotiated::OpenSsl { .. } => None,
        }
    }

    fn of_openssl(ssl: &SslRef) -> Option<Negotiated> {
        let cipher = ssl.current_cipher()?;
        let key_exchange = (!ssl.session_reused()).then(|| {
            let description = cipher.description();
            let kx = description
                .split_whitespace()
                .find_map(|field| field.strip_prefix("Kx="));
            kx.unwrap_or("unknown").to_owned()
        });
        Some(Negotiated::OpenSsl {
            version: ssl.version_str(),
            key_exchange,
            suite: cipher.standard_name()?,
        })
    }
}

impl std::fmt::Display for Negotiated {
    /// "TLSv1_3, X25519, TLS13_AES_256_GCM_SHA384"; "TLSv1_2, RSA key exchange,
    /// TLS_RSA_WITH_AES_128_GCM_SHA256": versions spelled as rustls does, whoever negotiated.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Negotiated::Rustls {
                version,
                group,
                suite,
            } => {
                write!(f, "{version:?}, ")?;
                match group {
                    Some(group) => write!(f, "{group:?}, ")?,
                    None => f.write_str("no key exchange, ")?,
                }
                write!(f, "{:?}", suite.suite())
            }
            Negotiated::OpenSsl {
                version,
                key_exchange,
                suite,
            } => {
                write!(f, "{}, ", version.replace('.', "_"))?;
                match key_exchange {
                    Some(kx) => write!(f, "{kx} key exchange, ")?,
                    None => f.write_str("no key exchange, ")?,
                }
                f.write_str(suite)
            }
        }
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
                counts.negotiated(Negotiated::Rustls {
                    version,
                    group,
                    suite,
                });
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

/// The one suite the legacy upstream speaks, by OpenSSL's name: TLS_RSA_WITH_AES_128_GCM_SHA256.
/// AMT 11 and 12 offer RSA key exchange and no ECDHE; Intel's own console had to enable this
/// suite and two CBC ones to reach them (amt-protocol.md §2). Of the three it is the AEAD, like
/// the other columns' suites, so the bulk rows compare backends rather than cipher modes.
const LEGACY_SUITE: &str = "AES128-GCM-SHA256";

/// The upstream amtgw-legacy forwards to: an AMT 11/12-like device, TLS 1.2 only with RSA key
/// exchange ([`LEGACY_SUITE`]), served by OpenSSL with the same certificate and key and the same
/// modes as [`start_upstream`]. `resumption`: OpenSSL's server session cache on (session IDs),
/// or off. Never session tickets: OpenSSL resumes from a ticket even with its cache off, so the
/// full-handshake upstream would not be one; and session IDs are what any TLS 1.2 device has.
pub(crate) async fn start_legacy_upstream(
    cert: &CertificateDer<'static>,
    key: &PrivateKeyDer<'static>,
    resumption: bool,
) -> (SocketAddr, Arc<Handshakes>) {
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("OpenSSL acceptor");
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .expect("TLS 1.2");
    builder
        .set_max_proto_version(Some(SslVersion::TLS1_2))
        .expect("TLS 1.2");
    builder
        .set_cipher_list(LEGACY_SUITE)
        .expect("the legacy suite");
    builder.set_options(SslOptions::NO_TICKET);
    builder.set_session_cache_mode(if resumption {
        SslSessionCacheMode::SERVER
    } else {
        SslSessionCacheMode::OFF
    });
    let cert = X509::from_der(cert.as_ref()).expect("upstream certificate");
    let key = PKey::private_key_from_der(key.secret_der()).expect("upstream key");
    builder
        .set_certificate(&cert)
        .expect("upstream certificate");
    builder.set_private_key(&key).expect("upstream key");
    builder
        .check_private_key()
        .expect("upstream certificate and key");
    let acceptor = builder.build();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind legacy upstream");
    let addr = listener.local_addr().expect("legacy upstream address");
    let counts = Arc::new(Handshakes::default());
    let task_counts = counts.clone();
    spawn_acceptor(listener, move |tcp| {
        let acceptor = acceptor.clone();
        let counts = task_counts.clone();
        async move {
            let Ok(ssl) = Ssl::new(acceptor.context()) else {
                return;
            };
            let Ok(mut stream) = tokio_openssl::SslStream::new(ssl, tcp) else {
                return;
            };
            if std::pin::Pin::new(&mut stream).accept().await.is_err() {
                return;
            }
            counts.total.fetch_add(1, Ordering::Relaxed);
            if let Some(negotiated) = Negotiated::of_openssl(stream.ssl()) {
                counts.negotiated(negotiated);
            }
            if stream.ssl().session_reused() {
                counts.resumed.fetch_add(1, Ordering::Relaxed);
            }
            // As in `start_upstream`: errors are the client going away.
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
