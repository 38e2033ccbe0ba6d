//! The device leg's TLS, whichever backend speaks it: a device's [`Connector`] (built once at
//! load) and the [`DeviceStream`] it opens, which the relay reads and writes like any stream.

use std::io;
use std::pin::Pin;
#[cfg(feature = "legacy-tls")]
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::Backend;
#[cfg(feature = "legacy-tls")]
use super::{LegacyConnector, LegacyError, LegacyStream};

/// How a device is spoken to; built once per device at load.
pub enum Connector {
    Rustls(TlsConnector),
    #[cfg(feature = "legacy-tls")]
    Legacy(Arc<LegacyConnector>),
}

impl Connector {
    pub fn backend(&self) -> Backend {
        match self {
            Connector::Rustls(_) => Backend::Rustls,
            #[cfg(feature = "legacy-tls")]
            Connector::Legacy(_) => Backend::Legacy,
        }
    }

    /// The TLS handshake over a connected socket; the caller bounds it with a timeout.
    pub async fn handshake(
        &self,
        server_name: ServerName<'static>,
        tcp: TcpStream,
    ) -> Result<DeviceStream, HandshakeError> {
        match self {
            Connector::Rustls(connector) => connector
                .connect(server_name, tcp)
                .await
                .map(|tls| DeviceStream::Rustls(Box::new(tls)))
                .map_err(HandshakeError::Rustls),
            #[cfg(feature = "legacy-tls")]
            Connector::Legacy(connector) => connector
                .connect(&server_name, tcp)
                .await
                .map(DeviceStream::Legacy)
                .map_err(|e| HandshakeError::Legacy(Box::new(e))),
        }
    }
}

/// A failed handshake, in its backend's terms.
#[derive(Debug)]
pub enum HandshakeError {
    /// tokio-rustls' I/O error, with the rustls error inside when TLS failed.
    Rustls(io::Error),
    // Boxed: OpenSSL's error stack is large, and this travels in every connection's Result.
    #[cfg(feature = "legacy-tls")]
    Legacy(Box<LegacyError>),
}

/// A TLS connection to a device, over either backend. The relay sees only AsyncRead and
/// AsyncWrite; the match per call is the whole cost of having two backends.
pub enum DeviceStream {
    // Boxed: rustls' connection state is large, and the enum travels by value.
    Rustls(Box<TlsStream<TcpStream>>),
    #[cfg(feature = "legacy-tls")]
    Legacy(LegacyStream),
}

impl DeviceStream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            DeviceStream::Rustls(tls) => tls.get_ref().0,
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(tls) => tls.tcp(),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            DeviceStream::Rustls(_) => Backend::Rustls,
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(_) => Backend::Legacy,
        }
    }

    /// The certificates the device presented, leaf first. None on a resumed rustls session.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match self {
            DeviceStream::Rustls(tls) => tls.get_ref().1.peer_certificates(),
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(tls) => Some(tls.peer_certificates()),
        }
    }

    pub fn resumed(&self) -> bool {
        match self {
            DeviceStream::Rustls(tls) => {
                tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
            }
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(tls) => tls.resumed(),
        }
    }

    /// `TLSv1_2` and the like, as in the access log.
    pub fn protocol_version(&self) -> Option<&'static str> {
        match self {
            DeviceStream::Rustls(tls) => tls.get_ref().1.protocol_version()?.as_str(),
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(tls) => tls.protocol_version(),
        }
    }

    /// The cipher suite's IANA name.
    pub fn cipher(&self) -> Option<&'static str> {
        match self {
            DeviceStream::Rustls(tls) => {
                tls.get_ref().1.negotiated_cipher_suite()?.suite().as_str()
            }
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(tls) => tls.cipher(),
        }
    }
}

impl AsyncRead for DeviceStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DeviceStream::Rustls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(tls) => Pin::new(tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for DeviceStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DeviceStream::Rustls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(tls) => Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            DeviceStream::Rustls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(tls) => Pin::new(tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            DeviceStream::Rustls(tls) => tls.is_write_vectored(),
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DeviceStream::Rustls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            DeviceStream::Rustls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            #[cfg(feature = "legacy-tls")]
            DeviceStream::Legacy(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}
