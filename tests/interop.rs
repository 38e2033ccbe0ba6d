//! Interop with real, unmodified clients nobody here wrote: `curl` speaks WS-Man (identify,
//! HTTP digest) and `amtterm` runs a serial-over-LAN session, first through amtgw to the
//! simulated device, then straight to the simulator through `stunnel4` as a second,
//! independent TLS client (OpenSSL instead of rustls) that pins the simulator's certificate.
//!
//! The programs come from Debian packages; `scripts/install-test-deps.sh` installs them. A
//! missing program fails the test rather than skipping it.

// Tests may unwrap (the crate lints against it for gateway code): a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use amtgw::Service;
use amtgw_sim::{DEMO_USERNAME, SimDevice};
use common::clients::*;
use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Setup: simulator, gateway, stunnel

/// Where stunnel listens for `service` (0, 1, 2) in the test numbered `test` (each stunnel test
/// passes its own number): this process's private loopback address (see `common::loopback`),
/// a fixed port per test and service. Every other test uses 127.0.0.1 to 127.0.0.4 only.
fn stunnel_addr(test: u16, service: u16) -> SocketAddr {
    SocketAddr::from((
        common::loopback::private_loopback(),
        20_000 + 10 * test + service,
    ))
}

/// stunnel in client mode in front of the simulator: plain TCP in on the returned ports, TLS
/// out, the simulator's certificate (and nothing else) trusted.
struct Stunnel {
    process: Spawned,
    wsman: SocketAddr,
    redirection: SocketAddr,
    dash: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Stunnel {
    /// `test` is the caller's own number, for [`stunnel_addr`].
    async fn start(sim: &SimDevice, test: u16) -> Stunnel {
        let program = require_program(&["stunnel4", "stunnel"]);
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("sim-cert.pem");
        std::fs::write(&ca_file, pem_block("CERTIFICATE", &sim.certificate())).unwrap();
        let (wsman, redirection, dash) = (
            stunnel_addr(test, 0),
            stunnel_addr(test, 1),
            stunnel_addr(test, 2),
        );
        // verifyPeer: the server's leaf certificate must be one of those in CAfile, i.e. a
        // pin. No checkHost: AMT certificates name no host, like amtgw's `trust = "pin"`.
        let mut conf = format!(
            "foreground = yes\npid =\ndebug = info\nsyslog = no\n\
             CAfile = {ca}\nverifyPeer = yes\nclient = yes\n",
            ca = ca_file.display()
        );
        for (name, accept, connect) in [
            ("wsman", wsman, sim.wsman_addr()),
            ("redirection", redirection, sim.redirection_addr()),
            ("dash", dash, sim.dash_addr()),
        ] {
            conf.push_str(&format!(
                "\n[{name}]\naccept = {accept}\nconnect = {connect}\n"
            ));
        }
        let conf_file = dir.path().join("stunnel.conf");
        std::fs::write(&conf_file, &conf).unwrap();

        let mut process = Spawned::start(Command::new(program).arg(&conf_file));
        // Logged once every service is bound and listening: a condition, not a delay.
        process.expect("Accepting new connections").await;
        Stunnel {
            process,
            wsman,
            redirection,
            dash,
            _dir: dir,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Through the gateway

#[tokio::test]
async fn curl_identify_through_gateway_on_wsman_and_dash() {
    let sim = start_sim("interop-identify").await;
    let gateway = gateway_for(&sim).await;
    for service in [Service::Wsman, Service::Dash] {
        let body = curl_identify(gateway.addr(service)).await;
        assert_identify_response(&body, &format!("gateway {service}"));
    }
    let metrics = gateway.metrics().await;
    for service in ["wsman", "dash"] {
        assert_eq!(
            metrics.value(
                "amtgw_connections_established_total",
                &[("service", service)]
            ),
            1.0,
            "{service}: one connection to the device\n{}",
            metrics.0
        );
    }
}

#[tokio::test]
async fn curl_digest_get_through_gateway_returns_the_device_host_name() {
    let sim = start_sim("interop-digest-host").await;
    let gateway = gateway_for(&sim).await;
    let body = curl_get_settings(gateway.addr(Service::Wsman)).await;
    assert_general_settings(&body, "interop-digest-host", "gateway wsman");
    // Digest is two connections: the device answers the bare request with 401 and closes
    // (as AMT does), curl retries with the Authorization header on a new one.
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.value(
            "amtgw_connections_established_total",
            &[("service", "wsman")]
        ),
        2.0,
        "{}",
        metrics.0
    );
}

#[tokio::test]
async fn curl_wrong_password_gets_401_and_the_connection_is_closed() {
    let sim = start_sim("interop-401").await;
    let gateway = gateway_for(&sim).await;
    let addr = gateway.addr(Service::Wsman);

    let output = curl(vec![
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        "--digest".into(),
        "-u".into(),
        format!("{DEMO_USERNAME}:wrong-Passw0rd!"),
        "-H".into(),
        SOAP_CONTENT_TYPE.into(),
        "--data-binary".into(),
        format!("@{}", get_settings_xml()),
        wsman_url(addr),
    ])
    .await;
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "401");

    // The same without credentials over a raw socket: the 401 says `Connection: close` and
    // the close follows (EOF, the console's half of the connection still open).
    let body = std::fs::read(get_settings_xml()).unwrap();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!(
            "POST /wsman HTTP/1.1\r\nHost: {addr}\r\n{SOAP_CONTENT_TYPE}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    conn.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, conn.read_to_end(&mut response))
        .await
        .expect("the 401 must be followed by a close")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, rest) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    let headers: Vec<&str> = head.split("\r\n").skip(1).collect();
    assert!(headers.contains(&"Connection: close"), "{head}");
    assert!(headers.contains(&"Content-Length: 0"), "{head}");
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("WWW-Authenticate: Digest realm=\"")
                && h.contains("qop=\"auth\"")),
        "{head}"
    );
    assert_eq!(rest, "", "nothing after the 401");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amtterm_sol_session_through_gateway() {
    let sim = start_sim("interop-sol").await;
    let gateway = gateway_for(&sim).await;
    amtterm_session(gateway.addr(Service::Redirection), "interop-sol").await;

    // amtterm has exited; the gateway notices both ends closing and records the session.
    let closed = |metrics: &Metrics, outcome: Option<&str>| {
        let mut labels = vec![("service", "redirection")];
        labels.extend(outcome.map(|o| ("outcome", o)));
        metrics.sample("amtgw_connections_closed_total", &labels)
    };
    let metrics = gateway
        .metrics_settled(|metrics| closed(metrics, None).is_some_and(|n| n >= 1.0))
        .await;
    assert_eq!(closed(&metrics, None), Some(1.0), "{}", metrics.0);
    assert_eq!(
        closed(&metrics, Some("ok")),
        Some(1.0),
        "the SOL session did not end cleanly:\n{}",
        metrics.0
    );
    assert_eq!(
        metrics.value(
            "amtgw_connections_established_total",
            &[("service", "redirection")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// Straight to the simulator through stunnel (OpenSSL), without amtgw

#[tokio::test]
async fn stunnel_curl_identify_and_digest_get_against_simulator() {
    let sim = start_sim("interop-stunnel-wsman").await;
    let stunnel = Stunnel::start(&sim, 1).await;
    assert_identify_response(&curl_identify(stunnel.wsman).await, "stunnel wsman");
    assert_identify_response(&curl_identify(stunnel.dash).await, "stunnel dash");
    let body = curl_get_settings(stunnel.wsman).await;
    assert_general_settings(&body, "interop-stunnel-wsman", "stunnel wsman");
    drop(stunnel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stunnel_amtterm_sol_session_against_simulator() {
    let sim = start_sim("interop-stunnel-sol").await;
    let stunnel = Stunnel::start(&sim, 2).await;
    amtterm_session(stunnel.redirection, "interop-stunnel-sol").await;
    drop(stunnel);
}

#[tokio::test]
async fn stunnel_refuses_the_simulator_once_its_certificate_changes() {
    // The pin is real: after unprovisioning, the device serves a new self-signed certificate,
    // and OpenSSL, still trusting only the old one, refuses the handshake.
    let sim = start_sim("interop-stunnel-unprovision").await;
    let mut stunnel = Stunnel::start(&sim, 3).await;
    assert_identify_response(&curl_identify(stunnel.wsman).await, "stunnel before");

    sim.unprovision().unwrap();
    let output = curl(vec![
        "-H".into(),
        SOAP_CONTENT_TYPE.into(),
        "--data-binary".into(),
        format!("@{}", identify_xml()),
        wsman_url(stunnel.wsman),
    ])
    .await;
    assert!(
        !output.status.success() && output.stdout.is_empty(),
        "curl got an answer through a tunnel that should have refused the device: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    stunnel.process.expect("certificate verify failed").await;
}
