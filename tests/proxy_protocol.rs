//! Listeners behind a load balancer (`services.<svc>.proxy_protocol`): the PROXY header's
//! addresses stand for the connection's in the summary line, the per-source limits and the
//! routing; a connection without a valid header, or from outside `proxy_protocol_from`, is
//! refused with exactly one reason; the device receives exactly the console's bytes. curl's own
//! `--haproxy-protocol` writes the v1 headers; v2 headers are written here.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use amtgw::Service;
use common::clients::*;
use common::loopback;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// A v2 PROXY header (command PROXY, TCP) from `source` to `destination`, with an ALPN and a
/// NOOP TLV, as HAProxy's `send-proxy-v2` may add.
fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("one family"),
    };
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&destination.port().to_be_bytes());
    body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00]);
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, family]);
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(&body);
    header
}

/// A v2 LOCAL header: the load balancer's own connection (a health check).
fn v2_local() -> Vec<u8> {
    b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec()
}

/// The wsman service behind a load balancer on 127.0.0.0/8, the echo device at `device` its
/// default device and also reachable at the alias 127.0.0.3; `extra` adds `[gateway]` lines,
/// `service` replaces the service's routing lines.
fn config(device: SocketAddr, pin: &str, gateway: &str, service: &str) -> String {
    format!(
        r#"
[gateway]
connect_timeout = "2s"
handshake_timeout = "2s"
shutdown_timeout = "5s"
{gateway}

[admin]
listen = "127.0.0.1:0"

[services.wsman]
listen_port = 0
{service}

[services.redirection]
enabled = false

[services.dash]
enabled = false

[[devices]]
name = "dut"
host = "{ip}"
listen = "127.0.0.3"
ports = {{ wsman = {port} }}
trust = "pin"
pins = ["{pin}"]
"#,
        ip = device.ip(),
        port = device.port()
    )
}

const BEHIND_LB: &str = r#"default_device = "dut"
proxy_protocol = "any"
proxy_protocol_from = ["127.0.0.0/8"]"#;

async fn echo_gateway(gateway_toml: &str, service_toml: &str) -> TestGateway {
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = echo_device(DeviceTls::new(identity)).await;
    TestGateway::start(&config(device, &pin, gateway_toml, service_toml)).await
}

/// Sends `bytes`, half-closes, and returns everything that comes back.
async fn send(gateway: &TestGateway, bytes: &[u8]) -> Vec<u8> {
    exchange(gateway.connect(Service::Wsman).await, bytes)
        .await
        .unwrap_or_default()
}

/// Exactly one failure on wsman, of `reason`.
async fn failed_once_with(gateway: &TestGateway, reason: &str) -> Metrics {
    let metrics = gateway
        .metrics_settled(|m| {
            m.sample("amtgw_connections_failed_total", &[("service", "wsman")])
                .is_some()
        })
        .await;
    assert_eq!(metrics.failed(reason), 1.0, "{}", metrics.0);
    let failures = metrics.value("amtgw_connections_failed_total", &[("service", "wsman")]);
    assert_eq!(failures, 1.0, "exactly one failure:\n{}", metrics.0);
    metrics
}

#[tokio::test]
async fn the_device_receives_exactly_the_bytes_after_a_v2_header() {
    let gateway = echo_gateway("", BEHIND_LB).await;
    // What follows the header, header-like bytes included, is the console's.
    let payload = [
        &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..],
        &v2_local(),
        b"POST /wsman HTTP/1.1\r\n\r\n",
    ]
    .concat();
    let header = v2_header(addr("192.0.2.7:40000"), gateway.addr(Service::Wsman));
    let answer = send(&gateway, &[header, payload.clone()].concat()).await;
    assert_eq!(answer, payload);
    let metrics = gateway
        .metrics_settled(|m| {
            m.sample("amtgw_connections_closed_total", &[("outcome", "ok")])
                .is_some()
        })
        .await;
    let headers = metrics.value(
        "amtgw_proxy_headers_total",
        &[
            ("service", "wsman"),
            ("version", "v2"),
            ("addresses", "proxied"),
        ],
    );
    assert_eq!(headers, 1.0, "{}", metrics.0);
    let relayed = metrics.value(
        "amtgw_relayed_bytes_total",
        &[("service", "wsman"), ("direction", "to_device")],
    );
    assert_eq!(relayed, payload.len() as f64);
}

#[tokio::test]
async fn a_header_written_in_pieces_is_read_whole_and_nothing_more() {
    let gateway = echo_gateway("", BEHIND_LB).await;
    let header = v2_header(addr("[2001:db8::7]:40000"), addr("[::1]:16992"));
    let mut conn = gateway.connect(Service::Wsman).await;
    conn.set_nodelay(true).unwrap();
    // The gateway takes what has arrived, then waits for the rest of the header.
    conn.write_all(&header[..5]).await.unwrap();
    conn.flush().await.unwrap();
    tokio::task::yield_now().await;
    conn.write_all(&header[5..20]).await.unwrap();
    conn.flush().await.unwrap();
    let mut rest = header[20..].to_vec();
    rest.extend_from_slice(b"hello");
    let answer = exchange(conn, &rest).await.unwrap();
    assert_eq!(answer, b"hello");
}

#[tokio::test]
async fn a_local_header_keeps_the_sockets_addresses() {
    let gateway = echo_gateway("", BEHIND_LB).await;
    let answer = send(&gateway, &[v2_local(), b"ping".to_vec()].concat()).await;
    assert_eq!(
        answer, b"ping",
        "routed by the socket's address: the default device"
    );
    let metrics = gateway
        .metrics_settled(|m| m.sample("amtgw_proxy_headers_total", &[]).is_some())
        .await;
    let local = metrics.value(
        "amtgw_proxy_headers_total",
        &[("version", "v2"), ("addresses", "local")],
    );
    assert_eq!(local, 1.0, "{}", metrics.0);
}

#[tokio::test]
async fn a_connection_without_a_header_is_refused_as_proxy_header() {
    let gateway = echo_gateway("", BEHIND_LB).await;
    assert_eq!(send(&gateway, b"POST /wsman HTTP/1.1\r\n\r\n").await, b"");
    let metrics = failed_once_with(&gateway, "proxy_header").await;
    assert!(
        metrics.absent("amtgw_device_connect_duration_seconds", &[]),
        "the device was never dialled"
    );
}

#[tokio::test]
async fn a_v1_header_on_a_v2_listener_is_refused_as_proxy_header() {
    let service = BEHIND_LB.replace("\"any\"", "\"v2\"");
    let gateway = echo_gateway("", &service).await;
    let request = b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 16992\r\nping";
    assert_eq!(send(&gateway, request).await, b"");
    failed_once_with(&gateway, "proxy_header").await;
}

#[tokio::test]
async fn a_header_not_complete_in_time_is_refused_as_proxy_header() {
    let gateway = echo_gateway("proxy_header_timeout = \"200ms\"", BEHIND_LB).await;
    let mut conn = gateway.connect(Service::Wsman).await;
    conn.write_all(b"PROXY TCP4 192.0.2.7 ").await.unwrap();
    // Kept open: the gateway gives up by itself.
    expect_closed(conn).await;
    failed_once_with(&gateway, "proxy_header").await;
}

#[tokio::test]
async fn a_connection_from_outside_proxy_protocol_from_is_refused_unread() {
    let service = BEHIND_LB.replace("127.0.0.0/8", "127.0.0.2/32");
    let gateway = echo_gateway("", &service).await;
    let header = v2_header(addr("192.0.2.7:40000"), gateway.addr(Service::Wsman));
    assert_eq!(
        send(&gateway, &[header, b"ping".to_vec()].concat()).await,
        b""
    );
    let metrics = failed_once_with(&gateway, "proxy_untrusted").await;
    assert!(
        metrics.absent("amtgw_proxy_headers_total", &[]),
        "the header was not read"
    );
}

#[tokio::test]
async fn per_source_limits_count_the_headers_source() {
    // Every connection comes from 127.0.0.1, the balancer; the consoles are in the headers.
    let gateway = echo_gateway("max_connections_per_source = 1", BEHIND_LB).await;
    let to = gateway.addr(Service::Wsman);
    let mut first = gateway.connect(Service::Wsman).await;
    first
        .write_all(&[v2_header(addr("192.0.2.7:40000"), to), b"one".to_vec()].concat())
        .await
        .unwrap();
    let mut echoed = [0u8; 3];
    first.read_exact(&mut echoed).await.unwrap();
    assert_eq!(
        &echoed, b"one",
        "the first connection of 192.0.2.7 is relayed"
    );

    let same_console = [v2_header(addr("192.0.2.7:40001"), to), b"two".to_vec()].concat();
    assert_eq!(
        send(&gateway, &same_console).await,
        b"",
        "a second from 192.0.2.7"
    );
    let other_console = [v2_header(addr("192.0.2.8:40000"), to), b"three".to_vec()].concat();
    assert_eq!(
        send(&gateway, &other_console).await,
        b"three",
        "192.0.2.8 has its own share"
    );
    failed_once_with(&gateway, "source_limit").await;
    drop(first);
}

#[tokio::test]
async fn alias_routing_matches_the_headers_destination_against_listen() {
    let service = r#"proxy_protocol = "v2"
proxy_protocol_from = ["127.0.0.0/8"]"#;
    let gateway = echo_gateway("", service).await;
    // The alias is an address on the balancer: the gateway does not bind it.
    assert!(
        gateway
            .addrs
            .iter()
            .all(|b| b.addr.ip() != addr("127.0.0.3:0").ip()),
        "{:?}",
        gateway.addrs
    );
    let to_alias = v2_header(addr("192.0.2.7:40000"), addr("127.0.0.3:16992"));
    assert_eq!(
        send(&gateway, &[to_alias, b"hi".to_vec()].concat()).await,
        b"hi"
    );
    let elsewhere = v2_header(addr("192.0.2.7:40001"), addr("127.0.0.4:16992"));
    assert_eq!(
        send(&gateway, &[elsewhere, b"hi".to_vec()].concat()).await,
        b""
    );
    failed_once_with(&gateway, "no_route").await;
}

#[tokio::test]
async fn redirect_routing_takes_the_headers_destination_as_the_original_destination() {
    let service = r#"routing = "redirect"
proxy_protocol = "v2"
proxy_protocol_from = ["127.0.0.0/8"]"#;
    let gateway = echo_gateway("", service).await;
    // The gateway's own address: a loop, which only the header can have said (no NAT rule
    // diverted this connection, so the kernel knows no original destination).
    let to_itself = v2_header(addr("192.0.2.7:40000"), addr("127.0.0.1:16992"));
    assert_eq!(
        send(&gateway, &[to_itself, b"hi".to_vec()].concat()).await,
        b""
    );
    failed_once_with(&gateway, "loop").await;
}

// ---------------------------------------------------------------------------------------------
// `amtgw run`, its summary lines, and curl as the client that writes v1 headers

/// `amtgw run` on `toml` (text logs), and its wsman listener.
async fn amtgw_run(dir: &std::path::Path, toml: &str) -> (Spawned, SocketAddr) {
    let path = dir.join("amtgw.toml");
    std::fs::write(&path, toml).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_amtgw"));
    command.args(["run", "--config", path.to_str().unwrap()]);
    without_amtgw_env(&mut command)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    let mut gateway = Spawned::start(&mut command);
    gateway.expect("listening service=\"wsman\"").await;
    let transcript = gateway.transcript();
    let wsman = transcript
        .lines()
        .find(|l| l.contains("listening service=\"wsman\""))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no wsman listener in:\n{transcript}"))
        .parse()
        .unwrap();
    (gateway, wsman)
}

#[tokio::test]
async fn curl_with_a_v1_header_and_a_v2_console_reach_the_device_and_are_logged_by_their_source() {
    let sim = start_sim("amt-sim-lb").await;
    let pin = amtgw::tls::Pin::of_certificate(&sim.certificate()).to_string();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[gateway]
workers = 1

[admin]
listen = "127.0.0.1:0"

[services.wsman]
listen_port = 0
default_device = "sim"
proxy_protocol = "any"
proxy_protocol_from = ["127.0.0.0/8"]

[services.redirection]
enabled = false

[services.dash]
enabled = false

[[devices]]
name = "sim"
host = "127.0.0.1"
ports = {{ wsman = {port} }}
trust = "pin"
pins = ["{pin}"]
"#,
        port = sim.wsman_addr().port()
    );
    let (mut gateway, wsman) = amtgw_run(dir.path(), &toml).await;

    // curl writes `PROXY TCP4 127.0.0.5 <gateway> <port> <port>` itself, from 127.0.0.5.
    let credentials = format!("{}:{}", amtgw_sim::DEMO_USERNAME, amtgw_sim::DEMO_PASSWORD);
    let body = curl_soap(
        wsman,
        get_settings_xml(),
        &[
            "--haproxy-protocol",
            "--interface",
            "127.0.0.5",
            "--digest",
            "-u",
            &credentials,
        ],
    )
    .await;
    assert_general_settings(&body, "amt-sim-lb", "curl --haproxy-protocol");
    gateway.expect("peer=127.0.0.5:").await;
    gateway.expect("outcome=\"ok\"").await;

    // A v2 console from a documentation address, through a "balancer" on 127.0.0.1.
    let mut conn = TcpStream::connect(wsman).await.unwrap();
    let header = v2_header(addr("192.0.2.7:40000"), wsman);
    conn.write_all(&header).await.unwrap();
    let answer = exchange(
        conn,
        b"GET /wsman HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The balancer is `via`, the console from the header `peer`.
    gateway.expect("via=127.0.0.1:").await;
    gateway.expect("peer=192.0.2.7:40000").await;

    // Without a header: refused, the log saying why.
    let refused = curl(vec![wsman_url(wsman)]).await;
    assert!(!refused.status.success());
    gateway.expect("outcome=\"proxy_header\"").await;
    gateway.expect("no PROXY protocol header").await;
}

/// HAProxy, installed by scripts/install-test-deps.sh, as the load balancer a console (curl)
/// dials: it connects to amtgw from 127.0.0.1 with `send-proxy-v2`, naming curl's address.
#[tokio::test]
async fn haproxy_send_proxy_v2_in_front_names_the_console() {
    let haproxy = require_program(&["haproxy"]);
    let sim = start_sim("amt-sim-haproxy").await;
    let pin = amtgw::tls::Pin::of_certificate(&sim.certificate()).to_string();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[gateway]
workers = 1

[admin]
listen = "127.0.0.1:0"

[services.wsman]
listen_port = 0
default_device = "sim"
proxy_protocol = "v2"
proxy_protocol_from = ["127.0.0.1/32"]

[services.redirection]
enabled = false

[services.dash]
enabled = false

[[devices]]
name = "sim"
host = "127.0.0.1"
ports = {{ wsman = {port} }}
trust = "pin"
pins = ["{pin}"]
"#,
        port = sim.wsman_addr().port()
    );
    let (mut gateway, wsman) = amtgw_run(dir.path(), &toml).await;

    // HAProxy binds its own address: one of this process's own (common::loopback).
    let frontend = SocketAddr::from((loopback::private_loopback(), 16992));
    let haproxy_cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
             frontend consoles\n    bind {frontend}\n    default_backend amtgw_wsman\n\
             backend amtgw_wsman\n    source 127.0.0.1\n    server amtgw1 {wsman} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(haproxy);
    command.arg("-db").arg("-f").arg(&haproxy_cfg);
    let _haproxy = Spawned::start(&mut command);
    // HAProxy prints nothing once it listens: wait until its frontend accepts.
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while TcpStream::connect(frontend).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "HAProxy never listened on {frontend}"
        );
        tokio::task::yield_now().await;
    }

    let credentials = format!("{}:{}", amtgw_sim::DEMO_USERNAME, amtgw_sim::DEMO_PASSWORD);
    let body = curl_soap(
        frontend,
        get_settings_xml(),
        &["--interface", "127.0.0.6", "--digest", "-u", &credentials],
    )
    .await;
    assert_general_settings(&body, "amt-sim-haproxy", "curl through HAProxy");
    // (The readiness probe reached amtgw too, from 127.0.0.1: a header and nothing else.)
    gateway.expect("peer=127.0.0.6:").await;
    gateway.expect("outcome=\"ok\"").await;
    let transcript = gateway.transcript();
    let line = transcript
        .lines()
        .find(|l| l.contains("peer=127.0.0.6:"))
        .unwrap();
    assert!(line.contains("via=127.0.0.1:"), "{line}");
}
