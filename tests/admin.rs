//! The admin listener is bounded and, with a token, authenticated: a half-sent request head
//! and a connection held too long are dropped, connections beyond the cap are closed at once
//! (and the listener still answers after), large bodies are refused, and `/devices`, the status
//! page `/` and repin need the bearer token while probes and scrapes never do.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use amtgw::{AdminLimits, Config};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PIN: &str = "cert-sha256:43b2b82426b7e01b903dd8d907dcf19f78ea2c5f6d78b6ea6af980d015856fb8";
const TOKEN: &str = "s3cret-admin-token";
/// Well under every timeout the tests configure as "long".
const PROMPTLY: Duration = Duration::from_secs(10);

fn long_limits() -> AdminLimits {
    AdminLimits {
        header_read_timeout: Duration::from_secs(120),
        connection_lifetime: Duration::from_secs(120),
        ..AdminLimits::default()
    }
}

fn config(extra_admin: &str, base: &Path) -> Config {
    // The device is never dialled: only the admin listener is exercised.
    let device: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let toml = one_device_config(device, &format!("trust = \"pin\"\npins = [\"{PIN}\"]")).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{extra_admin}\n"),
    );
    Config::from_toml("<admin test>", base, &toml).unwrap()
}

async fn start(limits: AdminLimits) -> TestGateway {
    TestGateway::start_admin_limited(config("", Path::new(".")), limits).await
}

/// Read until the server closes; what it sent, if anything.
async fn until_closed(conn: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(PROMPTLY, conn.read_to_end(&mut seen)).await;
    match read {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Err(_) => panic!("the admin listener kept the connection open"),
    }
    seen
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_head_is_dropped() {
    let gateway = start(AdminLimits {
        header_read_timeout: Duration::from_millis(200),
        ..long_limits()
    })
    .await;
    let mut conn = TcpStream::connect(gateway.admin).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let seen = until_closed(&mut conn).await;
    assert!(
        seen.is_empty() || seen.starts_with(b"HTTP/1.1 408"),
        "no answer but a timeout: {}",
        String::from_utf8_lossy(&seen)
    );
    assert_eq!(http_get(gateway.admin, "/healthz").await.0, 200);
}

#[tokio::test]
async fn a_connection_is_closed_after_its_lifetime() {
    let gateway = start(AdminLimits {
        connection_lifetime: Duration::from_millis(200),
        ..long_limits()
    })
    .await;
    let mut conn = TcpStream::connect(gateway.admin).await.unwrap();
    conn.write_all(b"GET /metr").await.unwrap();
    assert!(until_closed(&mut conn).await.is_empty());
}

#[tokio::test]
async fn admin_connections_beyond_the_cap_are_closed_and_metrics_still_answer_after() {
    let gateway = start(AdminLimits {
        max_connections: 2,
        ..long_limits()
    })
    .await;
    // Accepted in order: these two take both slots before the third is accepted.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(gateway.admin).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        held.push(conn);
    }
    let mut over = TcpStream::connect(gateway.admin).await.unwrap();
    assert!(
        until_closed(&mut over).await.is_empty(),
        "closed at accept, without an answer"
    );

    // The held clients give up; the server frees their slots before it closes them.
    for mut conn in held {
        conn.shutdown().await.unwrap();
        until_closed(&mut conn).await;
    }
    let (status, body) = http_get(gateway.admin, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("amtgw_build_info"));
}

#[tokio::test]
async fn a_request_body_over_the_limit_is_refused_with_413() {
    let gateway = start(long_limits()).await;
    let body = "x".repeat(AdminLimits::default().max_body + 1);
    let (status, _, answer) =
        http_send(gateway.admin, "POST", "/devices/dut/repin", "", &body).await;
    assert_eq!(status, 413, "{answer}");
}

#[tokio::test]
async fn a_non_loopback_admin_without_a_token_file_is_refused_with_the_fix() {
    let toml = one_device_config(
        "127.0.0.1:9".parse().unwrap(),
        &format!("trust = \"pin\"\npins = [\"{PIN}\"]"),
    )
    .replace("listen = \"127.0.0.1:0\"\n", "listen = \"0.0.0.0:0\"\n");
    let error = Config::from_toml("<admin test>", Path::new("."), &toml).unwrap_err();
    assert_eq!(error.key(), Some("admin.token_file"), "{error}");
    assert!(
        error.to_string().contains("set admin.token_file"),
        "{error}"
    );
}

async fn start_with_token() -> (tempfile::TempDir, TestGateway) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let config = config("token_file = \"admin.token\"", dir.path());
    let gateway = TestGateway::start_admin_limited(config, long_limits()).await;
    (dir, gateway)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

#[tokio::test]
async fn a_repin_without_the_token_is_refused_with_401() {
    let (_dir, gateway) = start_with_token().await;
    let (status, head, _) = http_send(gateway.admin, "POST", "/devices/dut/repin", "", "").await;
    assert_eq!(status, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
}

#[tokio::test]
async fn a_repin_with_a_wrong_token_is_refused_with_401() {
    let (_dir, gateway) = start_with_token().await;
    let (status, _, _) = http_send(
        gateway.admin,
        "POST",
        "/devices/dut/repin",
        &bearer("s3cret-admin-tokeN"),
        "",
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_repin_with_the_token_reaches_the_device() {
    let (_dir, gateway) = start_with_token().await;
    let (status, _, body) = http_send(
        gateway.admin,
        "POST",
        "/devices/dut/repin",
        &bearer(TOKEN),
        "",
    )
    .await;
    // Past authentication: `dut` is pinned, not trust-on-first-use.
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn with_a_token_devices_needs_it_and_probes_and_metrics_do_not() {
    let (_dir, gateway) = start_with_token().await;
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(http_get(gateway.admin, path).await.0, 200, "{path}");
    }
    assert_eq!(http_get(gateway.admin, "/devices").await.0, 401);
    let (status, _, body) = http_send(gateway.admin, "GET", "/devices", &bearer(TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"dut\""), "{body}");
}

#[tokio::test]
async fn with_a_token_the_status_page_needs_it_like_devices() {
    let (_dir, gateway) = start_with_token().await;
    assert_eq!(http_get(gateway.admin, "/").await.0, 401);
    let (status, _, body) = http_send(gateway.admin, "GET", "/", &bearer(TOKEN), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data-device=\"dut\""), "{body}");
}

#[tokio::test]
async fn the_status_page_is_uncached_html_allowed_no_script() {
    let gateway = start(long_limits()).await;
    let (status, head, body) = http_send(gateway.admin, "GET", "/", "", "").await;
    assert_eq!(status, 200, "{body}");
    let head = head.to_ascii_lowercase();
    for header in [
        "content-type: text/html; charset=utf-8",
        "cache-control: no-store",
        "content-security-policy: default-src 'none'; style-src 'unsafe-inline'",
    ] {
        assert!(head.contains(header), "{header} missing: {head}");
    }
}

#[tokio::test]
async fn a_changed_token_file_is_picked_up_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let toml = one_device_config(
        "127.0.0.1:9".parse().unwrap(),
        &format!("trust = \"pin\"\npins = [\"{PIN}\"]"),
    )
    .replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n",
    )
    .replace("[gateway]\n", "[gateway]\nwatch_interval = \"50ms\"\n");
    let path = dir.path().join("amtgw.toml");
    std::fs::write(&path, toml).unwrap();
    let mut gateway = TestGateway::start_file(&path).await;

    std::fs::write(dir.path().join("admin.token"), "a-new-token\n").unwrap();
    gateway.next_reload().await;
    let (old, _, _) = http_send(gateway.admin, "GET", "/devices", &bearer(TOKEN), "").await;
    assert_eq!(old, 401, "the old token no longer works");
    let (new, _, _) = http_send(gateway.admin, "GET", "/devices", &bearer("a-new-token"), "").await;
    assert_eq!(new, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let gateway = start(AdminLimits {
        header_read_timeout: Duration::from_millis(200),
        ..long_limits()
    })
    .await;
    let mut conn = TcpStream::connect(gateway.admin).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let seen = until_closed(&mut conn).await;
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200"), "answered first: {seen}");
    assert!(seen.ends_with("ok\n"), "and nothing after: {seen}");
}
