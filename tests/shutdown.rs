//! Graceful shutdown: stop accepting, keep relaying live sessions until the deadline, then cut.
#![allow(clippy::unwrap_used)]

mod common;

use amtgw::Service;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn echo_gateway(shutdown_timeout: &str) -> TestGateway {
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = echo_device(DeviceTls::new(identity)).await;
    let config = one_device_config(device, &format!("trust = \"pin\"\npins = [\"{pin}\"]"))
        .replace(
            "shutdown_timeout = \"5s\"",
            &format!("shutdown_timeout = \"{shutdown_timeout}\""),
        );
    TestGateway::start(&config).await
}

#[tokio::test]
async fn drains_live_sessions_and_refuses_new_ones() {
    let gateway = echo_gateway("30s").await;
    let listen = gateway.addr(Service::Wsman);
    let admin = gateway.admin;
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    let mut live = gateway.connect(Service::Wsman).await;
    live.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    live.read_exact(&mut buf).await.unwrap();

    gateway.shutdown.cancel();
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    let refused = TcpStream::connect(listen).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // The live session keeps working through the drain.
    assert_eq!(
        exchange(live, b"during drain").await.unwrap(),
        b"during drain"
    );
    let report = gateway.task.await.unwrap();
    assert!(report.drained(), "{report:?}");
}

/// The log, as JSON lines, of everything on this thread (a current-thread test runtime, no
/// data-path workers: the gateway's connections log here too).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn cuts_sessions_still_open_at_the_deadline_with_a_warning() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let gateway = echo_gateway("200ms").await;
    let mut live = gateway.connect(Service::Wsman).await;
    live.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 1];
    live.read_exact(&mut buf).await.unwrap();
    let report = gateway.stop().await;
    assert_eq!(report.cut, 1);
    expect_closed(live).await;

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let closed: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["message"] == "connection closed")
        .collect();
    assert_eq!(closed.len(), 1, "{text}");
    assert_eq!(closed[0]["outcome"], "shutdown", "{text}");
    assert_eq!(
        closed[0]["level"], "WARN",
        "a cut session is a failure: {text}"
    );
}
