//! The status page (`GET /` on the admin listener) as a person's browser shows it: headless
//! Chromium (Debian's `chromium`, installed by scripts/install-test-deps.sh) loads it from a
//! gateway in front of two simulated devices, one trusted on first use and reached, one pinned
//! to a certificate it does not have, and the rendered DOM must show each device's state.
//!
//! The README's screenshot comes from here: `AMTGW_UPDATE_SCREENSHOT=1 cargo test --test
//! status_page` rewrites docs/status-page.png; otherwise the screenshot goes to a temporary
//! directory and the repository is never written.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use amtgw::Service;
use amtgw_sim::SimDevice;
use common::clients::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Chromium starts in about a second; far more on a loaded machine, never this long.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);
/// A pin no device has.
const WRONG_PIN: &str =
    "cert-sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A gateway in front of `amt-sim-01` (trust on first use; WS-Man and redirection) and
/// `amt-sim-02` (pinned to [`WRONG_PIN`]; DASH), its pin store in `dir`.
async fn fleet(dir: &Path, good: &SimDevice, bad: &SimDevice) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[gateway]
connect_timeout = "5s"
handshake_timeout = "5s"
shutdown_delay = "0s"
shutdown_timeout = "5s"
pin_store = "{pins}"

[admin]
listen = "127.0.0.1:0"

[services.wsman]
listen_port = 0
bind = ["127.0.0.1"]
default_device = "amt-sim-01"

[services.redirection]
listen_port = 0
bind = ["127.0.0.1"]
default_device = "amt-sim-01"

[services.dash]
listen_port = 0
bind = ["127.0.0.1"]
default_device = "amt-sim-02"

[[devices]]
name = "amt-sim-01"
host = "127.0.0.1"
ports = {{ wsman = {good_wsman}, redirection = {good_redirection}, dash = {good_dash} }}
trust = "tofu"

[[devices]]
name = "amt-sim-02"
host = "127.0.0.1"
ports = {{ wsman = {bad_wsman}, redirection = {bad_redirection}, dash = {bad_dash} }}
trust = "pin"
pins = ["{WRONG_PIN}"]
"#,
        pins = dir.join("pins.toml").display(),
        good_wsman = good.wsman_addr().port(),
        good_redirection = good.redirection_addr().port(),
        good_dash = good.dash_addr().port(),
        bad_wsman = bad.wsman_addr().port(),
        bad_redirection = bad.redirection_addr().port(),
        bad_dash = bad.dash_addr().port(),
    ))
    .await
}

/// A WS-Man Identify through the gateway on a keep-alive connection, answered in full; the
/// connection is returned open, so the device has a session while the page is loaded.
async fn open_wsman_session(addr: SocketAddr) -> TcpStream {
    let body = std::fs::read_to_string(identify_xml()).unwrap();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /wsman HTTP/1.1\r\nHost: {addr}\r\n{SOAP_CONTENT_TYPE}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    // The simulator answers chunked; the last chunk ends the answer.
    let mut answer = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"\r\n0\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-answer: {}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, read_all)
        .await
        .expect("no Identify answer through the gateway");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("IdentifyResponse"), "{answer}");
    conn
}

/// A DASH connection to the device pinned to the wrong certificate: the console sends a byte,
/// the gateway's handshake fails, the connection is closed. Waits until it is counted.
async fn fail_pin_mismatch(gateway: &TestGateway) {
    let conn = gateway.connect(Service::Dash).await;
    let _ = exchange(conn, b"\x00").await;
    gateway
        .metrics_settled(|m| {
            m.sample(
                "amtgw_connections_failed_total",
                &[("service", "dash"), ("reason", "pin_mismatch")],
            ) == Some(1.0)
        })
        .await;
}

/// Run headless Chromium with `args` then `url`; its stdout. Its stderr (warnings about D-Bus
/// and the like, always) is kept only for the failure message. Killed, failing the test, after
/// [`CHROMIUM_TIMEOUT`].
async fn chromium(args: &[String], url: &str) -> String {
    let program = require_program(&["chromium"]);
    let profile = tempfile::tempdir().unwrap();
    let stderr_path = profile.path().join("stderr.log");
    let mut child = Command::new(program)
        // Root (CI) needs --no-sandbox; no GPU in a container.
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!(
            "--user-data-dir={}",
            profile.path().join("profile").display()
        ))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A blocking pipe read on its own thread, ending when Chromium closes its stdout.
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let read = stdout.read_to_end(&mut out).map(|_| out);
        let _ = tx.send(read);
    });
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let out = match tokio::time::timeout(CHROMIUM_TIMEOUT, rx).await {
        Ok(read) => read.unwrap().unwrap(),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {CHROMIUM_TIMEOUT:?} (killed); stderr:\n{}",
                stderr()
            );
        }
    };
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "chromium failed ({status}); stderr:\n{}",
        stderr()
    );
    String::from_utf8(out).unwrap()
}

/// The page as Chromium rendered it.
async fn rendered(gateway: &TestGateway) -> String {
    let dom = chromium(
        &["--dump-dom".to_owned()],
        &format!("http://{}/", gateway.admin),
    )
    .await;
    assert!(dom.contains("<h1>amtgw</h1>"), "not the status page: {dom}");
    dom
}

/// The rendered table row of `device`.
fn device_row<'a>(dom: &'a str, device: &str) -> &'a str {
    dom.split_once(&format!("<tr data-device=\"{device}\">"))
        .and_then(|(_, rest)| rest.split_once("</tr>"))
        .map(|(row, _)| row)
        .unwrap_or_else(|| panic!("no row for {device}:\n{dom}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reached_device_shows_its_handshake_ok_and_its_open_session() {
    let (good, bad) = (start_sim("amt-sim-01").await, start_sim("amt-sim-02").await);
    let dir = tempfile::tempdir().unwrap();
    let gateway = fleet(dir.path(), &good, &bad).await;
    let _session = open_wsman_session(gateway.addr(Service::Wsman)).await;

    let dom = rendered(&gateway).await;
    let row = device_row(&dom, "amt-sim-01");
    assert!(row.contains("<td class=\"result ok\">ok</td>"), "{row}");
    assert!(row.contains("<td class=\"open num\">1</td>"), "{row}");
    assert!(
        row.contains("learned"),
        "the first handshake recorded its pin: {row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_mismatch_shows_in_recent_failures() {
    let (good, bad) = (start_sim("amt-sim-01").await, start_sim("amt-sim-02").await);
    let dir = tempfile::tempdir().unwrap();
    let gateway = fleet(dir.path(), &good, &bad).await;
    fail_pin_mismatch(&gateway).await;

    let dom = rendered(&gateway).await;
    let failures = dom
        .split_once("<table id=\"failures\">")
        .map(|(_, table)| table)
        .unwrap_or_else(|| panic!("no failures table:\n{dom}"));
    let row = failures
        .split("<tr>")
        .find(|row| row.contains("amt-sim-02"))
        .unwrap_or_else(|| panic!("amt-sim-02 not among the recent failures:\n{failures}"));
    assert!(row.contains("pin_mismatch"), "{row}");
    assert!(row.contains("<td>dash</td>"), "{row}");
}

/// The README's screenshot: both devices' states, taken by Chromium at 1200x800. Checked to be
/// a PNG; written to docs/status-page.png only when AMTGW_UPDATE_SCREENSHOT=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_takes_the_readme_screenshot() {
    let (good, bad) = (start_sim("amt-sim-01").await, start_sim("amt-sim-02").await);
    let dir = tempfile::tempdir().unwrap();
    let gateway = fleet(dir.path(), &good, &bad).await;
    let _session = open_wsman_session(gateway.addr(Service::Wsman)).await;
    fail_pin_mismatch(&gateway).await;

    let png = dir.path().join("status-page.png");
    chromium(
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1200,800".to_owned(),
            "--hide-scrollbars".to_owned(),
        ],
        &format!("http://{}/", gateway.admin),
    )
    .await;
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {png:?}: {e}"));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    if std::env::var_os("AMTGW_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        std::fs::write(repo_path("docs/status-page.png"), &bytes).unwrap();
    }
}
