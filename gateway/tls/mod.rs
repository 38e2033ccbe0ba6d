//! Upstream TLS: the trust settings of a device ([`TlsSettings`], [`Trust`],
//! [`ClientIdentity`]) and one TLS client per device built from them once when the config is
//! loaded (a rustls `ClientConfig`, or for `tls_backend = "legacy"` an OpenSSL context); the
//! trust verifiers, shared by both backends; the pin stores (a file, or PostgreSQL shared by
//! replicas); PEM loading; certificate summaries
//! and the clock they are dated by; and the mapping of TLS errors to stable reasons.
//!
//! This module depends on no other module of amtgw, only on std and external crates: `config`
//! validates raw TOML into its types, `fleet` builds with it, `probe` inspects with it.

mod algorithms;
mod connector;
mod inspect;
#[cfg(feature = "legacy-tls")]
mod legacy;
mod pem;
mod pin;
mod postgres;
mod settings;
pub mod store;
mod tofu;
mod verifier;

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::{AlertDescription, CertificateError, ClientConfig};

pub use connector::{Connector, DeviceStream, HandshakeError};
pub use inspect::{CertificateSummary, not_after, rfc3339, unix_now};
#[cfg(feature = "legacy-tls")]
pub use legacy::{LegacyConnector, LegacyError, LegacyOptions, LegacyStream};
pub use pem::{PemError, load_certificates, load_private_key};
pub use pin::{Pin, PinKind, PinParseError};
pub use postgres::{
    CHANNEL, NoEvents, PasswordSource, PostgresPinStore, PostgresSettings, SCHEMA_VERSION,
    StoreEvents, redact,
};
pub use settings::{Backend, ClientIdentity, TlsSettings, TlsVersion, Trust};
pub use store::{Learned, PinStore, PinStoreError, StoredPin};
pub use tofu::{PinStoreSettings, TofuStore};
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
    #[cfg(not(feature = "legacy-tls"))]
    #[error("tls_backend = \"legacy\" needs amtgw built with the legacy-tls feature")]
    NoLegacyBackend,
    #[cfg(feature = "legacy-tls")]
    #[error("OpenSSL (tls_backend = \"legacy\"): {0}")]
    Legacy(#[from] openssl::error::ErrorStack),
    #[cfg(feature = "legacy-tls")]
    #[error(
        "client certificate {cert} and key {key} cannot be used by OpenSSL (tls_backend = \"legacy\"): {source}"
    )]
    LegacyClientIdentity {
        cert: String,
        key: String,
        source: openssl::error::ErrorStack,
    },
}

impl TlsError {
    pub fn kind(&self) -> &'static str {
        match self {
            TlsError::Versions(_) => "tls_versions",
            TlsError::CaBundle(_) => "ca_bundle",
            TlsError::ClientIdentity { .. } => "client_identity",
            TlsError::NoPinStore => "pin_store_missing",
            #[cfg(not(feature = "legacy-tls"))]
            TlsError::NoLegacyBackend => "legacy_tls",
            #[cfg(feature = "legacy-tls")]
            TlsError::Legacy(_) => "legacy_tls",
            #[cfg(feature = "legacy-tls")]
            TlsError::LegacyClientIdentity { .. } => "client_identity",
        }
    }
}

/// Build a device's rustls client config. Called at load, never per connection.
pub fn client_config(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let versions: Vec<_> = settings
        .versions
        .iter()
        .filter_map(|v| v.rustls())
        .collect();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(TlsError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = with_identity(builder, settings.client_identity.as_deref())?;
    config.resumption = match settings.session_cache {
        0 => Resumption::disabled(),
        sessions => Resumption::store(Arc::new(ClientSessionMemoryCache::new(sessions))),
    };
    Ok(Arc::new(config))
}

/// How a device's certificate is checked, whichever backend speaks to it: configured pins,
/// a CA and name, or the pin store for `trust = "tofu"` (where `device` names the entry).
/// Built once per device at load.
pub fn verifier(
    trust: &Trust,
    provider: &Arc<CryptoProvider>,
    device: &str,
    pin_store: Option<&TofuStore>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let algorithms = provider.signature_verification_algorithms;
    Ok(match trust {
        Trust::Pin(pins) => Arc::new(LeafVerifier::new(Pins(pins.clone()), algorithms)),
        Trust::Ca { roots, .. } => {
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(TlsError::CaBundle)?
        }
        Trust::Tofu => {
            let store = pin_store.ok_or(TlsError::NoPinStore)?;
            let first_use = FirstUse {
                device: device.to_owned(),
                store: store.clone(),
            };
            Arc::new(LeafVerifier::new(first_use, algorithms))
        }
    })
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
            // What a device answers a client hello it has nothing in common with: an old
            // device offered only TLS 1.2+ with ECDHE, say.
            rustls::Error::AlertReceived(
                AlertDescription::HandshakeFailure
                | AlertDescription::ProtocolVersion
                | AlertDescription::InsufficientSecurity,
            ) => HandshakeFailure::Incompatible,
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
        Some(rustls) => describe_rustls(rustls),
        None => error.to_string(),
    }
}

pub(crate) fn describe_rustls(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            format!("invalid peer certificate: {}", other.0)
        }
        _ => error.to_string(),
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if there is one.
pub(crate) fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Keys and certificates OpenSSL makes and rcgen cannot: RSA keys of any size, as firmware
/// generates them (2047 bits, say).
#[cfg(test)]
pub(crate) mod test_keys {
    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private};
    use openssl::rsa::Rsa;
    use openssl::x509::{X509, X509NameBuilder};

    /// A self-signed certificate with "Unknown" DN fields over a fresh RSA key of `bits` bits.
    pub(crate) fn rsa_device(bits: u32) -> (PKey<Private>, X509) {
        let key = PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "Unknown").unwrap();
        let name = name.build();
        let mut cert = X509::builder().unwrap();
        cert.set_version(2).unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        let now = openssl::asn1::Asn1Time::days_from_now(0).unwrap();
        let later = openssl::asn1::Asn1Time::days_from_now(365).unwrap();
        cert.set_not_before(&now).unwrap();
        cert.set_not_after(&later).unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        (key, cert.build())
    }
}
