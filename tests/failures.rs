//! Each way a connection can fail closes that one connection, names the reason in the metrics
//! (and the summary log line), and leaves the gateway serving others.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use amtgw::Service;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn pinned(identity: &Identity) -> String {
    format!("trust = \"pin\"\npins = [\"{}\"]", identity.cert_pin())
}

/// A port where nothing listens, held for the test's life: a socket bound but not listening
/// answers connects with a reset, and no other process can take the port meanwhile.
fn closed_port() -> (socket2::Socket, std::net::SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

async fn fails_with(gateway: &TestGateway, reason: &str) {
    expect_refused(gateway.connect(Service::Wsman).await).await;
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.failed(reason),
        1.0,
        "reason {reason}:\n{}",
        metrics.0
    );
    let failures = metrics.value("amtgw_connections_failed_total", &[("service", "wsman")]);
    assert_eq!(
        failures, 1.0,
        "exactly one failure, of the expected reason:\n{}",
        metrics.0
    );
}

#[tokio::test]
async fn device_refusing_the_connection() {
    let identity = amt_self_signed(false, false);
    let (_held, closed) = closed_port();
    let gateway = TestGateway::start(&one_device_config(closed, &pinned(&identity))).await;
    fails_with(&gateway, "connect_refused").await;
}

#[tokio::test]
async fn device_resetting_during_the_handshake() {
    let identity = amt_self_signed(false, false);
    let device = tcp_device(|tcp| async move {
        // Linger 0 turns the close into a RST.
        let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
        drop(tcp);
    })
    .await;
    let gateway = TestGateway::start(&one_device_config(device, &pinned(&identity))).await;
    fails_with(&gateway, "device_reset").await;
}

#[tokio::test]
async fn device_speaking_plain_http_instead_of_tls() {
    let identity = amt_self_signed(false, false);
    let device = tcp_device(|mut tcp| async move {
        let _ = tcp
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
        let mut sink = Vec::new();
        let _ = tcp.read_to_end(&mut sink).await;
    })
    .await;
    let gateway = TestGateway::start(&one_device_config(device, &pinned(&identity))).await;
    fails_with(&gateway, "not_tls").await;
}

#[tokio::test]
async fn device_stalling_the_handshake() {
    let identity = amt_self_signed(false, false);
    let device = tcp_device(|mut tcp| async move {
        let mut sink = Vec::new();
        let _ = tcp.read_to_end(&mut sink).await;
    })
    .await;
    let config = one_device_config(device, &pinned(&identity)).replace(
        "handshake_timeout = \"2s\"",
        "handshake_timeout = \"200ms\"",
    );
    let gateway = TestGateway::start(&config).await;
    fails_with(&gateway, "handshake_timeout").await;
}

#[tokio::test]
async fn device_not_answering_the_tcp_connect() {
    // A listener whose accept queue is full drops further SYNs: the connect hangs. With a
    // backlog of 0 the queue holds one connection, which the filler takes.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let device = socket.local_addr().unwrap().as_socket().unwrap();
    let _filler = TcpStream::connect(device).await.unwrap();
    let identity = amt_self_signed(false, false);
    let config = one_device_config(device, &pinned(&identity))
        .replace("connect_timeout = \"2s\"", "connect_timeout = \"200ms\"");
    let gateway = TestGateway::start(&config).await;
    fails_with(&gateway, "connect_timeout").await;
    drop(socket);
}

#[tokio::test]
async fn idle_session_is_closed_after_the_idle_timeout() {
    let identity = amt_self_signed(false, false);
    let pin = pinned(&identity);
    let device = echo_device(DeviceTls::new(identity)).await;
    let config = one_device_config(device, &pin).replace(
        "default_device = \"dut\"",
        "default_device = \"dut\"\nidle_timeout = \"300ms\"",
    );
    let gateway = TestGateway::start(&config).await;
    let mut conn = gateway.connect(Service::Wsman).await;
    conn.write_all(b"still here").await.unwrap();
    let mut echo = [0u8; 10];
    conn.read_exact(&mut echo).await.unwrap();
    // Now silence: the gateway must close.
    expect_closed(conn).await;
    let metrics = gateway.metrics().await;
    assert_eq!(metrics.failed("idle_timeout"), 1.0, "{}", metrics.0);
}

#[tokio::test]
async fn console_resetting_during_the_handshake_ends_it_at_once() {
    let identity = amt_self_signed(false, false);
    let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel::<()>();
    let accepted_tx = std::sync::Mutex::new(Some(accepted_tx));
    let device = tcp_device(move |mut tcp| {
        let tx = accepted_tx.lock().unwrap().take();
        async move {
            if let Some(tx) = tx {
                let _ = tx.send(());
            }
            let mut sink = Vec::new();
            let _ = tcp.read_to_end(&mut sink).await;
        }
    })
    .await;
    // The handshake timeout is long: the close must come from the console leaving.
    let config = one_device_config(device, &pinned(&identity))
        .replace("handshake_timeout = \"2s\"", "handshake_timeout = \"60s\"");
    let gateway = TestGateway::start(&config).await;
    let mut conn = gateway.connect(Service::Wsman).await;
    conn.write_all(b"request").await.unwrap();
    accepted_rx.await.unwrap();
    // A reset, not a close: a console that closes after its request may just be done
    // sending (half-close) and waiting for the answer.
    conn.set_zero_linger().unwrap();
    drop(conn);
    // Ended by the reset, long before the 60 s handshake timeout, while the gateway runs.
    let closed = |m: &Metrics| {
        m.sample(
            "amtgw_connections_failed_total",
            &[("reason", "console_closed")],
        )
    };
    let metrics = gateway.metrics_settled(|m| closed(m).is_some()).await;
    assert_eq!(closed(&metrics), Some(1.0), "{}", metrics.0);
}

#[tokio::test]
async fn connection_without_a_route_is_closed_at_once() {
    let identity = amt_self_signed(false, false);
    // The device owns alias 127.0.0.2; the service also listens on 127.0.0.1 with no default.
    let (_held, closed) = closed_port();
    let config = one_device_config(closed, &pinned(&identity))
        .replace("default_device = \"dut\"", "")
        .replace("name = \"dut\"", "name = \"dut\"\nlisten = \"127.0.0.2\"");
    let gateway = TestGateway::start(&config).await;
    expect_refused(
        TcpStream::connect(gateway.addr_on(Service::Wsman, "127.0.0.1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(gateway.metrics().await.failed("no_route"), 1.0);
}

#[tokio::test]
async fn connections_past_the_global_limit_are_refused_and_others_continue() {
    let identity = amt_self_signed(false, false);
    let pin = pinned(&identity);
    let device = echo_device(DeviceTls::new(identity)).await;
    let config =
        one_device_config(device, &pin).replace("[gateway]", "[gateway]\nmax_connections = 1");
    let gateway = TestGateway::start(&config).await;
    let mut first = gateway.connect(Service::Wsman).await;
    first.write_all(b"one").await.unwrap();
    let mut echo = [0u8; 3];
    first.read_exact(&mut echo).await.unwrap();

    expect_refused(gateway.connect(Service::Wsman).await).await;
    assert_eq!(gateway.metrics().await.failed("limit"), 1.0);

    // The session holding the slot is undisturbed.
    assert_eq!(exchange(first, b"two").await.unwrap(), b"two");
}

#[tokio::test]
async fn connections_past_the_device_limit_are_refused() {
    let identity = amt_self_signed(false, false);
    // Two from one address would be allowed: the device's own limit is what refuses.
    let pin = format!(
        "{}\nmax_connections = 1\nmax_connections_per_source = 2",
        pinned(&identity)
    );
    let device = echo_device(DeviceTls::new(identity)).await;
    let gateway = TestGateway::start(&one_device_config(device, &pin)).await;
    let mut first = gateway.connect(Service::Wsman).await;
    first.write_all(b"one").await.unwrap();
    let mut echo = [0u8; 3];
    first.read_exact(&mut echo).await.unwrap();
    expect_refused(gateway.connect(Service::Wsman).await).await;
    assert_eq!(gateway.metrics().await.failed("device_limit"), 1.0);
}

#[tokio::test]
async fn a_failing_device_does_not_disturb_a_healthy_one() {
    let good = amt_self_signed(false, false);
    let bad = amt_self_signed(false, false);
    let good_addr = echo_device(DeviceTls::new(good.clone_identity())).await;
    let bad_addr = echo_device(DeviceTls::new(amt_self_signed(false, false))).await;
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[services.wsman]
listen_port = 0
bind = []
[services.redirection]
enabled = false
[services.dash]
enabled = false
[[devices]]
name = "good"
host = "127.0.0.1"
listen = "127.0.0.2"
ports = {{ wsman = {} }}
{}
[[devices]]
name = "bad"
host = "127.0.0.1"
listen = "127.0.0.3"
ports = {{ wsman = {} }}
{}
"#,
        good_addr.port(),
        pinned(&good),
        bad_addr.port(),
        pinned(&bad)
    );
    let gateway = TestGateway::start(&config).await;
    let mut good_conn = TcpStream::connect(gateway.addr_on(Service::Wsman, "127.0.0.2"))
        .await
        .unwrap();
    good_conn.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    good_conn.read_exact(&mut buf).await.unwrap();
    for _ in 0..20 {
        expect_refused(
            TcpStream::connect(gateway.addr_on(Service::Wsman, "127.0.0.3"))
                .await
                .unwrap(),
        )
        .await;
    }
    assert_eq!(exchange(good_conn, b"after").await.unwrap(), b"after");
    assert_eq!(gateway.metrics().await.failed("pin_mismatch"), 20.0);
}

#[tokio::test]
async fn a_device_reset_mid_answer_reaches_the_console_as_a_reset() {
    let identity = amt_self_signed(false, false);
    let device = tls_device(
        DeviceTls::new(identity.clone_identity()),
        |mut tls| async move {
            let mut request = [0u8; 7];
            tls.read_exact(&mut request).await.unwrap();
            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npart")
                .await
                .unwrap();
            tls.flush().await.unwrap();
            // The device crashes mid-answer: its TCP stack resets the connection.
            tls.get_ref().0.set_zero_linger().unwrap();
            drop(tls);
        },
    )
    .await;
    let gateway = TestGateway::start(&one_device_config(device, &pinned(&identity))).await;
    let mut console = gateway.connect(Service::Wsman).await;
    console.write_all(b"request").await.unwrap();
    let mut answer = Vec::new();
    let ended = console.read_to_end(&mut answer).await;
    assert_eq!(
        ended.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "a truncated answer must not end like a complete one (got {} bytes)",
        answer.len()
    );
    let metrics = gateway
        .metrics_settled(|m| m.sample("amtgw_connections_failed_total", &[]).is_some())
        .await;
    assert_eq!(metrics.failed("device_reset"), 1.0, "{}", metrics.0);
}

#[tokio::test]
async fn a_console_reset_reaches_the_device_as_a_reset() {
    let identity = amt_self_signed(false, false);
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let device = tls_device(DeviceTls::new(identity.clone_identity()), move |mut tls| {
        let seen = seen_tx.clone();
        async move {
            let mut request = [0u8; 7];
            tls.read_exact(&mut request).await.unwrap();
            seen.send(None).unwrap();
            let mut rest = Vec::new();
            let ended = tls.read_to_end(&mut rest).await;
            seen.send(Some(ended.map_err(|e| e.kind()))).unwrap();
        }
    })
    .await;
    let mut seen = seen_rx;
    let gateway = TestGateway::start(&one_device_config(device, &pinned(&identity))).await;
    let mut console = gateway.connect(Service::Wsman).await;
    console.write_all(b"request").await.unwrap();
    assert_eq!(seen.recv().await, Some(None), "the device got the request");
    console.set_zero_linger().unwrap();
    drop(console);
    assert_eq!(
        seen.recv().await,
        Some(Some(Err(std::io::ErrorKind::ConnectionReset))),
        "the console's reset reaches the device as a reset, not as a close"
    );
}

#[tokio::test]
async fn a_silent_console_is_closed_without_the_device_ever_being_contacted() {
    let identity = amt_self_signed(false, false);
    let (dialled_tx, mut dialled) = tokio::sync::mpsc::unbounded_channel::<()>();
    let device = tcp_device(move |_tcp| {
        let dialled = dialled_tx.clone();
        async move {
            let _ = dialled.send(());
        }
    })
    .await;
    let config = one_device_config(device, &pinned(&identity)).replace(
        "[gateway]",
        "[gateway]\nconsole_first_byte_timeout = \"200ms\"",
    );
    let gateway = TestGateway::start(&config).await;
    let mut silent = gateway.connect(Service::Wsman).await;
    let mut buf = [0u8; 1];
    assert_eq!(
        silent.read(&mut buf).await.unwrap(),
        0,
        "closed by the gateway"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(metrics.failed("console_timeout"), 1.0, "{}", metrics.0);
    assert!(dialled.try_recv().is_err(), "the device was never dialled");
    assert!(metrics.absent("amtgw_connect_duration_seconds", &[]));
}

#[tokio::test]
async fn idle_consoles_from_one_address_cannot_lock_out_other_consoles() {
    // The flood of the adversarial run, scaled down: one address holds many connections that
    // trickle a byte now and then; a console from another address must still get through.
    let identity = amt_self_signed(false, false);
    let pin = pinned(&identity);
    let device = echo_device(DeviceTls::new(identity)).await;
    let config = one_device_config(device, &pin)
        .replace("[gateway]", "[gateway]\nmax_connections = 40")
        .replace(
            "[services.wsman]",
            "[services.wsman]\nbind = [\"127.0.0.1\", \"127.0.0.2\"]",
        );
    let gateway = TestGateway::start(&config).await;
    let flood_target = gateway.addr_on(Service::Wsman, "127.0.0.1");
    let mut flood = Vec::new();
    for _ in 0..40 {
        let mut conn = TcpStream::connect(flood_target).await.unwrap();
        let _ = conn.write_all(b"x").await;
        flood.push(conn);
    }
    // Another console, from another address (127.0.0.2 -> 127.0.0.2).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let other = socket
        .connect(gateway.addr_on(Service::Wsman, "127.0.0.2"))
        .await
        .unwrap();
    assert_eq!(exchange(other, b"mine").await.unwrap(), b"mine");
    // Defaults only: a quarter of the gateway (10) per address, of which half a device's 8
    // (4) reach the device; the other 36 are refused.
    let refused = |m: &Metrics| {
        m.sample(
            "amtgw_connections_failed_total",
            &[("reason", "source_limit")],
        )
    };
    let metrics = gateway
        .metrics_settled(|m| refused(m).is_some_and(|n| n >= 36.0))
        .await;
    assert_eq!(refused(&metrics), Some(36.0), "{}", metrics.0);
    drop(flood);
}
