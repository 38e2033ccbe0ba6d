//! The measurements, each asserting that every byte arrived, never a timing; and the clients
//! they run: plain TCP to a proxy, or TLS straight to the upstream (the baseline: rustls, or
//! OpenSSL for the legacy upstream).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;

use crate::upstream::{BLOCK, EXCHANGE, read_u64};
use crate::{Backend, Pin, STEP_TIMEOUT, TlsSettings, TlsVersion, Trust};

const LATENCY_WARMUP: usize = 200;

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type Conn = Box<dyn Io>;

#[derive(Clone)]
pub(crate) enum Target {
    Plain(SocketAddr),
    Direct {
        addr: SocketAddr,
        connector: TlsConnector,
    },
    /// TLS straight to the legacy upstream, which rustls cannot speak to.
    DirectOpenSsl {
        addr: SocketAddr,
        context: SslContext,
    },
}

impl Target {
    pub(crate) async fn connect(&self) -> io::Result<Conn> {
        let addr = match self {
            Target::Plain(addr)
            | Target::Direct { addr, .. }
            | Target::DirectOpenSsl { addr, .. } => *addr,
        };
        let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        tcp.set_nodelay(true)?;
        match self {
            Target::Plain(_) => Ok(Box::new(tcp)),
            Target::Direct { connector, .. } => {
                let tls = connector.connect(ServerName::from(addr.ip()), tcp).await?;
                Ok(Box::new(tls))
            }
            Target::DirectOpenSsl { context, .. } => {
                let ssl = Ssl::new(context).map_err(io::Error::other)?;
                let mut tls = tokio_openssl::SslStream::new(ssl, tcp).map_err(io::Error::other)?;
                std::pin::Pin::new(&mut tls)
                    .connect()
                    .await
                    .map_err(io::Error::other)?;
                Ok(Box::new(tls))
            }
        }
    }
}

/// amtgw's own `trust = "pin"` client config for `cert`, so that the harness's TLS clients
/// verify exactly as the gateway does.
pub(crate) fn pinned_client_config(
    cert: &CertificateDer<'static>,
    provider: &Arc<CryptoProvider>,
    versions: Vec<TlsVersion>,
) -> Arc<ClientConfig> {
    let settings = TlsSettings {
        trust: Trust::Pin(vec![Pin::of_certificate(cert)]),
        client_identity: None,
        backend: Backend::Rustls,
        versions,
        // rustls' own default cache size, as the client had before.
        session_cache: 256,
    };
    let verifier =
        amtgw::tls::verifier(&settings.trust, provider, "direct", None).expect("pinned verifier");
    amtgw::tls::client_config(&settings, provider, verifier).expect("pinned client config")
}

/// The direct client: the baseline verifies and negotiates as the gateway does.
pub(crate) fn direct_connector(cert: &CertificateDer<'static>) -> TlsConnector {
    TlsConnector::from(pinned_client_config(
        cert,
        &amtgw::tls::provider(),
        vec![TlsVersion::Tls1_3, TlsVersion::Tls1_2],
    ))
}

/// The direct client to the legacy upstream: OpenSSL's default suites (which include the
/// upstream's RSA key exchange one), trusting `cert` alone, as HAProxy is configured here (no
/// name check: the AMT-like certificate names no host). Not amtgw's legacy client, which
/// exists only with the legacy-tls feature; this one only has to time round trips.
pub(crate) fn direct_openssl_context(cert: &CertificateDer<'static>) -> SslContext {
    let mut builder = SslContext::builder(SslMethod::tls_client()).expect("OpenSSL context");
    let cert = X509::from_der(cert.as_ref()).expect("upstream certificate");
    builder
        .cert_store_mut()
        .add_cert(cert)
        .expect("trust the upstream certificate");
    builder.set_verify(SslVerifyMode::PEER);
    builder.build()
}

pub(crate) async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP_TIMEOUT * 4, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no progress within {:?}", STEP_TIMEOUT * 4))
}

// The measurements

/// Console -> device: write `bytes` into the sink, wait for its count.
pub(crate) async fn bulk_to_device(target: &Target, bytes: u64) -> Duration {
    let start = Instant::now();
    let mut c = target.connect().await.expect("connect for bulk");
    let mut header = vec![b'S'];
    header.extend_from_slice(&bytes.to_be_bytes());
    c.write_all(&header).await.expect("bulk header");
    let block = vec![0xa5u8; BLOCK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        c.write_all(&block[..n]).await.expect("bulk write");
        left -= n as u64;
    }
    c.flush().await.expect("bulk flush");
    let got = read_u64(&mut c).await.expect("sink acknowledgement");
    assert_eq!(got, bytes, "the sink received a different byte count");
    start.elapsed()
}

/// Device -> console: ask the source for `bytes`, read them all.
pub(crate) async fn bulk_to_console(target: &Target, bytes: u64) -> Duration {
    let start = Instant::now();
    let mut c = target.connect().await.expect("connect for bulk");
    let mut header = vec![b'O'];
    header.extend_from_slice(&bytes.to_be_bytes());
    c.write_all(&header).await.expect("bulk header");
    c.flush().await.expect("bulk flush");
    let mut buf = vec![0u8; BLOCK];
    let mut left = bytes;
    while left > 0 {
        let n = c.read(&mut buf).await.expect("bulk read");
        assert!(n > 0, "stream ended with {left} bytes missing");
        left -= n as u64;
    }
    start.elapsed()
}

/// One connection: connect, one byte through the echo and back, close.
pub(crate) async fn one_connection(target: &Target) -> io::Result<Conn> {
    let mut c = target.connect().await?;
    c.write_all(b"E\x07").await?;
    c.flush().await?;
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await?;
    if b[0] != 7 {
        return Err(io::Error::other("echo returned a different byte"));
    }
    Ok(c)
}

/// `total` connections, `concurrency` at a time.
pub(crate) async fn connection_rate(target: &Target, total: usize, concurrency: usize) -> Duration {
    in_workers(
        "connection worker",
        target,
        total,
        concurrency,
        |target, n| async move {
            for _ in 0..n {
                let c = one_connection(&target).await.expect("connection");
                drop(c);
            }
        },
    )
    .await
}

/// `total` of something spread over `concurrency` tasks, each `worker(target, its share)`;
/// returns how long they took together. `what` names a task that panicked.
pub(crate) async fn in_workers<F, Fut>(
    what: &str,
    target: &Target,
    total: usize,
    concurrency: usize,
    worker: F,
) -> Duration
where
    F: Fn(Target, usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..concurrency {
        let n = total / concurrency + usize::from(index < total % concurrency);
        tasks.spawn(worker(target.clone(), n));
    }
    while let Some(done) = tasks.join_next().await {
        done.expect(what);
    }
    start.elapsed()
}

/// Round trips of 1 KiB each way, in nanoseconds, alternating exchange by exchange between a
/// direct connection to the upstream and one through the proxy, so both sample sets see the
/// same background load on a shared machine. Returns (direct, via), each sorted.
pub(crate) async fn latency(direct: &Target, via: &Target, samples: usize) -> (Vec<u64>, Vec<u64>) {
    let mut conns = [
        direct.connect().await.expect("connect for latency"),
        via.connect().await.expect("connect for latency"),
    ];
    for c in &mut conns {
        c.write_all(b"R").await.expect("mode");
    }
    let out = [0x42u8; EXCHANGE];
    let mut back = [0u8; EXCHANGE];
    let mut times = [Vec::with_capacity(samples), Vec::with_capacity(samples)];
    for i in 0..LATENCY_WARMUP + samples {
        for (c, times) in conns.iter_mut().zip(times.iter_mut()) {
            let t = Instant::now();
            c.write_all(&out).await.expect("request");
            c.flush().await.expect("flush");
            c.read_exact(&mut back).await.expect("response");
            if i >= LATENCY_WARMUP {
                times.push(t.elapsed().as_nanos() as u64);
            }
            assert_eq!(back, out, "the response differs from the request");
        }
    }
    let [mut direct, mut via] = times;
    direct.sort_unstable();
    via.sort_unstable();
    (direct, via)
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64
}

/// What the hop through `via` adds at percentile `p`, in µs, over `direct` (as `latency`
/// returns them). Not the distribution of the difference: see the README's caveats.
pub(crate) fn added_latency_us(direct: &[u64], via: &[u64], p: f64) -> f64 {
    (percentile(via, p) - percentile(direct, p)) / 1e3
}

/// Open `n` connections that each carried one echoed byte, and keep them.
pub(crate) async fn open_idle(target: &Target, n: usize) -> Vec<Conn> {
    let mut tasks = JoinSet::new();
    let workers = 16.min(n.max(1));
    for worker in 0..workers {
        let count = n / workers + usize::from(worker < n % workers);
        let target = target.clone();
        tasks.spawn(async move {
            let mut held = Vec::with_capacity(count);
            for _ in 0..count {
                held.push(one_connection(&target).await.expect("idle connection"));
            }
            held
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("idle worker"));
    }
    all
}
