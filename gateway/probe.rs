//! Probing a device's TLS certificate, the way ssh-keyscan probes a host: connect, complete a
//! real handshake (so the device's signature proves it holds the key it presents; see
//! `ReportOnly`) but relay nothing, and report what the device presented ([`ProbeReport`]:
//! the certificate's summary, both pin forms, TLS version and cipher). [`judge`] then compares
//! that with the device's trust (its configured pins, or its stored pin under
//! `trust = "tofu"`, learning it first if asked) and [`replace`] re-pins.
//!
//! ```text
//! probe(host, port, …) ─┬─▶ ProbeReport ─▶ judge(device, report, store, learn) ─▶ Verdict
//! probe_device(device) ─┘               └─▶ replace(store, device, report) ───▶ Verdict::Replaced
//! ```
//!
//! Typed results only: nothing here prints or chooses an exit code. The `amtgw pin` command,
//! which does, is part of the binary (`gateway/cli/pin.rs`).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt as _;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::config::{Config, DeviceSettings, Host};
use crate::service::Service;
use crate::tls::{self, CertificateSummary, ClientIdentity, Fingerprints, Learned, Pin};
use crate::tls::{LeafCheck, LeafVerifier, PinStore, PinStoreError, StoredPin, TlsError, Trust};
use crate::upstream::{Dial, UpstreamError, UpstreamTimings};

/// Probes are short: keepalive never fires, but the socket options are the gateway's own.
const PROBE_KEEPALIVE: Duration = Duration::from_secs(60);

/// What a device presented in one handshake.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// The address actually connected to (after DNS).
    pub addr: SocketAddr,
    /// The leaf certificate.
    pub certificate: CertificateSummary,
    /// The leaf's pins, for comparison with configured or stored ones.
    pub fingerprints: Fingerprints,
    /// Certificates the device sent, leaf included.
    pub chain_len: usize,
    /// `TLSv1_3` or `TLSv1_2`, as in the gateway's access log.
    pub tls_version: &'static str,
    pub cipher: &'static str,
}

/// Why a probe, or the pin store work after it, failed. Connection and handshake failures are
/// [`UpstreamError`]s, so a probe names the same reasons (`connect_refused`,
/// `client_cert_rejected`, …) as the gateway's logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] PinStoreError),
    #[error("{addr} completed the handshake without a certificate")]
    NoCertificate { addr: SocketAddr },
    #[error("{addr} presented a certificate that does not parse as X.509")]
    BadCertificate { addr: SocketAddr },
}

impl ProbeError {
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::Upstream(e) => e.reason().as_str(),
            ProbeError::Tls(e) => e.kind(),
            ProbeError::Store(e) => e.kind(),
            ProbeError::NoCertificate { .. } | ProbeError::BadCertificate { .. } => "cert_invalid",
        }
    }
}

/// How long each phase of a probe may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// DNS and TCP connect together, as in the gateway.
    pub connect: Duration,
    pub handshake: Duration,
}

impl Timeouts {
    /// The gateway's own connect and handshake timeouts.
    pub fn of(config: &Config) -> Timeouts {
        Timeouts {
            connect: config.gateway.connect_timeout,
            handshake: config.gateway.handshake_timeout,
        }
    }
}

/// Connect to `host:port`, complete a TLS 1.3 or 1.2 handshake (presenting `client_identity`
/// if given: mutual-TLS devices refuse handshakes without one), report what the device
/// presented, and close with close_notify. No application data is sent.
///
/// A TLS 1.3 device that refuses the client certificate says so only after the client's side
/// of the handshake is done; a probe reads nothing, so it reports the certificate and does not
/// notice that refusal (under TLS 1.2 it is a `client_cert_rejected` error).
pub async fn probe(
    host: &Host,
    port: u16,
    server_name: ServerName<'static>,
    timeouts: Timeouts,
    client_identity: Option<&ClientIdentity>,
) -> Result<ProbeReport, ProbeError> {
    let connector = TlsConnector::from(client_config(client_identity)?);
    let mut timings = UpstreamTimings::default();
    let mut stream = crate::upstream::dial(
        Dial {
            host,
            port,
            server_name,
            connector: &connector,
            connect_timeout: timeouts.connect,
            handshake_timeout: timeouts.handshake,
            keepalive: PROBE_KEEPALIVE,
        },
        &mut timings,
    )
    .await?;
    let addr = timings
        .addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], port)));
    let (_, session) = stream.get_ref();
    let chain = session.peer_certificates().unwrap_or_default();
    let leaf = chain.first().ok_or(ProbeError::NoCertificate { addr })?;
    let (Some(certificate), Some(fingerprints)) =
        (CertificateSummary::of(leaf), Fingerprints::of(leaf))
    else {
        return Err(ProbeError::BadCertificate { addr });
    };
    let report = ProbeReport {
        addr,
        certificate,
        fingerprints,
        chain_len: chain.len(),
        tls_version: session
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("unknown"),
        cipher: session
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown"),
    };
    // AMT firmware serves few TLS sessions at once: say goodbye properly instead of leaving it
    // to time the connection out. Failing to is harmless; the report is complete.
    let _ = timeout(timeouts.handshake, stream.shutdown()).await;
    Ok(report)
}

/// A client config for one probe: TLS 1.3 and 1.2, the report-only verifier, the device's
/// client certificate if it has one, and no resumption (a resumed handshake shows no
/// certificate).
fn client_config(client_identity: Option<&ClientIdentity>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LeafVerifier::new(
            ReportOnly,
            provider.signature_verification_algorithms,
        )));
    let mut config = tls::with_identity(builder, client_identity)?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Accepts whatever certificate the device presents; `LeafVerifier` still verifies the
/// handshake signature against it, so the report is of a peer that holds the presented key.
///
/// This is not a trust bypass: it is only ever used by [`probe`], which sends no application
/// data, relays no bytes and closes right after the handshake. Its output is a report for an
/// operator (and, with `--write`, a first-use pin, which is what trust on first use means).
/// The gateway's data path builds its configs in [`tls::client_config`] and never sees this.
#[derive(Debug)]
struct ReportOnly;

impl LeafCheck for ReportOnly {
    fn check(&self, _presented: Fingerprints) -> Result<(), rustls::Error> {
        Ok(())
    }
}

/// Probe a configured device: its host, its WS-Man TLS port, its server name and its client
/// certificate.
pub async fn probe_device(
    device: &DeviceSettings,
    timeouts: Timeouts,
) -> Result<ProbeReport, ProbeError> {
    probe(
        &device.host,
        device.port(Service::Wsman),
        device.server_name.clone(),
        timeouts,
        device.tls.client_identity.as_deref(),
    )
    .await
}

/// How a presented certificate compares with what the device is trusted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It matches a configured pin, or the stored one.
    Match,
    /// It matches none; what was expected instead.
    Mismatch(Expected),
    /// `trust = "ca"`: pins do not apply.
    NotPinned,
    /// `trust = "tofu"` with no stored pin: the gateway will learn it on first use.
    New,
    /// [`judge`] with `learn` stored it just now.
    Learned,
    /// [`replace`] stored it just now, in place of `previous` (if there was one).
    Replaced { previous: Option<StoredPin> },
}

impl Verdict {
    /// Everything but a mismatch.
    pub fn is_ok(&self) -> bool {
        !matches!(self, Verdict::Mismatch(_))
    }
}

/// What a mismatched certificate was expected to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// `trust = "pin"`: the device's configured pins.
    Configured(Vec<Pin>),
    /// `trust = "tofu"`: the pin in the store.
    Stored(StoredPin),
}

/// Compare a report with the device's trust: configured pins, the stored pin (learning it
/// first when `learn`), or nothing for a CA-trusted device. `store` is the open pin store,
/// needed for `trust = "tofu"` devices ([`open_store`]).
pub async fn judge(
    device: &DeviceSettings,
    report: &ProbeReport,
    store: Option<&Arc<PinStore>>,
    learn: bool,
) -> Result<Verdict, ProbeError> {
    Ok(match (&device.tls.trust, store) {
        (Trust::Pin(pins), _) if report.fingerprints.match_any(pins) => Verdict::Match,
        (Trust::Pin(pins), _) => Verdict::Mismatch(Expected::Configured(pins.clone())),
        (Trust::Ca { .. }, _) => Verdict::NotPinned,
        (Trust::Tofu, Some(store)) if learn => {
            let (store, name) = (store.clone(), device.name.clone());
            let presented = report.fingerprints.clone();
            match blocking(store.path().to_owned(), move || {
                store.learn(&name, &presented)
            })
            .await?
            {
                Learned::New => Verdict::Learned,
                Learned::Matches => Verdict::Match,
                Learned::Mismatch { stored } => Verdict::Mismatch(Expected::Stored(stored)),
            }
        }
        (Trust::Tofu, Some(store)) => match store.get(&device.name) {
            None => Verdict::New,
            Some(stored) if stored.matches(&report.fingerprints) => Verdict::Match,
            Some(stored) => Verdict::Mismatch(Expected::Stored(stored)),
        },
        // Callers open the store for every tofu device; without one there is nothing to say.
        (Trust::Tofu, None) => Verdict::New,
    })
}

/// Re-pin: store the presented pins as the device's, whatever was stored before.
pub async fn replace(
    store: Arc<PinStore>,
    device: &DeviceSettings,
    report: &ProbeReport,
) -> Result<Verdict, ProbeError> {
    let previous = store.get(&device.name);
    let name = device.name.clone();
    let presented = report.fingerprints.clone();
    blocking(store.path().to_owned(), move || {
        store.replace(&name, &presented)
    })
    .await?;
    Ok(Verdict::Replaced { previous })
}

/// Open the config's pin store (`gateway.pin_store`) off the runtime's workers.
pub async fn open_store(config: &Config) -> Result<Arc<PinStore>, ProbeError> {
    let path = config.gateway.pin_store.clone();
    Ok(blocking(path.clone(), move || PinStore::open(&path).map(Arc::new)).await?)
}

/// The pin store blocks on file I/O and fsync; keep that off the runtime's workers, as its
/// documentation asks.
async fn blocking<T: Send + 'static>(
    path: PathBuf,
    work: impl FnOnce() -> Result<T, PinStoreError> + Send + 'static,
) -> Result<T, PinStoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|joined| {
            // A panic in the store (a bug) or a runtime shutting down: report, don't unwind.
            Err(PinStoreError::Io {
                path,
                action: "finish the update",
                source: io::Error::other(joined.to_string()),
            })
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn refused_connection_has_the_gateways_reason() {
        // Bind then drop: nothing listens on the port afterwards.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(5),
        };
        let host = Host::Ip(addr.ip());
        let err = probe(
            &host,
            addr.port(),
            ServerName::IpAddress(addr.ip().into()),
            timeouts,
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), "connect_refused", "{err}");
    }

    #[tokio::test]
    async fn reports_a_simulated_devices_certificate() {
        let device = amtgw_sim::SimDevice::start(amtgw_sim::SimConfig::demo("probe-unit"))
            .await
            .unwrap();
        let addr = device.wsman_addr();
        let host = Host::Ip(addr.ip());
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(5),
        };
        let report = probe(
            &host,
            addr.port(),
            ServerName::IpAddress(addr.ip().into()),
            timeouts,
            None,
        )
        .await
        .unwrap();
        let cert = device.certificate();
        assert_eq!(Some(report.certificate), CertificateSummary::of(&cert));
        assert_eq!(Some(report.fingerprints), Fingerprints::of(&cert));
        assert_eq!(report.chain_len, 1);
        assert_eq!(report.tls_version, "TLSv1_3");
        device.shutdown().await;
    }
}
