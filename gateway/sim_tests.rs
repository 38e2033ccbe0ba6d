//! The simulated device (the `amtgw-sim` crate) end to end over TLS, checked with amtgw's own
//! pin verifier: what it serves, unprovisioning, mutual TLS, TLS 1.2 only, a provided identity,
//! and the pins it prints. Here rather than in amtgw-sim because the verifier is private to
//! amtgw, and amtgw-sim cannot depend on amtgw (amtgw depends on it).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use amtgw_sim::{
    CertStyle, DEMO_PASSWORD, DEMO_USERNAME, KeyType, SimConfig, SimDevice, SimIdentity,
    generate_amt_identity, pins_of,
};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tls::{Fingerprints, LeafVerifier, Pin, Pins};

const IDENTIFY: &str = include_str!("../scripts/wsman/identify.xml");

type ClientIdentity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

async fn connect(
    addr: SocketAddr,
    expected: CertificateDer<'static>,
) -> io::Result<TlsStream<TcpStream>> {
    connect_as(addr, expected, None).await
}

async fn connect_as(
    addr: SocketAddr,
    expected: CertificateDer<'static>,
    client: Option<ClientIdentity>,
) -> io::Result<TlsStream<TcpStream>> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LeafVerifier::new(
            Pins(vec![Pin::of_certificate(&expected)]),
            provider.signature_verification_algorithms,
        )));
    let config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("amt.invalid").unwrap(), tcp)
        .await
}

async fn identify(addr: SocketAddr, expected: CertificateDer<'static>) {
    let mut tls = connect(addr, expected).await.unwrap();
    let request = format!(
        "POST /wsman HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{IDENTIFY}",
        IDENTIFY.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"\r\n0\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).await.unwrap();
        assert!(n > 0, "eof before end of response");
        seen.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8(seen).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"));
    assert!(text.contains("IdentifyResponse"));
}

#[tokio::test]
async fn tls_end_to_end_and_unprovision() {
    let device = SimDevice::start(SimConfig::demo("e2e-host")).await.unwrap();
    let first = device.certificate();
    identify(device.wsman_addr(), first.clone()).await;
    identify(device.dash_addr(), first.clone()).await;

    let mut redir = connect(device.redirection_addr(), first.clone())
        .await
        .unwrap();
    redir.write_all(b"\x10\x00\x00\x00SOL ").await.unwrap();
    let mut reply = [0u8; 13];
    redir.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[..2], [0x11, 0x00]);

    device.unprovision().unwrap();
    let second = device.certificate();
    assert_ne!(first.as_ref(), second.as_ref());
    assert!(connect(device.wsman_addr(), first.clone()).await.is_err());
    identify(device.wsman_addr(), second).await;

    // The session opened before unprovisioning carries on.
    let mut userpass = vec![0x13, 0, 0, 0, 1, 0, 0, 0, 0];
    for field in [DEMO_USERNAME, DEMO_PASSWORD] {
        userpass.push(field.len() as u8);
        userpass.extend_from_slice(field.as_bytes());
    }
    userpass[5] = (userpass.len() - 9) as u8;
    redir.write_all(&userpass).await.unwrap();
    let mut reply = [0u8; 9];
    redir.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [0x14, 0, 0, 0, 1, 0, 0, 0, 0]);
    redir.write_all(b"\x12\x00\x00\x00").await.unwrap();
    let mut rest = Vec::new();
    redir.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    device.shutdown().await;
}

/// A CA and a client certificate it issued, as a gateway would hold.
fn client_pki() -> (CertificateDer<'static>, ClientIdentity) {
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
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    (ca.der().clone(), (vec![cert.der().clone()], key))
}

/// Sends a WS-Identify and reports whether any response came back.
async fn identify_answered(mut tls: TlsStream<TcpStream>) -> bool {
    let request = format!(
        "POST /wsman HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{IDENTIFY}",
        IDENTIFY.len()
    );
    if tls.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut chunk = [0u8; 64];
    matches!(tls.read(&mut chunk).await, Ok(n) if n > 0)
}

#[tokio::test]
async fn mutual_tls_and_tls12_only() {
    let (ca, client) = client_pki();
    let mut config = SimConfig::demo("mtls-host");
    config.client_auth_roots = Some(vec![ca]);
    config.tls12_only = true;
    config.identity = SimIdentity::Generated {
        ca_true: true,
        style: CertStyle::IntelNamed,
    };
    let device = SimDevice::start(config).await.unwrap();
    let cert = device.certificate();

    let tls = connect_as(device.wsman_addr(), cert.clone(), Some(client))
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert!(identify_answered(tls).await);

    // Without a client certificate the device refuses the handshake.
    match connect(device.wsman_addr(), cert).await {
        Err(_) => {}
        Ok(tls) => assert!(!identify_answered(tls).await),
    }
    device.shutdown().await;
}

#[tokio::test]
async fn provided_identity_is_served() {
    let (cert, key) =
        generate_amt_identity(KeyType::Rsa2048, false, CertStyle::IntelNamed).unwrap();
    let mut config = SimConfig::demo("provided");
    config.identity = SimIdentity::Provided {
        chain: vec![cert.clone()],
        key,
    };
    let device = SimDevice::start(config).await.unwrap();
    assert_eq!(device.certificate().as_ref(), cert.as_ref());
    identify(device.dash_addr(), cert).await;
}

/// `amtgw-sim` prints the pins amtgw's configuration takes, exactly as amtgw computes them.
#[test]
fn printed_pins_are_amtgws() {
    for ca_true in [false, true] {
        let (cert, _) =
            generate_amt_identity(KeyType::Rsa2048, ca_true, CertStyle::Unknown).unwrap();
        let amtgw = Fingerprints::of(&cert).unwrap();
        let (certificate, public_key) = pins_of(&cert).unwrap();
        assert_eq!(certificate, amtgw.certificate.to_string());
        assert_eq!(public_key, amtgw.public_key.to_string());
    }
    assert_eq!(pins_of(&CertificateDer::from(vec![0x30, 0x00])), None);
}
