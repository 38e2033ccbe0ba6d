//! Hot reload: devices and listeners come and go, a broken config changes nothing, the file
//! watcher picks up edits, and live sessions are never touched.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use amtgw::{Config, Service};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn device_toml(name: &str, alias: &str, device: SocketAddr, pins: &[&str]) -> String {
    let quoted: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        "\n[[devices]]\nname = \"{name}\"\nhost = \"{}\"\nlisten = \"{alias}\"\nports = {{ wsman = {} }}\ntrust = \"pin\"\npins = [{}]\n",
        device.ip(),
        device.port(),
        quoted.join(", ")
    )
}

const HEAD: &str = r#"
[gateway]
watch_interval = "50ms"
shutdown_delay = "0s"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:0"
[services.wsman]
listen_port = 0
bind = []
[services.redirection]
enabled = false
[services.dash]
enabled = false
"#;

fn config(devices: &str) -> Config {
    Config::from_toml("<reload test>", Path::new("."), &format!("{HEAD}{devices}")).unwrap()
}

async fn pinned_echo() -> (SocketAddr, String) {
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    (echo_device(DeviceTls::new(identity)).await, pin)
}

#[tokio::test]
async fn reload_adds_and_removes_devices_with_their_alias_listeners() {
    let (a, pin_a) = pinned_echo().await;
    let (b, pin_b) = pinned_echo().await;
    let gateway =
        TestGateway::start_config(config(&device_toml("a", "127.0.0.2", a, &[&pin_a]))).await;
    let old_listener = gateway.addr_on(Service::Wsman, "127.0.0.2");
    assert_eq!(
        exchange(TcpStream::connect(old_listener).await.unwrap(), b"a")
            .await
            .unwrap(),
        b"a"
    );

    let summary = gateway
        .reload
        .apply(config(&device_toml("b", "127.0.0.3", b, &[&pin_b])))
        .await
        .unwrap();
    assert_eq!(summary.devices_added, ["b"]);
    assert_eq!(summary.devices_removed, ["a"]);
    assert_eq!(summary.listeners_removed, 1);
    let new_listener = summary.listeners_added[0].addr;
    assert_eq!(
        summary.to_string(),
        format!(
            "devices added: b; removed: a; listeners added: wsman {new_listener}; listeners removed: 1"
        )
    );
    assert_eq!(new_listener.ip().to_string(), "127.0.0.3");
    assert_eq!(
        exchange(TcpStream::connect(new_listener).await.unwrap(), b"b")
            .await
            .unwrap(),
        b"b"
    );

    // The removed device's listener is gone once its accept loop has seen the cancellation;
    // the admin scrape below is served after that task has run.
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.value("amtgw_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    let refused = TcpStream::connect(old_listener).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn a_device_whose_port_and_pins_changed_is_reported_and_reached_there() {
    let (a, pin_a) = pinned_echo().await;
    let (b, pin_b) = pinned_echo().await;
    let gateway =
        TestGateway::start_config(config(&device_toml("a", "127.0.0.2", a, &[&pin_a]))).await;
    let listener = gateway.addr_on(Service::Wsman, "127.0.0.2");
    // The same device, moved to another port with a new certificate (b's echo device).
    let summary = gateway
        .reload
        .apply(config(&device_toml("a", "127.0.0.2", b, &[&pin_b])))
        .await
        .unwrap();
    assert_eq!(
        summary.devices_changed,
        [("a".to_owned(), vec!["ports", "trust"])]
    );
    assert_eq!(summary.to_string(), "changed: a (ports, trust)");
    assert_eq!(
        exchange(TcpStream::connect(listener).await.unwrap(), b"moved")
            .await
            .unwrap(),
        b"moved"
    );
    // Nothing changed: said so.
    let summary = gateway
        .reload
        .apply(config(&device_toml("a", "127.0.0.2", b, &[&pin_b])))
        .await
        .unwrap();
    assert_eq!(summary.to_string(), "no device or listener changed");
    gateway.stop().await;
}

#[tokio::test]
async fn a_broken_config_file_is_rejected_and_the_running_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("amtgw.toml");
    let (a, pin_a) = pinned_echo().await;
    let good = format!("{HEAD}{}", device_toml("a", "127.0.0.2", a, &[&pin_a]));
    std::fs::write(&path, &good).unwrap();
    let gateway = TestGateway::start_file(&path).await;
    let listener = gateway.addr_on(Service::Wsman, "127.0.0.2");

    std::fs::write(
        &path,
        good.replace("[gateway]", "[gateway]\nmax_conections = 5"),
    )
    .unwrap();
    let err = gateway.reload.reload().await.unwrap_err();
    assert_eq!(err.kind(), "config_invalid", "{err}");
    assert!(err.to_string().contains("max_conections"), "{err}");

    assert_eq!(
        exchange(TcpStream::connect(listener).await.unwrap(), b"still")
            .await
            .unwrap(),
        b"still"
    );
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.value(
            "amtgw_config_reloads_total",
            &[("result", "config_invalid")]
        ),
        1.0
    );
    assert!(metrics.absent("amtgw_config_reloads_total", &[("result", "ok")]));
}

#[tokio::test]
async fn an_edited_config_file_is_picked_up_by_the_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("amtgw.toml");
    let (a, pin_a) = pinned_echo().await;
    let (b, pin_b) = pinned_echo().await;
    let first = format!("{HEAD}{}", device_toml("a", "127.0.0.2", a, &[&pin_a]));
    std::fs::write(&path, &first).unwrap();
    let mut gateway = TestGateway::start_file(&path).await;

    std::fs::write(
        &path,
        format!("{first}{}", device_toml("b", "127.0.0.3", b, &[&pin_b])),
    )
    .unwrap();
    gateway.next_reload().await;
    let (_, body) = http_get(gateway.admin, "/devices").await;
    let devices: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transfer_survives_reloads_that_add_remove_and_repin_devices() {
    const TOTAL: usize = 32 * 1024 * 1024;
    let (a, pin_a) = pinned_echo().await;
    let (c, pin_c) = pinned_echo().await;
    let other_pin = amt_self_signed(false, false).cert_pin();
    let gateway =
        TestGateway::start_config(config(&device_toml("a", "127.0.0.2", a, &[&pin_a]))).await;
    let conn = TcpStream::connect(gateway.addr_on(Service::Wsman, "127.0.0.2"))
        .await
        .unwrap();
    let (mut rx, mut tx) = conn.into_split();
    let writer = tokio::spawn(async move {
        let block = vec![0x5a; 64 * 1024];
        for _ in 0..TOTAL / block.len() {
            tx.write_all(&block).await.unwrap();
        }
        tx.shutdown().await.unwrap();
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut received = 0;
        loop {
            let n = rx.read(&mut buf).await.unwrap();
            if n == 0 {
                return received;
            }
            assert!(buf[..n].iter().all(|b| *b == 0x5a));
            received += n;
        }
    });

    // While bytes flow: add a device, rotate the live device's pins, remove the other device,
    // and finally pin the live device to a certificate it does not have.
    let steps = [
        format!(
            "{}{}",
            device_toml("a", "127.0.0.2", a, &[&pin_a]),
            device_toml("c", "127.0.0.3", c, &[&pin_c])
        ),
        format!(
            "{}{}",
            device_toml("a", "127.0.0.2", a, &[&pin_a, &other_pin]),
            device_toml("c", "127.0.0.3", c, &[&pin_c])
        ),
        device_toml("a", "127.0.0.2", a, &[&pin_a]),
        device_toml("a", "127.0.0.2", a, &[&other_pin]),
    ];
    // Each step also rotates the client certificate (files written fresh, as an operator would).
    let dir = tempfile::tempdir().unwrap();
    let client_ca = TestCa::new("client CA");
    for (i, step) in steps.iter().enumerate() {
        let (cert, key) = client_ca
            .client("gateway")
            .write_pem(dir.path(), &format!("client-{i}"));
        let rotated =
            format!("[defaults]\nclient_cert = \"{cert}\"\nclient_key = \"{key}\"\n{step}");
        gateway.reload.apply(config(&rotated)).await.unwrap();
    }
    writer.await.unwrap();
    assert_eq!(
        reader.await.unwrap(),
        TOTAL,
        "the session started before the reloads finished intact"
    );

    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.value("amtgw_config_reloads_total", &[("result", "ok")]),
        steps.len() as f64
    );
    assert!(
        metrics.absent("amtgw_connections_failed_total", &[]),
        "{}",
        metrics.0
    );
    assert_eq!(
        metrics.value("amtgw_connections_closed_total", &[("outcome", "ok")]),
        1.0
    );
    // New connections see the last configuration: the device no longer matches its pin.
    expect_refused(
        TcpStream::connect(gateway.addr_on(Service::Wsman, "127.0.0.2"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(gateway.metrics().await.failed("pin_mismatch"), 1.0);
}

/// A listener is made transparent before it binds: a reload that would turn a bound one into a
/// `tproxy` listener is rejected, naming the fix, and changes nothing; between `redirect` and
/// `alias` routing a reload applies.
#[tokio::test]
async fn a_reload_switching_a_bound_listener_to_tproxy_is_rejected_as_restart_needed() {
    let address = common::loopback::private_loopback();
    let routed = |routing: &str| {
        Config::from_toml(
            "<reload test>",
            Path::new("."),
            &format!(
                r#"
[admin]
listen = "127.0.0.1:0"
[services.wsman]
listen_port = 16992
bind = ["{address}"]
routing = "{routing}"
[services.redirection]
enabled = false
[services.dash]
enabled = false
"#
            ),
        )
        .unwrap()
    };
    let gateway = TestGateway::start_config(routed("redirect")).await;
    let rejected = gateway.reload.apply(routed("tproxy")).await.unwrap_err();
    assert_eq!(rejected.kind(), "restart_needed", "{rejected}");
    assert!(rejected.to_string().contains("restart amtgw"), "{rejected}");
    let applied = gateway.reload.apply(routed("alias")).await.unwrap();
    assert_eq!(applied.listeners_removed, 0, "{applied:?}");
    let metrics = gateway.metrics().await;
    let reloads = |result| metrics.value("amtgw_config_reloads_total", &[("result", result)]);
    assert_eq!(reloads("restart_needed"), 1.0);
    assert_eq!(reloads("ok"), 1.0);
    gateway.stop().await;
}
