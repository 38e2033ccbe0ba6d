//! Bytes through the gateway: both directions, large transfers, half-close each way, routing
//! by alias address, and the summary metrics of a clean session.
#![allow(clippy::unwrap_used)]

mod common;

use amtgw::Service;
use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn pinned_echo() -> (TestGateway, std::net::SocketAddr) {
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = echo_device(DeviceTls::new(identity)).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &format!("trust = \"pin\"\npins = [\"{pin}\"]"),
    ))
    .await;
    (gateway, device)
}

#[tokio::test]
async fn relays_bytes_both_ways_and_counts_them() {
    let (gateway, _) = pinned_echo().await;
    let answer = exchange(
        gateway.connect(Service::Wsman).await,
        b"POST /wsman HTTP/1.1\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(answer, b"POST /wsman HTTP/1.1\r\n\r\n");

    let metrics = gateway.metrics().await;
    let labels = |direction| [("service", "wsman"), ("direction", direction)];
    assert_eq!(
        metrics.value("amtgw_relayed_bytes_total", &labels("to_device")),
        24.0
    );
    assert_eq!(
        metrics.value("amtgw_relayed_bytes_total", &labels("to_console")),
        24.0
    );
    assert_eq!(
        metrics.value(
            "amtgw_connections_closed_total",
            &[("service", "wsman"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        metrics.value(
            "amtgw_connections_established_total",
            &[("service", "wsman")]
        ),
        1.0
    );
    assert_eq!(
        metrics.value(
            "amtgw_tls_handshake_duration_seconds_count",
            &[("service", "wsman"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        metrics.value("amtgw_connections_open", &[("service", "wsman")]),
        0.0
    );
    assert_eq!(
        metrics.value(
            "amtgw_exchange_duration_seconds_count",
            &[("service", "wsman")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_100_megabytes_intact() {
    let (gateway, _) = pinned_echo().await;
    send_100_megabytes_and_check_the_echo(gateway.connect(Service::Wsman).await).await;
}

/// As `amtgw run` does it: connections on data-path workers, here with busy polling on, so the
/// relay's spinning path and its backlog (the echo pushes back) carry every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_intact_on_workers_with_busy_polling() {
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = echo_device(DeviceTls::new(identity)).await;
    let toml = one_device_config(device, &format!("trust = \"pin\"\npins = [\"{pin}\"]"))
        .replace("[gateway]\n", "[gateway]\nbusy_poll = \"200us\"\n");
    let config =
        amtgw::Config::from_toml("<test config>", std::path::Path::new("."), &toml).unwrap();
    assert_eq!(config.gateway.busy_poll.as_micros(), 200);
    let workers = std::sync::Arc::new(amtgw::workers::Workers::start(2).unwrap());
    let gateway = TestGateway::start_with(config, Some(workers)).await;
    send_100_megabytes_and_check_the_echo(gateway.connect(Service::Wsman).await).await;
    let answer = exchange(gateway.connect(Service::Wsman).await, b"one more")
        .await
        .unwrap();
    assert_eq!(answer, b"one more");
    let closed_ok = |m: &Metrics| {
        m.sample(
            "amtgw_connections_closed_total",
            &[("service", "wsman"), ("outcome", "ok")],
        )
    };
    let metrics = gateway
        .metrics_settled(|m| closed_ok(m).is_some_and(|n| n >= 2.0))
        .await;
    assert_eq!(closed_ok(&metrics), Some(2.0));
    assert_eq!(
        metrics.value("amtgw_connections_open", &[("service", "wsman")]),
        0.0
    );
}

async fn send_100_megabytes_and_check_the_echo(conn: TcpStream) {
    const TOTAL: usize = 100 * 1024 * 1024;
    let (mut rx, mut tx) = conn.into_split();
    let writer = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        let mut block = vec![0u8; 256 * 1024];
        let mut sent = 0usize;
        let mut counter = 0u32;
        while sent < TOTAL {
            for chunk in block.chunks_mut(4) {
                chunk.copy_from_slice(&counter.to_le_bytes());
                counter = counter.wrapping_add(1);
            }
            hasher.update(&block);
            tx.write_all(&block).await.unwrap();
            sent += block.len();
        }
        tx.shutdown().await.unwrap();
        hasher.finalize()
    });
    let mut hasher = Sha256::new();
    let mut received = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = rx.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        received += n;
    }
    assert_eq!(received, TOTAL);
    assert_eq!(hasher.finalize(), writer.await.unwrap());
}

#[tokio::test]
async fn console_half_close_reaches_device_and_answer_still_flows_back() {
    // The device answers only after it sees the console's EOF: proof the FIN was relayed
    // while the other direction stayed open.
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = tls_device(DeviceTls::new(identity), |mut stream| async move {
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        stream
            .write_all(format!("got {} bytes then EOF", request.len()).as_bytes())
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
    })
    .await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &format!("trust = \"pin\"\npins = [\"{pin}\"]"),
    ))
    .await;
    let answer = exchange(gateway.connect(Service::Wsman).await, b"hello")
        .await
        .unwrap();
    assert_eq!(answer, b"got 5 bytes then EOF");
}

#[tokio::test]
async fn device_half_close_reaches_console_and_console_can_still_send() {
    // AMT closes after a 401: the console must see EOF promptly, and bytes it still sends
    // must reach the device.
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let seen_tx = std::sync::Mutex::new(Some(seen_tx));
    let device = tls_device(DeviceTls::new(identity), move |mut stream| {
        let seen_tx = seen_tx.lock().unwrap().take();
        async move {
            let mut request = [0u8; 7];
            stream.read_exact(&mut request).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            stream.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            if let Some(tx) = seen_tx {
                let _ = tx.send(rest);
            }
        }
    })
    .await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &format!("trust = \"pin\"\npins = [\"{pin}\"]"),
    ))
    .await;
    let mut conn = gateway.connect(Service::Wsman).await;
    conn.write_all(b"request").await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 401"));
    conn.write_all(b"late bytes").await.unwrap();
    conn.shutdown().await.unwrap();
    assert_eq!(seen_rx.await.unwrap(), b"late bytes");
}

#[tokio::test]
async fn alias_addresses_select_devices_on_every_service() {
    // Two devices, each reached through its own loopback alias on all three legacy services.
    let a = amt_self_signed(false, false);
    let b = amt_self_signed(false, false);
    let (pin_a, pin_b) = (a.cert_pin(), b.cert_pin());
    let tag = |name: &'static str| {
        move |mut stream: tokio_rustls::server::TlsStream<TcpStream>| async move {
            let mut buf = [0u8; 16];
            let n = stream.read(&mut buf).await.unwrap();
            stream
                .write_all(format!("{name}:").as_bytes())
                .await
                .unwrap();
            stream.write_all(&buf[..n]).await.unwrap();
            stream.shutdown().await.unwrap();
        }
    };
    let dev_a = tls_device(DeviceTls::new(a), tag("a")).await;
    let dev_b = tls_device(DeviceTls::new(b), tag("b")).await;
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[services.wsman]
listen_port = 0
bind = []
[services.redirection]
listen_port = 0
bind = []
[services.dash]
listen_port = 0
bind = []

[[devices]]
name = "a"
host = "127.0.0.1"
listen = "127.0.0.2"
ports = {{ wsman = {pa}, redirection = {pa}, dash = {pa} }}
trust = "pin"
pins = ["{pin_a}"]

[[devices]]
name = "b"
host = "127.0.0.1"
listen = "127.0.0.3"
ports = {{ wsman = {pb}, redirection = {pb}, dash = {pb} }}
trust = "pin"
pins = ["{pin_b}"]
"#,
        pa = dev_a.port(),
        pb = dev_b.port()
    );
    let gateway = TestGateway::start(&config).await;
    for service in Service::RELAYED {
        for (ip, expected) in [("127.0.0.2", "a:ping"), ("127.0.0.3", "b:ping")] {
            let conn = TcpStream::connect(gateway.addr_on(service, ip))
                .await
                .unwrap();
            let answer = exchange(conn, b"ping").await.unwrap();
            assert_eq!(
                String::from_utf8(answer).unwrap(),
                expected,
                "{service} via {ip}"
            );
        }
    }
}

#[tokio::test]
async fn device_closing_without_close_notify_ends_the_session_cleanly() {
    // Embedded TLS stacks often drop TCP without close_notify after their answer; the console
    // must get the answer and an EOF, and the session counts as closed normally.
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = tls_device(DeviceTls::new(identity), |mut stream| async move {
        let mut request = [0u8; 4];
        stream.read_exact(&mut request).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 401 Unauthorized\r\n\r\n")
            .await
            .unwrap();
        stream.flush().await.unwrap();
        let (tcp, _) = stream.into_inner();
        drop(tcp);
    })
    .await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &format!("trust = \"pin\"\npins = [\"{pin}\"]"),
    ))
    .await;
    let answer = exchange(gateway.connect(Service::Wsman).await, b"POST")
        .await
        .unwrap();
    assert_eq!(answer, b"HTTP/1.1 401 Unauthorized\r\n\r\n");
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.value(
            "amtgw_connections_closed_total",
            &[("service", "wsman"), ("outcome", "ok")]
        ),
        1.0,
        "{}",
        metrics.0
    );
}
