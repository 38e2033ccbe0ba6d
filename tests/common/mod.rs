//! Shared harness for the integration tests: test PKI generated with rcgen at run time, fake
//! devices (TLS servers and misbehaving TCP servers) on 127.0.0.1:0, a gateway started from a
//! TOML string, and a `/metrics` scraper.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod clients;
pub mod loopback;
pub mod netns;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use amtgw::ReloadHandle;
use amtgw::tls::{Fingerprints, Pin};
use amtgw::{BoundAddress, Config, DrainReport, Gateway, Service};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

pub type Chain = Vec<CertificateDer<'static>>;

/// A calendar date: year, month, day.
pub type Ymd = (i32, u8, u8);

/// A certificate and its private key.
pub struct Identity {
    pub chain: Chain,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn clone_identity(&self) -> Identity {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }

    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    pub fn cert_pin(&self) -> String {
        Pin::of_certificate(self.leaf()).to_string()
    }

    pub fn spki_pin(&self) -> String {
        Fingerprints::of(self.leaf())
            .unwrap()
            .public_key
            .to_string()
    }

    /// Write cert chain and key as PEM files into `dir`, returning their paths.
    pub fn write_pem(&self, dir: &Path, stem: &str) -> (String, String) {
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        let certs: String = self
            .chain
            .iter()
            .map(|c| pem_block("CERTIFICATE", c.as_ref()))
            .collect();
        std::fs::write(&cert_path, certs).unwrap();
        std::fs::write(&key_path, pem_block("PRIVATE KEY", self.key.secret_der())).unwrap();
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
        )
    }
}

pub fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// A test certificate authority.
pub struct TestCa {
    pub cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Identity {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, None)
    }

    /// A server certificate valid from `from` until `until` (year, month, day).
    pub fn server_valid(
        &self,
        names: &[&str],
        from: (i32, u8, u8),
        until: (i32, u8, u8),
    ) -> Identity {
        self.issue(
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            Some((from, until)),
        )
    }

    /// A server certificate over an RSA key: legacy firmware has RSA suites only.
    pub fn server_rsa(&self, names: &[&str]) -> Identity {
        self.issue_with(rsa_key(), names, ExtendedKeyUsagePurpose::ServerAuth, None)
    }

    /// A client certificate with common name `name`.
    pub fn client(&self, name: &str) -> Identity {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth, None)
    }

    /// A client certificate valid until `until` (year, month, day).
    pub fn client_until(&self, name: &str, until: Ymd) -> Identity {
        self.issue(
            &[name],
            ExtendedKeyUsagePurpose::ClientAuth,
            Some(((2020, 1, 1), until)),
        )
    }

    fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        validity: Option<(Ymd, Ymd)>,
    ) -> Identity {
        self.issue_with(KeyPair::generate().unwrap(), names, usage, validity)
    }

    fn issue_with(
        &self,
        key: KeyPair,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        validity: Option<(Ymd, Ymd)>,
    ) -> Identity {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        if let Some(((fy, fm, fd), (uy, um, ud))) = validity {
            params.not_before = rcgen::date_time_ymd(fy, fm, fd);
            params.not_after = rcgen::date_time_ymd(uy, um, ud);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity {
            chain: vec![cert.der().clone()],
            key: key_der(&key),
        }
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        Arc::new(roots)
    }

    pub fn write_pem(&self, dir: &Path, stem: &str) -> String {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, pem_block("CERTIFICATE", self.cert.as_ref())).unwrap();
        path.display().to_string()
    }
}

/// A fresh RSA-2048 key.
fn rsa_key() -> KeyPair {
    KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap()
}

/// A self-signed certificate shaped like AMT firmware's: every DN field "Unknown", optionally
/// CA:TRUE (seen on AMT 19), RSA-2048 when `rsa` (slower to generate) else ECDSA P-256.
pub fn amt_self_signed(ca_true: bool, rsa: bool) -> Identity {
    let key = if rsa {
        rsa_key()
    } else {
        KeyPair::generate().unwrap()
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    for field in [
        DnType::CommonName,
        DnType::CountryName,
        DnType::OrganizationName,
        DnType::OrganizationalUnitName,
    ] {
        dn.push(field, "Unknown");
    }
    params.distinguished_name = dn;
    if ca_true {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
        ];
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).unwrap();
    Identity {
        chain: vec![cert.der().clone()],
        key: key_der(&key),
    }
}

/// How a fake TLS device is set up.
pub struct DeviceTls {
    pub identity: Identity,
    /// Require a client certificate chaining to these roots.
    pub client_roots: Option<Arc<RootCertStore>>,
    pub tls12_only: bool,
}

impl DeviceTls {
    pub fn new(identity: Identity) -> DeviceTls {
        DeviceTls {
            identity,
            client_roots: None,
            tls12_only: false,
        }
    }

    fn server_config(self) -> Arc<ServerConfig> {
        let provider = amtgw::tls::provider();
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap();
        let builder = match self.client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .unwrap(),
            ),
        };
        Arc::new(
            builder
                .with_single_cert(self.identity.chain, self.identity.key)
                .unwrap(),
        )
    }
}

/// Start a fake TLS device on 127.0.0.1:0 running `handler` for every handshaken connection.
/// Handshake failures are ignored (the device side of a refused handshake).
pub async fn tls_device<F, Fut>(tls: DeviceTls, handler: F) -> SocketAddr
where
    F: Fn(TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls.server_config());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    handler(stream).await;
                }
            });
        }
    });
    addr
}

/// Echo every byte back; on EOF from the gateway, finish writing and close (half-close aware).
pub async fn echo(mut stream: TlsStream<TcpStream>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// A TLS echo device with the given identity.
pub async fn echo_device(tls: DeviceTls) -> SocketAddr {
    tls_device(tls, echo).await
}

/// A plain TCP server running `handler` per connection (misbehaving devices).
pub async fn tcp_device<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(handler(tcp));
        }
    });
    addr
}

/// A running gateway.
pub struct TestGateway {
    pub addrs: Vec<BoundAddress>,
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<DrainReport>,
    pub reload: ReloadHandle,
    /// Changes after each applied reload (or pin store re-read).
    pub reloads: tokio::sync::watch::Receiver<u64>,
}

impl TestGateway {
    pub async fn start(toml: &str) -> TestGateway {
        let config = Config::from_toml("<test config>", Path::new("."), toml)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{toml}"));
        TestGateway::start_config(config).await
    }

    /// Start from a config file, so it can be reloaded and watched.
    pub async fn start_file(path: &Path) -> TestGateway {
        let config = Config::load(path).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        TestGateway::start_config(config).await
    }

    pub async fn start_config(config: Config) -> TestGateway {
        TestGateway::start_with(config, None).await
    }

    /// Start with connections on data-path workers (as `amtgw run` does), or on the test's
    /// runtime.
    pub async fn start_with(
        config: Config,
        workers: Option<std::sync::Arc<amtgw::workers::Workers>>,
    ) -> TestGateway {
        let mut gateway = Gateway::bind(config).await.unwrap();
        if let Some(workers) = workers {
            gateway = gateway.with_workers(workers);
        }
        TestGateway::start_bound(gateway)
    }

    /// Start with the admin listener bounded by `limits` (short timeouts, a small cap).
    pub async fn start_admin_limited(config: Config, limits: amtgw::AdminLimits) -> TestGateway {
        let gateway = Gateway::bind(config).await.unwrap();
        TestGateway::start_bound(gateway.with_admin_limits(limits))
    }

    fn start_bound(gateway: Gateway) -> TestGateway {
        let reload = gateway.reload_handle();
        let reloads = gateway.reload_events();
        let addrs = gateway.local_addrs();
        let admin = gateway.admin_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway.run(shutdown.clone()));
        TestGateway {
            addrs,
            admin,
            shutdown,
            task,
            reload,
            reloads,
        }
    }

    /// Wait for the next reload (or pin store re-read) to be applied.
    pub async fn next_reload(&mut self) {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.reloads.changed())
            .await
            .expect("no reload within 20 s")
            .unwrap();
    }

    /// The first listener of `service`.
    pub fn addr(&self, service: Service) -> SocketAddr {
        self.addrs
            .iter()
            .find(|b| b.service == service)
            .unwrap_or_else(|| panic!("no {service} listener"))
            .addr
    }

    /// The listener of `service` on the alias address `ip`.
    pub fn addr_on(&self, service: Service, ip: &str) -> SocketAddr {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        self.addrs
            .iter()
            .find(|b| b.service == service && b.addr.ip() == ip)
            .unwrap_or_else(|| panic!("no {service} listener on {ip}"))
            .addr
    }

    pub async fn connect(&self, service: Service) -> TcpStream {
        TcpStream::connect(self.addr(service)).await.unwrap()
    }

    pub async fn metrics(&self) -> Metrics {
        Metrics(http_get(self.admin, "/metrics").await.1)
    }

    /// Scrape until `settled` holds (10 s at most). Needed when sessions run on other threads
    /// than the test: the console sees the relayed FIN before the session's summary is
    /// recorded, which a single-threaded test runtime would have ordered.
    pub async fn metrics_settled(&self, settled: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let metrics = self.metrics().await;
            if settled(&metrics) {
                return metrics;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "metrics never settled:\n{}",
                metrics.0
            );
            tokio::task::yield_now().await;
        }
    }

    pub async fn stop(self) -> DrainReport {
        self.shutdown.cancel();
        self.task.await.unwrap()
    }
}

/// A one-device config: the device is the default of the wsman service (other services off),
/// trusted by `trust_toml` (TOML lines for the device table).
pub fn one_device_config(device: SocketAddr, trust_toml: &str) -> String {
    format!(
        r#"
[gateway]
connect_timeout = "2s"
handshake_timeout = "2s"
shutdown_delay = "0s"
shutdown_timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[services.wsman]
listen_port = 0
default_device = "dut"

[services.redirection]
enabled = false

[services.dash]
enabled = false

[[devices]]
name = "dut"
host = "{ip}"
ports = {{ wsman = {port} }}
{trust_toml}
"#,
        ip = device.ip(),
        port = device.port()
    )
}

/// Send `request`, read until the gateway closes; returns what came back.
pub async fn exchange(mut conn: TcpStream, request: &[u8]) -> std::io::Result<Vec<u8>> {
    conn.write_all(request).await?;
    conn.shutdown().await?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await?;
    Ok(answer)
}

/// Wait until the gateway closes the connection without sending anything.
pub async fn expect_closed(mut conn: TcpStream) {
    let mut buf = [0u8; 64];
    match conn.read(&mut buf).await {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the gateway to close the connection, got {other:?}"),
    }
}

/// On a new connection: speak first, as every AMT console does (the gateway contacts the
/// device only then), and expect the gateway to close it without an answer.
pub async fn expect_refused(mut conn: TcpStream) {
    // The gateway may already have closed or reset it: then the write fails, and the read
    // tells.
    let _ = conn.write_all(b"request").await;
    expect_closed(conn).await;
}

/// A plain HTTP/1.1 GET; returns status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// An HTTP/1.1 request with extra header lines (each ending in CRLF) and a body; returns the
/// status code, the head and the body.
pub async fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status, head.to_owned(), body.to_owned())
}

pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_send(addr, method, path, "", "").await;
    (status, body)
}

/// A scraped `/metrics` page.
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of the samples `name` whose labels include all of `labels`. Panics when there
    /// is none: a renamed metric or label must fail a test, not read as 0.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.sample(name, labels).unwrap_or_else(|| {
            panic!(
                "no series {name} with labels {labels:?} in the scrape:\n{}",
                self.0
            )
        })
    }

    /// Like `value`, but `None` when no series matches (for polling until one appears, and
    /// for asserting that one does not exist).
    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matched = None;
        for line in self.0.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.split(',').any(|l| l == format!("{k}=\"{v}\"")));
            if let (true, Ok(value)) = (wanted, value.parse::<f64>()) {
                *matched.get_or_insert(0.0) += value;
            }
        }
        matched
    }

    /// Whether the metric `name` has no series with `labels` (nothing counted yet; an empty
    /// family is not in the scrape at all). Panics unless `name` is a metric the README
    /// documents, so a renamed metric cannot pass.
    pub fn absent(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        let documented = include_str!("../../README.md").contains(&format!("| `{name}` |"));
        assert!(documented, "{name} is not in the README's metric tables");
        // A histogram's samples are its `_count`, `_sum` and `_bucket` series.
        ["", "_count", "_sum", "_bucket"]
            .iter()
            .all(|suffix| self.sample(&format!("{name}{suffix}"), labels).is_none())
    }

    /// `amtgw_connections_failed_total` for one reason on the wsman service.
    pub fn failed(&self, reason: &str) -> f64 {
        self.value(
            "amtgw_connections_failed_total",
            &[("service", "wsman"), ("reason", reason)],
        )
    }
}
