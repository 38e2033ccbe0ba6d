//! What an operator scrapes: metric names, labels and values after scripted connections, both
//! exposition formats, `/devices`, and opt-in per-device series.
#![allow(clippy::unwrap_used)]

mod common;

use amtgw::Service;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A device that answers each request line with a response, WS-Man style.
async fn request_response_device(identity: Identity) -> std::net::SocketAddr {
    tls_device(DeviceTls::new(identity), |mut stream| async move {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = stream.shutdown().await;
    })
    .await
}

async fn raw_get(addr: std::net::SocketAddr, path: &str, accept: &str) -> (String, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nAccept: {accept}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn a_session_fills_every_latency_histogram_and_counter() {
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = request_response_device(identity).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &format!("trust = \"pin\"\npins = [\"{pin}\"]"),
    ))
    .await;

    // Three request/response exchanges on one connection, then a clean close.
    let mut conn = gateway.connect(Service::Wsman).await;
    for request in [&b"first"[..], b"second", b"third"] {
        conn.write_all(request).await.unwrap();
        let mut answer = vec![0u8; request.len()];
        conn.read_exact(&mut answer).await.unwrap();
    }
    assert_eq!(exchange(conn, b"").await.unwrap(), b"");

    let m = gateway.metrics().await;
    let wsman = [("service", "wsman")];
    let ok = [("service", "wsman"), ("outcome", "ok")];
    assert_eq!(m.value("amtgw_connections_accepted_total", &wsman), 1.0);
    assert_eq!(m.value("amtgw_connections_established_total", &wsman), 1.0);
    assert_eq!(m.value("amtgw_connections_closed_total", &ok), 1.0);
    assert_eq!(m.value("amtgw_connections_open", &wsman), 0.0);
    assert_eq!(
        m.value(
            "amtgw_tls_handshakes_total",
            &[("service", "wsman"), ("handshake", "full")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "amtgw_relayed_bytes_total",
            &[("service", "wsman"), ("direction", "to_device")]
        ),
        16.0
    );
    assert_eq!(m.value("amtgw_connect_duration_seconds_count", &ok), 1.0);
    // The deprecated name of the same histogram, exported for one more release.
    assert_eq!(
        m.value("amtgw_device_connect_duration_seconds_count", &ok),
        1.0
    );
    assert_eq!(
        m.value("amtgw_tls_handshake_duration_seconds_count", &ok),
        1.0
    );
    assert_eq!(
        m.value("amtgw_first_byte_duration_seconds_count", &wsman),
        1.0
    );
    assert_eq!(m.value("amtgw_connection_duration_seconds_count", &ok), 1.0);
    assert_eq!(
        m.value("amtgw_exchange_duration_seconds_count", &wsman),
        3.0,
        "one per request/response"
    );
    // Loopback handshakes take well under a second: every observation sits in the 1 s bucket.
    assert_eq!(
        m.value(
            "amtgw_tls_handshake_duration_seconds_bucket",
            &[("service", "wsman"), ("outcome", "ok"), ("le", "1.0")]
        ),
        1.0
    );
    let handshake_sum = m.value("amtgw_tls_handshake_duration_seconds_sum", &ok);
    assert!(
        handshake_sum > 0.0 && handshake_sum < 1.0,
        "{handshake_sum}"
    );
    assert_eq!(
        m.value(
            "amtgw_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[tokio::test]
async fn metrics_speak_openmetrics_when_asked_and_classic_text_otherwise() {
    let identity = amt_self_signed(false, false);
    let gateway = TestGateway::start(&one_device_config(echo_device(DeviceTls::new(identity)).await, "trust = \"pin\"\npins = [\"cert-sha256:00000000000000000000000000000000000000000000000000000000000000ff\"]")).await;
    // Families appear once they have a sample.
    expect_refused(gateway.connect(Service::Wsman).await).await;
    let (head, body) = raw_get(
        gateway.admin,
        "/metrics",
        "application/openmetrics-text; version=1.0.0",
    )
    .await;
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.trim_end().ends_with("# EOF"));
    assert!(
        body.contains("# TYPE amtgw_connections_accepted counter"),
        "{body}"
    );

    let (head, body) = raw_get(gateway.admin, "/metrics", "text/plain").await;
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(!body.contains("# EOF"));
    assert!(
        body.contains("# TYPE amtgw_connections_accepted_total counter"),
        "{body}"
    );
    assert!(body.contains("# TYPE amtgw_build_info gauge"), "{body}");
}

#[tokio::test]
async fn devices_endpoint_shows_certificate_and_last_handshake() {
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = echo_device(DeviceTls::new(identity)).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &format!("trust = \"pin\"\npins = [\"{pin}\"]"),
    ))
    .await;
    let (status, body) = http_get(gateway.admin, "/devices").await;
    assert_eq!(status, 200);
    let before: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(before["devices"][0]["last_handshake"].is_null(), "{before}");

    assert_eq!(
        exchange(gateway.connect(Service::Wsman).await, b"x")
            .await
            .unwrap(),
        b"x"
    );
    let (_, body) = http_get(gateway.admin, "/devices").await;
    let after: serde_json::Value = serde_json::from_str(&body).unwrap();
    let dut = &after["devices"][0];
    assert_eq!(dut["name"], "dut");
    assert_eq!(dut["trust"], "pin");
    assert_eq!(dut["pins"][0], pin.as_str());
    assert_eq!(dut["open_connections"], 0);
    let last = &dut["last_handshake"];
    assert_eq!(last["result"], "ok");
    assert_eq!(last["tls_version"], "TLSv1_3");
    assert!(last["cipher"].as_str().unwrap().starts_with("TLS13_"));
    assert_eq!(last["certificate"]["certificate_pin"], pin.as_str());
    assert!(
        last["certificate"]["subject"]
            .as_str()
            .unwrap()
            .contains("CN=Unknown")
    );
    assert!(last["certificate"]["not_after"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn devices_endpoint_shows_a_pin_mismatch_with_the_presented_certificate() {
    let pinned = amt_self_signed(false, false);
    let presented = amt_self_signed(false, false);
    let presented_pin = presented.cert_pin();
    let device = echo_device(DeviceTls::new(presented)).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &format!("trust = \"pin\"\npins = [\"{}\"]", pinned.cert_pin()),
    ))
    .await;
    expect_refused(gateway.connect(Service::Wsman).await).await;
    let (_, body) = http_get(gateway.admin, "/devices").await;
    let devices: serde_json::Value = serde_json::from_str(&body).unwrap();
    let last = &devices["devices"][0]["last_handshake"];
    assert_eq!(last["result"], "pin_mismatch");
    assert!(
        last["error"].as_str().unwrap().contains(&presented_pin),
        "{last}"
    );
}

#[tokio::test]
async fn per_device_series_appear_only_when_enabled() {
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = echo_device(DeviceTls::new(identity)).await;
    let trust = format!("trust = \"pin\"\npins = [\"{pin}\"]");

    let off = TestGateway::start(&one_device_config(device, &trust)).await;
    exchange(off.connect(Service::Wsman).await, b"x")
        .await
        .unwrap();
    assert!(!off.metrics().await.0.contains("device=\"dut\""));

    let on_config = one_device_config(device, &trust)
        .replace("[admin]", "[metrics]\nper_device = true\n\n[admin]");
    let on = TestGateway::start(&on_config).await;
    exchange(on.connect(Service::Wsman).await, b"x")
        .await
        .unwrap();
    let m = on.metrics().await;
    assert_eq!(
        m.value(
            "amtgw_device_connections_total",
            &[("device", "dut"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "amtgw_device_relayed_bytes_total",
            &[("device", "dut"), ("direction", "to_console")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "amtgw_device_tls_handshake_duration_seconds_count",
            &[("device", "dut")]
        ),
        1.0
    );
    assert!(
        m.value(
            "amtgw_device_certificate_expiry_timestamp_seconds",
            &[("device", "dut")]
        ) > 1.0e9
    );
}

#[tokio::test]
async fn certificates_inside_the_expiry_window_are_counted() {
    // A window of 100 years makes "expires in 2100" soon and rcgen's default (4096) not.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Fleet CA");
    let device = echo_device(DeviceTls::new(ca.server_valid(
        &["127.0.0.1"],
        (2020, 1, 1),
        (2100, 1, 1),
    )))
    .await;
    let (cert, key) = ca
        .client_until("gateway", (2100, 1, 1))
        .write_pem(dir.path(), "client");
    let ca_file = ca.write_pem(dir.path(), "ca");
    let trust = format!(
        "trust = \"ca\"\nca_file = \"{ca_file}\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\""
    );
    let config = one_device_config(device, &trust)
        .replace("[gateway]", "[gateway]\nexpiry_warning = \"100y\"");
    let gateway = TestGateway::start(&config).await;
    let m = gateway.metrics().await;
    assert_eq!(
        m.value("amtgw_certificates_expiring", &[("kind", "client")]),
        1.0,
        "{}",
        m.0
    );
    assert!(
        m.value(
            "amtgw_client_certificate_expiry_timestamp_seconds",
            &[("certificate", &cert)]
        ) > 4.0e9
    );

    assert_eq!(
        exchange(gateway.connect(Service::Wsman).await, b"x")
            .await
            .unwrap(),
        b"x"
    );
    assert_eq!(
        gateway
            .metrics()
            .await
            .value("amtgw_certificates_expiring", &[("kind", "device")]),
        1.0
    );

    // Far from expiry: nothing counted.
    let relaxed = one_device_config(device, &trust);
    let gateway = TestGateway::start(&relaxed).await;
    exchange(gateway.connect(Service::Wsman).await, b"x")
        .await
        .unwrap();
    let m = gateway.metrics().await;
    assert_eq!(
        m.value("amtgw_certificates_expiring", &[("kind", "client")]),
        0.0
    );
    assert_eq!(
        m.value("amtgw_certificates_expiring", &[("kind", "device")]),
        0.0
    );
}

/// The process's own resources under the names every Prometheus client library uses, read
/// at scrape time (here the test process, which runs the gateway in-process).
#[tokio::test]
async fn process_metrics_are_scraped_with_sane_values() {
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = echo_device(DeviceTls::new(identity)).await;
    let gateway = TestGateway::start(&one_device_config(
        device,
        &format!("trust = \"pin\"\npins = [\"{pin}\"]"),
    ))
    .await;
    let before = gateway.metrics().await;
    let open = before.value("process_open_fds", &[]);
    let max = before.value("process_max_fds", &[]);
    assert!(open > 0.0 && open <= max, "open {open}, max {max}");
    assert!(before.value("process_resident_memory_bytes", &[]) > 1024.0 * 1024.0);
    assert!(
        before.value("process_virtual_memory_bytes", &[])
            >= before.value("process_resident_memory_bytes", &[])
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = before.value("process_start_time_seconds", &[]);
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "started {started}, now {now}"
    );
    // CPU time in seconds, not clock ticks: at most the wall time since start on every CPU.
    let cpu = before.value("process_cpu_seconds_total", &[]);
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    assert!(cpu >= 0.0 && cpu <= (now - started + 1.0) * cpus, "{cpu}");

    // Read anew at each scrape. (Descriptor counts are not compared: the other tests of this
    // binary open and close theirs in the same process meanwhile.)
    let mut live = gateway.connect(Service::Wsman).await;
    live.write_all(b"hold").await.unwrap();
    let mut buf = [0u8; 4];
    live.read_exact(&mut buf).await.unwrap();
    let during = gateway.metrics().await;
    assert!(during.value("process_open_fds", &[]) >= 4.0, "{}", during.0);
    assert!(during.value("process_cpu_seconds_total", &[]) >= cpu);

    // Both formats name them as client libraries do; OpenMetrics with their units.
    let (_, classic) = raw_get(gateway.admin, "/metrics", "*/*").await;
    assert!(
        classic.contains("# TYPE process_cpu_seconds_total counter"),
        "{classic}"
    );
    assert!(
        classic.contains("# TYPE process_open_fds gauge"),
        "{classic}"
    );
    let (_, openmetrics) = raw_get(
        gateway.admin,
        "/metrics",
        "application/openmetrics-text; version=1.0.0",
    )
    .await;
    assert!(
        openmetrics.contains("# UNIT process_resident_memory_bytes bytes"),
        "{openmetrics}"
    );
    assert!(
        openmetrics.contains("process_cpu_seconds_total "),
        "{openmetrics}"
    );
    drop(live);
}
