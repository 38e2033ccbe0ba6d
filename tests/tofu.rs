//! Trust on first use against the simulated device: the first handshake records the pin, later
//! ones must match, an unprovisioned device (new key) is refused until it is re-pinned, and all
//! of it without restarting the gateway.
#![allow(clippy::unwrap_used)]

mod common;

use amtgw::Service;
use amtgw::tls::{Fingerprints, PinStore};
use amtgw_sim::{SimConfig, SimDevice};
use common::*;
use tokio::net::TcpStream;

const IDENTIFY: &[u8] = b"POST /wsman HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: 215\r\nConnection: close\r\n\r\n<?xml version=\"1.0\" encoding=\"UTF-8\"?><s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:i=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header/><s:Body><i:Identify/></s:Body></s:Envelope>";

struct Setup {
    _dir: tempfile::TempDir,
    store: std::path::PathBuf,
    sim: SimDevice,
    gateway: TestGateway,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("pins.toml");
    let sim = SimDevice::start(SimConfig::demo("amt-tofu")).await.unwrap();
    let path = dir.path().join("amtgw.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[gateway]
pin_store = "{}"
watch_interval = "50ms"
[admin]
listen = "127.0.0.1:0"
[services.wsman]
listen_port = 0
default_device = "amt-tofu"
[services.redirection]
enabled = false
[services.dash]
enabled = false
[[devices]]
name = "amt-tofu"
host = "127.0.0.1"
ports = {{ wsman = {} }}
trust = "tofu"
max_connections = 16
max_connections_per_source = 16
"#,
            store.display(),
            sim.wsman_addr().port()
        ),
    )
    .unwrap();
    let gateway = TestGateway::start_file(&path).await;
    Setup {
        _dir: dir,
        store,
        sim,
        gateway,
    }
}

async fn identify(gateway: &TestGateway) -> bool {
    let answer = exchange(gateway.connect(Service::Wsman).await, IDENTIFY)
        .await
        .unwrap_or_default();
    String::from_utf8_lossy(&answer).contains("IdentifyResponse")
}

fn stored_certificate_pin(store: &std::path::Path) -> Option<String> {
    PinStore::open(store)
        .unwrap()
        .get("amt-tofu")
        .map(|p| p.certificate.to_string())
}

fn pin_of(sim: &SimDevice) -> String {
    Fingerprints::of(&sim.certificate())
        .unwrap()
        .certificate
        .to_string()
}

#[tokio::test]
async fn first_use_records_the_pin_and_later_connections_must_match() {
    let s = setup().await;
    assert_eq!(stored_certificate_pin(&s.store), None);
    assert!(identify(&s.gateway).await, "first use is trusted");
    assert_eq!(
        stored_certificate_pin(&s.store),
        Some(pin_of(&s.sim)),
        "and recorded durably"
    );
    assert!(identify(&s.gateway).await, "the same certificate matches");

    let learned = pin_of(&s.sim);
    s.sim.unprovision().unwrap();
    assert!(!identify(&s.gateway).await, "a new key is refused");
    assert_eq!(s.gateway.metrics().await.failed("pin_mismatch"), 1.0);
    let (_, body) = http_get(s.gateway.admin, "/devices").await;
    let devices: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = devices["devices"][0]["last_handshake"]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains(&pin_of(&s.sim)),
        "names the presented certificate: {error}"
    );
    assert!(error.contains(&learned), "and the stored one: {error}");
    assert!(
        !error.contains("OtherError"),
        "readable, not rustls' Debug form: {error}"
    );
    assert_eq!(
        stored_certificate_pin(&s.store),
        Some(learned),
        "a mismatch never overwrites"
    );
}

#[tokio::test]
async fn the_admin_repin_call_accepts_an_unprovisioned_device_without_restart() {
    let s = setup().await;
    assert!(identify(&s.gateway).await);
    s.sim.unprovision().unwrap();
    assert!(!identify(&s.gateway).await);

    let (status, body) = http_request(s.gateway.admin, "POST", "/devices/amt-tofu/repin").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        identify(&s.gateway).await,
        "the next handshake learns the new certificate"
    );
    assert_eq!(stored_certificate_pin(&s.store), Some(pin_of(&s.sim)));

    let (status, _) = http_request(s.gateway.admin, "POST", "/devices/nope/repin").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_pin_replaced_by_another_process_is_picked_up() {
    // What `amtgw pin --replace NAME` does while the gateway runs.
    let mut s = setup().await;
    assert!(identify(&s.gateway).await);
    s.sim.unprovision().unwrap();
    assert!(!identify(&s.gateway).await);

    let presented = Fingerprints::of(&s.sim.certificate()).unwrap();
    PinStore::open(&s.store)
        .unwrap()
        .replace("amt-tofu", &presented)
        .unwrap();
    s.gateway.next_reload().await;
    assert!(identify(&s.gateway).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_connections_learn_exactly_one_pin() {
    let s = setup().await;
    let addr = s.gateway.addr(Service::Wsman);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        tasks.push(tokio::spawn(async move {
            let answer = exchange(TcpStream::connect(addr).await.unwrap(), IDENTIFY)
                .await
                .unwrap();
            String::from_utf8_lossy(&answer).contains("IdentifyResponse")
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap());
    }
    assert_eq!(stored_certificate_pin(&s.store), Some(pin_of(&s.sim)));
}

#[tokio::test]
async fn an_emptied_pin_store_keeps_every_pin_and_learns_no_new_key() {
    let s = setup().await;
    assert!(identify(&s.gateway).await, "the pin is learned");
    // The store is emptied behind the gateway's back (a full disk, a careless copy).
    std::fs::write(&s.store, "").unwrap();
    let errors = |m: &Metrics| {
        m.sample(
            "amtgw_pin_store_errors_total",
            &[("kind", "pin_store_lost")],
        )
    };
    s.gateway
        .metrics_settled(|m| errors(m).is_some_and(|n| n >= 1.0))
        .await;

    // Unprovisioned (or an impostor): its new key is refused, not learned as a first use.
    s.sim.unprovision().unwrap();
    assert!(!identify(&s.gateway).await, "the new key is refused");
    assert_eq!(s.gateway.metrics().await.failed("pin_mismatch"), 1.0);
    assert_eq!(
        std::fs::read(&s.store).unwrap(),
        b"",
        "the damaged file is left for the operator"
    );
}

#[tokio::test]
async fn a_repin_with_a_malformed_body_is_refused_and_the_pin_kept() {
    let s = setup().await;
    assert!(identify(&s.gateway).await);
    let learned = stored_certificate_pin(&s.store);
    assert!(learned.is_some());
    for body in ["garbage", "{\"force\": true}", "[]"] {
        let (status, _, answer) =
            http_send(s.gateway.admin, "POST", "/devices/amt-tofu/repin", "", body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(stored_certificate_pin(&s.store), learned, "{body}");
    }
    let (status, _, answer) = http_send(
        s.gateway.admin,
        "POST",
        "/devices/amt-tofu/repin",
        "",
        " {} ",
    )
    .await;
    assert_eq!(status, 200, "`{{}}` is the one accepted body: {answer}");
    assert_eq!(stored_certificate_pin(&s.store), None);
}
