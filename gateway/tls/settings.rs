//! What a device's TLS client is built from: how its certificate is trusted ([`Trust`]), the
//! client certificate it may demand ([`ClientIdentity`]), the TLS stack ([`Backend`]), protocol
//! versions and the session cache. `config` validates raw TOML into these types;
//! [`super::client_config`] (rustls) and `LegacyConnector` (OpenSSL) are built from them.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Pin;

/// Everything needed to build a device's TLS client.
#[derive(Clone)]
pub struct TlsSettings {
    pub trust: Trust,
    pub client_identity: Option<Arc<ClientIdentity>>,
    pub backend: Backend,
    /// Never empty; only versions the backend speaks (`config` checks).
    pub versions: Vec<TlsVersion>,
    pub session_cache: usize,
}

/// The TLS stack that speaks to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// rustls: TLS 1.2 (ECDHE, AEAD) and 1.3. Every device unless configured otherwise.
    Rustls,
    /// OpenSSL at security level 0: TLS 1.0 to 1.2 with RSA key exchange and CBC suites, and
    /// servers without RFC 5746, for AMT 11 and older (and AMT 12's RSA-only suites). Only
    /// for devices configured with `tls_backend = "legacy"`: nothing ever falls back to it.
    Legacy,
}

impl Backend {
    /// The `tls_backend` label and config value.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Rustls => "rustls",
            Backend::Legacy => "legacy",
        }
    }
}

/// A TLS protocol version, as `tls_versions` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls1_0,
    Tls1_1,
    Tls1_2,
    Tls1_3,
}

impl TlsVersion {
    pub const ALL: [TlsVersion; 4] = [
        TlsVersion::Tls1_0,
        TlsVersion::Tls1_1,
        TlsVersion::Tls1_2,
        TlsVersion::Tls1_3,
    ];

    /// As written in the config: `"1.0"` to `"1.3"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls1_0 => "1.0",
            TlsVersion::Tls1_1 => "1.1",
            TlsVersion::Tls1_2 => "1.2",
            TlsVersion::Tls1_3 => "1.3",
        }
    }

    /// As rustls and the access log name it: `TLSv1_0` to `TLSv1_3`.
    pub fn log_name(self) -> &'static str {
        match self {
            TlsVersion::Tls1_0 => "TLSv1_0",
            TlsVersion::Tls1_1 => "TLSv1_1",
            TlsVersion::Tls1_2 => "TLSv1_2",
            TlsVersion::Tls1_3 => "TLSv1_3",
        }
    }

    pub fn parse(text: &str) -> Option<TlsVersion> {
        TlsVersion::ALL.into_iter().find(|v| v.as_str() == text)
    }

    /// The versions each backend speaks: rustls has no TLS 1.0/1.1; the legacy backend is for
    /// devices that have no TLS 1.3.
    pub fn spoken_by(self, backend: Backend) -> bool {
        match backend {
            Backend::Rustls => self >= TlsVersion::Tls1_2,
            Backend::Legacy => self <= TlsVersion::Tls1_2,
        }
    }

    pub(crate) fn rustls(self) -> Option<&'static rustls::SupportedProtocolVersion> {
        match self {
            TlsVersion::Tls1_2 => Some(&rustls::version::TLS12),
            TlsVersion::Tls1_3 => Some(&rustls::version::TLS13),
            TlsVersion::Tls1_0 | TlsVersion::Tls1_1 => None,
        }
    }
}

/// How a device's certificate is trusted. There is deliberately no mode that skips verification.
#[derive(Clone)]
pub enum Trust {
    /// Any of these pins matches the presented leaf; chain, validity and name are not checked,
    /// the handshake signature is.
    Pin(Vec<Pin>),
    /// The leaf chains to one of these roots and is valid for the device's `server_name`.
    Ca {
        ca_file: PathBuf,
        roots: Arc<RootCertStore>,
    },
    /// Trust on first use: the first certificate seen is recorded in the pin store
    /// (`gateway.pin_store`) and required from then on.
    Tofu,
}

impl Trust {
    pub fn mode(&self) -> &'static str {
        match self {
            Trust::Pin(_) => "pin",
            Trust::Ca { .. } => "ca",
            Trust::Tofu => "tofu",
        }
    }
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Pin(pins) => f.debug_tuple("Pin").field(pins).finish(),
            Trust::Ca { ca_file, roots } => f
                .debug_struct("Ca")
                .field("ca_file", ca_file)
                .field("roots", &roots.len())
                .finish(),
            Trust::Tofu => f.write_str("Tofu"),
        }
    }
}

/// A client certificate chain and key for devices that demand mutual TLS.
pub struct ClientIdentity {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ClientIdentity {
    // The key never reaches a log: only where it was read from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}
