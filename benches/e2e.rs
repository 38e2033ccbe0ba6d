//! End-to-end benchmark: amtgw against the programs an operator would otherwise deploy in its
//! place (stunnel4 in client mode, HAProxy `mode tcp` with `ssl verify required`, nginx
//! `stream` with `proxy_ssl_verify`), all forwarding plain TCP to the same TLS upstream and all
//! pinned to its exact certificate. amtgw and HAProxy also run a second time with busy polling
//! on (`amtgw-busy-poll`, `haproxy-busy-polling`): on a VM waking a sleeping CPU is slow, and
//! those columns show what not sleeping gains and costs. See `benches/README.md` for what each
//! figure means.
//!
//! `cargo bench --bench e2e` runs the full comparison and writes `benches/results/latest.md`;
//! under `cargo test --all-targets` (no `--bench` argument) it runs a seconds-long smoke: one
//! tiny measurement per installed proxy, asserting only that the bytes arrived. Sizes come from
//! `E2E_*` environment variables (listed in the README).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead as _, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amtgw::config::{TlsSettings, Trust};
use amtgw::tls::Pin;
use amtgw_sim::{CertStyle, SimConfig, SimDevice, SimIdentity, generate_amt_identity};
use md5::{Digest as _, Md5};
use rustls::crypto::CryptoProvider;
use rustls::{
    ClientConfig, ClientConnection, Connection, HandshakeKind, NamedGroup, ProtocolVersion,
    ServerConfig, ServerConnection, SupportedCipherSuite, SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Bound on every wait for a proxy or a connection: a hang fails the run, it never paces it.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const BLOCK: usize = 64 * 1024;
const EXCHANGE: usize = 1024;
const LATENCY_WARMUP: usize = 200;
/// Plaintext per write in the rustls in-memory measurement: one full TLS record.
const TLS_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Records encrypted into the reused buffer before the server decrypts them: 256 KiB, so the
/// ciphertext stays in cache the way a relay's socket buffers do.
const RECORDS_PER_BATCH: usize = 16;
/// The target for bulk throughput: within 2× of rustls' in-memory rate.
const BULK_TARGET_SHARE_OF_RUSTLS: f64 = 0.5;
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
const WSMAN_BODY: &str = include_str!("../scripts/wsman/get-general-settings.xml");

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
    smoke: bool,
    proxies: Vec<Kind>,
    reps: usize,
    bulk_mb: u64,
    conns: usize,
    concurrency: usize,
    latency_samples: usize,
    idle: Vec<usize>,
    wsman: usize,
    out: Option<PathBuf>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid value")),
        Err(_) => default,
    }
}

impl Options {
    fn from_env(smoke: bool) -> Options {
        let proxies = match std::env::var("E2E_PROXIES") {
            Ok(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| Kind::parse(s.trim()))
                .collect(),
            Err(_) => Kind::ALL.to_vec(),
        };
        fn s<T>(smoke: bool, full: T, small: T) -> T {
            if smoke { small } else { full }
        }
        let mut idle: Vec<usize> = std::env::var("E2E_IDLE")
            .unwrap_or_else(|_| s(smoke, "1000", "20").to_owned())
            .split(',')
            .filter(|x| !x.trim().is_empty())
            .map(|x| x.trim().parse().expect("E2E_IDLE: comma-separated counts"))
            .collect();
        if !smoke && std::env::var("E2E_IDLE_10K").is_ok_and(|v| v == "1") {
            idle.push(10_000);
        }
        let default_out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/latest.md");
        Options {
            smoke,
            proxies,
            reps: env_or("E2E_REPS", s(smoke, 3, 1)),
            bulk_mb: env_or("E2E_BULK_MB", s(smoke, 256, 1)),
            conns: env_or("E2E_CONNS", s(smoke, 1000, 8)),
            concurrency: env_or("E2E_CONCURRENCY", 4).max(1),
            latency_samples: env_or("E2E_LATENCY_SAMPLES", s(smoke, 10_000, 20)),
            idle,
            wsman: env_or("E2E_WSMAN", s(smoke, 400, 4)),
            out: match std::env::var("E2E_OUT") {
                Ok(path) if path.is_empty() || path == "-" => None,
                Ok(path) => Some(PathBuf::from(path)),
                Err(_) => (!smoke).then_some(default_out),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Machine facts

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    Some(String::from_utf8_lossy(&text).trim().to_owned())
}

/// stdout of a command that succeeded.
fn success_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn clock_ticks() -> f64 {
    command_output("getconf", &["CLK_TCK"])
        .and_then(|s| s.parse().ok())
        .unwrap_or(100.0)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The soft and hard RLIMIT_NOFILE of this process.
fn open_files_limits() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .map(|v| v.parse().unwrap_or(u64::MAX))
                .collect()
        })
        .unwrap_or_default();
    match fields[..] {
        [soft, hard] => (soft, hard),
        _ => (1024, 1024),
    }
}

/// Raise RLIMIT_NOFILE for this process (and so for the proxies it starts) with the `prlimit`
/// program: the crate has no libc binding and forbids unsafe code. Raising the hard limit
/// needs CAP_SYS_RESOURCE; without it the soft limit goes up to the hard one.
fn raise_open_files(wanted: u64) -> u64 {
    let (soft, hard) = open_files_limits();
    if soft >= wanted {
        return soft;
    }
    let pid = std::process::id().to_string();
    for target in [wanted, hard.min(wanted)] {
        let limit = format!("--nofile={target}:{}", target.max(hard));
        let ok = Command::new("prlimit")
            .args(["--pid", &pid, &limit])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
    }
    let (soft, hard) = open_files_limits();
    if soft < wanted {
        eprintln!(
            "e2e: RLIMIT_NOFILE is {soft} (hard {hard}), wanted {wanted}: raising the hard limit \
             needs root with CAP_SYS_RESOURCE (or `ulimit -Hn` before cargo)"
        );
    }
    soft
}

/// E2E_TASKSET=1 pins the harness to CPU 0 and every proxy to CPU 1: placement stops varying
/// from run to run (on a VM, a wake-up across CPUs can cost tens of µs), at the price of one
/// core per proxy whatever its thread count.
fn pinned_cpus() -> bool {
    std::env::var("E2E_TASKSET").is_ok_and(|v| v == "1")
}

/// The harness's CPU under E2E_TASKSET=1 ...
const HARNESS_CPU: &str = "0";
/// ... and the proxies', which the helpers measuring what a proxy could do share.
const PROXY_CPU: &str = "1";

/// A command running `program` on `cpu` under E2E_TASKSET=1, unpinned otherwise. `taskset`
/// execs the program, so the child's pid is the program's.
fn command_on_cpu(cpu: &str, program: &Path) -> Command {
    if pinned_cpus() {
        let mut command = Command::new("taskset");
        command.args(["-c", cpu]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// Process accounting: CPU and RSS of a proxy's whole process tree (nginx and HAProxy may fork)

fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for task in tasks.flatten() {
                if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                    all.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
        i += 1;
    }
    all.sort_unstable();
    all.dedup();
    all
}

/// utime + stime of every process in the tree, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    tree(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| {
            // Fields after "(comm)": state is field 3, utime 14, stime 15.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

fn rss_kib(pid: u32) -> u64 {
    tree(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Upstream: an in-process TLS server with the AMT-like certificate. The first byte a client
// sends picks the mode:
//   'E' echo everything;  'S' + u64 n: sink n bytes, answer n as u64;
//   'O' + u64 n: send n bytes;  'R': request/response, 1 KiB in, 1 KiB out, repeatedly.

#[derive(Default)]
struct Handshakes {
    total: AtomicU64,
    resumed: AtomicU64,
    last: std::sync::Mutex<Option<Negotiated>>,
}

impl Handshakes {
    fn snapshot(&self) -> (u64, u64) {
        (
            self.total.load(Ordering::Relaxed),
            self.resumed.load(Ordering::Relaxed),
        )
    }

    /// What the latest handshake agreed on.
    fn last_negotiated(&self) -> Option<Negotiated> {
        *self.last.lock().ok()?
    }
}

/// What a handshake agreed on: printed per proxy, and the cipher suite the rustls in-memory
/// measurement uses.
#[derive(Clone, Copy)]
struct Negotiated {
    version: ProtocolVersion,
    /// None for a resumed TLS 1.2 handshake.
    group: Option<NamedGroup>,
    suite: SupportedCipherSuite,
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

async fn start_upstream(
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
async fn start_plain_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind plain upstream");
    let addr = listener.local_addr().expect("plain upstream address");
    spawn_acceptor(listener, |tcp| async move {
        let _ = serve(tcp).await;
    });
    addr
}

async fn read_u64<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<u64> {
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

// ---------------------------------------------------------------------------------------------
// Clients: plain TCP to a proxy, or TLS straight to the upstream (the baseline)

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

#[derive(Clone)]
enum Target {
    Plain(SocketAddr),
    Direct {
        addr: SocketAddr,
        connector: TlsConnector,
    },
}

impl Target {
    async fn connect(&self) -> io::Result<Conn> {
        let addr = match self {
            Target::Plain(addr) | Target::Direct { addr, .. } => *addr,
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
        }
    }
}

/// amtgw's own `trust = "pin"` client config for `cert`, so that the harness's TLS clients
/// verify exactly as the gateway does.
fn pinned_client_config(
    cert: &CertificateDer<'static>,
    provider: &Arc<CryptoProvider>,
    versions: Vec<&'static SupportedProtocolVersion>,
) -> Arc<ClientConfig> {
    let settings = TlsSettings {
        trust: Trust::Pin(vec![Pin::of_certificate(cert)]),
        client_identity: None,
        versions,
        // rustls' own default cache size, as the client had before.
        session_cache: 256,
    };
    amtgw::tls::client_config(&settings, provider, "direct", None).expect("pinned client config")
}

/// The direct client: the baseline verifies and negotiates as the gateway does.
fn direct_connector(cert: &CertificateDer<'static>) -> TlsConnector {
    TlsConnector::from(pinned_client_config(
        cert,
        &amtgw::tls::provider(),
        vec![&rustls::version::TLS13, &rustls::version::TLS12],
    ))
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP_TIMEOUT * 4, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no progress within {:?}", STEP_TIMEOUT * 4))
}

// ---------------------------------------------------------------------------------------------
// Measurements (each asserts that every byte arrived, never a timing)

/// Console -> device: write `bytes` into the sink, wait for its count.
async fn bulk_to_device(target: &Target, bytes: u64) -> Duration {
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
async fn bulk_to_console(target: &Target, bytes: u64) -> Duration {
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
async fn one_connection(target: &Target) -> io::Result<Conn> {
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
async fn connection_rate(target: &Target, total: usize, concurrency: usize) -> Duration {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..concurrency {
        let n = total / concurrency + usize::from(worker < total % concurrency);
        let target = target.clone();
        tasks.spawn(async move {
            for _ in 0..n {
                let c = one_connection(&target).await.expect("connection");
                drop(c);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("connection worker");
    }
    start.elapsed()
}

/// Round trips of 1 KiB each way, in nanoseconds, alternating exchange by exchange between a
/// direct connection to the upstream and one through the proxy, so both sample sets see the
/// same background load on a shared machine. Returns (direct, via), each sorted.
async fn latency(direct: &Target, via: &Target, samples: usize) -> (Vec<u64>, Vec<u64>) {
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

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[index.min(sorted.len() - 1)] as f64
}

/// What the hop through `via` adds at percentile `p`, in µs, over `direct` (as `latency`
/// returns them). Not the distribution of the difference: see the README's caveats.
fn added_latency_us(direct: &[u64], via: &[u64], p: f64) -> f64 {
    (percentile(via, p) - percentile(direct, p)) / 1e3
}

/// Open `n` connections that each carried one echoed byte, and keep them.
async fn open_idle(target: &Target, n: usize) -> Vec<Conn> {
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

// WS-Man: HTTP digest exchanges against the simulator.

struct Challenge {
    realm: String,
    nonce: String,
}

fn header_param(header: &str, name: &str) -> Option<String> {
    let start = header.find(&format!("{name}=\""))? + name.len() + 2;
    let end = header[start..].find('"')? + start;
    Some(header[start..end].to_owned())
}

fn md5_hex(data: &str) -> String {
    format!("{:x}", Md5::digest(data.as_bytes()))
}

fn wsman_request(auth: Option<(&Challenge, u64)>, keep_alive: bool) -> Vec<u8> {
    let mut request = format!(
        "POST /wsman HTTP/1.1\r\nHost: 127.0.0.1:16992\r\n\
         Content-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\n",
        WSMAN_BODY.len()
    );
    if let Some((challenge, nc)) = auth {
        let (user, password) = (amtgw_sim::DEMO_USERNAME, amtgw_sim::DEMO_PASSWORD);
        let nc = format!("{nc:08x}");
        let cnonce = "0a4f113b";
        let ha1 = md5_hex(&format!("{user}:{}:{password}", challenge.realm));
        let ha2 = md5_hex("POST:/wsman");
        let response = md5_hex(&format!(
            "{ha1}:{}:{nc}:{cnonce}:auth:{ha2}",
            challenge.nonce
        ));
        let _ = write!(
            request,
            "Authorization: Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", \
             uri=\"/wsman\", qop=auth, nc={nc}, cnonce=\"{cnonce}\", response=\"{response}\"\r\n",
            challenge.realm, challenge.nonce
        );
    }
    if !keep_alive {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    request.push_str(WSMAN_BODY);
    request.into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Send one request and read one whole response; returns the status and the header block.
async fn http_exchange(c: &mut Conn, request: &[u8]) -> io::Result<(u16, String)> {
    c.write_all(request).await?;
    c.flush().await?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io::Error::other("malformed status line"))?;
            let body = &buf[end + 4..];
            let lower = head.to_ascii_lowercase();
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = match length {
                Some(length) => body.len() >= length,
                None => body.ends_with(b"0\r\n\r\n"),
            };
            if complete {
                return Ok((status, head));
            }
        }
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn wsman_challenge(target: &Target) -> Challenge {
    let mut c = target.connect().await.expect("connect to the simulator");
    let (status, head) = http_exchange(&mut c, &wsman_request(None, false))
        .await
        .expect("challenge");
    assert_eq!(status, 401, "expected a digest challenge");
    Challenge {
        realm: header_param(&head, "realm").expect("realm in the challenge"),
        nonce: header_param(&head, "nonce").expect("nonce in the challenge"),
    }
}

/// `total` authenticated Gets. With keep-alive: per worker one challenge, then every Get on
/// one connection. Without: per Get an unauthenticated request (401, the device closes) and an
/// authenticated one on a new connection, as simple consoles do.
async fn wsman_mix(
    target: &Target,
    total: usize,
    concurrency: usize,
    keep_alive: bool,
) -> Duration {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..concurrency {
        let n = total / concurrency + usize::from(worker < total % concurrency);
        let target = target.clone();
        tasks.spawn(async move {
            if n == 0 {
                return;
            }
            if keep_alive {
                let challenge = wsman_challenge(&target).await;
                let mut c = target.connect().await.expect("connect to the simulator");
                for nc in 1..=n as u64 {
                    let (status, _) =
                        http_exchange(&mut c, &wsman_request(Some((&challenge, nc)), true))
                            .await
                            .expect("keep-alive exchange");
                    assert_eq!(status, 200, "authenticated Get failed");
                }
            } else {
                for _ in 0..n {
                    let challenge = wsman_challenge(&target).await;
                    let mut c = target.connect().await.expect("connect to the simulator");
                    let (status, _) =
                        http_exchange(&mut c, &wsman_request(Some((&challenge, 1)), false))
                            .await
                            .expect("exchange");
                    assert_eq!(status, 200, "authenticated Get failed");
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("WS-Man worker");
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------
// Helpers: work the harness runs as a copy of itself, so that `taskset` can put it on the
// proxies' CPU (the crate forbids unsafe code, so no sched_setaffinity on a thread). `main`
// dispatches on the first argument.

const HELPER_ARG: &str = "--e2e-helper";

fn helper_command(cpu: &str, args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("path of the bench executable");
    let mut command = command_on_cpu(cpu, &exe);
    command.arg(HELPER_ARG).args(args);
    command
}

/// The helper side: `forwarder UPSTREAM` or `rustls-in-memory SUITE MIB`.
fn run_helper(args: &[String]) {
    match args {
        [job, upstream] if job == "forwarder" => {
            bare_forwarder(upstream.parse().expect("forwarder: upstream address"));
        }
        [job, suite, mib] if job == "rustls-in-memory" => {
            let (encrypt, decrypt) =
                rustls_in_memory_rates(suite, mib.parse().expect("rustls-in-memory: MiB"));
            println!("{encrypt} {decrypt}");
        }
        other => panic!("unknown helper job {other:?}"),
    }
}

/// The least any proxy can do: accept, connect, copy both ways with TCP_NODELAY, on one
/// current-thread runtime; no TLS, no parsing. Prints its address, then serves until killed.
fn bare_forwarder(upstream: SocketAddr) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("forwarder runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind forwarder");
        println!("{}", listener.local_addr().expect("forwarder address"));
        loop {
            let (mut console, _) = listener.accept().await.expect("forwarder accept");
            tokio::spawn(async move {
                let Ok(mut device) = TcpStream::connect(upstream).await else {
                    return;
                };
                console.set_nodelay(true).ok();
                device.set_nodelay(true).ok();
                let _ = tokio::io::copy_bidirectional(&mut console, &mut device).await;
            });
        }
    });
}

/// A running `bare_forwarder` helper, killed on drop.
struct BareForwarder {
    /// Where it runs, as the row names say it.
    placement: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl BareForwarder {
    /// Blocks until the helper reports its address (run it off the runtime).
    fn start(cpu: &str, placement: &'static str, upstream: SocketAddr) -> BareForwarder {
        let mut child = helper_command(cpu, &["forwarder", &upstream.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the forwarder helper");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("forwarder stdout");
        io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the forwarder's address");
        let addr = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the forwarder helper printed {line:?}, not an address"));
        BareForwarder {
            placement,
            child,
            addr,
        }
    }
}

impl Drop for BareForwarder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// rustls' bulk rate with nothing else in the way: a client and a server connection in this
/// thread, `suite` (by its name, e.g. `TLS13_AES_256_GCM_SHA384`) from amtgw's provider, the
/// handshake over an RSA-2048 certificate as the upstream's, then `mib` MiB in 16 KiB writes.
/// Encrypting (write + write_tls) and decrypting (read_tls + process_new_packets + read) are
/// timed apart, batch by batch. Returns MB/s (10⁶ bytes), (encrypt, decrypt).
fn rustls_in_memory_rates(suite: &str, mib: u64) -> (f64, f64) {
    let amtgw_provider = amtgw::tls::provider();
    let suite = amtgw_provider
        .cipher_suites
        .iter()
        .copied()
        .find(|s| format!("{:?}", s.suite()) == suite)
        .unwrap_or_else(|| panic!("amtgw's provider has no cipher suite {suite}"));
    // The same provider offering only that suite, so both ends cannot agree on another.
    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![suite],
        ..(*amtgw_provider).clone()
    });
    let versions = vec![suite.version()];
    let (cert, key) = generate_amt_identity(false, CertStyle::Unknown).expect("certificate");
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .expect("protocol version")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("certificate and key");
    let client_config = pinned_client_config(&cert, &provider, versions);
    let server_name = ServerName::from(std::net::IpAddr::from([127, 0, 0, 1]));
    let mut client = Connection::from(
        ClientConnection::new(client_config, server_name).expect("client connection"),
    );
    let mut server = Connection::from(
        ServerConnection::new(Arc::new(server_config)).expect("server connection"),
    );

    let mut wire = Vec::with_capacity(RECORDS_PER_BATCH * (TLS_RECORD_PLAINTEXT + 256));
    let mut plaintext = vec![0u8; TLS_RECORD_PLAINTEXT];
    while client.is_handshaking() || server.is_handshaking() {
        wire.clear();
        append_tls(&mut client, &mut wire);
        absorb_tls(&mut server, &wire, &mut plaintext);
        wire.clear();
        append_tls(&mut server, &mut wire);
        absorb_tls(&mut client, &wire, &mut plaintext);
    }
    assert_eq!(
        server.negotiated_cipher_suite().map(|s| s.suite()),
        Some(suite.suite())
    );

    let block = [0xa5u8; TLS_RECORD_PLAINTEXT];
    let total = mib * 1024 * 1024;
    let batch = (RECORDS_PER_BATCH * TLS_RECORD_PLAINTEXT) as u64;
    let (mut encrypting, mut decrypting) = (Duration::ZERO, Duration::ZERO);
    let mut decrypted = 0u64;
    let mut left = total;
    while left > 0 {
        let this_batch = left.min(batch);
        let start = Instant::now();
        wire.clear();
        let mut encrypted = 0;
        while encrypted < this_batch {
            let n = (this_batch - encrypted).min(TLS_RECORD_PLAINTEXT as u64) as usize;
            client.writer().write_all(&block[..n]).expect("encrypt");
            // At once, as a relay does: rustls queues at most 64 KiB of records.
            append_tls(&mut client, &mut wire);
            encrypted += n as u64;
        }
        encrypting += start.elapsed();
        let start = Instant::now();
        decrypted += absorb_tls(&mut server, &wire, &mut plaintext);
        decrypting += start.elapsed();
        left -= this_batch;
    }
    assert_eq!(
        decrypted, total,
        "the server decrypted a different byte count"
    );
    let rate = |took: Duration| total as f64 / 1e6 / took.as_secs_f64();
    (rate(encrypting), rate(decrypting))
}

/// Append to `wire` every TLS record `conn` has queued.
fn append_tls(conn: &mut Connection, wire: &mut Vec<u8>) {
    while conn.wants_write() {
        conn.write_tls(wire).expect("write_tls into memory");
    }
}

/// Feed `records` to `conn`, reading out (and discarding) the plaintext as it comes; returns
/// its length.
fn absorb_tls(conn: &mut Connection, mut records: &[u8], plaintext: &mut [u8]) -> u64 {
    let mut received = 0;
    while !records.is_empty() {
        conn.read_tls(&mut records).expect("read_tls from memory");
        conn.process_new_packets().expect("process TLS records");
        loop {
            match conn.reader().read(plaintext) {
                Ok(0) => break,
                Ok(n) => received += n as u64,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => panic!("reading decrypted plaintext: {error}"),
            }
        }
    }
    received
}

/// `rustls_in_memory_rates` in a helper on the proxies' CPU: MB/s (encrypt, decrypt).
async fn rustls_in_memory(suite: SupportedCipherSuite, mib: u64) -> (f64, f64) {
    let args = [
        "rustls-in-memory".to_owned(),
        format!("{:?}", suite.suite()),
        mib.to_string(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        helper_command(PROXY_CPU, &args).output()
    })
    .await
    .expect("rustls helper task")
    .expect("run the rustls helper");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rates: Vec<f64> = stdout
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    match (output.status.success(), &rates[..]) {
        (true, &[encrypt, decrypt]) => (encrypt, decrypt),
        _ => panic!(
            "the rustls in-memory helper failed ({}): {stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Proxies

/// A program the harness runs as a proxy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Program {
    Amtgw,
    Stunnel,
    Haproxy,
    Nginx,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::Amtgw => "amtgw",
            Program::Stunnel => "stunnel",
            Program::Haproxy => "haproxy",
            Program::Nginx => "nginx",
        }
    }

    fn locate(self) -> Option<PathBuf> {
        let names: &[&str] = match self {
            Program::Amtgw => {
                let path = std::env::var("E2E_AMTGW_BIN")
                    .unwrap_or_else(|_| env!("CARGO_BIN_EXE_amtgw").to_owned());
                return Some(PathBuf::from(path)).filter(|p| p.exists());
            }
            Program::Stunnel => &["stunnel4", "stunnel"],
            Program::Haproxy => &["haproxy"],
            Program::Nginx => &["nginx"],
        };
        let path = std::env::var("PATH").unwrap_or_default();
        let dirs = path
            .split(':')
            .map(PathBuf::from)
            .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
        let dirs: Vec<PathBuf> = dirs.collect();
        let found = names
            .iter()
            .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
            .find(|p| p.is_file());
        // Debian's nginx loads the stream module from libnginx-mod-stream; without it there is
        // nothing to compare.
        found.filter(|_| self != Program::Nginx || Path::new(NGINX_STREAM_MODULE).is_file())
    }

    fn version(self, program: &Path) -> String {
        let program = program.to_string_lossy();
        let text = match self {
            Program::Amtgw => command_output(&program, &["--version"]),
            Program::Stunnel => command_output(&program, &["-version"]).map(|t| {
                t.lines()
                    .find(|l| l.starts_with("stunnel"))
                    .unwrap_or_default()
                    .to_owned()
            }),
            Program::Haproxy => command_output(&program, &["-v"]),
            Program::Nginx => command_output(&program, &["-v"]),
        };
        text.and_then(|t| t.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown version".into())
    }
}

/// `busy_poll` of amtgw-busy-poll: E2E_BUSY_POLL, as amtgw's config spells a duration.
fn amtgw_busy_poll() -> String {
    std::env::var("E2E_BUSY_POLL").unwrap_or_else(|_| "200us".to_owned())
}

/// `nbthread` of haproxy-busy-polling: one per CPU it may run on, as threads that never sleep
/// must not share one (like amtgw's workers by default).
fn haproxy_busy_polling_threads() -> usize {
    if pinned_cpus() { 1 } else { 2 }
}

/// A column of the table: a program in one configuration. The busy-polling variants exist
/// because on a VM waking a sleeping vCPU is slow (see the README): what a proxy gains by not
/// sleeping, and what that costs in CPU, is a comparison of its own.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Amtgw,
    /// amtgw with `gateway.busy_poll`: polls on after a connection's last read, for a while.
    AmtgwBusyPoll,
    Stunnel,
    Haproxy,
    /// HAProxy with `busy-polling`: never sleeps, connections or not.
    HaproxyBusyPolling,
    Nginx,
}

impl Kind {
    /// Also the column order.
    const ALL: [Kind; 6] = [
        Kind::Amtgw,
        Kind::AmtgwBusyPoll,
        Kind::Stunnel,
        Kind::Haproxy,
        Kind::HaproxyBusyPolling,
        Kind::Nginx,
    ];

    fn parse(name: &str) -> Kind {
        if name == "stunnel4" {
            return Kind::Stunnel;
        }
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                panic!("E2E_PROXIES: unknown proxy {name:?} ({})", names.join(", "))
            })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::AmtgwBusyPoll => "amtgw-busy-poll",
            Kind::HaproxyBusyPolling => "haproxy-busy-polling",
            other => other.program().name(),
        }
    }

    fn program(self) -> Program {
        match self {
            Kind::Amtgw | Kind::AmtgwBusyPoll => Program::Amtgw,
            Kind::Stunnel => Program::Stunnel,
            Kind::Haproxy | Kind::HaproxyBusyPolling => Program::Haproxy,
            Kind::Nginx => Program::Nginx,
        }
    }

    /// Polls instead of sleeping (some of the time): compared only with its like, see
    /// `Comparison`.
    fn busy_polls(self) -> bool {
        matches!(self, Kind::AmtgwBusyPoll | Kind::HaproxyBusyPolling)
    }

    /// Burns its CPU even with no connection open. Left running, it would take the proxies'
    /// CPU from every other proxy and helper measured there, so it runs only during its own
    /// turns (`Proxy::turn`).
    fn spins_when_idle(self) -> bool {
        self == Kind::HaproxyBusyPolling
    }

    /// How a variant's configuration differs from its program's default one, for the header.
    fn variant_note(self) -> Option<String> {
        match self {
            Kind::AmtgwBusyPoll => Some(format!(
                "amtgw-busy-poll is amtgw with `busy_poll = \"{}\"` in [gateway] (E2E_BUSY_POLL): \
                 after a connection's last read it polls that long before sleeping",
                amtgw_busy_poll()
            )),
            Kind::HaproxyBusyPolling => Some(format!(
                "haproxy-busy-polling is haproxy with `busy-polling` in its global section and \
                 `nbthread {}` (one per CPU it may run on, as spinning threads must not share \
                 one): its threads never sleep, so it is paused (SIGSTOP) outside its own \
                 measurements",
                haproxy_busy_polling_threads()
            )),
            _ => None,
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Where a proxy listens and where it forwards.
struct Routes {
    /// -> the upstream that never resumes (a full handshake per connection)
    full: (SocketAddr, SocketAddr),
    /// -> the upstream that resumes (tickets)
    resumed: (SocketAddr, SocketAddr),
    /// -> the simulator's WS-Man port
    sim: (SocketAddr, SocketAddr),
}

struct Proxy {
    kind: Kind,
    child: Child,
    routes: Routes,
    log: PathBuf,
}

impl Proxy {
    /// Start `kind` trusting exactly the certificate in `leaf_pem` (`pin`, for amtgw), sized
    /// for `capacity` sessions.
    #[allow(clippy::too_many_arguments)] // one call site per use; a struct would only rename them
    async fn start(
        kind: Kind,
        program: &Path,
        dir: &Path,
        leaf_pem: &Path,
        pin: &str,
        upstreams: [SocketAddr; 3],
        label: &str,
        capacity: usize,
    ) -> Proxy {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let routes = Routes {
            full: (local(free_port()), upstreams[0]),
            resumed: (local(free_port()), upstreams[1]),
            sim: (local(free_port()), upstreams[2]),
        };
        let all = [routes.full, routes.resumed, routes.sim];
        let stem = format!("{}-{label}", kind.name());
        let conf_path = dir.join(format!("{stem}.conf"));
        let log = dir.join(format!("{stem}.log"));
        let leaf = leaf_pem.display();
        let mut command = command_on_cpu(PROXY_CPU, program);
        let conf = match kind.program() {
            Program::Amtgw => {
                command.args(["run", "--config"]).arg(&conf_path);
                // One log line per connection at info; peers are configured not to log per
                // connection either.
                command.env("RUST_LOG", "warn");
                // For experiments: the data path runs on amtgw's own workers
                // (`gateway.workers`, default one per CPU it may run on), set through its
                // environment override.
                if let Ok(threads) = std::env::var("E2E_AMTGW_THREADS") {
                    command.env("AMTGW_GATEWAY__WORKERS", threads);
                }
                let busy_poll = if kind.busy_polls() {
                    format!("busy_poll = {:?}\n", amtgw_busy_poll())
                } else {
                    String::new()
                };
                let mut c = format!(
                    "[gateway]\nmax_connections = 50000\nconnect_timeout = \"5s\"\n\
                     handshake_timeout = \"5s\"\nshutdown_timeout = \"1s\"\n{busy_poll}\n\
                     [admin]\nenabled = false\n\n",
                );
                for (service, (listen, _), device) in [
                    ("wsman", routes.full, "up"),
                    ("redirection", routes.resumed, "up"),
                    ("dash", routes.sim, "sim"),
                ] {
                    let _ = write!(
                        c,
                        "[services.{service}]\nlisten_port = {}\nbind = [\"127.0.0.1\"]\n\
                         default_device = \"{device}\"\nidle_timeout = \"10m\"\n\n",
                        listen.port()
                    );
                }
                let _ = write!(
                    c,
                    "[[devices]]\nname = \"up\"\nhost = \"127.0.0.1\"\n\
                     ports = {{ wsman = {}, redirection = {} }}\ntrust = \"pin\"\npins = [\"{pin}\"]\n\n\
                     [[devices]]\nname = \"sim\"\nhost = \"127.0.0.1\"\nports = {{ dash = {} }}\n\
                     trust = \"pin\"\npins = [\"{pin}\"]\n",
                    routes.full.1.port(),
                    routes.resumed.1.port(),
                    routes.sim.1.port()
                );
                c
            }
            Program::Stunnel => {
                command.arg(&conf_path);
                // verifyPeer: the leaf must be one of the certificates in CAfile, i.e. a pin.
                // Debian's stunnel is one process, a thread per connection.
                let mut c = format!(
                    "foreground = yes\npid =\ndebug = 3\nsyslog = no\nclient = yes\n\
                     verifyPeer = yes\nCAfile = {leaf}\n\
                     socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
                );
                for (i, (listen, up)) in all.iter().enumerate() {
                    let _ = write!(c, "\n[s{i}]\naccept = {listen}\nconnect = {up}\n");
                }
                c
            }
            Program::Haproxy => {
                command.arg("-db").arg("-f").arg(&conf_path);
                let maxconn =
                    capacity.min((open_files_limits().0 as usize).saturating_sub(100) / 2);
                let (threads, busy_polling) = if kind.busy_polls() {
                    (haproxy_busy_polling_threads(), "  busy-polling\n")
                } else {
                    (2, "")
                };
                // retries 0: a refused upstream closes the client at once instead of after
                // HAProxy's 1 s retry turn-around, a timer; with busy-polling, HAProxy 2.6's
                // timers never fired here, so the wrong-pin check would hang. No measured
                // connection fails, so no figure depends on it.
                let mut c = format!(
                    "global\n  nbthread {threads}\n  maxconn {maxconn}\n{busy_polling}\n\
                     defaults\n  mode tcp\n  retries 0\n  timeout connect 5s\n  \
                     timeout client 10m\n  timeout server 10m\n",
                );
                for (i, (listen, up)) in all.iter().enumerate() {
                    // The self-signed leaf is the only CA: a pin. No sni/verifyhost, so the
                    // name is not checked (the AMT-like certificate names no host).
                    let _ = write!(
                        c,
                        "\nlisten l{i}\n  bind {listen}\n  \
                         server s1 {up} ssl verify required ca-file {leaf}\n"
                    );
                }
                c
            }
            Program::Nginx => {
                command
                    .arg("-p")
                    .arg(dir)
                    .arg("-c")
                    .arg(&conf_path)
                    .arg("-e")
                    .arg(&log)
                    .args(["-g", "daemon off;"]);
                let user = if running_as_root() {
                    "user root;\n"
                } else {
                    ""
                };
                let mut c = format!(
                    "load_module {NGINX_STREAM_MODULE};\n{user}\
                     worker_processes 2;\nworker_rlimit_nofile {files};\n\
                     pid {dir}/{stem}.pid;\nerror_log {log} error;\n\
                     events {{ worker_connections {per_worker}; }}\n\
                     stream {{\n  access_log off;\n  proxy_ssl on;\n  proxy_ssl_verify on;\n  \
                     proxy_ssl_trusted_certificate {leaf};\n  proxy_ssl_name Unknown;\n  \
                     proxy_ssl_session_reuse on;\n  proxy_connect_timeout 5s;\n  \
                     proxy_ssl_protocols TLSv1.2 TLSv1.3;\n  \
                     proxy_timeout 10m;\n",
                    dir = dir.display(),
                    log = log.display(),
                    files = open_files_limits().0,
                    // Each proxied session takes two of a worker's connections, which nginx
                    // preallocates: size them to the run, not to the descriptor limit.
                    per_worker = (2 * capacity).min(open_files_limits().0 as usize),
                );
                for (listen, up) in all {
                    let _ = writeln!(c, "  server {{ listen {listen}; proxy_pass {up}; }}");
                }
                c.push_str("}\n");
                c
            }
        };
        std::fs::write(&conf_path, conf).expect("write proxy config");
        let out = File::create(&log).expect("proxy log");
        let err = out.try_clone().expect("proxy log");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let mut proxy = Proxy {
            kind,
            child,
            routes,
            log,
        };
        for (listen, _) in all {
            proxy.wait_listening(listen).await;
        }
        proxy
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -SIGNAL` to every process of the tree.
    fn signal_tree(&self, signal: &str) {
        let pids: Vec<String> = tree(self.pid()).iter().map(u32::to_string).collect();
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(&pids)
            .status();
    }

    /// Pause a proxy that spins when idle until its next `turn`; a paused process keeps its
    /// connections and session caches. Others keep running as they would in service.
    fn rest(&self) {
        if self.kind.spins_when_idle() {
            self.signal_tree("STOP");
        }
    }

    /// Undo `rest`.
    fn wake(&self) {
        if self.kind.spins_when_idle() {
            self.signal_tree("CONT");
        }
    }

    /// This proxy is measured until the guard drops: resumed if `rest` paused it, and paused
    /// again afterwards.
    fn turn(&self) -> Turn<'_> {
        self.wake();
        Turn(self)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Readiness: the port accepts a connection (polled, bounded), the process still runs.
    async fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening on {addr}:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
            if TcpStream::connect(addr).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {addr} within {STEP_TIMEOUT:?}:\n{}",
                self.kind.name(),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM the main process (nginx's master stops its workers), SIGKILL whatever of the
    /// tree is left after a bounded wait, reap.
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // A stopped process would leave SIGTERM pending until the SIGKILL below.
        self.wake();
        let pids = tree(self.pid());
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let alive: Vec<String> = pids
            .iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .map(u32::to_string)
            .collect();
        if !alive.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&alive).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A proxy's turn to be measured (`Proxy::turn`).
struct Turn<'a>(&'a Proxy);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.rest();
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// What the ÷ columns say about a figure.
#[derive(Clone, Copy)]
enum Verdict {
    /// The compared amtgw column ÷ the best peer; ✓ when amtgw is at least as good.
    BestPeer { higher_is_better: bool },
    /// The compared amtgw column against a fixed target of the issue's; ✓ when it reaches it.
    AtLeast(f64),
    /// Nothing: a diagnostic.
    Nothing,
}

struct Metric {
    name: String,
    unit: &'static str,
    verdict: Verdict,
    decimals: usize,
    values: BTreeMap<&'static str, Vec<f64>>,
}

impl Metric {
    fn median(&self, target: &str) -> Option<f64> {
        self.values.get(target).map(|v| median(v))
    }
}

/// One ÷ column: an amtgw configuration against the best peer. Busy-polling peers count only
/// against a busy-polling amtgw, so each amtgw is judged against peers configured like it:
/// the default against the defaults, amtgw-busy-poll against all of them.
struct Comparison {
    subject: Kind,
}

impl Comparison {
    /// One per amtgw configuration in `kinds`, in their order.
    fn for_kinds(kinds: impl IntoIterator<Item = Kind>) -> Vec<Comparison> {
        kinds
            .into_iter()
            .filter(|k| k.program() == Program::Amtgw)
            .map(|subject| Comparison { subject })
            .collect()
    }

    fn heading(&self) -> String {
        let included = if self.subject.busy_polls() {
            ", busy-polling included"
        } else {
            ""
        };
        format!("{} ÷ best peer{included}", self.subject.name())
    }

    fn is_peer(&self, kind: Kind) -> bool {
        kind.program() != Program::Amtgw && (self.subject.busy_polls() || !kind.busy_polls())
    }

    /// The cell for `m`, if there is anything to say.
    fn cell(&self, m: &Metric) -> Option<String> {
        let mark = |good: bool| if good { "✓" } else { "✗" };
        let subject = m.median(self.subject.name())?;
        match m.verdict {
            Verdict::Nothing => None,
            Verdict::AtLeast(target) => {
                Some(format!("target ≥ {target} {}", mark(subject >= target)))
            }
            Verdict::BestPeer { higher_is_better } => {
                let peers = Kind::ALL
                    .into_iter()
                    .filter(|k| self.is_peer(*k))
                    .filter_map(|k| m.median(k.name()).map(|v| (k.name(), v)));
                let (peer, best) = if higher_is_better {
                    peers.max_by(|a, b| a.1.total_cmp(&b.1))
                } else {
                    peers.min_by(|a, b| a.1.total_cmp(&b.1))
                }?;
                if best.abs() <= f64::EPSILON {
                    return None;
                }
                let ratio = subject / best;
                let better = if higher_is_better {
                    ratio >= 1.0
                } else {
                    ratio <= 1.0
                };
                Some(format!("{ratio:.2} vs {peer} {}", mark(better)))
            }
        }
    }
}

#[derive(Default)]
struct Results {
    metrics: Vec<Metric>,
}

impl Results {
    /// A figure the ÷ columns compare with the best peer.
    fn record(
        &mut self,
        name: &str,
        unit: &'static str,
        higher_is_better: bool,
        decimals: usize,
        target: &'static str,
        value: f64,
    ) {
        let verdict = Verdict::BestPeer { higher_is_better };
        self.record_as(name, unit, verdict, decimals, target, value);
    }

    /// One value of `target` (a column) for the figure `name`; the table shows the median.
    fn record_as(
        &mut self,
        name: &str,
        unit: &'static str,
        verdict: Verdict,
        decimals: usize,
        target: &'static str,
        value: f64,
    ) {
        let index = match self.metrics.iter().position(|m| m.name == name) {
            Some(i) => i,
            None => {
                self.metrics.push(Metric {
                    name: name.to_owned(),
                    unit,
                    verdict,
                    decimals,
                    values: BTreeMap::new(),
                });
                self.metrics.len() - 1
            }
        };
        self.metrics[index]
            .values
            .entry(target)
            .or_default()
            .push(value);
    }

    /// The value of `target` recorded last for `name` (this repetition's).
    fn latest(&self, name: &str, target: &str) -> Option<f64> {
        let metric = self.metrics.iter().find(|m| m.name == name)?;
        metric.values.get(target)?.last().copied()
    }

    fn table(&self, columns: &[&'static str], comparisons: &[Comparison]) -> String {
        let mut out = String::from("| figure |");
        for c in columns {
            let _ = write!(out, " {c} |");
        }
        for comparison in comparisons {
            let _ = write!(out, " {} |", comparison.heading());
        }
        out.push_str("\n|---|");
        for _ in 0..columns.len() + comparisons.len() {
            out.push_str("---:|");
        }
        out.push('\n');
        for m in &self.metrics {
            let _ = write!(out, "| {} ({}) |", m.name, m.unit);
            for c in columns {
                match m.median(c) {
                    Some(v) => {
                        let _ = write!(out, " {v:.*} |", m.decimals);
                    }
                    None => out.push_str(" – |"),
                }
            }
            for comparison in comparisons {
                let cell = comparison.cell(m).unwrap_or_else(|| "–".into());
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// The run

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A proxy configured with another certificate's pin must refuse the upstream: no byte may
/// reach it. (nginx completes the handshake and checks the result afterwards, closing before
/// any data; the others abort the handshake.)
async fn check_refuses_wrong_pin(proxy: &Proxy, upstream: &Handshakes) -> bool {
    let before = upstream.snapshot().0;
    let target = Target::Plain(proxy.routes.full.0);
    let result = tokio::time::timeout(STEP_TIMEOUT, one_connection(&target)).await;
    match result {
        Ok(Ok(_)) => panic!(
            "{} forwarded to an upstream whose certificate is not pinned: verification is off",
            proxy.kind.name()
        ),
        Ok(Err(_)) => {}
        Err(_) => panic!("{}: wrong-pin check hung", proxy.kind.name()),
    }
    upstream.snapshot().0 != before
}

/// "amtgw and amtgw-busy-poll (amtgw 0.1.0)", …: each program asked for its version once,
/// named with every column it runs as.
fn program_versions(available: &[(Kind, PathBuf)]) -> Vec<String> {
    let mut programs: Vec<(Program, Vec<&str>, String)> = Vec::new();
    for (kind, path) in available {
        match programs.iter_mut().find(|(p, ..)| *p == kind.program()) {
            Some((_, names, _)) => names.push(kind.name()),
            None => programs.push((
                kind.program(),
                vec![kind.name()],
                kind.program().version(path),
            )),
        }
    }
    programs
        .into_iter()
        .map(|(_, names, version)| format!("{} ({version})", names.join(" and ")))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == HELPER_ARG) {
        run_helper(&args[2..]);
        return;
    }
    // cargo bench passes --bench; cargo test --all-targets passes nothing of the kind.
    let smoke = !args.iter().any(|a| a == "--bench");
    let options = Options::from_env(smoke);
    let max_idle = options.idle.iter().copied().max().unwrap_or(0) as u64;
    // Each idle connection holds two descriptors here (client, upstream) and two in the proxy.
    let limit = raise_open_files(2 * max_idle + 4096);
    if pinned_cpus() {
        // Before the runtime starts its threads, so they inherit the mask.
        let pid = std::process::id().to_string();
        let ok = Command::new("taskset")
            .args(["-a", "-p", "-c", HARNESS_CPU, &pid])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "E2E_TASKSET=1: taskset could not pin the harness to CPU 0"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(options, limit));
}

async fn run(mut options: Options, open_files: u64) {
    // A proxy holds two descriptors per idle connection, and so does this process.
    let usable = open_files.saturating_sub(512) / 2;
    for n in &mut options.idle {
        if *n as u64 > usable {
            eprintln!(
                "e2e: RLIMIT_NOFILE is {open_files}: {n} idle connections capped to {usable}"
            );
            *n = usable as usize;
        }
    }
    let mut available = Vec::new();
    let mut notes = Vec::new();
    for kind in &options.proxies {
        match kind.program().locate() {
            Some(program) => {
                available.push((*kind, program));
                notes.extend(kind.variant_note());
            }
            None => {
                let note = format!(
                    "{}: {} is not installed (or, for nginx, its stream module): skipped; \
                     benches/install-peers.sh installs it",
                    kind.name(),
                    kind.program().name()
                );
                println!("e2e: {note}");
                notes.push(note);
            }
        }
    }
    let ticks = clock_ticks();
    let max_idle = options.idle.iter().copied().max().unwrap_or(0);

    // The certificate: AMT's shape (RSA-2048, self-signed, every DN field "Unknown", no SAN),
    // served by every upstream and pinned by every proxy.
    let (cert, key) = generate_amt_identity(false, CertStyle::Unknown).expect("certificate");
    let (other_cert, _) = generate_amt_identity(false, CertStyle::Unknown).expect("certificate");
    let pin = Pin::of_certificate(&cert).to_string();
    let other_pin = Pin::of_certificate(&other_cert).to_string();
    let (full_addr, full_counts) = start_upstream(&cert, &key, false).await;
    let (resumed_addr, resumed_counts) = start_upstream(&cert, &key, true).await;
    let plain_upstream = start_plain_upstream().await;
    let sim = SimDevice::start(SimConfig {
        identity: SimIdentity::Provided {
            chain: vec![cert.clone()],
            key: key.clone_key(),
        },
        ..SimConfig::demo("amt-bench")
    })
    .await
    .expect("simulator");
    let upstreams = [full_addr, resumed_addr, sim.wsman_addr()];

    let dir = tempfile::tempdir().expect("temporary directory");
    let leaf_pem = dir.path().join("leaf.pem");
    let other_pem = dir.path().join("other.pem");
    std::fs::write(&leaf_pem, pem(&cert)).expect("write leaf.pem");
    std::fs::write(&other_pem, pem(&other_cert)).expect("write other.pem");

    // Fairness check first: every proxy must refuse an upstream that is not the pinned one.
    for (kind, program) in &available {
        let proxy = Proxy::start(
            *kind,
            program,
            dir.path(),
            &other_pem,
            &other_pin,
            upstreams,
            "wrong-pin",
            256,
        )
        .await;
        let completed = check_refuses_wrong_pin(&proxy, &full_counts).await;
        println!(
            "e2e: {} refuses a certificate it does not pin ({})",
            kind.name(),
            if completed {
                "handshake completed, then closed before any data"
            } else {
                "handshake aborted"
            }
        );
    }

    let versions = program_versions(&available);
    let mut proxies = Vec::new();
    let mut amtgw_negotiated = None;
    for (kind, program) in &available {
        let proxy = Proxy::start(
            *kind,
            program,
            dir.path(),
            &leaf_pem,
            &pin,
            upstreams,
            "bench",
            max_idle + 1024,
        )
        .await;
        let via = Target::Plain(proxy.routes.full.0);
        timed("first connection", one_connection(&via))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: no echo through the proxy: {e}\n{}",
                    kind.name(),
                    proxy.log_tail()
                )
            });
        let negotiated = full_counts
            .last_negotiated()
            .expect("the upstream records every handshake");
        notes.push(format!(
            "{} negotiates {negotiated} with the upstream",
            kind.name()
        ));
        if kind.program() == Program::Amtgw {
            amtgw_negotiated.get_or_insert(negotiated);
        }
        proxy.rest();
        proxies.push(proxy);
    }
    let direct = |addr| Target::Direct {
        addr,
        connector: direct_connector(&cert),
    };

    // The in-memory rate uses what amtgw negotiated; without amtgw in the run, what the direct
    // client does, which is amtgw's own client config.
    let negotiated = match amtgw_negotiated {
        Some(negotiated) => negotiated,
        None => {
            timed("direct connection", one_connection(&direct(full_addr)))
                .await
                .expect("direct connection to the upstream");
            full_counts
                .last_negotiated()
                .expect("the upstream records every handshake")
        }
    };
    notes.push(format!(
        "rustls in memory: {:?} over {:?} from amtgw's provider (aws-lc-rs), RSA-2048 \
         handshake, {} MiB in 16 KiB writes, one thread{}",
        negotiated.suite.suite(),
        negotiated.version,
        options.bulk_mb,
        if pinned_cpus() {
            format!(" on CPU {PROXY_CPU}")
        } else {
            String::new()
        },
    ));

    // Bare TCP forwarders in front of the plain echo: on the proxies' CPU, every hop crosses
    // CPUs as it does through a proxy; on the harness's CPU, none does.
    let placements: &[(&'static str, &'static str)] = if pinned_cpus() {
        &[
            (PROXY_CPU, " on the proxies' CPU"),
            (HARNESS_CPU, " on the harness's CPU"),
        ]
    } else {
        &[(PROXY_CPU, ", unpinned")]
    };
    let mut forwarders = Vec::new();
    for &(cpu, placement) in placements {
        let forwarder = tokio::task::spawn_blocking(move || {
            BareForwarder::start(cpu, placement, plain_upstream)
        })
        .await
        .expect("forwarder start");
        forwarders.push(forwarder);
    }

    let mut results = Results::default();
    let started = Instant::now();
    let mb = options.bulk_mb * 1024 * 1024;
    let cpu = |pid: u32| cpu_ticks(pid) as f64 / ticks;

    // Idle memory: a fresh process per proxy and repetition (an allocator keeps what earlier
    // connections freed, which would hide the next ones' cost), warmed by one connection.
    for &n in &options.idle {
        if n == 0 {
            continue;
        }
        for rep in 0..options.reps {
            for (kind, program) in &available {
                let proxy = Proxy::start(
                    *kind,
                    program,
                    dir.path(),
                    &leaf_pem,
                    &pin,
                    upstreams,
                    "idle",
                    max_idle + 1024,
                )
                .await;
                let target = Target::Plain(proxy.routes.resumed.0);
                drop(timed("warm-up connection", one_connection(&target)).await);
                let before = rss_kib(proxy.pid());
                let held = timed("idle connections", open_idle(&target, n)).await;
                assert_eq!(held.len(), n);
                let at = rss_kib(proxy.pid());
                drop(held);
                drop(proxy);
                let name = kind.name();
                results.record(
                    "RSS of a fresh process after one connection",
                    "MiB",
                    false,
                    1,
                    name,
                    before as f64 / 1024.0,
                );
                results.record(
                    &format!("RSS at {n} idle"),
                    "MiB",
                    false,
                    1,
                    name,
                    at as f64 / 1024.0,
                );
                results.record(
                    &format!("RSS per idle connection, {n}"),
                    "KiB",
                    false,
                    1,
                    name,
                    (at.saturating_sub(before)) as f64 / n as f64,
                );
                println!("e2e: idle {n} rep {rep} {name}: {before} -> {at} KiB");
            }
        }
    }

    for rep in 0..options.reps {
        for bulk_direction in ["to device", "to console"] {
            let run_bulk = |target: Target| async move {
                if bulk_direction == "to device" {
                    timed("bulk", bulk_to_device(&target, mb)).await
                } else {
                    timed("bulk", bulk_to_console(&target, mb)).await
                }
            };
            let elapsed = run_bulk(direct(resumed_addr)).await;
            let name = format!("bulk {bulk_direction}");
            results.record(
                &name,
                "MB/s",
                true,
                0,
                "direct",
                mb as f64 / 1e6 / elapsed.as_secs_f64(),
            );
            for proxy in &proxies {
                let _turn = proxy.turn();
                let c0 = cpu(proxy.pid());
                let elapsed = run_bulk(Target::Plain(proxy.routes.resumed.0)).await;
                let used = cpu(proxy.pid()) - c0;
                let p = proxy.kind.name();
                results.record(
                    &name,
                    "MB/s",
                    true,
                    0,
                    p,
                    mb as f64 / 1e6 / elapsed.as_secs_f64(),
                );
                results.record(
                    &format!("CPU, bulk {bulk_direction}"),
                    "CPU-s/GB",
                    false,
                    2,
                    p,
                    used / (mb as f64 / 1e9),
                );
            }
        }
        let (encrypt, decrypt) = rustls_in_memory(negotiated.suite, options.bulk_mb).await;
        let rustls_rates = [
            ("to device", "encrypt", encrypt),
            ("to console", "decrypt", decrypt),
        ];
        for (_, operation, rate) in rustls_rates {
            let name = format!("rustls in memory, {operation}");
            results.record_as(&name, "MB/s", Verdict::Nothing, 0, "direct", rate);
        }
        // Every column's bulk figure of this repetition against this repetition's rate: the
        // issue wants amtgw's within 2× of it.
        for (direction, operation, rate) in rustls_rates {
            let bulk = format!("bulk {direction}");
            let share = format!("bulk {direction} ÷ rustls {operation} rate");
            let verdict = Verdict::AtLeast(BULK_TARGET_SHARE_OF_RUSTLS);
            let columns = std::iter::once("direct").chain(proxies.iter().map(|p| p.kind.name()));
            for column in columns {
                if let Some(bulk_rate) = results.latest(&bulk, column) {
                    results.record_as(&share, "×", verdict, 2, column, bulk_rate / rate);
                }
            }
        }
        println!("e2e: bulk rep {rep} done ({:.0?})", started.elapsed());

        for (label, upstream_addr, counts) in [
            ("full handshake", full_addr, &full_counts),
            ("resumed", resumed_addr, &resumed_counts),
        ] {
            let name = format!("connections, {label}");
            let elapsed = timed(
                "connections",
                connection_rate(&direct(upstream_addr), options.conns, options.concurrency),
            )
            .await;
            results.record(
                &name,
                "conn/s",
                true,
                0,
                "direct",
                options.conns as f64 / elapsed.as_secs_f64(),
            );
            for proxy in &proxies {
                let _turn = proxy.turn();
                let listen = if label == "resumed" {
                    proxy.routes.resumed.0
                } else {
                    proxy.routes.full.0
                };
                let (h0, r0) = counts.snapshot();
                let c0 = cpu(proxy.pid());
                let elapsed = timed(
                    "connections",
                    connection_rate(&Target::Plain(listen), options.conns, options.concurrency),
                )
                .await;
                let used = cpu(proxy.pid()) - c0;
                let (h1, r1) = counts.snapshot();
                let p = proxy.kind.name();
                results.record(
                    &name,
                    "conn/s",
                    true,
                    0,
                    p,
                    options.conns as f64 / elapsed.as_secs_f64(),
                );
                results.record(
                    &format!("CPU per connection, {label}"),
                    "CPU-ms",
                    false,
                    3,
                    p,
                    used * 1000.0 / options.conns as f64,
                );
                if label == "resumed" {
                    let share = (r1 - r0) as f64 * 100.0 / (h1 - h0).max(1) as f64;
                    results.record_as(
                        "upstream handshakes resumed (diagnostic)",
                        "%",
                        Verdict::Nothing,
                        0,
                        p,
                        share,
                    );
                }
            }
        }
        println!(
            "e2e: connections rep {rep} done ({:.0?})",
            started.elapsed()
        );

        for proxy in &proxies {
            let _turn = proxy.turn();
            let (base, via) = timed(
                "latency",
                latency(
                    &direct(resumed_addr),
                    &Target::Plain(proxy.routes.resumed.0),
                    options.latency_samples,
                ),
            )
            .await;
            for (p, label) in [(50.0, "p50"), (99.0, "p99"), (99.9, "p99.9")] {
                let name = format!("latency {label}, added by the proxy");
                let direct_us = percentile(&base, p) / 1e3;
                let added = added_latency_us(&base, &via, p);
                results.record(&name, "µs", false, 1, "direct", direct_us);
                results.record(&name, "µs", false, 1, proxy.kind.name(), added);
            }
        }
        for forwarder in &forwarders {
            let (base, via) = timed(
                "latency",
                latency(
                    &Target::Plain(plain_upstream),
                    &Target::Plain(forwarder.addr),
                    options.latency_samples,
                ),
            )
            .await;
            for (p, label) in [(50.0, "p50"), (99.0, "p99")] {
                results.record_as(
                    &format!(
                        "latency {label}, added by a bare TCP forwarder{} (diagnostic)",
                        forwarder.placement
                    ),
                    "µs",
                    Verdict::Nothing,
                    1,
                    "direct",
                    added_latency_us(&base, &via, p),
                );
            }
        }
        println!("e2e: latency rep {rep} done ({:.0?})", started.elapsed());

        if options.wsman > 0 {
            for keep_alive in [true, false] {
                let label = if keep_alive {
                    "keep-alive"
                } else {
                    "no keep-alive"
                };
                // Keep-alive Gets cost a fraction of the others: run ten times as many.
                let gets = if keep_alive {
                    10 * options.wsman
                } else {
                    options.wsman
                };
                let elapsed = timed(
                    "WS-Man",
                    wsman_mix(
                        &direct(sim.wsman_addr()),
                        gets,
                        options.concurrency,
                        keep_alive,
                    ),
                )
                .await;
                let name = format!("WS-Man Gets, {label}");
                results.record(
                    &name,
                    "Gets/s",
                    true,
                    0,
                    "direct",
                    gets as f64 / elapsed.as_secs_f64(),
                );
                for proxy in &proxies {
                    let _turn = proxy.turn();
                    let c0 = cpu(proxy.pid());
                    let elapsed = timed(
                        "WS-Man",
                        wsman_mix(
                            &Target::Plain(proxy.routes.sim.0),
                            gets,
                            options.concurrency,
                            keep_alive,
                        ),
                    )
                    .await;
                    let used = cpu(proxy.pid()) - c0;
                    let p = proxy.kind.name();
                    results.record(
                        &name,
                        "Gets/s",
                        true,
                        0,
                        p,
                        gets as f64 / elapsed.as_secs_f64(),
                    );
                    results.record(
                        &format!("CPU per Get, {label}"),
                        "CPU-ms",
                        false,
                        3,
                        p,
                        used * 1000.0 / gets as f64,
                    );
                }
            }
            println!("e2e: WS-Man rep {rep} done ({:.0?})", started.elapsed());
        }
    }

    for proxy in &mut proxies {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!(
                "{} exited ({status}) during the run:\n{}",
                proxy.kind.name(),
                proxy.log_tail()
            );
        }
        proxy.stop();
    }
    drop(proxies);
    drop(forwarders);
    sim.shutdown().await;

    let mut columns = vec!["direct"];
    columns.extend(available.iter().map(|(k, _)| k.name()));
    let comparisons = Comparison::for_kinds(available.iter().map(|(k, _)| *k));
    let report = render(
        &options,
        &results,
        &columns,
        &comparisons,
        &versions,
        &notes,
        started.elapsed(),
    );
    println!("\n{report}");
    if let Some(out) = &options.out {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).expect("results directory");
        }
        std::fs::write(out, &report).expect("write results");
        println!("e2e: written to {}", out.display());
    }
}

fn render(
    options: &Options,
    results: &Results,
    columns: &[&'static str],
    comparisons: &[Comparison],
    versions: &[String],
    notes: &[String],
    took: Duration,
) -> String {
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let commit = success_output("git", &["-C", manifest, "rev-parse", "--short", "HEAD"])
        .or_else(|| std::env::var("E2E_COMMIT").ok())
        .unwrap_or_else(|| "unknown".into());
    let dirty = success_output(
        "git",
        &[
            "-C",
            manifest,
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .is_some_and(|s| !s.is_empty());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // Not available_parallelism: under E2E_TASKSET=1 this process's mask is one CPU.
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    let placement = if pinned_cpus() {
        "; harness pinned to CPU 0, each proxy to CPU 1 (E2E_TASKSET=1)"
    } else {
        "; no CPU pinning"
    };
    // Inherited by every process of the run alike (harness, upstream, proxies); it changes
    // how glibc copies memory, which moves the bulk figures on some CPUs (see the README).
    let tunables = match std::env::var("GLIBC_TUNABLES") {
        Ok(t) if !t.is_empty() => format!("; GLIBC_TUNABLES={t} for every process"),
        _ => String::new(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## amtgw end-to-end comparison{}\n",
        if options.smoke {
            " (smoke run: sizes too small to mean anything)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "- machine: {cores} cores, {}, Linux {}{placement}{tunables}\n- date: {date}; commit {commit}{}\n- proxies: {}\n\
         - sizes: {} repetitions (medians shown), bulk {} MiB per run, {} connections per \
         connection run ({} at a time), {} latency samples of 1 KiB each way, idle {:?}, \
         {} WS-Man Gets per run; took {:.0?}",
        cpu_model(),
        kernel.trim(),
        if dirty { " with local changes" } else { "" },
        versions.join(", "),
        options.reps,
        options.bulk_mb,
        options.conns,
        options.concurrency,
        options.latency_samples,
        options.idle,
        options.wsman,
        took
    );
    for note in notes {
        let _ = writeln!(out, "- {note}");
    }
    let _ = writeln!(
        out,
        "- every proxy pins the same RSA-2048 AMT-like certificate and was checked to refuse \
         another one; each ÷ column compares the amtgw column it names with the best peer \
         (busy-polling peers only against amtgw-busy-poll), ✓ where amtgw is at least as good \
         (or, where a target is named, reaches it); in the latency rows the direct column is the \
         absolute round trip of a TLS client talking to the upstream itself, the proxy columns \
         what each proxy adds to it; the rustls in-memory and bare-forwarder rows involve no \
         proxy and show in the direct column\n"
    );
    out.push_str(&results.table(columns, comparisons));
    out
}
