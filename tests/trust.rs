//! Device trust: pins, CA validation and mutual TLS. Each negative test differs from a passing
//! setup in exactly one respect and asserts the reason the gateway reports.
#![allow(clippy::unwrap_used)]

mod common;

use amtgw::Service;
use common::*;

fn pin_trust(pins: &[String]) -> String {
    let quoted: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
    format!("trust = \"pin\"\npins = [{}]", quoted.join(", "))
}

/// Send a request through the gateway to an echo device; Ok(answer) or the failure reason.
async fn try_echo(gateway: &TestGateway) -> Result<Vec<u8>, String> {
    let answer = exchange(gateway.connect(Service::Wsman).await, b"ping")
        .await
        .unwrap_or_default();
    if answer == b"ping" {
        return Ok(answer);
    }
    let metrics = gateway.metrics().await;
    let reasons: Vec<String> = metrics
        .0
        .lines()
        .filter(|l| l.starts_with("amtgw_connections_failed_total{"))
        .map(str::to_owned)
        .collect();
    Err(reasons.join("\n"))
}

async fn assert_fails_with(gateway: &TestGateway, reason: &str) {
    let err = try_echo(gateway)
        .await
        .expect_err("connection should have failed");
    assert!(
        err.contains(&format!("reason=\"{reason}\"}} 1")),
        "expected exactly one failure `{reason}`, got:\n{err}"
    );
}

#[tokio::test]
async fn certificate_pin_matches() {
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = echo_device(DeviceTls::new(identity)).await;
    let gateway = TestGateway::start(&one_device_config(device, &pin_trust(&[pin]))).await;
    try_echo(&gateway).await.unwrap();
}

#[tokio::test]
async fn public_key_pin_matches() {
    let identity = amt_self_signed(false, false);
    let pin = identity.spki_pin();
    let device = echo_device(DeviceTls::new(identity)).await;
    let gateway = TestGateway::start(&one_device_config(device, &pin_trust(&[pin]))).await;
    try_echo(&gateway).await.unwrap();
}

#[tokio::test]
async fn any_of_several_pins_matches_for_rotation() {
    let old = amt_self_signed(false, false);
    let new = amt_self_signed(false, false);
    let device = echo_device(DeviceTls::new(new.clone_identity())).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &pin_trust(&[old.cert_pin(), new.spki_pin()]),
    ))
    .await;
    try_echo(&gateway).await.unwrap();
}

#[tokio::test]
async fn wrong_pin_is_refused_even_with_identical_subject() {
    // Same DN ("Unknown" everywhere), same shape, other key: what an unprovisioned device or
    // an impostor presents.
    let pinned = amt_self_signed(false, false);
    let impostor = amt_self_signed(false, false);
    let device = echo_device(DeviceTls::new(impostor)).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &pin_trust(&[pinned.cert_pin(), pinned.spki_pin()]),
    ))
    .await;
    assert_fails_with(&gateway, "pin_mismatch").await;
}

#[tokio::test]
async fn amt_rsa_self_signed_ca_true_certificate_is_accepted_by_pin() {
    // WebPKI rejects a CA:TRUE certificate as an end entity; AMT 19 presents exactly that.
    let identity = amt_self_signed(true, true);
    let pin = identity.cert_pin();
    let device = echo_device(DeviceTls::new(identity)).await;
    let gateway = TestGateway::start(&one_device_config(device, &pin_trust(&[pin]))).await;
    try_echo(&gateway).await.unwrap();
}

fn ca_trust(dir: &std::path::Path, ca: &TestCa, server_name: &str) -> String {
    let ca_file = ca.write_pem(dir, "ca");
    format!("trust = \"ca\"\nca_file = \"{ca_file}\"\nserver_name = \"{server_name}\"")
}

#[tokio::test]
async fn ca_mode_accepts_the_right_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Fleet CA");
    let device = echo_device(DeviceTls::new(ca.server(&["amt-01.fleet.test"]))).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &ca_trust(dir.path(), &ca, "amt-01.fleet.test"),
    ))
    .await;
    try_echo(&gateway).await.unwrap();
}

#[tokio::test]
async fn ca_mode_checks_ip_addresses_without_sni() {
    // Devices reached by IP: no SNI is sent, and the IP SAN is still checked.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Fleet CA");
    let device = echo_device(DeviceTls::new(ca.server(&["127.0.0.1"]))).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &ca_trust(dir.path(), &ca, "127.0.0.1"),
    ))
    .await;
    try_echo(&gateway).await.unwrap();
}

#[tokio::test]
async fn ca_mode_refuses_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Fleet CA");
    let expired = ca.server_valid(&["amt-01.fleet.test"], (2020, 1, 1), (2021, 1, 1));
    let device = echo_device(DeviceTls::new(expired)).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &ca_trust(dir.path(), &ca, "amt-01.fleet.test"),
    ))
    .await;
    assert_fails_with(&gateway, "cert_expired").await;
}

#[tokio::test]
async fn ca_mode_refuses_a_wrong_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Fleet CA");
    let device = echo_device(DeviceTls::new(ca.server(&["amt-02.fleet.test"]))).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &ca_trust(dir.path(), &ca, "amt-01.fleet.test"),
    ))
    .await;
    assert_fails_with(&gateway, "name_mismatch").await;
}

#[tokio::test]
async fn ca_mode_refuses_an_unknown_ca() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = TestCa::new("Fleet CA");
    let other = TestCa::new("Fleet CA");
    let device = echo_device(DeviceTls::new(other.server(&["amt-01.fleet.test"]))).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &ca_trust(dir.path(), &trusted, "amt-01.fleet.test"),
    ))
    .await;
    assert_fails_with(&gateway, "cert_invalid").await;
}

#[tokio::test]
async fn ca_mode_refuses_a_self_signed_amt_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Fleet CA");
    let device = echo_device(DeviceTls::new(amt_self_signed(false, false))).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &ca_trust(dir.path(), &ca, "127.0.0.1"),
    ))
    .await;
    assert_fails_with(&gateway, "cert_invalid").await;
}

/// A device demanding a client certificate from `client_ca`, pinned by the gateway.
async fn mutual_tls_device(client_ca: &TestCa, tls12_only: bool) -> (std::net::SocketAddr, String) {
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let mut tls = DeviceTls::new(identity);
    tls.client_roots = Some(client_ca.roots());
    tls.tls12_only = tls12_only;
    (echo_device(tls).await, pin)
}

fn client_identity_toml(dir: &std::path::Path, identity: &Identity) -> String {
    let (cert, key) = identity.write_pem(dir, "client");
    format!("client_cert = \"{cert}\"\nclient_key = \"{key}\"")
}

async fn mutual_tls_case(tls12_only: bool, present: Option<&str>) -> TestGateway {
    let dir = tempfile::tempdir().unwrap();
    let device_trusts = TestCa::new("AMT trusted root");
    let (device, pin) = mutual_tls_device(&device_trusts, tls12_only).await;
    let identity = match present {
        None => String::new(),
        Some("trusted") => {
            client_identity_toml(dir.path(), &device_trusts.client("gateway.fleet.test"))
        }
        Some(_) => client_identity_toml(
            dir.path(),
            &TestCa::new("Some other CA").client("gateway.fleet.test"),
        ),
    };
    // The config reads the PEM files at load; the tempdir may go afterwards.
    TestGateway::start(&one_device_config(
        device,
        &format!("{}\n{identity}", pin_trust(&[pin])),
    ))
    .await
}

#[tokio::test]
async fn mutual_tls_accepted_tls13() {
    try_echo(&mutual_tls_case(false, Some("trusted")).await)
        .await
        .unwrap();
}

#[tokio::test]
async fn mutual_tls_accepted_tls12() {
    try_echo(&mutual_tls_case(true, Some("trusted")).await)
        .await
        .unwrap();
}

#[tokio::test]
async fn mutual_tls_untrusted_client_certificate_rejected_tls13() {
    // Under TLS 1.3 the refusal comes after the client's handshake is done: it must still be
    // reported as the client certificate being rejected, not as a reset.
    assert_fails_with(
        &mutual_tls_case(false, Some("untrusted")).await,
        "client_cert_rejected",
    )
    .await;
}

#[tokio::test]
async fn mutual_tls_untrusted_client_certificate_rejected_tls12() {
    assert_fails_with(
        &mutual_tls_case(true, Some("untrusted")).await,
        "client_cert_rejected",
    )
    .await;
}

#[tokio::test]
async fn mutual_tls_missing_client_certificate_rejected_tls13() {
    assert_fails_with(&mutual_tls_case(false, None).await, "client_cert_rejected").await;
}

#[tokio::test]
async fn mutual_tls_missing_client_certificate_rejected_tls12() {
    assert_fails_with(&mutual_tls_case(true, None).await, "client_cert_rejected").await;
}
