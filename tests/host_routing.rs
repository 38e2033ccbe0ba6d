//! WS-Man routed by the HTTP `Host` header (`services.wsman.routing = "host"`), end to end: one
//! gateway listener in front of simulated devices on 127.0.0.1, 127.0.0.2 and (a device of a
//! range) 127.0.0.3; `curl --digest` names each by its name (resolved to the gateway with
//! `--resolve`, as DNS pointing device names at the gateway would) or address; raw
//! connections for what curl never sends (a second host on one connection, no Host, request
//! lookalikes inside a chunked body).

// Tests may unwrap (the crate lints against it for gateway code): a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use amtgw::Service;
use amtgw_sim::{DEMO_PASSWORD, DEMO_USERNAME, SimConfig, SimDevice};
use common::TestGateway;
use common::clients::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

struct Setup {
    gateway: TestGateway,
    _devices: Vec<SimDevice>,
    _dir: tempfile::TempDir,
}

async fn sim_on(name: &str, ip: [u8; 4]) -> SimDevice {
    let mut config = SimConfig::demo(name);
    config.bind = IpAddr::from(ip);
    SimDevice::start(config).await.unwrap()
}

fn pin(sim: &SimDevice) -> String {
    amtgw::tls::Pin::of_certificate(&sim.certificate()).to_string()
}

/// `amt-a` (127.0.0.1) and `amt-b` (127.0.0.2) listed, `amt-c` listed by the DNS name
/// `localhost` (the device on 127.0.0.1 again), and the range 127.0.0.3/32 (`amt-r`).
async fn setup() -> Setup {
    let a = sim_on("amt-a", [127, 0, 0, 1]).await;
    let b = sim_on("amt-b", [127, 0, 0, 2]).await;
    let r = sim_on("amt-r", [127, 0, 0, 3]).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[gateway]
connect_timeout = "5s"
handshake_timeout = "5s"
shutdown_timeout = "5s"
pin_store = "{pins}"

[admin]
listen = "127.0.0.1:0"

[services.wsman]
routing = "host"
listen_port = 0
bind = ["127.0.0.1"]

[services.redirection]
enabled = false

[services.dash]
enabled = false

[[devices]]
name = "amt-a"
host = "127.0.0.1"
ports = {{ wsman = {pa} }}
trust = "pin"
pins = ["{pin_a}"]

[[devices]]
name = "AMT-B"
host = "127.0.0.2"
ports = {{ wsman = {pb} }}
trust = "pin"
pins = ["{pin_b}"]

[[devices]]
name = "amt-c"
host = "localhost"
ports = {{ wsman = {pa} }}
trust = "pin"
pins = ["{pin_a}"]

[[ranges]]
cidr = "127.0.0.3/32"
trust = "tofu"
ports = {{ wsman = {pr} }}
"#,
        pins = dir.path().join("pins.toml").display(),
        pa = a.wsman_addr().port(),
        pb = b.wsman_addr().port(),
        pr = r.wsman_addr().port(),
        pin_a = pin(&a),
        pin_b = pin(&b),
    );
    Setup {
        gateway: TestGateway::start(&toml).await,
        _devices: vec![a, b, r],
        _dir: dir,
    }
}

fn credentials() -> String {
    format!("{DEMO_USERNAME}:{DEMO_PASSWORD}")
}

/// `curl --digest` Get of AMT_GeneralSettings at `url`, with `extra` arguments; the body.
async fn curl_get(url: &str, extra: &[String]) -> String {
    let mut args: Vec<String> = vec![
        "--fail".into(),
        "--digest".into(),
        "-u".into(),
        credentials(),
        "-H".into(),
        SOAP_CONTENT_TYPE.into(),
        "--data-binary".into(),
        format!("@{}", get_settings_xml()),
    ];
    args.extend(extra.iter().cloned());
    args.push(url.to_owned());
    let output = curl(args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {url} failed ({}): {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// curl's status code for a request the gateway refuses, and the body.
async fn curl_refused(url: &str, extra: &[String]) -> (String, String) {
    let mut args: Vec<String> = vec![
        "-o".into(),
        "-".into(),
        "-w".into(),
        "\n%{http_code}".into(),
        "-H".into(),
        SOAP_CONTENT_TYPE.into(),
        "--data-binary".into(),
        format!("@{}", identify_xml()),
    ];
    args.extend(extra.iter().cloned());
    args.push(url.to_owned());
    let output = curl(args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (code.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_each_device_by_the_name_or_address_it_asks_for_through_one_listener() {
    let setup = setup().await;
    let gateway = setup.gateway.addr(Service::Wsman);
    let port = gateway.port();
    // DNS pointing the device names at the gateway, as --resolve does for curl.
    let resolve = |name: &str| vec!["--resolve".to_owned(), format!("{name}:{port}:127.0.0.1")];
    let url = |name: &str| format!("http://{name}:{port}/wsman");

    let body = curl_get(&url("amt-a"), &resolve("amt-a")).await;
    assert_general_settings(&body, "amt-a", "Host: amt-a");
    // Names are matched without regard to case, as DNS names are.
    let body = curl_get(&url("amt-b"), &resolve("amt-b")).await;
    assert_general_settings(&body, "amt-b", "Host: amt-b (listed as AMT-B)");
    // A listed device's DNS host selects it too.
    let body = curl_get(&url("localhost"), &resolve("localhost")).await;
    assert_general_settings(&body, "amt-a", "Host: localhost (amt-c's host)");
    // An address: the listed device of that host, else the device of a range, made on first
    // use; with the WS-Man plain port in Host, as a console dialling the device would send.
    let host = |value: &str| vec!["-H".to_owned(), format!("Host: {value}")];
    let body = curl_get(&wsman_url(gateway), &host("127.0.0.2:16992")).await;
    assert_general_settings(&body, "amt-b", "Host: 127.0.0.2:16992");
    let body = curl_get(&wsman_url(gateway), &host("127.0.0.3")).await;
    assert_general_settings(&body, "amt-r", "Host: 127.0.0.3 (a range)");

    let metrics = setup.gateway.metrics().await;
    assert!(
        metrics.absent("amtgw_connections_failed_total", &[]),
        "{}",
        metrics.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_the_gateway_as_its_http_proxy_reaches_the_device_it_names() {
    let setup = setup().await;
    let gateway = setup.gateway.addr(Service::Wsman);
    // A proxy request names the device in its target (absolute-form) and in Host; the device
    // gets both unchanged, and digest authentication holds end to end.
    let proxy = vec!["--proxy".to_owned(), format!("http://{gateway}")];
    let body = curl_get("http://amt-b:16992/wsman", &proxy).await;
    assert_general_settings(&body, "amt-b", "curl --proxy, http://amt-b:16992/wsman");
    let body = curl_get("http://127.0.0.3:16992/wsman", &proxy).await;
    assert_general_settings(&body, "amt-r", "curl --proxy, a range device by address");

    let metrics = setup.gateway.metrics().await;
    assert!(
        metrics.absent("amtgw_connections_failed_total", &[]),
        "{}",
        metrics.0
    );
}

/// Reads one line ending in CRLF (without it); `None` at EOF before any byte.
async fn read_line(conn: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n") {
        match conn.read(&mut byte).await {
            Ok(0) | Err(_) if got.is_empty() => return None,
            Ok(0) | Err(_) => panic!("EOF inside a line: {got:?}"),
            Ok(_) => got.push(byte[0]),
        }
    }
    got.truncate(got.len() - 2);
    Some(String::from_utf8(got).unwrap())
}

/// Reads one HTTP response (a Content-Length or chunked body), the body de-chunked; `None` at
/// EOF before any byte.
async fn read_response(conn: &mut TcpStream) -> Option<String> {
    let mut head = String::new();
    loop {
        let line = match read_line(conn).await {
            Some(line) => line,
            None if head.is_empty() => return None,
            None => panic!("EOF inside a response head: {head}"),
        };
        head.push_str(&line);
        head.push_str("\r\n");
        if line.is_empty() {
            break;
        }
    }
    let mut body = Vec::new();
    if head.contains("Transfer-Encoding: chunked") {
        loop {
            let size = read_line(conn).await.expect("a chunk size");
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0u8; size + 2];
            conn.read_exact(&mut chunk).await.unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        body.resize(length, 0);
        conn.read_exact(&mut body).await.unwrap();
    }
    Some(head + &String::from_utf8(body).unwrap())
}

/// WS-Identify needs no authentication, and the simulator keeps the connection open after it.
fn identify(host: &str) -> String {
    let body = std::fs::read_to_string(identify_xml()).unwrap();
    format!(
        "POST /wsman HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_naming_another_host_on_the_same_connection_is_refused() {
    let setup = setup().await;
    let mut conn = setup.gateway.connect(Service::Wsman).await;
    conn.write_all(identify("amt-a").as_bytes()).await.unwrap();
    let first = read_response(&mut conn).await.expect("an answer");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert_identify_response(&first, "Host: amt-a");
    // The same host again is fine on the same connection.
    conn.write_all(identify("AMT-A").as_bytes()).await.unwrap();
    let again = read_response(&mut conn).await.expect("an answer");
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");

    conn.write_all(identify("amt-b").as_bytes()).await.unwrap();
    assert_eq!(
        read_response(&mut conn).await,
        None,
        "the request for amt-b must get no answer, from either device"
    );
    let metrics = setup
        .gateway
        .metrics_settled(|m| m.sample("amtgw_connections_closed_total", &[]).is_some())
        .await;
    assert_eq!(metrics.failed("host_mismatch"), 1.0, "{}", metrics.0);
    assert_eq!(
        metrics.value("amtgw_connections_failed_total", &[]),
        1.0,
        "exactly one reason"
    );
}

/// Sends `request` on a new connection and reads the answer up to the gateway's close.
async fn refused(setup: &Setup, request: &[u8]) -> String {
    let conn = setup.gateway.connect(Service::Wsman).await;
    let answer = common::exchange(conn, request).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

async fn assert_only_failure(setup: &Setup, reason: &str) {
    let metrics = setup
        .gateway
        .metrics_settled(|m| {
            m.sample("amtgw_connections_failed_total", &[("reason", reason)])
                .is_some()
        })
        .await;
    assert_eq!(metrics.failed(reason), 1.0, "{}", metrics.0);
    assert_eq!(
        metrics.value("amtgw_connections_failed_total", &[]),
        1.0,
        "exactly one reason: {}",
        metrics.0
    );
    assert!(
        metrics.absent("amtgw_device_connect_duration_seconds", &[]),
        "no device was dialled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_host_is_answered_400_as_bad_request() {
    let setup = setup().await;
    let answer = refused(&setup, b"POST /wsman HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("no Host header"), "{answer}");
    assert_only_failure(&setup, "bad_request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_answered_400_as_bad_request() {
    let setup = setup().await;
    // What a TLS client would send to the plain port.
    let answer = refused(&setup, b"\x16\x03\x01\x00\x05hello\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert_only_failure(&setup, "bad_request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_is_answered_431_as_head_too_large() {
    let setup = setup().await;
    let port = setup.gateway.addr(Service::Wsman).port();
    let big = format!("X-Padding: {}", "x".repeat(20 * 1024));
    let (code, body) = curl_refused(
        &format!("http://amt-a:{port}/wsman"),
        &[
            "--resolve".into(),
            format!("amt-a:{port}:127.0.0.1"),
            "-H".into(),
            big,
        ],
    )
    .await;
    assert_eq!(code, "431", "{body}");
    assert_only_failure(&setup, "head_too_large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_outside_every_device_and_range_is_answered_421_as_no_route() {
    let setup = setup().await;
    let gateway = setup.gateway.addr(Service::Wsman);
    let (code, body) = curl_refused(
        &wsman_url(gateway),
        &["-H".into(), "Host: 127.0.0.4".into()],
    )
    .await;
    assert_eq!(code, "421", "{body}");
    assert!(body.contains("no_route"), "{body}");
    assert_only_failure(&setup, "no_route").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_name_is_answered_421_as_no_route() {
    let setup = setup().await;
    let port = setup.gateway.addr(Service::Wsman).port();
    let (code, body) = curl_refused(
        &format!("http://amt-z:{port}/wsman"),
        &["--resolve".into(), format!("amt-z:{port}:127.0.0.1")],
    )
    .await;
    assert_eq!(code, "421", "{body}");
    assert_only_failure(&setup, "no_route").await;
}

/// Chunk framing, not the bytes, says where a request ends: a request lookalike at the start
/// of a chunk (inside an XML comment the device ignores) is body, and the next real request on
/// the connection still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lookalike_inside_a_chunked_body_is_not_a_request() {
    let setup = setup().await;
    let xml = std::fs::read_to_string(identify_xml()).unwrap();
    let lookalike = "GET / HTTP/1.1\r\nHost: amt-b\r\n\r\n";
    let chunks = ["<!--", lookalike, "-->", xml.as_str()];
    let mut request = String::from(
        "POST /wsman HTTP/1.1\r\nHost: amt-a\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for chunk in chunks {
        request.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    request.push_str("0\r\n\r\n");

    let mut conn = setup.gateway.connect(Service::Wsman).await;
    conn.write_all(request.as_bytes()).await.unwrap();
    let answer = read_response(&mut conn).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_identify_response(&answer, "chunked Identify with a lookalike");
    conn.write_all(identify("amt-a").as_bytes()).await.unwrap();
    let next = read_response(&mut conn).await.expect("an answer");
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
    drop(conn);

    let metrics = setup
        .gateway
        .metrics_settled(|m| m.sample("amtgw_connections_closed_total", &[]).is_some())
        .await;
    assert!(
        metrics.absent("amtgw_connections_failed_total", &[]),
        "{}",
        metrics.0
    );
}

/// The README's "Routing by Host" shows `config/host.toml` verbatim, and it is valid.
#[test]
fn the_readme_shows_the_host_routing_config() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let file = std::fs::read_to_string(repo_path("config/host.toml")).unwrap();
    assert!(
        readme.contains(&format!("```toml\n{file}```")),
        "README.md does not show config/host.toml verbatim"
    );
    let config = amtgw::Config::load(&repo_path("config/host.toml")).unwrap();
    let wsman = config.services.iter().find(|s| s.service == Service::Wsman);
    assert_eq!(wsman.map(|s| s.routing), Some(amtgw::config::Routing::Host));
}
