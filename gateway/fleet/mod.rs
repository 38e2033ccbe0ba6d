//! The devices the gateway serves, as used at run time: settings plus everything built once at
//! load (the TLS connector, the connection limit). The devices of `[[ranges]]` are built the
//! same way, once each, when a console first dials them (`range`).

mod range;

pub use range::{RangeError, Ranges};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use crate::config::{Cidr, Config, DeviceSettings};
use crate::limits::SourceCounts;
use crate::tls::{self, Backend, CertificateSummary, Connector, TlsError, TofuStore, Trust};

pub struct Device {
    pub settings: DeviceSettings,
    /// The range this device is an address of; `None` for a listed device.
    pub range: Option<Cidr>,
    pub(crate) connector: Connector,
    /// The device's `max_connections`.
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) status: Arc<DeviceStatus>,
    /// Where a `tofu` device's pin is learned; `None` for other trust modes.
    pub(crate) pin_store: Option<TofuStore>,
}

impl Device {
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn status(&self) -> &DeviceStatus {
        &self.status
    }
}

/// What the gateway has seen of a device, for `/devices`. Updated once per connection setup and
/// close, never per byte.
#[derive(Default)]
pub struct DeviceStatus {
    open: AtomicU64,
    last: Mutex<Option<HandshakeRecord>>,
    /// The certificate behind `last`'s summary, so an unchanged one is not parsed again.
    last_leaf: Mutex<Option<CertificateDer<'static>>>,
    /// Whether its CA-validated certificate is inside the expiry warning window, so the
    /// warning is logged when that changes rather than on every connection.
    expiring: std::sync::atomic::AtomicBool,
    /// Open connections to this device per console address (`max_connections_per_source`).
    pub(crate) sources: SourceCounts,
}

/// The outcome of the latest device handshake.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeRecord {
    /// Unix seconds.
    pub at: u64,
    /// `ok` or the failure reason.
    pub result: &'static str,
    pub error: Option<String>,
    /// `rustls` or `legacy` (OpenSSL).
    pub tls_backend: &'static str,
    pub tls_version: Option<&'static str>,
    pub cipher: Option<&'static str>,
    pub resumed: bool,
    /// The certificate the device presented in its latest full handshake.
    pub certificate: Option<CertificateSummary>,
}

impl DeviceStatus {
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn last_handshake(&self) -> Option<HandshakeRecord> {
        self.last.lock().ok()?.clone()
    }

    /// Count a connection to this device as open until the guard drops.
    pub(crate) fn open_guard(&self) -> OpenGuard<'_> {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(&self.open)
    }

    /// Note whether the device's certificate is expiring; `true` when that just changed.
    pub(crate) fn set_expiring(&self, expiring: bool) -> bool {
        self.expiring.swap(expiring, Ordering::Relaxed) != expiring
    }

    /// Record the latest handshake; returns the notAfter of the device's certificate as
    /// recorded. The leaf is parsed only on a full handshake: a resumed one shows no new
    /// certificate, so the one from the full handshake is kept.
    pub(crate) fn record_handshake(
        &self,
        mut record: HandshakeRecord,
        leaf: Option<&CertificateDer<'_>>,
    ) -> Option<i64> {
        let mut last = self.last.lock().ok()?;
        let mut last_leaf = self.last_leaf.lock().ok()?;
        let previous = || last.as_ref().and_then(|l| l.certificate.clone());
        record.certificate = match (leaf, record.resumed) {
            (Some(leaf), false) if last_leaf.as_ref() == Some(leaf) => previous(),
            (Some(leaf), false) => {
                *last_leaf = Some(leaf.clone().into_owned());
                CertificateSummary::of(leaf)
            }
            _ => previous(),
        };
        let not_after = record.certificate.as_ref().map(|c| c.not_after);
        *last = Some(record);
        not_after
    }
}

pub(crate) struct OpenGuard<'a>(&'a AtomicU64);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("device `{device}`: {source}")]
pub struct FleetError {
    pub device: String,
    // Boxed: rustls errors are large and this travels up through every startup Result.
    pub source: Box<TlsError>,
}

impl FleetError {
    pub fn kind(&self) -> &'static str {
        self.source.kind()
    }
}

/// Build every device's TLS config once; nothing here runs per connection. On reload,
/// `previous` devices of the same name hand over their status (what `/devices` shows) and,
/// when the limit is unchanged, their connection-limit semaphore, so sessions still open on
/// the old device keep counting against the limit.
pub fn build(
    config: &Config,
    pin_store: Option<&TofuStore>,
    previous: &[Arc<Device>],
) -> Result<Vec<Arc<Device>>, FleetError> {
    let provider = tls::provider();
    warn_of_legacy_devices(config);
    config
        .devices
        .iter()
        .map(|settings| {
            let connector =
                connector(settings, &provider, pin_store).map_err(|source| FleetError {
                    device: settings.name.clone(),
                    source: Box::new(source),
                })?;
            let old = previous.iter().find(|d| d.settings.name == settings.name);
            // Sessions open under an unchanged limit keep counting against it.
            let limit = match old {
                Some(old) if old.settings.max_connections == settings.max_connections => {
                    old.limit.clone()
                }
                _ => Arc::new(Semaphore::new(settings.max_connections)),
            };
            Ok(Arc::new(Device {
                settings: settings.clone(),
                range: None,
                connector,
                limit,
                status: old.map(|d| d.status.clone()).unwrap_or_default(),
                pin_store: match settings.tls.trust {
                    Trust::Tofu => pin_store.cloned(),
                    _ => None,
                },
            }))
        })
        .collect()
}

/// One warning per load: the legacy backend is weaker (no forward secrecy with RSA key
/// exchange, CBC suites, TLS 1.0), so its use must be visible, device by device.
fn warn_of_legacy_devices(config: &Config) {
    let ranges = config
        .ranges
        .iter()
        .filter(|r| r.tls.backend == Backend::Legacy)
        .map(|r| r.cidr.to_string());
    let legacy: Vec<String> = config
        .devices
        .iter()
        .filter(|d| d.tls.backend == Backend::Legacy)
        .map(|d| d.name.clone())
        .chain(ranges)
        .collect();
    if !legacy.is_empty() {
        tracing::warn!(
            devices = %legacy.join(","),
            count = legacy.len(),
            "tls_backend = \"legacy\": these devices are reached with OpenSSL at security level \
             0 (TLS 1.0-1.2, RSA key exchange, CBC suites); replace or update their firmware \
             when you can"
        );
    }
}

/// The device's TLS client on its backend, with the verifier both backends share.
pub(crate) fn connector(
    settings: &DeviceSettings,
    provider: &Arc<rustls::crypto::CryptoProvider>,
    pin_store: Option<&TofuStore>,
) -> Result<Connector, TlsError> {
    let verifier = tls::verifier(&settings.tls.trust, provider, &settings.name, pin_store)?;
    match settings.tls.backend {
        Backend::Rustls => {
            let config = tls::client_config(&settings.tls, provider, verifier)?;
            Ok(Connector::Rustls(TlsConnector::from(config)))
        }
        #[cfg(feature = "legacy-tls")]
        Backend::Legacy => Ok(Connector::Legacy(Arc::new(tls::LegacyConnector::new(
            tls::LegacyOptions::of(&settings.tls),
            verifier,
        )?))),
        // `config` refuses `tls_backend = "legacy"` in a build without it.
        #[cfg(not(feature = "legacy-tls"))]
        Backend::Legacy => Err(TlsError::NoLegacyBackend),
    }
}
