//! Graceful shutdown: not ready but still serving for `gateway.shutdown_delay`, then stop
//! accepting, keep relaying live sessions until the deadline, then cut.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use amtgw::Service;
use common::clients::{Spawned, announced_listener, without_amtgw_env};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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

// ---------------------------------------------------------------------------------------------
// `amtgw run` as a process, stopped by signals as Kubernetes and systemd stop it

/// One `amtgw run` process relaying wsman to a pinned echo device.
struct Running {
    process: Spawned,
    wsman: SocketAddr,
    admin: SocketAddr,
    /// The same configuration with the admin listener's real address, for `amtgw health`.
    health_config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(shutdown_delay: &str) -> Running {
        let identity = amt_self_signed(false, false);
        let pin = identity.cert_pin();
        let device = echo_device(DeviceTls::new(identity)).await;
        let config = one_device_config(device, &format!("trust = \"pin\"\npins = [\"{pin}\"]"))
            .replace(
                "shutdown_delay = \"0s\"",
                &format!("shutdown_delay = \"{shutdown_delay}\"\nlog_format = \"json\""),
            );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("amtgw.toml");
        std::fs::write(&path, &config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_amtgw"));
        command.arg("run").arg("--config").arg(&path);
        without_amtgw_env(&mut command);
        command.env("RUST_LOG", "info");
        let mut process = Spawned::start(&mut command);
        // The accept loop's line comes after the admin listener's.
        process.expect("\"listening\"").await;
        let (mut wsman, mut admin) = (None, None);
        for (service, addr) in process.transcript().lines().filter_map(announced_listener) {
            match service.as_str() {
                "wsman" => wsman = Some(addr),
                "admin" => admin = Some(addr),
                _ => {}
            }
        }
        let admin = admin.expect("no admin listener logged");
        let health_config = dir.path().join("health.toml");
        let admin_line = "[admin]\nlisten = \"127.0.0.1:0\"";
        assert!(config.contains(admin_line), "{config}");
        std::fs::write(
            &health_config,
            config.replace(admin_line, &format!("[admin]\nlisten = \"{admin}\"")),
        )
        .unwrap();
        Running {
            wsman: wsman.expect("no wsman listener logged"),
            admin,
            health_config,
            process,
            _dir: dir,
        }
    }

    /// `amtgw health` with `args`: its exit code and what it printed.
    fn health(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_amtgw"))
            .arg("health")
            .args(args)
            .env_remove("AMTGW_CONFIG")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.process.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Poll `/readyz` until it answers `status` (10 s at most).
    async fn readyz_becomes(&self, status: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (now, body) = http_get(self.admin, "/readyz").await;
            if now == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {now} ({body}); log:\n{}",
                self.process.transcript()
            );
            tokio::task::yield_now().await;
        }
    }

    /// A new console connection is relayed to the device and back.
    async fn served(&self, what: &[u8]) {
        let conn = TcpStream::connect(self.wsman).await.unwrap();
        assert_eq!(exchange(conn, what).await.unwrap(), what);
    }

    /// New connections are refused: the listener is closed (polled, 10 s at most, since the
    /// accept loops close just after the drain is logged).
    async fn refuses_connections(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect(self.wsman).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
                other => assert!(
                    Instant::now() < deadline,
                    "still accepting after the drain began: {other:?}"
                ),
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Kubernetes sends SIGTERM while it takes the pod out of the Service's endpoints: until every
/// node has followed, connections keep arriving and must be served. A second SIGTERM skips the
/// rest of the delay.
#[tokio::test]
async fn after_sigterm_readyz_is_503_while_new_connections_are_still_served_until_a_second_signal()
{
    let mut gateway = Running::start("60s").await;
    assert_eq!(gateway.readyz_becomes(200).await, "ready\n");
    // The container image's health check: the admin address from the configuration.
    let config = gateway.health_config.to_str().unwrap().to_owned();
    let (code, text) = gateway.health(&["--config", &config]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("/healthz at") && text.ends_with("ok\n"),
        "{text}"
    );
    let (code, text) = gateway.health(&["--config", &config, "--ready"]);
    assert_eq!(code, Some(0), "{text}");
    let mut live = TcpStream::connect(gateway.wsman).await.unwrap();
    live.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    live.read_exact(&mut buf).await.unwrap();

    gateway.signal("-TERM");
    let body = gateway.readyz_becomes(503).await;
    assert!(body.contains("draining"), "{body}");
    gateway
        .process
        .expect("shutting down: /readyz is 503; still accepting")
        .await;
    // Not ready, and still serving: a connection sent by a load balancer that has not yet
    // followed is relayed, and the live session goes on.
    gateway.served(b"during the delay").await;
    gateway.served(b"and again").await;
    assert_eq!(http_get(gateway.admin, "/healthz").await.0, 200);
    // Alive, not ready.
    let admin = gateway.admin.to_string();
    assert_eq!(gateway.health(&["--admin", &admin]).0, Some(0));
    let (code, text) = gateway.health(&["--admin", &admin, "--ready"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("unhealthy: /readyz answered 503 Service Unavailable: draining"),
        "{text}"
    );
    live.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    live.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");

    // The operator's second signal: the drain starts now, not in a minute.
    gateway.signal("-INT");
    gateway.process.expect("shutdown delay skipped").await;
    gateway
        .process
        .expect("shutting down: no new connections, draining")
        .await;
    gateway.refuses_connections().await;
    assert_eq!(
        gateway.readyz_becomes(503).await,
        "draining: shutdown in progress\n"
    );
    // The live session drains normally, and then the process exits 0.
    assert_eq!(
        exchange(live, b"during drain").await.unwrap(),
        b"during drain"
    );
    let status = gateway.process.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", gateway.process.transcript());
}

#[tokio::test]
async fn the_delay_ends_by_itself_then_new_connections_are_refused() {
    let mut gateway = Running::start("1s").await;
    gateway.served(b"before").await;
    let signalled = Instant::now();
    gateway.signal("-TERM");
    gateway.readyz_becomes(503).await;
    gateway
        .process
        .expect("shutting down: no new connections, draining")
        .await;
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "the drain began {:?} after SIGTERM, before the delay ended",
        signalled.elapsed()
    );
    gateway.refuses_connections().await;
    let status = gateway.process.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", gateway.process.transcript());
    assert!(
        !gateway
            .process
            .transcript()
            .contains("shutdown delay skipped")
    );
}
