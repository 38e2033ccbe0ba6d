//! The device leg: TCP connect, then the TLS handshake (rustls, or OpenSSL for devices with
//! `tls_backend = "legacy"`), each under its own timeout.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::config::{GatewaySettings, Host};
use crate::fleet::Device;
use crate::reason::Reason;
use crate::service::Service;
use crate::socket;
#[cfg(feature = "legacy-tls")]
use crate::tls::LegacyError;
use crate::tls::{
    self, Backend, Connector, DeviceStream, Fingerprints, HandshakeError, HandshakeFailure,
    Learned, PinMismatch, PinStoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connect to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("TLS handshake with {addr} timed out after {after:?}")]
    HandshakeTimeout { addr: SocketAddr, after: Duration },
    #[error(
        "TLS handshake with {addr} failed: {}{}",
        tls::describe(source),
        legacy_hint(source)
    )]
    Handshake { addr: SocketAddr, source: io::Error },
    #[cfg(feature = "legacy-tls")]
    #[error("TLS handshake (tls_backend = \"legacy\") with {addr} failed: {source}")]
    LegacyHandshake {
        addr: SocketAddr,
        // Boxed: OpenSSL's error stack is large, and this travels in every connection's Result.
        source: Box<LegacyError>,
    },
    /// A `tofu` device presented a certificate other than the pin stored first: by another
    /// connection's (or replica's) first use, or while this handshake ran.
    #[error("device at {addr}: {mismatch}")]
    LearnedOtherPin {
        addr: SocketAddr,
        mismatch: PinMismatch,
    },
    /// The pin could not be recorded: trust that isn't durable isn't given.
    #[error("cannot record the pin of the device at {addr}: {source}")]
    PinStore {
        addr: SocketAddr,
        source: PinStoreError,
    },
}

impl UpstreamError {
    /// Whether the TCP connection was up and the TLS handshake is what failed.
    pub fn is_handshake_phase(&self) -> bool {
        matches!(
            self,
            UpstreamError::HandshakeTimeout { .. }
                | UpstreamError::Handshake { .. }
                | UpstreamError::LearnedOtherPin { .. }
                | UpstreamError::PinStore { .. }
        ) || self.is_legacy_handshake()
    }

    #[cfg(feature = "legacy-tls")]
    fn is_legacy_handshake(&self) -> bool {
        matches!(self, UpstreamError::LegacyHandshake { .. })
    }

    #[cfg(not(feature = "legacy-tls"))]
    fn is_legacy_handshake(&self) -> bool {
        false
    }

    pub fn reason(&self) -> Reason {
        match self {
            UpstreamError::Resolve { .. } => Reason::ResolveFailed,
            UpstreamError::Connect { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => Reason::ConnectRefused,
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    Reason::ConnectUnreachable
                }
                _ => Reason::ConnectFailed,
            },
            UpstreamError::ConnectTimeout { .. } => Reason::ConnectTimeout,
            UpstreamError::HandshakeTimeout { .. } => Reason::HandshakeTimeout,
            UpstreamError::LearnedOtherPin { .. } => Reason::PinMismatch,
            UpstreamError::PinStore { .. } => Reason::PinStoreFailed,
            UpstreamError::Handshake { source, .. } => match tls::rustls_error(source) {
                Some(error) => HandshakeFailure::of(error).into(),
                None if is_reset(source.kind()) => Reason::DeviceReset,
                None => Reason::HandshakeFailed,
            },
            #[cfg(feature = "legacy-tls")]
            UpstreamError::LegacyHandshake { source, .. } => match source.io_error_kind() {
                Some(kind) if is_reset(kind) => Reason::DeviceReset,
                Some(_) => Reason::HandshakeFailed,
                None => source.failure().into(),
            },
        }
    }
}

/// The device went away mid-handshake.
fn is_reset(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Said after a rustls handshake failure that looks like a device too old for rustls.
fn legacy_hint(error: &io::Error) -> &'static str {
    match tls::rustls_error(error).map(HandshakeFailure::of) {
        Some(HandshakeFailure::Incompatible) => {
            " (AMT 12 and older need tls_backend = \"legacy\"; `amtgw pin` shows what the device speaks)"
        }
        _ => "",
    }
}

/// How the device leg was set up, for metrics and the access log.
#[derive(Debug, Default, Clone)]
pub(crate) struct UpstreamTimings {
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) connect: Option<Duration>,
    pub(crate) handshake: Option<Duration>,
    pub(crate) resumed: bool,
    pub(crate) version: Option<&'static str>,
    pub(crate) cipher: Option<&'static str>,
    /// The TLS stack the device is spoken to with; set once dialling starts.
    pub(crate) backend: Option<Backend>,
}

/// Connect to `device` for `service`: TCP, TLS with the device's config, and (for `tofu`)
/// recording its pin on first use.
pub(crate) async fn connect(
    device: &Device,
    service: Service,
    settings: &GatewaySettings,
    timings: &mut UpstreamTimings,
) -> Result<DeviceStream, UpstreamError> {
    let stream = dial(
        Dial {
            host: &device.settings.host,
            port: device.settings.port(service),
            server_name: device.settings.server_name.clone(),
            connector: &device.connector,
            connect_timeout: settings.connect_timeout,
            handshake_timeout: settings.handshake_timeout,
            keepalive: settings.tcp_keepalive,
        },
        timings,
    )
    .await?;
    let addr = timings
        .addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    learn_pin(device, addr, stream.peer_certificates()).await?;
    Ok(stream)
}

/// Where and how to open a TLS connection to a device.
pub(crate) struct Dial<'a> {
    pub(crate) host: &'a Host,
    pub(crate) port: u16,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) connector: &'a Connector,
    /// Bounds DNS resolution and the TCP connect together.
    pub(crate) connect_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) keepalive: Duration,
}

/// TCP connect then TLS handshake, each under its own timeout; `timings` is filled as far as
/// it got, failures included.
pub(crate) async fn dial(
    dial: Dial<'_>,
    timings: &mut UpstreamTimings,
) -> Result<DeviceStream, UpstreamError> {
    let started = Instant::now();
    timings.backend = Some(dial.connector.backend());
    let addr = resolve(dial.host, dial.port, dial.connect_timeout).await?;
    timings.addr = Some(addr);
    let remaining = dial.connect_timeout.saturating_sub(started.elapsed());
    let connected = timeout(remaining, TcpStream::connect(addr)).await;
    // Recorded for failures too: the histogram shows how long refusals and timeouts take.
    timings.connect = Some(started.elapsed());
    let tcp = match connected {
        Err(_) => {
            return Err(UpstreamError::ConnectTimeout {
                addr,
                after: dial.connect_timeout,
            });
        }
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Ok(Ok(tcp)) => tcp,
    };
    socket::tune(&tcp, dial.keepalive);

    let handshake_started = Instant::now();
    let handshaken = timeout(
        dial.handshake_timeout,
        dial.connector.handshake(dial.server_name, tcp),
    )
    .await;
    timings.handshake = Some(handshake_started.elapsed());
    let stream = match handshaken {
        Err(_) => {
            return Err(UpstreamError::HandshakeTimeout {
                addr,
                after: dial.handshake_timeout,
            });
        }
        Ok(Err(HandshakeError::Rustls(source))) => {
            return Err(UpstreamError::Handshake { addr, source });
        }
        #[cfg(feature = "legacy-tls")]
        Ok(Err(HandshakeError::Legacy(source))) => {
            return Err(UpstreamError::LegacyHandshake { addr, source });
        }
        Ok(Ok(stream)) => stream,
    };
    timings.resumed = stream.resumed();
    timings.version = stream.protocol_version();
    timings.cipher = stream.cipher();
    Ok(stream)
}

/// Trust on first use: record the certificate of a `tofu` device that has no pin yet. This runs
/// after the handshake, so the device has proven it holds the certificate's key.
async fn learn_pin(
    device: &Device,
    addr: SocketAddr,
    chain: Option<&[rustls_pki_types::CertificateDer<'static>]>,
) -> Result<(), UpstreamError> {
    let Some(store) = &device.pin_store else {
        return Ok(());
    };
    let Some(presented) = chain.and_then(|c| c.first()).and_then(Fingerprints::of) else {
        return Ok(());
    };
    // A pin stored before the handshake was checked by the verifier; one stored during it
    // (another replica's first use arriving by NOTIFY, a re-pin, a reload of the file) was
    // not, and the verifier let the certificate through as a first use. Check it here: the
    // certificate must match whatever is stored now, or it is refused.
    if let Some(stored) = store.get(device.name()) {
        return match stored.matches(&presented) {
            true => Ok(()),
            false => Err(UpstreamError::LearnedOtherPin {
                addr,
                mismatch: PinMismatch {
                    presented,
                    expected: vec![stored.certificate, stored.public_key],
                },
            }),
        };
    }
    // The file store fsyncs on tokio's blocking pool; the database store answers over the
    // network within `gateway.pin_store_timeout`.
    let learned = store
        .learn(device.name(), &presented)
        .await
        .map_err(|source| UpstreamError::PinStore { addr, source })?;
    match learned {
        Learned::New => {
            tracing::info!(certificate = %presented.certificate, public_key = %presented.public_key, "learned the device's pin on first use");
            Ok(())
        }
        Learned::Matches => Ok(()),
        Learned::Mismatch { stored } => Err(UpstreamError::LearnedOtherPin {
            addr,
            mismatch: PinMismatch {
                presented,
                expected: vec![stored.certificate, stored.public_key],
            },
        }),
    }
}

/// The device's socket address: its IP, or its DNS name resolved within `limit`.
pub(crate) async fn resolve(
    host: &Host,
    port: u16,
    limit: Duration,
) -> Result<SocketAddr, UpstreamError> {
    let name = match host {
        Host::Ip(ip) => return Ok(SocketAddr::new(*ip, port)),
        Host::Dns(name) => name,
    };
    let failed = |source| UpstreamError::Resolve {
        host: name.clone(),
        source,
    };
    timeout(limit, tokio::net::lookup_host((name.as_str(), port)))
        .await
        .map_err(|_| failed(io::Error::new(io::ErrorKind::TimedOut, "lookup timed out")))?
        .map_err(failed)?
        .next()
        .ok_or_else(|| failed(io::Error::new(io::ErrorKind::NotFound, "no addresses")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;
    use std::sync::Arc;

    use rustls_pki_types::CertificateDer;

    use crate::config::Config;
    use crate::tls::{PinStore, PinStoreSettings, TofuStore};

    fn certificate() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["amt.test".into()]).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    /// The verifier lets any certificate through while no pin is stored; a pin stored before
    /// the handshake ends (another replica's first use) must still be enforced.
    #[tokio::test]
    async fn a_pin_stored_during_the_handshake_is_enforced_after_it() {
        let toml = r#"
[[devices]]
name = "amt-tofu"
host = "192.0.2.10"
trust = "tofu"
"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        let mut config = Config::from_toml("upstream test", Path::new("."), toml).unwrap();
        config.gateway.pin_store = PinStoreSettings::File(path.clone());
        let store = TofuStore::File(Arc::new(PinStore::open(&path).unwrap()));
        let device = crate::fleet::build(&config, Some(&store), &[]).unwrap()[0].clone();
        let (first, other) = (certificate(), certificate());
        // Stored by someone else after this connection's verifier had found nothing.
        let stored = Fingerprints::of(&first).unwrap();
        assert!(matches!(
            store.learn("amt-tofu", &stored).await.unwrap(),
            Learned::New
        ));
        let addr = SocketAddr::from(([192, 0, 2, 10], 16993));

        let refused = learn_pin(&device, addr, Some(std::slice::from_ref(&other)))
            .await
            .unwrap_err();
        assert_eq!(refused.reason(), Reason::PinMismatch, "{refused}");
        learn_pin(&device, addr, Some(std::slice::from_ref(&first)))
            .await
            .unwrap();
    }
}
