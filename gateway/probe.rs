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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt as _;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::config::{Config, DeviceSettings, Host};
use crate::reason::Reason;
use crate::service::Service;
use crate::tls::{self, Backend, CertificateSummary, ClientIdentity, Fingerprints, Learned, Pin};
use crate::tls::{Connector, DeviceStream};
use crate::tls::{
    LeafCheck, LeafVerifier, NoEvents, PinStoreError, StoredPin, TlsError, TofuStore, Trust,
};
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
    /// The backend that reached the device: `Legacy` for a device rustls could not reach
    /// (or one probed as configured with `tls_backend = "legacy"`).
    pub tls_backend: Backend,
    /// For a device reached by the legacy backend: what it speaks.
    pub legacy: Option<LegacySurvey>,
}

/// The protocol versions and cipher suites a legacy device accepts, each found by a
/// handshake of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegacySurvey {
    /// `TLSv1_0` to `TLSv1_2`.
    pub versions: Vec<&'static str>,
    /// IANA names, at the highest of `versions`.
    pub suites: Vec<&'static str>,
}

/// Why a probe, or the pin store work after it, failed. Connection and handshake failures are
/// [`UpstreamError`]s, so a probe names the same reasons (`connect_refused`,
/// `client_cert_rejected`, …) as the gateway's logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    // Boxed: a pin mismatch carries both fingerprints, and this travels in every Result here.
    Upstream(Box<UpstreamError>),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Store(#[from] PinStoreError),
    #[error("{addr} completed the handshake without a certificate")]
    NoCertificate { addr: SocketAddr },
    #[error("{addr} presented a certificate that does not parse as X.509")]
    BadCertificate { addr: SocketAddr },
}

impl From<UpstreamError> for ProbeError {
    fn from(error: UpstreamError) -> ProbeError {
        ProbeError::Upstream(Box::new(error))
    }
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

/// Where and how a probe connects.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub host: &'a Host,
    pub port: u16,
    pub server_name: &'a ServerName<'static>,
    pub timeouts: Timeouts,
    /// Presented if given: mutual-TLS devices refuse handshakes without one.
    pub client_identity: Option<&'a ClientIdentity>,
}

/// Connect to the target, complete a handshake, report what the device presented, and close
/// with close_notify. No application data is sent.
///
/// With `Backend::Rustls` (TLS 1.3 and 1.2) a device that has nothing in common with rustls
/// (`tls_incompatible`: TLS 1.0/1.1 only, or RSA key exchange only) is probed again over the
/// legacy backend, and the report says so and what the device speaks, which is what an
/// operator needs to set `tls_backend = "legacy"`. With `Backend::Legacy` it is probed as the
/// gateway would reach it.
///
/// A TLS 1.3 device that refuses the client certificate says so only after the client's side
/// of the handshake is done; a probe reads nothing, so it reports the certificate and does not
/// notice that refusal (under TLS 1.2 it is a `client_cert_rejected` error).
pub async fn probe(target: Target<'_>, backend: Backend) -> Result<ProbeReport, ProbeError> {
    if backend == Backend::Legacy {
        return legacy::probe(target).await;
    }
    let connector = Connector::Rustls(TlsConnector::from(client_config(target.client_identity)?));
    match handshake(target, &connector).await {
        Err(ProbeError::Upstream(error))
            if cfg!(feature = "legacy-tls") && error.reason() == Reason::TlsIncompatible =>
        {
            // The rustls failure is the answer unless the legacy backend does better.
            legacy::probe(target)
                .await
                .map_err(|_| ProbeError::Upstream(error))
        }
        result => result,
    }
}

/// One probing handshake: report, then close.
async fn handshake(target: Target<'_>, connector: &Connector) -> Result<ProbeReport, ProbeError> {
    let mut timings = UpstreamTimings::default();
    let mut stream = crate::upstream::dial(
        Dial {
            host: target.host,
            port: target.port,
            server_name: target.server_name.clone(),
            connector,
            connect_timeout: target.timeouts.connect,
            handshake_timeout: target.timeouts.handshake,
            keepalive: PROBE_KEEPALIVE,
        },
        &mut timings,
    )
    .await?;
    let addr = timings
        .addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], target.port)));
    let report = report(addr, &stream);
    // AMT firmware serves few TLS sessions at once: say goodbye properly instead of leaving it
    // to time the connection out. Failing to is harmless; the report is complete.
    let _ = timeout(target.timeouts.handshake, stream.shutdown()).await;
    report
}

fn report(addr: SocketAddr, stream: &DeviceStream) -> Result<ProbeReport, ProbeError> {
    let chain = stream.peer_certificates().unwrap_or_default();
    let leaf = chain.first().ok_or(ProbeError::NoCertificate { addr })?;
    let (Some(certificate), Some(fingerprints)) =
        (CertificateSummary::of(leaf), Fingerprints::of(leaf))
    else {
        return Err(ProbeError::BadCertificate { addr });
    };
    Ok(ProbeReport {
        addr,
        certificate,
        fingerprints,
        chain_len: chain.len(),
        tls_version: stream.protocol_version().unwrap_or("unknown"),
        cipher: stream.cipher().unwrap_or("unknown"),
        tls_backend: stream.backend(),
        legacy: None,
    })
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
        .with_custom_certificate_verifier(report_only());
    let mut config = tls::with_identity(builder, client_identity)?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

fn report_only() -> Arc<LeafVerifier<ReportOnly>> {
    Arc::new(LeafVerifier::new(
        ReportOnly,
        tls::provider().signature_verification_algorithms,
    ))
}

#[cfg(feature = "legacy-tls")]
mod legacy {
    use std::sync::Arc;

    use super::{ProbeError, ProbeReport, Target, handshake, report_only};
    use crate::tls::{Connector, LegacyConnector, LegacyOptions, TlsVersion};
    /// Suites old AMT firmware is known or likely to offer (amt-protocol.md §2), strongest
    /// first, in OpenSSL's names. Each is tried alone at the device's highest version.
    const CANDIDATE_SUITES: [&str; 12] = [
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-SHA",
        "ECDHE-RSA-AES128-SHA",
        "DHE-RSA-AES256-GCM-SHA384",
        "AES256-GCM-SHA384",
        "AES128-GCM-SHA256",
        "AES256-SHA256",
        "AES128-SHA256",
        "AES256-SHA",
        "AES128-SHA",
        "DES-CBC3-SHA",
    ];

    const LEGACY_VERSIONS: [TlsVersion; 3] =
        [TlsVersion::Tls1_0, TlsVersion::Tls1_1, TlsVersion::Tls1_2];

    /// Probe over the legacy backend, then survey what the device speaks.
    pub(super) async fn probe(target: Target<'_>) -> Result<ProbeReport, ProbeError> {
        let mut report = handshake(target, &connector(target, &LEGACY_VERSIONS, None)?).await?;
        let mut survey = super::LegacySurvey::default();
        for version in LEGACY_VERSIONS {
            if let Ok(one) = handshake(target, &connector(target, &[version], None)?).await {
                survey.versions.push(one.tls_version);
            }
        }
        let highest = LEGACY_VERSIONS
            .into_iter()
            .rev()
            .find(|v| survey.versions.contains(&v.log_name()));
        if let Some(version) = highest {
            for suite in CANDIDATE_SUITES {
                // A suite this OpenSSL was built without (3DES on Debian's) is not surveyed.
                let Ok(narrowed) = connector(target, &[version], Some(suite)) else {
                    continue;
                };
                let Ok(one) = handshake(target, &narrowed).await else {
                    continue;
                };
                if !survey.suites.contains(&one.cipher) {
                    survey.suites.push(one.cipher);
                }
            }
        }
        report.legacy = Some(survey);
        Ok(report)
    }

    fn connector(
        target: Target<'_>,
        versions: &[TlsVersion],
        ciphers: Option<&str>,
    ) -> Result<Connector, ProbeError> {
        let options = LegacyOptions {
            versions,
            ciphers,
            client_identity: target.client_identity,
            resumption: false,
        };
        Ok(Connector::Legacy(Arc::new(LegacyConnector::new(
            options,
            report_only(),
        )?)))
    }
}

#[cfg(not(feature = "legacy-tls"))]
mod legacy {
    use super::{ProbeError, ProbeReport, Target};
    use crate::tls::TlsError;

    pub(super) async fn probe(_target: Target<'_>) -> Result<ProbeReport, ProbeError> {
        Err(ProbeError::Tls(TlsError::NoLegacyBackend))
    }
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
    let target = Target {
        host: &device.host,
        port: device.port(Service::Wsman),
        server_name: &device.server_name,
        timeouts,
        client_identity: device.tls.client_identity.as_deref(),
    };
    probe(target, device.tls.backend).await
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
    store: Option<&TofuStore>,
    learn: bool,
) -> Result<Verdict, ProbeError> {
    Ok(match (&device.tls.trust, store) {
        (Trust::Pin(pins), _) if report.fingerprints.match_any(pins) => Verdict::Match,
        (Trust::Pin(pins), _) => Verdict::Mismatch(Expected::Configured(pins.clone())),
        (Trust::Ca { .. }, _) => Verdict::NotPinned,
        (Trust::Tofu, Some(store)) if learn => {
            match store.learn(&device.name, &report.fingerprints).await? {
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
    store: TofuStore,
    device: &DeviceSettings,
    report: &ProbeReport,
) -> Result<Verdict, ProbeError> {
    let previous = store.get(&device.name);
    store.replace(&device.name, &report.fingerprints).await?;
    Ok(Verdict::Replaced { previous })
}

/// Open the config's pin store (`gateway.pin_store`): the file, or the database (connected,
/// schema checked, pins read).
pub async fn open_store(config: &Config) -> Result<TofuStore, ProbeError> {
    Ok(TofuStore::open(&config.gateway.pin_store, Arc::new(NoEvents)).await?)
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
        let server_name = ServerName::IpAddress(addr.ip().into());
        let to = Target {
            host: &host,
            port: addr.port(),
            server_name: &server_name,
            timeouts,
            client_identity: None,
        };
        let err = probe(to, Backend::Rustls).await.unwrap_err();
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
        let server_name = ServerName::IpAddress(addr.ip().into());
        let to = Target {
            host: &host,
            port: addr.port(),
            server_name: &server_name,
            timeouts,
            client_identity: None,
        };
        let report = probe(to, Backend::Rustls).await.unwrap();
        let cert = device.certificate();
        assert_eq!(Some(report.certificate), CertificateSummary::of(&cert));
        assert_eq!(Some(report.fingerprints), Fingerprints::of(&cert));
        assert_eq!(report.chain_len, 1);
        assert_eq!(report.tls_version, "TLSv1_3");
        device.shutdown().await;
    }
}
