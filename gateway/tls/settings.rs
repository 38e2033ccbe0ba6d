//! What a device's rustls `ClientConfig` is built from: how its certificate is trusted
//! ([`Trust`]), the client certificate it may demand ([`ClientIdentity`]), protocol versions and
//! the session cache. `config` validates raw TOML into these types; [`super::client_config`]
//! turns them into a config.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Pin;

/// Everything needed to build a device's rustls `ClientConfig`.
#[derive(Clone)]
pub struct TlsSettings {
    pub trust: Trust,
    pub client_identity: Option<Arc<ClientIdentity>>,
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    pub session_cache: usize,
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
