//! A simulated Intel AMT device for tests and demos: TLS listeners standing in
//! for 16993 (WS-Man), 16995 (redirection) and 664 (DASH WS-Man), with a
//! firmware-like self-signed certificate that changes on unprovisioning.
//!
//! ```text
//! TcpListener --accept--> task: TLS handshake (timeout) --> serve_wsman / serve_redirection
//!                               ^ ServerConfig loaded from ArcSwap (swapped by unprovision)
//! ```

mod cert;
mod digest;
mod redirection;
mod wsman;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use cert::{CertError, CertStyle, generate_amt_identity};

pub const DEMO_USERNAME: &str = "admin";
/// AMT insists on complex passwords (upper, lower, digit, symbol).
pub const DEMO_PASSWORD: &str = "P@ssw0rd-demo1";
/// The SOL heartbeat interval amtterm announces, and what AMT uses.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. EMFILE) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where the device's TLS certificate and key come from.
pub enum SimIdentity {
    /// A fresh firmware-like self-signed certificate.
    Generated { ca_true: bool, style: CertStyle },
    /// A console-installed certificate chain (leaf first) and its key.
    Provided {
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    },
}

pub struct SimConfig {
    /// Host name reported in AMT_GeneralSettings and on the SOL console.
    pub name: String,
    pub bind: IpAddr,
    /// Port 0 picks an ephemeral port; real devices use 16993, 16995, 664.
    pub wsman_port: u16,
    pub redirection_port: u16,
    pub dash_port: u16,
    pub identity: SimIdentity,
    /// `Some` requires a client certificate chaining to one of these roots.
    pub client_auth_roots: Option<Vec<CertificateDer<'static>>>,
    /// Like AMT 19.0.5, which negotiated TLS 1.2 even when offered 1.3.
    pub tls12_only: bool,
    pub username: String,
    pub password: String,
    /// Interval of the SOL heartbeats (0x2B) the device sends; must be > 0.
    pub heartbeat: Duration,
}

impl SimConfig {
    /// Loopback, ephemeral ports, a generated "Unknown" certificate and the
    /// demo credentials.
    pub fn demo(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            wsman_port: 0,
            redirection_port: 0,
            dash_port: 0,
            identity: SimIdentity::Generated {
                ca_true: false,
                style: CertStyle::Unknown,
            },
            client_auth_roots: None,
            tls12_only: false,
            username: DEMO_USERNAME.to_owned(),
            password: DEMO_PASSWORD.to_owned(),
            heartbeat: DEFAULT_HEARTBEAT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("provided identity has an empty certificate chain")]
    EmptyChain,
    #[error("SOL heartbeat interval must be greater than zero")]
    ZeroHeartbeat,
}

impl SimError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Bind { .. } => "bind",
            Self::Cert(e) => e.kind(),
            Self::Tls(_) => "tls_config",
            Self::ClientVerifier(_) => "client_verifier",
            Self::EmptyChain => "empty_chain",
            Self::ZeroHeartbeat => "zero_heartbeat",
        }
    }
}

/// What the protocol handlers need to know about the device.
pub(crate) struct DeviceState {
    pub(crate) name: String,
    pub(crate) username: String,
    pub(crate) password: String,
    /// Stable per device, like the firmware's; consoles may pin it.
    pub(crate) realm: String,
    pub(crate) nonces: digest::NonceStore,
    pub(crate) heartbeat: Duration,
    message_ids: AtomicU64,
}

impl DeviceState {
    pub(crate) fn new(
        name: String,
        username: String,
        password: String,
        heartbeat: Duration,
    ) -> Self {
        Self {
            name,
            username,
            password,
            realm: digest::new_realm(),
            nonces: digest::NonceStore::new(),
            heartbeat,
            message_ids: AtomicU64::new(1),
        }
    }

    pub(crate) fn verifier(&self) -> digest::DigestVerifier<'_> {
        digest::DigestVerifier {
            username: &self.username,
            password: &self.password,
            realm: &self.realm,
            nonces: &self.nonces,
        }
    }

    /// A WS-Addressing MessageID in the shape AMT uses (a counter in a
    /// fixed UUID prefix).
    pub(crate) fn next_message_id(&self) -> String {
        let n = self.message_ids.fetch_add(1, Ordering::Relaxed);
        format!("uuid:00000000-8086-8086-8086-{:012X}", n & 0xFFFF_FFFF_FFFF)
    }
}

/// TLS settings that outlive one certificate.
struct TlsSettings {
    client_auth_roots: Option<Vec<CertificateDer<'static>>>,
    tls12_only: bool,
    /// What `unprovision` generates: the firmware always falls back to a
    /// self-signed certificate, even if a console had installed its own.
    regenerate: (bool, CertStyle),
}

impl TlsSettings {
    fn build(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ServedIdentity, SimError> {
        let leaf = chain.first().cloned().ok_or(SimError::EmptyChain)?;
        // An explicit provider, so the simulator does not depend on (or
        // fight over) the process-wide default the gateway installs.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: &[&SupportedProtocolVersion] = if self.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS12, &rustls::version::TLS13]
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?;
        let builder = match &self.client_auth_roots {
            Some(roots) => {
                let mut store = RootCertStore::empty();
                for root in roots {
                    store.add(root.clone())?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder.with_single_cert(chain, key)?;
        Ok(ServedIdentity {
            leaf,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

struct ServedIdentity {
    leaf: CertificateDer<'static>,
    acceptor: TlsAcceptor,
}

#[derive(Debug, Clone, Copy)]
enum Service {
    Wsman,
    Redirection,
}

struct Shared {
    state: DeviceState,
    tls: TlsSettings,
    identity: ArcSwap<ServedIdentity>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// A running simulated device. Dropping it stops the listeners too;
/// `shutdown` additionally waits for every task to finish.
pub struct SimDevice {
    shared: Arc<Shared>,
    wsman_addr: SocketAddr,
    redirection_addr: SocketAddr,
    dash_addr: SocketAddr,
}

impl SimDevice {
    /// Binds all three listeners and spawns their accept loops.
    pub async fn start(config: SimConfig) -> Result<SimDevice, SimError> {
        if config.heartbeat.is_zero() {
            return Err(SimError::ZeroHeartbeat);
        }
        let (chain, key, regenerate) = match config.identity {
            SimIdentity::Generated { ca_true, style } => {
                let (cert, key) = generate_amt_identity(ca_true, style)?;
                (vec![cert], key, (ca_true, style))
            }
            SimIdentity::Provided { chain, key } => (chain, key, (false, CertStyle::Unknown)),
        };
        let tls = TlsSettings {
            client_auth_roots: config.client_auth_roots,
            tls12_only: config.tls12_only,
            regenerate,
        };
        let served = tls.build(chain, key)?;

        let wsman = bind(config.bind, config.wsman_port).await?;
        let redirection = bind(config.bind, config.redirection_port).await?;
        let dash = bind(config.bind, config.dash_port).await?;

        let shared = Arc::new(Shared {
            state: DeviceState::new(
                config.name,
                config.username,
                config.password,
                config.heartbeat,
            ),
            tls,
            identity: ArcSwap::from_pointee(served),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let device = SimDevice {
            shared: shared.clone(),
            wsman_addr: wsman.1,
            redirection_addr: redirection.1,
            dash_addr: dash.1,
        };
        for ((listener, addr), service) in [
            (wsman, Service::Wsman),
            (redirection, Service::Redirection),
            (dash, Service::Wsman),
        ] {
            info!(port = addr.port(), ?service, "sim listening");
            shared
                .tracker
                .spawn(accept_loop(listener, addr.port(), service, shared.clone()));
        }
        Ok(device)
    }

    pub fn wsman_addr(&self) -> SocketAddr {
        self.wsman_addr
    }

    pub fn redirection_addr(&self) -> SocketAddr {
        self.redirection_addr
    }

    pub fn dash_addr(&self) -> SocketAddr {
        self.dash_addr
    }

    /// The leaf certificate new connections are served.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.shared.identity.load().leaf.clone()
    }

    /// Like unprovisioning real firmware: a new key pair and self-signed
    /// certificate for new connections; live sessions keep theirs.
    pub fn unprovision(&self) -> Result<(), SimError> {
        let (ca_true, style) = self.shared.tls.regenerate;
        let (cert, key) = generate_amt_identity(ca_true, style)?;
        let served = self.shared.tls.build(vec![cert], key)?;
        self.shared.identity.store(Arc::new(served));
        Ok(())
    }

    /// Stops accepting, aborts open connections and waits for their tasks.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

async fn bind(ip: IpAddr, port: u16) -> Result<(TcpListener, SocketAddr), SimError> {
    let addr = SocketAddr::new(ip, port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| SimError::Bind { addr, source })?;
    Ok((listener, local))
}

async fn accept_loop(listener: TcpListener, port: u16, service: Service, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // The handshake happens in the connection task so a slow or
                // silent client never stalls the accept loop.
                shared
                    .tracker
                    .spawn(serve_connection(tcp, peer, port, service, shared.clone()));
            }
            Err(e) => {
                warn!(port, error = %e, "sim accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One connection, logged once when it ends.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    port: u16,
    service: Service,
    shared: Arc<Shared>,
) {
    // Nagle would delay the small SOL and heartbeat messages consoles wait on.
    if let Err(e) = tcp.set_nodelay(true) {
        warn!(port, %peer, error = %e, "sim set_nodelay failed");
    }
    let acceptor = shared.identity.load().acceptor.clone();
    let session = async {
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Err(_) => return Err(("handshake_timeout", String::new())),
            Ok(Err(e)) => return Err(("tls_handshake", e.to_string())),
            Ok(Ok(tls)) => tls,
        };
        match service {
            Service::Wsman => wsman::serve_wsman(tls, &shared.state)
                .await
                .map(|close| close.as_str())
                .map_err(|e| (e.kind(), e.to_string())),
            Service::Redirection => redirection::serve_redirection(tls, &shared.state)
                .await
                .map(|close| close.as_str())
                .map_err(|e| (e.kind(), e.to_string())),
        }
    };
    let result = tokio::select! {
        () = shared.cancel.cancelled() => Ok("shutdown"),
        result = session => result,
    };
    match result {
        Ok(outcome) => info!(port, %peer, outcome, "sim connection closed"),
        Err((reason, error)) => warn!(port, %peer, reason, error, "sim connection closed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{LeafVerifier, Pin, Pins};
    use rustls::ClientConfig;
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    const IDENTIFY: &str = include_str!("../../scripts/wsman/identify.xml");

    type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

    async fn connect(
        addr: SocketAddr,
        expected: CertificateDer<'static>,
    ) -> io::Result<TlsStream<TcpStream>> {
        connect_as(addr, expected, None).await
    }

    async fn connect_as(
        addr: SocketAddr,
        expected: CertificateDer<'static>,
        client: Option<ClientIdentity>,
    ) -> io::Result<TlsStream<TcpStream>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LeafVerifier::new(
                Pins(vec![Pin::of_certificate(&expected)]),
                provider.signature_verification_algorithms,
            )));
        let config = match client {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("amt.invalid").unwrap(), tcp)
            .await
    }

    async fn identify(addr: SocketAddr, expected: CertificateDer<'static>) {
        let mut tls = connect(addr, expected).await.unwrap();
        let request = format!(
            "POST /wsman HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{IDENTIFY}",
            IDENTIFY.len()
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        while !seen.ends_with(b"\r\n0\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let n = tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "eof before end of response");
            seen.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8(seen).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"));
        assert!(text.contains("IdentifyResponse"));
    }

    #[tokio::test]
    async fn tls_end_to_end_and_unprovision() {
        let device = SimDevice::start(SimConfig::demo("e2e-host")).await.unwrap();
        let first = device.certificate();
        identify(device.wsman_addr(), first.clone()).await;
        identify(device.dash_addr(), first.clone()).await;

        let mut redir = connect(device.redirection_addr(), first.clone())
            .await
            .unwrap();
        redir.write_all(b"\x10\x00\x00\x00SOL ").await.unwrap();
        let mut reply = [0u8; 13];
        redir.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[..2], [0x11, 0x00]);

        device.unprovision().unwrap();
        let second = device.certificate();
        assert_ne!(first.as_ref(), second.as_ref());
        assert!(connect(device.wsman_addr(), first.clone()).await.is_err());
        identify(device.wsman_addr(), second).await;

        // The session opened before unprovisioning carries on.
        let mut userpass = vec![0x13, 0, 0, 0, 1, 0, 0, 0, 0];
        for field in [DEMO_USERNAME, DEMO_PASSWORD] {
            userpass.push(field.len() as u8);
            userpass.extend_from_slice(field.as_bytes());
        }
        userpass[5] = (userpass.len() - 9) as u8;
        redir.write_all(&userpass).await.unwrap();
        let mut reply = [0u8; 9];
        redir.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, [0x14, 0, 0, 0, 1, 0, 0, 0, 0]);
        redir.write_all(b"\x12\x00\x00\x00").await.unwrap();
        let mut rest = Vec::new();
        redir.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());

        device.shutdown().await;
    }

    /// A CA and a client certificate it issued, as a gateway would hold.
    fn client_pki() -> (CertificateDer<'static>, ClientIdentity) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test console CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "amtgw");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (ca.der().clone(), (vec![cert.der().clone()], key))
    }

    /// Sends a WS-Identify and reports whether any response came back.
    async fn identify_answered(mut tls: TlsStream<TcpStream>) -> bool {
        let request = format!(
            "POST /wsman HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{IDENTIFY}",
            IDENTIFY.len()
        );
        if tls.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        let mut chunk = [0u8; 64];
        matches!(tls.read(&mut chunk).await, Ok(n) if n > 0)
    }

    #[tokio::test]
    async fn mutual_tls_and_tls12_only() {
        let (ca, client) = client_pki();
        let mut config = SimConfig::demo("mtls-host");
        config.client_auth_roots = Some(vec![ca]);
        config.tls12_only = true;
        config.identity = SimIdentity::Generated {
            ca_true: true,
            style: CertStyle::IntelNamed,
        };
        let device = SimDevice::start(config).await.unwrap();
        let cert = device.certificate();

        let tls = connect_as(device.wsman_addr(), cert.clone(), Some(client))
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert!(identify_answered(tls).await);

        // Without a client certificate the device refuses the handshake.
        match connect(device.wsman_addr(), cert).await {
            Err(_) => {}
            Ok(tls) => assert!(!identify_answered(tls).await),
        }
        device.shutdown().await;
    }

    #[tokio::test]
    async fn provided_identity_is_served() {
        let (cert, key) = generate_amt_identity(false, CertStyle::IntelNamed).unwrap();
        let mut config = SimConfig::demo("provided");
        config.identity = SimIdentity::Provided {
            chain: vec![cert.clone()],
            key,
        };
        let device = SimDevice::start(config).await.unwrap();
        assert_eq!(device.certificate().as_ref(), cert.as_ref());
        identify(device.dash_addr(), cert).await;
    }

    #[tokio::test]
    async fn zero_heartbeat_is_rejected() {
        let mut config = SimConfig::demo("x");
        config.heartbeat = Duration::ZERO;
        let err = SimDevice::start(config).await.err().unwrap();
        assert_eq!(err.kind(), "zero_heartbeat");
    }
}
