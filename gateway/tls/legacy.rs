//! The legacy backend: OpenSSL, for devices rustls cannot reach. AMT 11 and older speak only
//! TLS 1.0/1.1; up to AMT 12 many offer only RSA key exchange with CBC suites; and AMT's TLS
//! server does not implement RFC 5746 secure renegotiation, which OpenSSL 3 clients insist on
//! by default. rustls will never speak any of that, by design.
//!
//! It is used only for a device configured with `tls_backend = "legacy"` (nothing falls back
//! to it), and everything that decides trust is shared with the rustls backend: the same
//! verifier (pins, CA and name, the pin store) checks the chain OpenSSL received, before a
//! single byte is relayed. OpenSSL's own certificate verification is off; its security level
//! is lowered in this device's context only.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use openssl::error::ErrorStack;
use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslMethod, SslMode, SslOptions, SslSession, SslSessionRef,
    SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use rustls::AlertDescription;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{
    ClientIdentity, HandshakeFailure, TlsError, TlsSettings, TlsVersion, rejects_client_certificate,
};

/// Every suite OpenSSL has, RSA key exchange and CBC included; at security level 0, which
/// is what allows TLS 1.0/1.1 (SHA-1 and MD5-SHA1 handshake signatures) in OpenSSL 3.
const CIPHERS: &str = "DEFAULT:@SECLEVEL=0";

/// The smallest RSA device key accepted, as on the rustls backend (ring counts the modulus
/// in whole bytes: AMT's 2047-bit "2048-bit" keys pass, 2040 bits and less do not). It
/// matters more here: with RSA key exchange the key protects the session keys themselves.
const MIN_RSA_BITS: u32 = 2041;

// OpenSSL reason codes (include/openssl/sslerr.h, OpenSSL 3.0), not exported by openssl-sys.
const SSL_R_NO_CIPHERS_AVAILABLE: i32 = 181;
const SSL_R_NO_PROTOCOLS_AVAILABLE: i32 = 191;
const SSL_R_PACKET_LENGTH_TOO_LONG: i32 = 198;
const SSL_R_UNSUPPORTED_PROTOCOL: i32 = 258;
const SSL_R_WRONG_VERSION_NUMBER: i32 = 267;
const SSL_R_UNEXPECTED_EOF_WHILE_READING: i32 = 294;

/// What a [`LegacyConnector`] is built from.
#[derive(Debug, Clone, Copy)]
pub struct LegacyOptions<'a> {
    /// Spoken from the lowest to the highest listed (OpenSSL takes a range).
    pub versions: &'a [TlsVersion],
    /// An OpenSSL cipher list; `None` for every suite (`amtgw pin` narrows it to survey).
    pub ciphers: Option<&'a str>,
    pub client_identity: Option<&'a ClientIdentity>,
    pub resumption: bool,
}

impl<'a> LegacyOptions<'a> {
    /// A device's options, from its settings.
    pub fn of(settings: &'a TlsSettings) -> LegacyOptions<'a> {
        LegacyOptions {
            versions: &settings.versions,
            ciphers: None,
            client_identity: settings.client_identity.as_deref(),
            resumption: settings.session_cache > 0,
        }
    }
}

/// One device's OpenSSL client, built once at load like a rustls `ClientConfig`.
pub struct LegacyConnector {
    context: SslContext,
    verifier: Arc<dyn ServerCertVerifier>,
    /// The session of the last verified full handshake, offered for resumption; `None` when
    /// `gateway.session_cache_per_device` is 0. TLS up to 1.2 resumes by session ID, which
    /// can be offered again and again, so one per device is enough.
    session: Option<Mutex<Option<SslSession>>>,
}

impl std::fmt::Debug for LegacyConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyConnector").finish_non_exhaustive()
    }
}

impl LegacyConnector {
    pub fn new(
        options: LegacyOptions<'_>,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> Result<LegacyConnector, TlsError> {
        let mut builder = SslContext::builder(SslMethod::tls_client())?;
        let version = |v: Option<&TlsVersion>| match v {
            Some(TlsVersion::Tls1_0) => Some(SslVersion::TLS1),
            Some(TlsVersion::Tls1_1) => Some(SslVersion::TLS1_1),
            Some(TlsVersion::Tls1_3) => Some(SslVersion::TLS1_3),
            Some(TlsVersion::Tls1_2) | None => Some(SslVersion::TLS1_2),
        };
        // OpenSSL takes a range: from the lowest listed version to the highest.
        builder.set_min_proto_version(version(options.versions.iter().min()))?;
        builder.set_max_proto_version(version(options.versions.iter().max()))?;
        builder.set_security_level(0);
        match options.ciphers {
            None => builder.set_cipher_list(CIPHERS)?,
            Some(list) => builder.set_cipher_list(&format!("{list}:@SECLEVEL=0"))?,
        }
        builder.set_options(
            SslOptions::NO_COMPRESSION
                | SslOptions::ALLOW_UNSAFE_LEGACY_RENEGOTIATION
                | SslOptions::from_bits_retain(openssl_sys::SSL_OP_LEGACY_SERVER_CONNECT),
        );
        // The relay retries a blocked write from its backlog, a copy elsewhere in memory, which
        // OpenSSL refuses by default ("bad write retry"); and a write may take less than all
        // it is given, record by record, as an AsyncWrite may.
        builder.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER | SslMode::ENABLE_PARTIAL_WRITE);
        // The shared verifier checks the chain once the handshake is done; see `connect`.
        builder.set_verify(SslVerifyMode::NONE);
        if let Some(identity) = options.client_identity {
            let failed = |source: ErrorStack| TlsError::LegacyClientIdentity {
                cert: identity.cert_path.display().to_string(),
                key: identity.key_path.display().to_string(),
                source,
            };
            let mut chain = identity.chain.iter().map(|c| X509::from_der(c.as_ref()));
            if let Some(leaf) = chain.next() {
                let leaf = leaf.map_err(failed)?;
                builder.set_certificate(&leaf).map_err(failed)?;
            }
            for extra in chain {
                builder
                    .add_extra_chain_cert(extra.map_err(failed)?)
                    .map_err(failed)?;
            }
            let key = PKey::private_key_from_der(identity.key.secret_der()).map_err(failed)?;
            builder.set_private_key(&key).map_err(failed)?;
            builder.check_private_key().map_err(failed)?;
        }
        Ok(LegacyConnector {
            context: builder.build(),
            verifier,
            session: options.resumption.then(|| Mutex::new(None)),
        })
    }

    /// The TLS handshake over a connected socket, then the shared trust check of the chain
    /// the device presented. The caller bounds it with the handshake timeout.
    pub async fn connect(
        &self,
        server_name: &ServerName<'_>,
        tcp: TcpStream,
    ) -> Result<LegacyStream, LegacyError> {
        let mut ssl = Ssl::new(&self.context).map_err(LegacyError::Setup)?;
        // Sent only for names, as rustls does: AMT has one certificate per interface, so SNI
        // selects nothing, but it is harmless and some front ends want it.
        if let ServerName::DnsName(name) = server_name {
            ssl.set_hostname(name.as_ref())
                .map_err(LegacyError::Setup)?;
        }
        if let Some(previous) = self.last_session() {
            offer_session(&mut ssl, &previous)?;
        }
        let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(LegacyError::Setup)?;
        if let Err(source) = Pin::new(&mut stream).connect().await {
            // Once the device's hello named a suite, version and suite were agreed on.
            let agreed = stream.ssl().current_cipher().is_some();
            return Err(LegacyError::Handshake { source, agreed });
        }

        let chain: Vec<CertificateDer<'static>> = match stream.ssl().peer_cert_chain() {
            Some(certs) => certs
                .iter()
                .map(|cert| cert.to_der().map(CertificateDer::from))
                .collect::<Result<_, _>>()
                .map_err(LegacyError::Setup)?,
            None => Vec::new(),
        };
        let (leaf, intermediates) = chain.split_first().ok_or(LegacyError::NoCertificate)?;
        if let Some(bits) = stream
            .ssl()
            .peer_certificate()
            .and_then(|cert| cert.public_key().ok())
            .and_then(|key| key.rsa().ok().map(|rsa| rsa.n().num_bits()))
            .and_then(|bits| u32::try_from(bits).ok())
            .filter(|bits| *bits < MIN_RSA_BITS)
        {
            return Err(LegacyError::WeakKey { bits });
        }
        self.verifier
            .verify_server_cert(leaf, intermediates, server_name, &[], UnixTime::now())
            .map_err(LegacyError::Certificate)?;

        // Only a verified session is kept for resumption.
        let resumed = stream.ssl().session_reused();
        if let (Some(slot), false) = (&self.session, resumed)
            && let Some(session) = stream.ssl().session()
            && let Ok(mut slot) = slot.lock()
        {
            *slot = Some(session.to_owned());
        }
        Ok(LegacyStream {
            inner: stream,
            chain,
            resumed,
        })
    }

    fn last_session(&self) -> Option<SslSession> {
        self.session.as_ref()?.lock().ok()?.clone()
    }
}

/// Offer a session from an earlier handshake with this device for resumption.
///
/// The one use of `unsafe` in amtgw. `SSL_set_session` is unsafe in the openssl crate only
/// because a session must come from the same `SslContext` as the connection. It does: the
/// session slot belongs to the `LegacyConnector` that owns the context, and is only ever
/// filled from that context's connections. Without it, every connection to a legacy device
/// pays a full RSA handshake (measured in the e2e bench's legacy column).
#[allow(unsafe_code)]
fn offer_session(ssl: &mut Ssl, session: &SslSessionRef) -> Result<(), LegacyError> {
    // SAFETY: `session` was taken from a connection of the same `SslContext` as `ssl`
    // (see above); OpenSSL takes its own reference to it.
    unsafe { ssl.set_session(session) }.map_err(LegacyError::Setup)
}

/// The legacy TLS handshake failed, or its result is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("OpenSSL: {0}")]
    Setup(ErrorStack),
    #[error("{source}")]
    Handshake {
        source: openssl::ssl::Error,
        /// Whether the device had already agreed on a version and suite.
        agreed: bool,
    },
    #[error("the device presented no certificate")]
    NoCertificate,
    #[error("the device's RSA key has {bits} bits; at least 2048 are required")]
    WeakKey { bits: u32 },
    #[error("{}", super::describe_rustls(.0))]
    Certificate(rustls::Error),
}

impl LegacyError {
    /// The socket-level failure under a handshake failure (a reset, or an EOF mid-handshake),
    /// which is the device's doing rather than TLS's.
    pub fn io_error_kind(&self) -> Option<io::ErrorKind> {
        let LegacyError::Handshake { source: error, .. } = self else {
            return None;
        };
        if let Some(io) = error.io_error() {
            return Some(io.kind());
        }
        let eof = error.code() == ErrorCode::SYSCALL
            || has_reason(error.ssl_error(), SSL_R_UNEXPECTED_EOF_WHILE_READING);
        eof.then_some(io::ErrorKind::UnexpectedEof)
    }

    pub fn failure(&self) -> HandshakeFailure {
        match self {
            LegacyError::Setup(_) => HandshakeFailure::Other,
            LegacyError::NoCertificate | LegacyError::WeakKey { .. } => {
                HandshakeFailure::CertInvalid
            }
            LegacyError::Certificate(error) => HandshakeFailure::of(error),
            LegacyError::Handshake { source, agreed } => classify(source.ssl_error(), *agreed),
        }
    }
}

fn has_reason(stack: Option<&ErrorStack>, reason: i32) -> bool {
    stack.is_some_and(|s| s.errors().iter().any(|e| e.reason_code() == reason))
}

/// OpenSSL's handshake errors in amtgw's terms. An alert from the device arrives as reason
/// 1000 + its alert number. `agreed`: the device's hello had named a suite.
fn classify(stack: Option<&ErrorStack>, agreed: bool) -> HandshakeFailure {
    let Some(stack) = stack else {
        return HandshakeFailure::Other;
    };
    for error in stack.errors() {
        let reason = error.reason_code();
        if let Some(alert) = reason
            .checked_sub(openssl_sys::SSL_AD_REASON_OFFSET)
            .and_then(|n| u8::try_from(n).ok())
        {
            let alert = AlertDescription::from(alert);
            return match alert {
                // A TLS 1.2 server (OpenSSL's, and so likely firmware's) answers a missing or
                // refused client certificate with handshake_failure; before its hello, the same
                // alert means nothing in common.
                AlertDescription::HandshakeFailure if agreed => {
                    HandshakeFailure::ClientCertRejected
                }
                AlertDescription::HandshakeFailure
                | AlertDescription::ProtocolVersion
                | AlertDescription::InsufficientSecurity => HandshakeFailure::Incompatible,
                alert if rejects_client_certificate(alert) => HandshakeFailure::ClientCertRejected,
                _ => HandshakeFailure::Alert,
            };
        }
        match reason {
            SSL_R_WRONG_VERSION_NUMBER | SSL_R_PACKET_LENGTH_TOO_LONG => {
                return HandshakeFailure::NotTls;
            }
            SSL_R_UNSUPPORTED_PROTOCOL
            | SSL_R_NO_PROTOCOLS_AVAILABLE
            | SSL_R_NO_CIPHERS_AVAILABLE => return HandshakeFailure::Incompatible,
            _ => {}
        }
    }
    HandshakeFailure::Other
}

/// A device connection over the legacy backend: relayed like a rustls one.
#[derive(Debug)]
pub struct LegacyStream {
    inner: tokio_openssl::SslStream<TcpStream>,
    chain: Vec<CertificateDer<'static>>,
    resumed: bool,
}

impl LegacyStream {
    pub fn tcp(&self) -> &TcpStream {
        self.inner.get_ref()
    }

    /// The certificates the device presented (on a resumed session: in its full handshake).
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// As rustls names them: `TLSv1_0` to `TLSv1_2`.
    pub fn protocol_version(&self) -> Option<&'static str> {
        let version = self.inner.ssl().version2()?;
        [
            (SslVersion::TLS1, TlsVersion::Tls1_0),
            (SslVersion::TLS1_1, TlsVersion::Tls1_1),
            (SslVersion::TLS1_2, TlsVersion::Tls1_2),
            (SslVersion::TLS1_3, TlsVersion::Tls1_3),
        ]
        .into_iter()
        .find_map(|(v, ours)| (v == version).then_some(ours.log_name()))
    }

    /// The IANA name, as rustls gives it (`TLS_RSA_WITH_AES_128_CBC_SHA`).
    pub fn cipher(&self) -> Option<&'static str> {
        self.inner.ssl().current_cipher()?.standard_name()
    }
}

impl AsyncRead for LegacyStream {
    /// A TCP close without close_notify ends the stream with `UnexpectedEof`, as rustls does:
    /// the relay passes it on as the end of the stream and notes it as unclean (AMT often
    /// closes so). The openssl crate reads both kinds of end as `Ok(0)`; a peek after it still
    /// tells them apart (OpenSSL's ZERO_RETURN for close_notify, SYSCALL for a bare close).
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let ended = matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0;
        if ended
            && let Poll::Ready(Err(end)) = Pin::new(&mut self.inner).poll_peek(cx, &mut [0u8; 1])
            && end.code() != ErrorCode::ZERO_RETURN
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the device closed the connection without TLS close_notify",
            )));
        }
        polled
    }
}

impl AsyncWrite for LegacyStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use openssl::pkey::{PKey, Private};
    use openssl::ssl::SslAcceptor;
    use openssl::x509::X509;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;
    use crate::tls::test_keys::rsa_device;
    use crate::tls::{LeafVerifier, Pin, Pins, provider};

    /// An AMT 7-like device: TLS 1.0 only, RSA key exchange with AES-CBC only, echoing
    /// whatever it is sent. `close_notify`: whether it ends its side with TLS close_notify.
    struct OldDevice {
        addr: std::net::SocketAddr,
        cert: X509,
    }

    async fn old_device(bits: u32, close_notify: bool) -> OldDevice {
        let (key, cert) = rsa_device(bits);
        let acceptor = tls10_acceptor(&key, &cert);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let ssl = Ssl::new(acceptor.context()).unwrap();
                tokio::spawn(async move {
                    let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    if std::pin::Pin::new(&mut tls).accept().await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 64];
                    let Ok(n) = tls.read(&mut buf).await else {
                        return;
                    };
                    let _ = tls.write_all(&buf[..n]).await;
                    if close_notify {
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        OldDevice { addr, cert }
    }

    fn tls10_acceptor(key: &PKey<Private>, cert: &X509) -> SslAcceptor {
        let mut builder = SslAcceptor::mozilla_intermediate(SslMethod::tls_server()).unwrap();
        builder
            .set_min_proto_version(Some(SslVersion::TLS1))
            .unwrap();
        builder
            .set_max_proto_version(Some(SslVersion::TLS1))
            .unwrap();
        builder.set_security_level(0);
        builder
            .set_cipher_list("AES256-SHA:AES128-SHA:@SECLEVEL=0")
            .unwrap();
        builder.set_private_key(key).unwrap();
        builder.set_certificate(cert).unwrap();
        builder.build()
    }

    fn pinned_to(cert: &X509, session_cache: usize) -> LegacyConnector {
        let pins = vec![Pin::of_certificate(&cert.to_der().unwrap())];
        let verifier = Arc::new(LeafVerifier::new(
            Pins(pins),
            provider().signature_verification_algorithms,
        ));
        let versions = [TlsVersion::Tls1_0, TlsVersion::Tls1_1, TlsVersion::Tls1_2];
        let options = LegacyOptions {
            versions: &versions,
            ciphers: None,
            client_identity: None,
            resumption: session_cache > 0,
        };
        LegacyConnector::new(options, verifier).unwrap()
    }

    async fn connect(
        connector: &LegacyConnector,
        addr: std::net::SocketAddr,
    ) -> Result<LegacyStream, LegacyError> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::IpAddress(addr.ip().into());
        connector.connect(&name, tcp).await
    }

    #[tokio::test]
    async fn a_tls10_rsa_key_exchange_device_is_reached_and_relays() {
        let device = old_device(2047, true).await;
        let connector = pinned_to(&device.cert, 8);
        let mut tls = connect(&connector, device.addr).await.unwrap();
        assert_eq!(tls.protocol_version(), Some("TLSv1_0"));
        assert_eq!(tls.cipher(), Some("TLS_RSA_WITH_AES_256_CBC_SHA"));
        tls.write_all(b"ping").await.unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"ping");
    }

    #[tokio::test]
    async fn a_legacy_device_with_another_certificate_is_refused_as_pin_mismatch() {
        let (device, other) = (old_device(2048, true).await, rsa_device(2048).1);
        let connector = pinned_to(&other, 8);
        let refused = connect(&connector, device.addr).await.unwrap_err();
        assert_eq!(
            refused.failure(),
            HandshakeFailure::PinMismatch,
            "{refused}"
        );
    }

    #[tokio::test]
    async fn the_second_connection_to_a_legacy_device_resumes_its_session() {
        let device = old_device(2048, true).await;
        let connector = pinned_to(&device.cert, 8);
        let first = connect(&connector, device.addr).await.unwrap();
        let second = connect(&connector, device.addr).await.unwrap();
        assert_eq!((first.resumed(), second.resumed()), (false, true));
        // A resumed session still shows (and had verified) the device's certificate.
        assert_eq!(second.peer_certificates().len(), 1);
    }

    #[tokio::test]
    async fn without_a_session_cache_nothing_is_resumed() {
        let device = old_device(2048, true).await;
        let connector = pinned_to(&device.cert, 0);
        let _first = connect(&connector, device.addr).await.unwrap();
        assert!(!connect(&connector, device.addr).await.unwrap().resumed());
    }

    #[tokio::test]
    async fn a_1024_bit_device_key_is_refused() {
        let device = old_device(1024, true).await;
        let connector = pinned_to(&device.cert, 8);
        let refused = connect(&connector, device.addr).await.unwrap_err();
        assert!(
            matches!(refused, LegacyError::WeakKey { bits: 1024 }),
            "{refused}"
        );
        assert_eq!(refused.failure(), HandshakeFailure::CertInvalid);
    }

    #[tokio::test]
    async fn a_tcp_close_without_close_notify_reads_as_unexpected_eof() {
        let device = old_device(2048, false).await;
        let connector = pinned_to(&device.cert, 8);
        let mut tls = connect(&connector, device.addr).await.unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        tls.read_exact(&mut answer).await.unwrap();
        let error = tls.read(&mut [0u8; 1]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    }

    /// A device that reads nothing until `start` is notified, then counts what arrives until
    /// the gateway's close_notify and answers the count: its socket fills up meanwhile.
    async fn slow_sink() -> (OldDevice, Arc<tokio::sync::Notify>) {
        let (key, cert) = rsa_device(2048);
        let acceptor = tls10_acceptor(&key, &cert);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let start = Arc::new(tokio::sync::Notify::new());
        let started = start.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ssl = Ssl::new(acceptor.context()).unwrap();
            let mut tls = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
            std::pin::Pin::new(&mut tls).accept().await.unwrap();
            started.notified().await;
            let mut buf = vec![0u8; 64 * 1024];
            let mut count = 0u64;
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => count += n as u64,
                    Err(error) => panic!("the device's read failed after {count} bytes: {error}"),
                }
            }
            tls.write_all(&count.to_be_bytes()).await.unwrap();
            tls.shutdown().await.unwrap();
        });
        (OldDevice { addr, cert }, start)
    }

    /// The relay copies what the device's socket could not take into a backlog and retries
    /// from there: OpenSSL must accept a retried write from another buffer.
    #[tokio::test]
    async fn a_blocked_write_retried_from_another_buffer_goes_through() {
        let (device, start) = slow_sink().await;
        let connector = pinned_to(&device.cert, 0);
        let mut tls = connect(&connector, device.addr).await.unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        let mut sent = 0u64;
        let blocked = loop {
            let polled = std::future::poll_fn(|cx| {
                Poll::Ready(std::pin::Pin::new(&mut tls).poll_write(cx, &chunk))
            })
            .await;
            match polled {
                Poll::Ready(n) => sent += n.unwrap() as u64,
                Poll::Pending => break chunk.clone(),
            }
            assert!(sent < 1 << 30, "the device's socket never filled");
        };
        start.notify_one();
        tls.write_all(&blocked).await.unwrap();
        sent += blocked.len() as u64;
        tls.shutdown().await.unwrap();
        let mut count = [0u8; 8];
        tls.read_exact(&mut count).await.unwrap();
        assert_eq!(u64::from_be_bytes(count), sent);
    }

    #[tokio::test]
    async fn a_device_speaking_only_newer_tls_than_allowed_is_incompatible() {
        let device = old_device(2048, true).await;
        let pins = vec![Pin::of_certificate(&device.cert.to_der().unwrap())];
        let verifier = Arc::new(LeafVerifier::new(
            Pins(pins),
            provider().signature_verification_algorithms,
        ));
        let options = LegacyOptions {
            versions: &[TlsVersion::Tls1_2],
            ciphers: None,
            client_identity: None,
            resumption: false,
        };
        let connector = LegacyConnector::new(options, verifier).unwrap();
        let refused = connect(&connector, device.addr).await.unwrap_err();
        assert_eq!(
            refused.failure(),
            HandshakeFailure::Incompatible,
            "{refused}"
        );
    }
}
