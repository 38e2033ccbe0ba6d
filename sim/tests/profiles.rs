//! Each firmware profile seen from clients that enforce what the profile claims: OpenSSL (the
//! openssl crate, and `openssl s_client` where only it shows something) for every version and
//! suite, rustls for what it can reach. Real sockets on 127.0.0.1, certificates generated here.

#![allow(clippy::unwrap_used)] // tests may unwrap (project rule)

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};

use amtgw_sim::{CertStyle, KeyType, Profile, SimConfig, SimDevice, SimIdentity, Tls12Signature};
use openssl::pkey::Id;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::X509;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

const IDENTIFY: &str = include_str!("../../scripts/wsman/identify.xml");

async fn start(profile: Profile, adjust: impl FnOnce(&mut SimConfig)) -> SimDevice {
    let mut config = SimConfig::demo("amt-profile");
    config.profile = profile;
    adjust(&mut config);
    SimDevice::start(config).await.unwrap()
}

/// What an OpenSSL client offers: a version range and an OpenSSL cipher list (TLS 1.2 and
/// older), at security level 0 so that OpenSSL 3 speaks TLS 1.0 at all.
struct Offer {
    min: SslVersion,
    max: SslVersion,
    ciphers: &'static str,
    client: Option<(X509, openssl::pkey::PKey<openssl::pkey::Private>)>,
}

impl Offer {
    fn versions(min: SslVersion, max: SslVersion) -> Self {
        Offer {
            min,
            max,
            ciphers: "ALL",
            client: None,
        }
    }

    fn ciphers(mut self, ciphers: &'static str) -> Self {
        self.ciphers = ciphers;
        self
    }

    async fn connect(self, addr: SocketAddr) -> Result<SslStream<TcpStream>, openssl::ssl::Error> {
        let mut ctx = SslContext::builder(SslMethod::tls_client()).unwrap();
        ctx.set_min_proto_version(Some(self.min)).unwrap();
        ctx.set_max_proto_version(Some(self.max)).unwrap();
        ctx.set_security_level(0);
        ctx.set_cipher_list(self.ciphers).unwrap();
        // The device's self-signed certificate is looked at by the tests, not verified.
        ctx.set_verify(SslVerifyMode::NONE);
        if let Some((cert, key)) = &self.client {
            ctx.set_certificate(cert).unwrap();
            ctx.set_private_key(key).unwrap();
        }
        let ssl = Ssl::new(&ctx.build()).unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = SslStream::new(ssl, tcp).unwrap();
        Pin::new(&mut tls).connect().await?;
        Ok(tls)
    }
}

/// The served certificate's public key: (type, bits).
fn served_key<S>(tls: &SslStream<S>) -> (Id, u32) {
    let key = tls.ssl().peer_certificate().unwrap().public_key().unwrap();
    (key.id(), key.bits())
}

/// A rustls client verifier that accepts any certificate and records the handshake
/// signature schemes the device used (and checks those signatures).
#[derive(Debug)]
struct Recorder {
    algorithms: WebPkiSupportedAlgorithms,
    schemes: Mutex<Vec<SignatureScheme>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.schemes.lock().unwrap().push(dss.scheme);
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.schemes.lock().unwrap().push(dss.scheme);
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A rustls client (aws-lc-rs, its default suites unless `provider` narrows them).
async fn rustls_connect(
    addr: SocketAddr,
    provider: CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (
    std::io::Result<tokio_rustls::client::TlsStream<TcpStream>>,
    Arc<Recorder>,
) {
    let recorder = Arc::new(Recorder {
        algorithms: provider.signature_verification_algorithms,
        schemes: Mutex::new(Vec::new()),
    });
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("amt.invalid").unwrap(), tcp)
        .await;
    (tls, recorder)
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

// ---- amt7 ----------------------------------------------------------------------------------

#[tokio::test]
async fn amt7_prefers_aes256_sha_over_tls10() {
    let device = start(Profile::Amt7, |_| {}).await;
    let tls = Offer::versions(SslVersion::TLS1, SslVersion::TLS1)
        .ciphers("AES128-SHA:AES256-SHA")
        .connect(device.wsman_addr())
        .await
        .unwrap();
    assert_eq!(tls.ssl().current_cipher().unwrap().name(), "AES256-SHA");
}

#[tokio::test]
async fn amt7_refuses_tls12() {
    let device = start(Profile::Amt7, |_| {}).await;
    let result = Offer::versions(SslVersion::TLS1_2, SslVersion::TLS1_3)
        .connect(device.wsman_addr())
        .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn amt7_has_no_forward_secrecy() {
    let device = start(Profile::Amt7, |_| {}).await;
    let result = Offer::versions(SslVersion::TLS1, SslVersion::TLS1_1)
        .ciphers("kEECDH:kEDH")
        .connect(device.wsman_addr())
        .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn amt7_serves_a_2047_bit_rsa_key() {
    let device = start(Profile::Amt7, |_| {}).await;
    let tls = Offer::versions(SslVersion::TLS1_1, SslVersion::TLS1_1)
        .connect(device.wsman_addr())
        .await
        .unwrap();
    assert_eq!(served_key(&tls), (Id::RSA, 2047));
}

#[tokio::test]
async fn amt7_unprovisioned_serves_a_new_2047_bit_key() {
    let device = start(Profile::Amt7, |_| {}).await;
    let before = device.certificate();
    device.unprovision().unwrap();
    let tls = Offer::versions(SslVersion::TLS1, SslVersion::TLS1_1)
        .connect(device.wsman_addr())
        .await
        .unwrap();
    let served = tls.ssl().peer_certificate().unwrap().to_der().unwrap();
    assert_ne!(served, before.as_ref());
    assert_eq!(served_key(&tls), (Id::RSA, 2047));
}

#[tokio::test]
async fn amt7_refuses_an_ec_key() {
    let mut config = SimConfig::demo("amt7-ec");
    config.profile = Profile::Amt7;
    config.key_type = Some(KeyType::P256);
    let err = SimDevice::start(config).await.err().unwrap();
    assert_eq!(err.kind(), "profile_needs_rsa");
}

// ---- amt11 ---------------------------------------------------------------------------------

#[tokio::test]
async fn amt11_negotiates_at_most_tls11() {
    let device = start(Profile::Amt11, |_| {}).await;
    let tls = Offer::versions(SslVersion::TLS1, SslVersion::TLS1_3)
        .connect(device.wsman_addr())
        .await
        .unwrap();
    assert_eq!(tls.ssl().version_str(), "TLSv1.1");
}

// ---- amt12 ---------------------------------------------------------------------------------

#[tokio::test]
async fn amt12_prefers_rsa_key_exchange_over_tls12() {
    let device = start(Profile::Amt12, |_| {}).await;
    let tls = Offer::versions(SslVersion::TLS1, SslVersion::TLS1_3)
        .connect(device.wsman_addr())
        .await
        .unwrap();
    assert_eq!(
        (
            tls.ssl().version_str(),
            tls.ssl().current_cipher().unwrap().name()
        ),
        ("TLSv1.2", "AES128-GCM-SHA256")
    );
}

#[tokio::test]
async fn amt12_is_out_of_rustls_reach() {
    // rustls implements neither RSA key exchange nor DHE (like Go's defaults, which Intel's
    // DMT console found not to work with AMT 11 and 12).
    let device = start(Profile::Amt12, |_| {}).await;
    let (result, _) =
        rustls_connect(device.wsman_addr(), aws_lc_rs::default_provider(), BOTH).await;
    assert!(result.is_err());
}

/// What `openssl s_client` prints (stdout and stderr) connecting to `addr` with `args`; the
/// openssl crate exposes neither the peer's signature type nor a safe way to resume.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

/// The device's handshake signature as s_client reports it, over amt12's DHE suite (the RSA
/// key exchange suites sign nothing).
fn peer_signature_type(addr: SocketAddr) -> String {
    let printed = s_client(addr, &["-tls1_2", "-cipher", "DHE-RSA-AES256-GCM-SHA384"]);
    printed
        .lines()
        .find_map(|line| line.strip_prefix("Peer signature type: "))
        .unwrap_or_else(|| panic!("no peer signature type in:\n{printed}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amt12_signs_with_pss_when_asked() {
    let device = start(Profile::Amt12, |c| {
        c.tls12_signature = Some(Tls12Signature::Pss)
    })
    .await;
    let addr = device.wsman_addr();
    let seen = tokio::task::spawn_blocking(move || peer_signature_type(addr))
        .await
        .unwrap();
    assert_eq!(seen, "RSA-PSS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amt12_signs_with_pkcs1_when_asked() {
    let device = start(Profile::Amt12, |c| {
        c.tls12_signature = Some(Tls12Signature::Pkcs1)
    })
    .await;
    let addr = device.wsman_addr();
    let seen = tokio::task::spawn_blocking(move || peer_signature_type(addr))
        .await
        .unwrap();
    assert_eq!(seen, "RSA");
}

// ---- amt16 ---------------------------------------------------------------------------------

#[tokio::test]
async fn amt16_is_reached_by_rustls_over_tls13() {
    let device = start(Profile::Amt16, |_| {}).await;
    let (tls, _) = rustls_connect(device.wsman_addr(), aws_lc_rs::default_provider(), BOTH).await;
    assert_eq!(
        tls.unwrap().get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn amt16_signs_tls13_with_a_2047_bit_key() {
    let device = start(Profile::Amt16, |c| c.key_type = Some(KeyType::Rsa2047)).await;
    // OpenSSL as the client: aws-lc-rs would refuse the key when verifying.
    let tls = Offer::versions(SslVersion::TLS1_3, SslVersion::TLS1_3)
        .connect(device.wsman_addr())
        .await
        .unwrap();
    assert_eq!(served_key(&tls), (Id::RSA, 2047));
}

#[tokio::test]
async fn amt16_signs_tls12_with_a_2047_bit_key() {
    let device = start(Profile::Amt16, |c| c.key_type = Some(KeyType::Rsa2047)).await;
    let tls = Offer::versions(SslVersion::TLS1_2, SslVersion::TLS1_2)
        .connect(device.wsman_addr())
        .await
        .unwrap();
    assert_eq!(served_key(&tls), (Id::RSA, 2047));
}

#[tokio::test]
async fn amt16_signs_tls12_with_pkcs1_when_asked() {
    let device = start(Profile::Amt16, |c| {
        c.tls12_signature = Some(Tls12Signature::Pkcs1)
    })
    .await;
    let (tls, recorder) =
        rustls_connect(device.wsman_addr(), aws_lc_rs::default_provider(), TLS12).await;
    tls.unwrap();
    assert_eq!(
        *recorder.schemes.lock().unwrap(),
        [SignatureScheme::RSA_PKCS1_SHA512]
    );
}

#[tokio::test]
async fn amt16_signs_tls12_with_pss_when_asked() {
    let device = start(Profile::Amt16, |c| {
        c.tls12_signature = Some(Tls12Signature::Pss)
    })
    .await;
    let (tls, recorder) =
        rustls_connect(device.wsman_addr(), aws_lc_rs::default_provider(), TLS12).await;
    tls.unwrap();
    assert_eq!(
        *recorder.schemes.lock().unwrap(),
        [SignatureScheme::RSA_PSS_SHA512]
    );
}

#[tokio::test]
async fn amt16_pkcs1_leaves_tls13_on_pss() {
    let device = start(Profile::Amt16, |c| {
        c.tls12_signature = Some(Tls12Signature::Pkcs1)
    })
    .await;
    let (tls, recorder) =
        rustls_connect(device.wsman_addr(), aws_lc_rs::default_provider(), TLS13).await;
    tls.unwrap();
    assert_eq!(
        *recorder.schemes.lock().unwrap(),
        [SignatureScheme::RSA_PSS_SHA512]
    );
}

#[tokio::test]
async fn tls12_signature_refuses_an_ec_key() {
    let mut config = SimConfig::demo("pss-ec");
    config.key_type = Some(KeyType::P256);
    config.tls12_signature = Some(Tls12Signature::Pss);
    let err = SimDevice::start(config).await.err().unwrap();
    assert_eq!(err.kind(), "signature_needs_rsa");
}

// ---- amt22 ---------------------------------------------------------------------------------

#[tokio::test]
async fn amt22_negotiates_aes256_gcm_over_tls13() {
    let device = start(Profile::Amt22, |_| {}).await;
    let (tls, _) = rustls_connect(device.wsman_addr(), aws_lc_rs::default_provider(), BOTH).await;
    let suite = tls.unwrap().get_ref().1.negotiated_cipher_suite().unwrap();
    assert_eq!(suite.suite(), rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
}

#[tokio::test]
async fn amt22_refuses_aes128_suites() {
    let device = start(Profile::Amt22, |_| {}).await;
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|s| {
        s.suite()
            .as_str()
            .is_some_and(|name| name.contains("AES_128"))
    });
    let (result, _) = rustls_connect(device.wsman_addr(), provider, BOTH).await;
    assert!(result.is_err());
}

#[tokio::test]
async fn amt22_exchanges_keys_over_p384() {
    let device = start(Profile::Amt22, |_| {}).await;
    let (tls, _) = rustls_connect(device.wsman_addr(), aws_lc_rs::default_provider(), BOTH).await;
    let group = tls
        .unwrap()
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .unwrap();
    assert_eq!(group.name(), rustls::NamedGroup::secp384r1);
}

#[tokio::test]
async fn amt22_serves_an_rsa_3072_key() {
    let device = start(Profile::Amt22, |_| {}).await;
    let tls = Offer::versions(SslVersion::TLS1_2, SslVersion::TLS1_3)
        .connect(device.wsman_addr())
        .await
        .unwrap();
    assert_eq!(served_key(&tls), (Id::RSA, 3072));
}

#[tokio::test]
async fn amt22_serves_a_p384_key_when_asked() {
    let device = start(Profile::Amt22, |c| c.key_type = Some(KeyType::P384)).await;
    let tls = Offer::versions(SslVersion::TLS1_2, SslVersion::TLS1_3)
        .connect(device.wsman_addr())
        .await
        .unwrap();
    assert_eq!(served_key(&tls), (Id::EC, 384));
}

// ---- every profile ---------------------------------------------------------------------------

/// WS-Man on the WS-Man and DASH ports and SOL on the redirection port, through OpenSSL
/// offering everything (it speaks every profile's versions and suites).
async fn services_work(profile: Profile) {
    let device = start(profile, |_| {}).await;
    for addr in [device.wsman_addr(), device.dash_addr()] {
        let tls = Offer::versions(SslVersion::TLS1, SslVersion::TLS1_3)
            .connect(addr)
            .await
            .unwrap();
        let response = identify(tls).await;
        assert!(
            response.starts_with("HTTP/1.1 200 OK"),
            "{profile}: {response}"
        );
    }
    let mut redirection = Offer::versions(SslVersion::TLS1, SslVersion::TLS1_3)
        .connect(device.redirection_addr())
        .await
        .unwrap();
    redirection
        .write_all(b"\x10\x00\x00\x00SOL ")
        .await
        .unwrap();
    let mut reply = [0u8; 13];
    redirection.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[..2], [0x11, 0x00], "{profile}");
}

async fn identify(mut tls: impl AsyncRead + AsyncWrite + Unpin) -> String {
    let request = format!(
        "POST /wsman HTTP/1.1\r\nHost: amt\r\nContent-Length: {}\r\n\r\n{IDENTIFY}",
        IDENTIFY.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"\r\n0\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "eof before the end of the response");
        seen.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(seen).unwrap()
}

#[tokio::test]
async fn services_work_over_amt7() {
    services_work(Profile::Amt7).await;
}

#[tokio::test]
async fn services_work_over_amt11() {
    services_work(Profile::Amt11).await;
}

#[tokio::test]
async fn services_work_over_amt12() {
    services_work(Profile::Amt12).await;
}

#[tokio::test]
async fn services_work_over_amt16() {
    services_work(Profile::Amt16).await;
}

#[tokio::test]
async fn services_work_over_amt22() {
    services_work(Profile::Amt22).await;
}

// ---- variants over the OpenSSL profiles ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amt7_resumes_sessions_by_id() {
    let device = start(Profile::Amt7, |_| {}).await;
    let addr = device.wsman_addr();
    // -reconnect: five more connections offering the first one's session (ID: no tickets).
    let args = [
        "-tls1",
        "-cipher",
        "DEFAULT:@SECLEVEL=0",
        "-no_ticket",
        "-reconnect",
    ];
    let printed = tokio::task::spawn_blocking(move || s_client(addr, &args))
        .await
        .unwrap();
    assert_eq!(printed.matches("\nReused, ").count(), 5, "{printed}");
}

#[tokio::test]
async fn amt7_serves_the_ca_true_intel_named_variant() {
    let device = start(Profile::Amt7, |c| {
        c.identity = SimIdentity::Generated {
            ca_true: true,
            style: CertStyle::IntelNamed,
        }
    })
    .await;
    let tls = Offer::versions(SslVersion::TLS1, SslVersion::TLS1_1)
        .connect(device.wsman_addr())
        .await
        .unwrap();
    let cert = tls.ssl().peer_certificate().unwrap();
    let cn = cert
        .subject_name()
        .entries()
        .next()
        .unwrap()
        .data()
        .to_string()
        .unwrap();
    assert_eq!(cn, "Intel(R) AMT self-signed certificate");
}

/// A CA and a client certificate it issued, as a gateway would hold (OpenSSL types).
fn client_pki() -> (
    CertificateDer<'static>,
    (X509, openssl::pkey::PKey<openssl::pkey::Private>),
) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test console CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "amtgw");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let client = (
        X509::from_der(cert.der()).unwrap(),
        openssl::pkey::PKey::private_key_from_der(&key.serialize_der()).unwrap(),
    );
    (ca.der().clone(), client)
}

#[tokio::test]
async fn amt7_mutual_tls_accepts_the_client_certificate() {
    let (ca, client) = client_pki();
    let device = start(Profile::Amt7, |c| c.client_auth_roots = Some(vec![ca])).await;
    let mut offer = Offer::versions(SslVersion::TLS1, SslVersion::TLS1_1);
    offer.client = Some(client);
    let tls = offer.connect(device.wsman_addr()).await.unwrap();
    assert!(identify(tls).await.starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn amt7_mutual_tls_refuses_a_client_without_certificate() {
    let (ca, _) = client_pki();
    let device = start(Profile::Amt7, |c| c.client_auth_roots = Some(vec![ca])).await;
    let result = Offer::versions(SslVersion::TLS1, SslVersion::TLS1_1)
        .connect(device.wsman_addr())
        .await;
    assert!(result.is_err());
}
