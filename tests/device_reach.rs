//! Device reach: every AMT generation the simulator imitates (`Profile`), through the gateway,
//! with real clients nobody here wrote (`curl --digest` for WS-Man, `amtterm` for SOL): the
//! legacy TLS backend for AMT 7, 11 and 12, rustls for AMT 16 (2047-bit keys included, TLS 1.2
//! with PKCS#1 and PSS signatures and TLS 1.3) and AMT 22 (RSA-3072, P-384, AES-256 only).

// Tests may unwrap (the crate lints against it for gateway code): a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use amtgw::Service;
use amtgw_sim::{KeyType, Profile, SimConfig, SimDevice, SimIdentity, Tls12Signature};
use common::clients::*;
use common::*;

/// A simulated device of `profile`, with its own key type if given.
async fn device(name: &str, profile: Profile, key_type: Option<KeyType>) -> SimDevice {
    SimDevice::start(SimConfig {
        profile,
        key_type,
        ..SimConfig::demo(name)
    })
    .await
    .unwrap()
}

/// The device's trust keys: pinned by its certificate, on `backend`.
fn pinned(sim: &SimDevice, backend: &str) -> String {
    let pin = amtgw::tls::Pin::of_certificate(&sim.certificate());
    format!("trust = \"pin\"\npins = [\"{pin}\"]\ntls_backend = \"{backend}\"")
}

/// `/devices` as JSON, for the device's last handshake.
async fn last_handshake(gateway: &TestGateway) -> serde_json::Value {
    let (status, body) = http_get(gateway.admin, "/devices").await;
    assert_eq!(status, 200, "{body}");
    let devices: serde_json::Value = serde_json::from_str(&body).unwrap();
    devices["devices"][0]["last_handshake"].clone()
}

/// A WS-Man Get with digest authentication and a whole SOL session, through the gateway;
/// returns the device's last handshake as `/devices` reports it.
/// `host_name` is the device's name, which the simulator reports as its host name.
async fn reached_by_curl_and_amtterm(host_name: &str, gateway: &TestGateway) -> serde_json::Value {
    let body = curl_get_settings(gateway.addr(Service::Wsman)).await;
    assert_general_settings(&body, host_name, "through amtgw");
    amtterm_session(gateway.addr(Service::Redirection), host_name).await;
    last_handshake(gateway).await
}

fn handshakes(m: &Metrics, backend: &str, kind: &str) -> f64 {
    m.sample(
        "amtgw_tls_handshakes_total",
        &[("tls_backend", backend), ("handshake", kind)],
    )
    .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// The legacy backend: AMT 7, 11, 12

#[tokio::test]
async fn amt7_tls10_rsa_key_exchange_and_a_2047_bit_key_is_reached_when_marked_legacy() {
    let sim = device("reach-amt7", Profile::Amt7, None).await;
    let gateway = gateway_with(&sim, &pinned(&sim, "legacy"), "").await;
    let last = reached_by_curl_and_amtterm("reach-amt7", &gateway).await;
    assert_eq!(last["tls_backend"], "legacy", "{last}");
    assert_eq!(last["tls_version"], "TLSv1_1", "{last}");
    assert_eq!(last["cipher"], "TLS_RSA_WITH_AES_256_CBC_SHA", "{last}");
    let m = gateway.metrics().await;
    assert!(handshakes(&m, "legacy", "full") >= 1.0, "{}", m.0);
    assert_eq!(handshakes(&m, "rustls", "full"), 0.0);
}

#[tokio::test]
async fn amt11_is_reached_when_marked_legacy() {
    let sim = device("reach-amt11", Profile::Amt11, None).await;
    let gateway = gateway_with(&sim, &pinned(&sim, "legacy"), "").await;
    let last = reached_by_curl_and_amtterm("reach-amt11", &gateway).await;
    assert_eq!(last["tls_version"], "TLSv1_1", "{last}");
    assert_eq!(last["cipher"], "TLS_RSA_WITH_AES_128_CBC_SHA", "{last}");
}

#[tokio::test]
async fn amt12_rsa_key_exchange_is_reached_when_marked_legacy() {
    let sim = device("reach-amt12", Profile::Amt12, None).await;
    let gateway = gateway_with(&sim, &pinned(&sim, "legacy"), "").await;
    let last = reached_by_curl_and_amtterm("reach-amt12", &gateway).await;
    assert_eq!(last["tls_version"], "TLSv1_2", "{last}");
    assert_eq!(last["cipher"], "TLS_RSA_WITH_AES_128_GCM_SHA256", "{last}");
}

#[tokio::test]
async fn an_old_device_not_marked_legacy_is_refused_as_tls_incompatible_with_the_fix_named() {
    let sim = device("reach-amt7-rustls", Profile::Amt7, None).await;
    let gateway = gateway_with(&sim, &pinned(&sim, "rustls"), "").await;
    expect_refused(gateway.connect(Service::Wsman).await).await;
    let m = gateway
        .metrics_settled(|m| m.failed("tls_incompatible") >= 1.0)
        .await;
    assert_eq!(m.failed("tls_incompatible"), 1.0, "{}", m.0);
    assert_eq!(handshakes(&m, "legacy", "full"), 0.0, "no fallback, ever");
    let last = last_handshake(&gateway).await;
    assert_eq!(last["result"], "tls_incompatible", "{last}");
    assert_eq!(last["tls_backend"], "rustls", "{last}");
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("tls_backend = \"legacy\""), "{error}");
}

#[tokio::test]
async fn a_legacy_device_resumes_its_session_on_the_next_connection() {
    let sim = device("reach-amt12-resume", Profile::Amt12, None).await;
    let gateway = gateway_with(&sim, &pinned(&sim, "legacy"), "").await;
    for _ in 0..2 {
        curl_identify(gateway.addr(Service::Wsman)).await;
    }
    let m = gateway
        .metrics_settled(|m| {
            handshakes(m, "legacy", "full") + handshakes(m, "legacy", "resumed") >= 2.0
        })
        .await;
    assert_eq!(handshakes(&m, "legacy", "full"), 1.0, "{}", m.0);
    assert_eq!(handshakes(&m, "legacy", "resumed"), 1.0, "{}", m.0);
}

#[tokio::test]
async fn a_legacy_tofu_device_is_learned_then_refused_after_unprovisioning() {
    let sim = device("reach-amt7-tofu", Profile::Amt7, None).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("pins.toml");
    let gateway = gateway_with(
        &sim,
        "trust = \"tofu\"\ntls_backend = \"legacy\"",
        &format!("pin_store = {:?}", store.display().to_string()),
    )
    .await;
    curl_identify(gateway.addr(Service::Wsman)).await;
    let stored = std::fs::read_to_string(&store).unwrap();
    let pin = amtgw::tls::Pin::of_certificate(&sim.certificate()).to_string();
    assert!(stored.contains(&pin), "{stored}");

    sim.unprovision().unwrap();
    expect_refused(gateway.connect(Service::Wsman).await).await;
    let m = gateway
        .metrics_settled(|m| m.failed("pin_mismatch") >= 1.0)
        .await;
    assert_eq!(m.failed("pin_mismatch"), 1.0, "{}", m.0);
}

#[tokio::test]
async fn a_legacy_device_trusted_by_ca_and_name_is_reached() {
    let ca = TestCa::new("reach-ca");
    let issued = ca.server_rsa(&["127.0.0.1"]);
    let sim = SimDevice::start(SimConfig {
        profile: Profile::Amt11,
        identity: SimIdentity::Provided {
            chain: issued.chain.clone(),
            key: issued.key.clone_key(),
        },
        ..SimConfig::demo("reach-amt11-ca")
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(dir.path(), "ca");
    let gateway = gateway_with(
        &sim,
        &format!("trust = \"ca\"\nca_file = {ca_file:?}\ntls_backend = \"legacy\""),
        "",
    )
    .await;
    assert_identify_response(
        &curl_identify(gateway.addr(Service::Wsman)).await,
        "ca-trusted legacy device",
    );

    // The same device under a name its certificate does not carry is refused.
    let misnamed = gateway_with(
        &sim,
        &format!(
            "trust = \"ca\"\nca_file = {ca_file:?}\nserver_name = \"amt.example\"\ntls_backend = \"legacy\""
        ),
        "",
    )
    .await;
    expect_refused(misnamed.connect(Service::Wsman).await).await;
    let m = misnamed
        .metrics_settled(|m| m.failed("name_mismatch") >= 1.0)
        .await;
    assert_eq!(m.failed("name_mismatch"), 1.0, "{}", m.0);
}

#[tokio::test]
async fn a_mutual_tls_legacy_device_gets_the_client_certificate_and_refuses_its_absence() {
    let ca = TestCa::new("reach-mtls");
    let client = ca.client("amtgw");
    let sim = SimDevice::start(SimConfig {
        profile: Profile::Amt12,
        client_auth_roots: Some(vec![ca.cert.clone()]),
        ..SimConfig::demo("reach-amt12-mtls")
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = client.write_pem(dir.path(), "client");
    let with_identity = format!(
        "{}\nclient_cert = {cert:?}\nclient_key = {key:?}",
        pinned(&sim, "legacy")
    );
    let gateway = gateway_with(&sim, &with_identity, "").await;
    assert_identify_response(
        &curl_identify(gateway.addr(Service::Wsman)).await,
        "mutual TLS",
    );

    let anonymous = gateway_with(&sim, &pinned(&sim, "legacy"), "").await;
    expect_refused(anonymous.connect(Service::Wsman).await).await;
    let m = anonymous
        .metrics_settled(|m| m.failed("client_cert_rejected") >= 1.0)
        .await;
    assert_eq!(m.failed("client_cert_rejected"), 1.0, "{}", m.0);
}

// ---------------------------------------------------------------------------------------------
// rustls: AMT 16 with a 2047-bit key, AMT 22

/// A 2047-bit key: what aws-lc-rs refused with `BadSignature` before RSA verification moved to
/// ring.
async fn amt16_2047(name: &str, tls12: Option<Tls12Signature>) -> SimDevice {
    SimDevice::start(SimConfig {
        profile: Profile::Amt16,
        key_type: Some(KeyType::Rsa2047),
        tls12_only: tls12.is_some(),
        tls12_signature: tls12,
        ..SimConfig::demo(name)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_2047_bit_key_is_reached_under_tls13() {
    let sim = amt16_2047("reach-2047-tls13", None).await;
    let gateway = gateway_with(&sim, &pinned(&sim, "rustls"), "").await;
    let last = reached_by_curl_and_amtterm("reach-2047-tls13", &gateway).await;
    assert_eq!(last["tls_version"], "TLSv1_3", "{last}");
}

#[tokio::test]
async fn a_2047_bit_key_is_reached_under_tls12_with_pkcs1_signatures() {
    let sim = amt16_2047("reach-2047-pkcs1", Some(Tls12Signature::Pkcs1)).await;
    let gateway = gateway_with(&sim, &pinned(&sim, "rustls"), "").await;
    let host_name = "reach-2047-pkcs1";
    let body = curl_get_settings(gateway.addr(Service::Wsman)).await;
    assert_general_settings(&body, host_name, "2047-bit PKCS#1");
    assert_eq!(last_handshake(&gateway).await["tls_version"], "TLSv1_2");
}

#[tokio::test]
async fn a_2047_bit_key_is_reached_under_tls12_with_pss_signatures() {
    let sim = amt16_2047("reach-2047-pss", Some(Tls12Signature::Pss)).await;
    let gateway = gateway_with(&sim, &pinned(&sim, "rustls"), "").await;
    let host_name = "reach-2047-pss";
    let body = curl_get_settings(gateway.addr(Service::Wsman)).await;
    assert_general_settings(&body, host_name, "2047-bit PSS");
    assert_eq!(last_handshake(&gateway).await["tls_version"], "TLSv1_2");
}

#[tokio::test]
async fn a_2047_bit_tofu_device_is_learned() {
    let sim = amt16_2047("reach-2047-tofu", None).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("pins.toml");
    let gateway = gateway_with(
        &sim,
        "trust = \"tofu\"",
        &format!("pin_store = {:?}", store.display().to_string()),
    )
    .await;
    assert_identify_response(
        &curl_identify(gateway.addr(Service::Wsman)).await,
        "2047-bit tofu",
    );
    let stored = std::fs::read_to_string(&store).unwrap();
    let pin = amtgw::tls::Pin::of_certificate(&sim.certificate()).to_string();
    assert!(stored.contains(&pin), "{stored}");
}

#[tokio::test]
async fn amt22_rsa3072_is_reached_with_an_aes256_suite() {
    let sim = device("reach-amt22-rsa", Profile::Amt22, None).await;
    let gateway = gateway_with(&sim, &pinned(&sim, "rustls"), "").await;
    let last = reached_by_curl_and_amtterm("reach-amt22-rsa", &gateway).await;
    assert_eq!(last["cipher"], "TLS13_AES_256_GCM_SHA384", "{last}");
}

#[tokio::test]
async fn amt22_p384_is_reached_under_tls12_with_an_aes256_suite() {
    let sim = SimDevice::start(SimConfig {
        profile: Profile::Amt22,
        key_type: Some(KeyType::P384),
        tls12_only: true,
        ..SimConfig::demo("reach-amt22-p384")
    })
    .await
    .unwrap();
    let gateway = gateway_with(&sim, &pinned(&sim, "rustls"), "").await;
    let last = reached_by_curl_and_amtterm("reach-amt22-p384", &gateway).await;
    assert_eq!(
        last["cipher"], "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "{last}"
    );
}

// ---------------------------------------------------------------------------------------------
// `amtgw pin` says what a device needs

fn amtgw_pin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_amtgw"))
        .arg("pin")
        .args(args)
        .env_remove("AMTGW_CONFIG")
        .output()
        .unwrap()
}

fn line<'a>(out: &'a str, label: &str) -> &'a str {
    let prefix = format!("{label}:");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label}: line in\n{out}"))
}

#[tokio::test]
async fn pin_reports_what_a_tls10_only_device_speaks_and_the_setting_that_reaches_it() {
    let sim = device("reach-pin-amt7", Profile::Amt7, None).await;
    let addr = sim.wsman_addr().to_string();
    let out = tokio::task::spawn_blocking(move || amtgw_pin(&[&addr]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(line(&text, "tls-backend"), "legacy", "{text}");
    assert_eq!(line(&text, "speaks"), "TLSv1_0 TLSv1_1", "{text}");
    assert_eq!(
        line(&text, "suites"),
        "TLS_RSA_WITH_AES_256_CBC_SHA TLS_RSA_WITH_AES_128_CBC_SHA",
        "{text}"
    );
    assert!(
        line(&text, "needs").contains("tls_backend = \"legacy\""),
        "{text}"
    );
    let pin = amtgw::tls::Pin::of_certificate(&sim.certificate()).to_string();
    assert!(text.lines().any(|l| l == pin), "{text}");
}

#[tokio::test]
async fn pin_reports_a_2047_bit_device_over_rustls() {
    let sim = amt16_2047("reach-pin-2047", None).await;
    let addr = sim.wsman_addr().to_string();
    let out = tokio::task::spawn_blocking(move || amtgw_pin(&[&addr]))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(line(&text, "tls-backend"), "rustls", "{text}");
    assert_eq!(line(&text, "tls-version"), "TLSv1_3", "{text}");
}

// ---------------------------------------------------------------------------------------------
// One gateway, a mixed fleet

#[tokio::test]
async fn a_fleet_mixing_amt7_11_16_and_22_is_reached_through_one_gateway() {
    let fleet = [
        ("fleet-amt7", Profile::Amt7, "legacy"),
        ("fleet-amt11", Profile::Amt11, "legacy"),
        ("fleet-amt16", Profile::Amt16, "rustls"),
        ("fleet-amt22", Profile::Amt22, "rustls"),
    ];
    let mut sims = Vec::new();
    let mut devices = String::new();
    for (i, (name, profile, backend)) in fleet.into_iter().enumerate() {
        let sim = device(name, profile, None).await;
        devices.push_str(&format!(
            "\n[[devices]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nlisten = \"127.0.0.{alias}\"\n\
             ports = {{ wsman = {wsman}, redirection = {redirection}, dash = {dash} }}\n{trust}\n",
            alias = i + 1,
            wsman = sim.wsman_addr().port(),
            redirection = sim.redirection_addr().port(),
            dash = sim.dash_addr().port(),
            trust = pinned(&sim, backend),
        ));
        sims.push(sim);
    }
    let gateway = TestGateway::start(&format!(
        r#"
[gateway]
connect_timeout = "5s"
handshake_timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[services.wsman]
listen_port = 0
bind = []

[services.redirection]
listen_port = 0
bind = []

[services.dash]
enabled = false
{devices}"#
    ))
    .await;
    for (i, (name, _, _)) in fleet.into_iter().enumerate() {
        let alias = format!("127.0.0.{}", i + 1);
        let body = curl_get_settings(gateway.addr_on(Service::Wsman, &alias)).await;
        assert_general_settings(&body, name, &alias);
        amtterm_session(gateway.addr_on(Service::Redirection, &alias), name).await;
    }
    let m = gateway.metrics().await;
    assert!(handshakes(&m, "legacy", "full") >= 2.0, "{}", m.0);
    assert!(handshakes(&m, "rustls", "full") >= 2.0, "{}", m.0);
}
