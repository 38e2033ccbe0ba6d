//! Helpers: work the harness runs as a copy of itself, so that `taskset` can put it on the
//! proxies' CPU (the crate denies unsafe code, so no sched_setaffinity on a thread). `main`
//! dispatches on the first argument: the bare TCP forwarder, and rustls in memory.

use std::io::{self, BufRead as _, Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConnection, Connection, ServerConfig, ServerConnection, SupportedCipherSuite};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

use crate::TlsVersion;
use crate::machine::{PROXY_CPU, command_on_cpu};
use crate::measurements::pinned_client_config;
use crate::{CertStyle, KeyType, generate_amt_identity};

/// Plaintext per write in the rustls in-memory measurement: one full TLS record.
const TLS_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Records encrypted into the reused buffer before the server decrypts them: 256 KiB, so the
/// ciphertext stays in cache the way a relay's socket buffers do.
const RECORDS_PER_BATCH: usize = 16;

pub(crate) const HELPER_ARG: &str = "--e2e-helper";

fn helper_command(cpu: &str, args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("path of the bench executable");
    let mut command = command_on_cpu(cpu, &exe);
    command.arg(HELPER_ARG).args(args);
    command
}

/// The helper side: `forwarder UPSTREAM` or `rustls-in-memory SUITE MIB`.
pub(crate) fn run_helper(args: &[String]) {
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
pub(crate) struct BareForwarder {
    /// Where it runs, as the row names say it.
    pub(crate) placement: &'static str,
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl BareForwarder {
    /// Blocks until the helper reports its address (run it off the runtime).
    pub(crate) fn start(cpu: &str, placement: &'static str, upstream: SocketAddr) -> BareForwarder {
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
    let (cert, key) =
        generate_amt_identity(KeyType::Rsa2048, false, CertStyle::Unknown).expect("certificate");
    let server_config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .expect("protocol version")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("certificate and key");
    let version = if suite.version() == &rustls::version::TLS13 {
        TlsVersion::Tls1_3
    } else {
        TlsVersion::Tls1_2
    };
    let client_config = pinned_client_config(&cert, &provider, vec![version]);
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
pub(crate) async fn rustls_in_memory(suite: SupportedCipherSuite, mib: u64) -> (f64, f64) {
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
