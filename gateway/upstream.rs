//! The device leg: TCP connect, then the TLS handshake, each under its own timeout.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

use crate::config::{GatewaySettings, Host};
use crate::fleet::Device;
use crate::service::Service;
use crate::socket;
use crate::tls;

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
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: io::Error },
}

impl UpstreamError {
    /// Whether the TCP connection was up and the TLS handshake is what failed.
    pub fn is_handshake_phase(&self) -> bool {
        matches!(
            self,
            UpstreamError::HandshakeTimeout { .. } | UpstreamError::Handshake { .. }
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Resolve { .. } => "resolve_failed",
            UpstreamError::Connect { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => "connect_refused",
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    "connect_unreachable"
                }
                _ => "connect_failed",
            },
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::HandshakeTimeout { .. } => "handshake_timeout",
            UpstreamError::Handshake { source, .. } => match tls::rustls_error(source) {
                Some(error) => tls::failure_kind(error),
                None => match source.kind() {
                    io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe => "device_reset",
                    _ => "handshake_failed",
                },
            },
        }
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
}

pub(crate) async fn connect(
    device: &Device,
    service: Service,
    settings: &GatewaySettings,
    timings: &mut UpstreamTimings,
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    let port = device.settings.port(service);
    let started = Instant::now();
    let addr = resolve(&device.settings.host, port, settings.connect_timeout).await?;
    timings.addr = Some(addr);
    let remaining = settings.connect_timeout.saturating_sub(started.elapsed());
    let connected = timeout(remaining, TcpStream::connect(addr)).await;
    // Recorded for failures too: the histogram shows how long refusals and timeouts take.
    timings.connect = Some(started.elapsed());
    let tcp = match connected {
        Err(_) => {
            return Err(UpstreamError::ConnectTimeout {
                addr,
                after: settings.connect_timeout,
            });
        }
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Ok(Ok(tcp)) => tcp,
    };
    socket::tune(&tcp, settings.tcp_keepalive);

    let handshake_started = Instant::now();
    let connecting = device
        .connector
        .connect(device.settings.server_name.clone(), tcp);
    let handshaken = timeout(settings.handshake_timeout, connecting).await;
    timings.handshake = Some(handshake_started.elapsed());
    let stream = match handshaken {
        Err(_) => {
            return Err(UpstreamError::HandshakeTimeout {
                addr,
                after: settings.handshake_timeout,
            });
        }
        Ok(Err(source)) => return Err(UpstreamError::Handshake { addr, source }),
        Ok(Ok(stream)) => stream,
    };
    let (_, session) = stream.get_ref();
    timings.resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    timings.version = session.protocol_version().and_then(|v| v.as_str());
    timings.cipher = session
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str());
    Ok(stream)
}

async fn resolve(host: &Host, port: u16, limit: Duration) -> Result<SocketAddr, UpstreamError> {
    match host {
        Host::Ip(ip) => Ok(SocketAddr::new(*ip, port)),
        Host::Dns(name) => {
            let lookup = timeout(limit, tokio::net::lookup_host((name.as_str(), port)))
                .await
                .map_err(|_| UpstreamError::Resolve {
                    host: name.clone(),
                    source: io::Error::new(io::ErrorKind::TimedOut, "lookup timed out"),
                })?;
            lookup
                .map_err(|source| UpstreamError::Resolve {
                    host: name.clone(),
                    source,
                })?
                .next()
                .ok_or_else(|| UpstreamError::Resolve {
                    host: name.clone(),
                    source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
                })
        }
    }
}
