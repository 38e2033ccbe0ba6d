//! Upstream TLS: the trust settings of a device ([`TlsSettings`], [`Trust`],
//! [`ClientIdentity`]) and one rustls `ClientConfig` per device built from them once when the
//! config is loaded; the trust verifiers; the pin store; PEM loading; certificate summaries
//! and the clock they are dated by; and the mapping of rustls errors to stable reasons.
//!
//! This module depends on no other module of amtgw, only on std and external crates: `config`
//! validates raw TOML into its types, `fleet` builds with it, `probe` inspects with it.

mod algorithms;
mod inspect;
mod pem;
mod pin;
mod settings;
mod store;
mod verifier;

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::{AlertDescription, CertificateError, ClientConfig};

pub use inspect::{CertificateSummary, not_after, rfc3339, unix_now};
pub use pem::{PemError, load_certificates, load_private_key};
pub use pin::{Pin, PinKind, PinParseError};
pub use settings::{ClientIdentity, TlsSettings, Trust};
pub use store::{Learned, PinStore, PinStoreError, StoredPin};
pub use verifier::{Fingerprints, PinMismatch};

use verifier::FirstUse;
pub(crate) use verifier::{LeafCheck, LeafVerifier, Pins};

/// The one crypto provider amtgw uses: aws-lc-rs, rustls' default, with RSA signatures
/// verified by ring so that AMT's 2047-bit keys are accepted (see `algorithms`).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        signature_verification_algorithms: algorithms::SIGNATURE_ALGORITHMS,
        ..rustls::crypto::aws_lc_rs::default_provider()
    })
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS versions not supported by the crypto provider: {0}")]
    Versions(rustls::Error),
    #[error("CA bundle is unusable: {0}")]
    CaBundle(rustls::client::VerifierBuilderError),
    #[error("trust = \"tofu\" needs the pin store, which is not open")]
    NoPinStore,
    #[error("client certificate {cert} and key {key} cannot be used together: {source}")]
    ClientIdentity {
        cert: String,
        key: String,
        source: rustls::Error,
    },
}

impl TlsError {
    pub fn kind(&self) -> &'static str {
        match self {
            TlsError::Versions(_) => "tls_versions",
            TlsError::CaBundle(_) => "ca_bundle",
            TlsError::ClientIdentity { .. } => "client_identity",
            TlsError::NoPinStore => "pin_store_missing",
        }
    }
}

/// Build a device's client config. Called at load, never per connection. `pin_store` is the
/// store for `trust = "tofu"`, where `device` names the entry.
pub fn client_config(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
    device: &str,
    pin_store: Option<&Arc<PinStore>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&settings.versions)
        .map_err(TlsError::Versions)?;
    let builder = match &settings.trust {
        Trust::Pin(pins) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LeafVerifier::new(
                Pins(pins.clone()),
                provider.signature_verification_algorithms,
            ))),
        Trust::Ca { roots, .. } => {
            let verifier =
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(TlsError::CaBundle)?;
            builder.with_webpki_verifier(verifier)
        }
        Trust::Tofu => {
            let store = pin_store.ok_or(TlsError::NoPinStore)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(LeafVerifier::new(
                    FirstUse {
                        device: device.to_owned(),
                        store: store.clone(),
                    },
                    provider.signature_verification_algorithms,
                )))
        }
    };
    let mut config = with_identity(builder, settings.client_identity.as_deref())?;
    config.resumption = match settings.session_cache {
        0 => Resumption::disabled(),
        sessions => Resumption::store(Arc::new(ClientSessionMemoryCache::new(sessions))),
    };
    Ok(Arc::new(config))
}

/// Finish a client config with the client certificate for mutual TLS, if there is one.
pub(crate) fn with_identity(
    builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, TlsError> {
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|source| TlsError::ClientIdentity {
                cert: identity.cert_path.display().to_string(),
                key: identity.key_path.display().to_string(),
                source,
            }),
    }
}

/// What went wrong in a TLS exchange with a device, as far as TLS can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The certificate matches none of the device's pins (configured or stored).
    PinMismatch,
    NameMismatch,
    /// Outside its validity period.
    CertExpired,
    CertInvalid,
    /// The device refused the gateway's client certificate (or its absence).
    ClientCertRejected,
    /// Any other alert from the device.
    Alert,
    /// The device answered with something that is not TLS.
    NotTls,
    /// No protocol version, cipher suite or signature scheme in common.
    Incompatible,
    Other,
}

impl HandshakeFailure {
    pub fn of(error: &rustls::Error) -> HandshakeFailure {
        match error {
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::Other(other)
                    if other.0.downcast_ref::<PinMismatch>().is_some() =>
                {
                    HandshakeFailure::PinMismatch
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => HandshakeFailure::NameMismatch,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => HandshakeFailure::CertExpired,
                _ => HandshakeFailure::CertInvalid,
            },
            rustls::Error::AlertReceived(alert) if rejects_client_certificate(*alert) => {
                HandshakeFailure::ClientCertRejected
            }
            rustls::Error::AlertReceived(_) => HandshakeFailure::Alert,
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                HandshakeFailure::NotTls
            }
            rustls::Error::PeerIncompatible(_) => HandshakeFailure::Incompatible,
            _ => HandshakeFailure::Other,
        }
    }
}

/// Alerts a server sends when it refuses the client's certificate (or its absence). Under
/// TLS 1.3 they arrive after the client considers the handshake finished.
pub(crate) fn rejects_client_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied
    )
}

/// An I/O error from tokio-rustls, said for an operator: rustls shows a verifier's own error
/// (a pin mismatch, with both fingerprints) only in its `Debug` form.
pub(crate) fn describe(error: &std::io::Error) -> String {
    match rustls_error(error) {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) => {
            format!("invalid peer certificate: {}", other.0)
        }
        _ => error.to_string(),
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if there is one.
pub(crate) fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}
