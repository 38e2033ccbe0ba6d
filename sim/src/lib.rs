//! amtgw-sim: a simulated Intel AMT device for amtgw's demo, tests and benches: TLS listeners
//! standing in for 16993 (WS-Man), 16995 (redirection) and 664 (DASH WS-Man), with a
//! firmware-like self-signed certificate that changes on unprovisioning. It knows nothing of
//! the gateway; `amtgw` depends on it only with its `sim` feature (the default).
//!
//! ```text
//! TcpListener --accept--> task: TLS handshake (timeout) --> serve_wsman / serve_redirection
//!                               ^ rustls or OpenSSL acceptor loaded from ArcSwap
//!                                 (swapped by unprovision)
//! ```
//!
//! [`SimDevice`] is the device; [`cli`] is the `amtgw-sim` command (and `amtgw sim`); `cert`
//! makes the firmware-like identity, `profile` describes each firmware generation's TLS and
//! `tls` serves it (rustls, or OpenSSL for what rustls does not implement), `digest` the HTTP
//! digest authentication, `wsman` and `redirection` speak the two protocols: `wsman` is HTTP,
//! `soap` the envelopes and faults, `cim` the resource classes and operations consoles use,
//! over `host`, the simulated host's power, boot and KVM state that every connection shares
//! and the serial console follows.

pub mod cli;

mod cert;
mod cim;
mod digest;
mod host;
mod profile;
mod redirection;
mod rfb;
mod soap;
mod tls;
mod wsman;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use cert::{CertError, CertStyle, KeyType, generate_amt_identity, pins_of};
pub use host::{BootSource, HostStatus, PowerState};
pub use profile::{Profile, Tls12Signature};
pub use tls::TlsError;

use tls::{Acceptor, ServedIdentity, TlsSettings};

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
    /// The firmware generation imitated: TLS versions, suites, key type, TLS library.
    pub profile: Profile,
    /// The key generated now and on unprovisioning; `None` is the profile's.
    pub key_type: Option<KeyType>,
    /// Like AMT 19.0.5, which negotiated TLS 1.2 even when offered 1.3 (the legacy profiles
    /// never speak 1.3 anyway).
    pub tls12_only: bool,
    /// Restricts the RSA signature schemes of TLS 1.2 handshakes; `None` offers both.
    pub tls12_signature: Option<Tls12Signature>,
    pub username: String,
    pub password: String,
    /// Interval of the SOL heartbeats (0x2B) the device sends; must be > 0.
    pub heartbeat: Duration,
}

impl SimConfig {
    /// Loopback, ephemeral ports, the amt16 profile, a generated "Unknown" certificate and
    /// the demo credentials.
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
            profile: Profile::Amt16,
            key_type: None,
            tls12_only: false,
            tls12_signature: None,
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
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("SOL heartbeat interval must be greater than zero")]
    ZeroHeartbeat,
}

impl SimError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Bind { .. } => "bind",
            Self::Cert(e) => e.kind(),
            Self::Tls(e) => e.kind(),
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
    /// The firmware generation: its version is what CIM_SoftwareIdentity and the Server
    /// header report.
    pub(crate) profile: Profile,
    /// Whether the device asks consoles for a client certificate (AMT_TLSSettingData).
    pub(crate) mutual_tls: bool,
    /// The leaf certificate served now (AMT_PublicKeyCertificate); empty until set.
    pub(crate) certificate: ArcSwap<CertificateDer<'static>>,
    /// The simulated host; the serial console watches it for boots and power-downs.
    pub(crate) host: tokio::sync::watch::Sender<HostStatus>,
    pub(crate) enumerations: std::sync::Mutex<cim::Enumerations>,
    message_ids: AtomicU64,
    /// Frames of the KVM test pattern sent so far, across sessions: each update shows the next.
    pub(crate) frames: AtomicU64,
    /// A KVM session is open: AMT serves one at a time, a second gets BUSY.
    pub(crate) kvm_busy: std::sync::atomic::AtomicBool,
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
            profile: Profile::default(),
            mutual_tls: false,
            certificate: ArcSwap::from_pointee(CertificateDer::from(Vec::new())),
            host: tokio::sync::watch::Sender::new(HostStatus::default()),
            enumerations: std::sync::Mutex::default(),
            message_ids: AtomicU64::new(1),
            frames: AtomicU64::new(0),
            kvm_busy: std::sync::atomic::AtomicBool::new(false),
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
        let key_type = config.key_type.unwrap_or(config.profile.default_key_type());
        let (chain, key, regenerate) = match config.identity {
            SimIdentity::Generated { ca_true, style } => {
                let (cert, key) = generate_amt_identity(key_type, ca_true, style)?;
                (vec![cert], key, (ca_true, style))
            }
            SimIdentity::Provided { chain, key } => (chain, key, (false, CertStyle::Unknown)),
        };
        let tls = TlsSettings {
            profile: config.profile,
            key_type,
            client_auth_roots: config.client_auth_roots,
            tls12_only: config.tls12_only,
            tls12_signature: config.tls12_signature,
            regenerate,
        };
        let served = tls.build(chain, key)?;
        log_tls(&tls, &served);

        let wsman = bind(config.bind, config.wsman_port).await?;
        let redirection = bind(config.bind, config.redirection_port).await?;
        let dash = bind(config.bind, config.dash_port).await?;

        let mut state = DeviceState::new(
            config.name,
            config.username,
            config.password,
            config.heartbeat,
        );
        state.profile = tls.profile;
        state.mutual_tls = tls.client_auth_roots.is_some();
        state.certificate.store(Arc::new(served.leaf.clone()));
        let shared = Arc::new(Shared {
            state,
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

    /// The simulated host now: power state, boots, one-time boot configuration, KVM and
    /// redirection settings, as consoles left them.
    pub fn host(&self) -> HostStatus {
        self.shared.state.host.borrow().clone()
    }

    /// Enables or disables KVM as a console's RequestStateChange on CIM_KVMRedirectionSAP does
    /// (enabled from the start); new KVM sessions are refused while it is disabled.
    pub fn set_kvm_enabled(&self, enabled: bool) {
        self.shared
            .state
            .host
            .send_modify(|host| host.kvm_enabled = enabled);
    }

    /// Like unprovisioning real firmware: a new key pair and self-signed
    /// certificate for new connections; live sessions keep theirs.
    pub fn unprovision(&self) -> Result<(), SimError> {
        let tls = &self.shared.tls;
        let (ca_true, style) = tls.regenerate;
        let (cert, key) = generate_amt_identity(tls.key_type, ca_true, style)?;
        let served = tls.build(vec![cert], key)?;
        log_tls(tls, &served);
        self.shared
            .state
            .certificate
            .store(Arc::new(served.leaf.clone()));
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
    // The identity, not a guard: the handshake awaits, and unprovision may swap it meanwhile.
    let served = shared.identity.load_full();
    let state = &shared.state;
    let session = async {
        match &served.acceptor {
            Acceptor::Rustls(acceptor) => {
                serve_service(handshake(acceptor.accept(tcp)).await?, service, state).await
            }
            Acceptor::OpenSsl(context) => {
                let tls = handshake(tls::openssl_accept(context, tcp)).await?;
                serve_service(tls, service, state).await
            }
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

/// The TLS handshake, bounded by [`HANDSHAKE_TIMEOUT`]; errors as (reason, detail).
async fn handshake<S>(
    accept: impl Future<Output = io::Result<S>>,
) -> Result<S, (&'static str, String)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Err(_) => Err(("handshake_timeout", String::new())),
        Ok(Err(e)) => Err(("tls_handshake", e.to_string())),
        Ok(Ok(tls)) => Ok(tls),
    }
}

/// The protocol after the handshake, over either TLS library's stream.
async fn serve_service<S>(
    tls: S,
    service: Service,
    state: &DeviceState,
) -> Result<&'static str, (&'static str, String)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match service {
        Service::Wsman => wsman::serve_wsman(tls, state)
            .await
            .map(|close| close.as_str())
            .map_err(|e| (e.kind(), e.to_string())),
        Service::Redirection => redirection::serve_redirection(tls, state)
            .await
            .map(|close| close.as_str())
            .map_err(|e| (e.kind(), e.to_string())),
    }
}

/// Answers a client's close (TLS close_notify, then TCP FIN) with the device's own. OpenSSL
/// forgets the session of a connection that ended without one, and the legacy profiles resume
/// by session ID. The client may be gone already: failing to answer it is no failure of the
/// session, so errors are not reported.
pub(crate) async fn answer_close<S: AsyncWrite + Unpin>(stream: &mut S) {
    use tokio::io::AsyncWriteExt as _;
    let _ = stream.shutdown().await;
}

/// The line that says what the device serves, at start and after every unprovisioning.
fn log_tls(tls: &TlsSettings, served: &ServedIdentity) {
    let versions: Vec<&str> = tls.versions().iter().map(|v| v.as_str()).collect();
    let suites = tls
        .profile
        .suites()
        .map_or_else(|| "rustls defaults".to_owned(), |suites| suites.join(","));
    let tls12_signature = match tls.tls12_signature {
        None => "pss,pkcs1",
        Some(Tls12Signature::Pss) => "pss",
        Some(Tls12Signature::Pkcs1) => "pkcs1",
    };
    let (cert_pin, spki_pin) = pins_of(&served.leaf).unwrap_or_default();
    info!(
        profile = %tls.profile,
        backend = ?tls.profile.backend(),
        versions = versions.join(","),
        suites,
        key = served.key,
        tls12_signature,
        cert_pin,
        spki_pin,
        "sim TLS"
    );
}

#[cfg(test)]
mod tests {
    // The tests that talk TLS to the device are amtgw's (gateway/sim_tests.rs): its pin
    // verifier checks what the device serves.
    use super::*;

    #[tokio::test]
    async fn zero_heartbeat_is_rejected() {
        let mut config = SimConfig::demo("x");
        config.heartbeat = Duration::ZERO;
        let err = SimDevice::start(config).await.err().unwrap();
        assert_eq!(err.kind(), "zero_heartbeat");
    }
}
