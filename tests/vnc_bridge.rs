//! The VNC bridge with a real VNC client nobody here wrote: Debian's `vncsnapshot` (TightVNC
//! 1.2.8 based, RFB 3.3) connects to the gateway's VNC listener with the viewer password, and
//! the gateway opens KVM on the simulated device over TLS. The screenshots must be the
//! simulator's 640x400 screen, and two of them must differ (its test pattern moves with every
//! update, so they prove a live session). Then each refusal, with its own reason: the wrong
//! viewer password, the wrong AMT credentials in the gateway's config, a device with KVM
//! disabled, a device gone mid-session; and `check`'s refusal of an open listener without a
//! password.
//!
//! `scripts/install-test-deps.sh` installs vncsnapshot; a missing program fails the test.

// Tests may unwrap (the crate lints against it for gateway code): a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use amtgw::{Config, Service};
use amtgw_sim::{DEMO_PASSWORD, DEMO_USERNAME, SimDevice};
use common::clients::*;
use common::*;
use des::Des;
use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt as _, KeyInit as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const VIEWER_PASSWORD: &str = "kvm-view";
const SCREEN: (u16, u16) = (640, 400);

/// A gateway whose VNC listener (and nothing else) leads to `sim`, with `amt_password` as the
/// device's AMT password in its config.
async fn vnc_gateway(sim: &SimDevice, dir: &Path, amt_password: &str) -> TestGateway {
    std::fs::write(dir.join("viewer.password"), format!("{VIEWER_PASSWORD}\n")).unwrap();
    std::fs::write(dir.join("amt.password"), amt_password).unwrap();
    let pin = amtgw::tls::Pin::of_certificate(&sim.certificate()).to_string();
    let toml = format!(
        r#"
[gateway]
connect_timeout = "5s"
handshake_timeout = "5s"
shutdown_delay = "0s"
shutdown_timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[services.wsman]
enabled = false

[services.redirection]
enabled = false

[services.dash]
enabled = false

[services.vnc]
enabled = true
listen_port = 0
bind = ["127.0.0.1"]
default_device = "sim"
password_file = "{dir}/viewer.password"

[[devices]]
name = "sim"
host = "127.0.0.1"
ports = {{ redirection = {redirection} }}
trust = "pin"
pins = ["{pin}"]
amt_username = "{DEMO_USERNAME}"
amt_password_file = "{dir}/amt.password"
"#,
        dir = dir.display(),
        redirection = sim.redirection_addr().port(),
    );
    TestGateway::start(&toml).await
}

/// A password file as `vncpasswd` writes it and vncsnapshot's `-passwd` reads it (the demo
/// writes its own the same way).
fn vncpasswd_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, amtgw::vnc::vncpasswd_file_contents(password)).unwrap();
    path
}

/// vncsnapshot through the gateway's VNC listener into `out`.
async fn vncsnapshot(gateway: &TestGateway, passwd: &Path, out: &Path) -> Output {
    let program = require_program(&["vncsnapshot"]);
    let addr = gateway.addr(Service::Vnc);
    let mut command = std::process::Command::new(program);
    command
        .arg("-passwd")
        .arg(passwd)
        // No JPEG transmission encoding: the simulator sends RAW whatever is asked.
        .args(["-nojpeg", "-quality", "90"])
        .arg(format!("{}::{}", addr.ip(), addr.port()))
        .arg(out)
        .stdin(std::process::Stdio::null());
    // Spawned and read on a blocking thread; the timeout guards against a hang (the child is
    // then left to the test's end, which fails).
    let run = tokio::task::spawn_blocking(move || command.output().unwrap());
    tokio::time::timeout(STEP_TIMEOUT, run)
        .await
        .expect("vncsnapshot finished in time")
        .unwrap()
}

/// A JPEG's width and height, from its start-of-frame segment.
fn jpeg_size(jpeg: &[u8]) -> (u16, u16) {
    assert_eq!(&jpeg[..2], [0xFF, 0xD8], "starts as a JPEG");
    let mut at = 2;
    while at + 9 < jpeg.len() {
        assert_eq!(jpeg[at], 0xFF, "segment marker at {at}");
        let marker = jpeg[at + 1];
        let len = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let height = u16::from_be_bytes([jpeg[at + 5], jpeg[at + 6]]);
            let width = u16::from_be_bytes([jpeg[at + 7], jpeg[at + 8]]);
            return (width, height);
        }
        at += 2 + len;
    }
    panic!("no start-of-frame segment");
}

fn transcript(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Waits until the gateway has counted `count` failures of the vnc service for `reason`.
async fn failed_with(gateway: &TestGateway, reason: &str, count: f64) -> Metrics {
    gateway
        .metrics_settled(|m| {
            m.sample(
                "amtgw_connections_failed_total",
                &[("service", "vnc"), ("reason", reason)],
            ) == Some(count)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vncsnapshot_captures_the_simulated_screen_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("kvm-host").await;
    let gateway = vnc_gateway(&sim, dir.path(), DEMO_PASSWORD).await;
    let passwd = vncpasswd_file(dir.path(), "passwd", VIEWER_PASSWORD);

    let mut shots = Vec::new();
    for n in 0..2 {
        let out = dir.path().join(format!("shot-{n}.jpg"));
        let output = vncsnapshot(&gateway, &passwd, &out).await;
        assert!(output.status.success(), "{}", transcript(&output));
        let jpeg = std::fs::read(&out).unwrap();
        assert_eq!(jpeg_size(&jpeg), SCREEN, "the simulator's screen size");
        shots.push(jpeg);
    }
    assert_ne!(
        shots[0], shots[1],
        "the pattern moved: a live session each time"
    );

    let metrics = gateway
        .metrics_settled(|m| {
            m.sample(
                "amtgw_connections_closed_total",
                &[("service", "vnc"), ("outcome", "ok")],
            ) == Some(2.0)
        })
        .await;
    assert!(metrics.absent("amtgw_connections_failed_total", &[("service", "vnc")]));
    gateway.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_viewer_password_is_refused_as_vnc_auth_failed_before_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("kvm-host").await;
    let gateway = vnc_gateway(&sim, dir.path(), DEMO_PASSWORD).await;
    let passwd = vncpasswd_file(dir.path(), "passwd", "guessed");
    let out = dir.path().join("shot.jpg");
    let output = vncsnapshot(&gateway, &passwd, &out).await;
    assert!(!output.status.success(), "{}", transcript(&output));
    assert!(!out.exists());
    let metrics = failed_with(&gateway, "vnc_auth_failed", 1.0).await;
    assert!(
        metrics.absent(
            "amtgw_tls_handshake_duration_seconds",
            &[("service", "vnc")]
        ),
        "the device was never contacted"
    );
    gateway.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_amt_credentials_in_the_config_are_refused_as_amt_auth_failed() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("kvm-host").await;
    let gateway = vnc_gateway(&sim, dir.path(), "not-the-amt-password").await;
    let passwd = vncpasswd_file(dir.path(), "passwd", VIEWER_PASSWORD);
    let output = vncsnapshot(&gateway, &passwd, &dir.path().join("shot.jpg")).await;
    assert!(!output.status.success(), "{}", transcript(&output));
    failed_with(&gateway, "amt_auth_failed", 1.0).await;
    gateway.stop().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_kvm_disabled_is_refused_as_kvm_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("kvm-host").await;
    sim.set_kvm_enabled(false);
    let gateway = vnc_gateway(&sim, dir.path(), DEMO_PASSWORD).await;
    let passwd = vncpasswd_file(dir.path(), "passwd", VIEWER_PASSWORD);
    let output = vncsnapshot(&gateway, &passwd, &dir.path().join("shot.jpg")).await;
    assert!(!output.status.success(), "{}", transcript(&output));
    failed_with(&gateway, "kvm_refused", 1.0).await;
    gateway.stop().await;
    sim.shutdown().await;
}

/// A minimal RFB 3.8 viewer through the gateway, up to the device's ServerInit, to hold a KVM
/// session open.
async fn open_viewer(gateway: &TestGateway) -> tokio::net::TcpStream {
    let mut viewer = gateway.connect(Service::Vnc).await;
    let mut version = [0u8; 12];
    viewer.read_exact(&mut version).await.unwrap();
    viewer.write_all(b"RFB 003.008\n").await.unwrap();
    let mut types = [0u8; 2];
    viewer.read_exact(&mut types).await.unwrap();
    assert_eq!(types, [1, 2], "VNC Authentication only");
    viewer.write_all(&[2]).await.unwrap();
    let mut challenge = [0u8; 16];
    viewer.read_exact(&mut challenge).await.unwrap();
    let key: Vec<u8> = VIEWER_PASSWORD
        .bytes()
        .take(8)
        .map(u8::reverse_bits)
        .collect();
    let cipher = Des::new(GenericArray::from_slice(&key));
    for block in challenge.chunks_exact_mut(8) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    viewer.write_all(&challenge).await.unwrap();
    let mut result = [0u8; 4];
    viewer.read_exact(&mut result).await.unwrap();
    assert_eq!(result, [0; 4]);
    viewer.write_all(&[1]).await.unwrap();
    let mut init = [0u8; 24];
    viewer.read_exact(&mut init).await.unwrap();
    assert_eq!(
        (
            u16::from_be_bytes([init[0], init[1]]),
            u16::from_be_bytes([init[2], init[3]])
        ),
        SCREEN,
        "the device's ServerInit"
    );

    viewer
}

/// A device that goes away mid-session (here: the simulator stops, aborting its connections)
/// ends the viewer's session with the relay's reason for a device that dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_dropping_mid_session_ends_it_as_device_reset() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("kvm-host").await;
    let gateway = vnc_gateway(&sim, dir.path(), DEMO_PASSWORD).await;
    let mut viewer = open_viewer(&gateway).await;

    sim.shutdown().await;
    // The viewer sees the end of the stream and, as viewers do, closes.
    let mut rest = Vec::new();
    let _ = viewer.read_to_end(&mut rest).await;
    drop(viewer);
    failed_with(&gateway, "device_reset", 1.0).await;
    gateway.stop().await;
}

/// AMT has one screen to share: a second viewer while the first one's session runs is refused
/// by the device (BUSY), which the gateway reports as kvm_refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_viewer_while_kvm_is_taken_is_refused_as_kvm_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim("kvm-host").await;
    let gateway = vnc_gateway(&sim, dir.path(), DEMO_PASSWORD).await;
    let first = open_viewer(&gateway).await;
    let passwd = vncpasswd_file(dir.path(), "passwd", VIEWER_PASSWORD);
    let output = vncsnapshot(&gateway, &passwd, &dir.path().join("shot.jpg")).await;
    assert!(!output.status.success(), "{}", transcript(&output));
    failed_with(&gateway, "kvm_refused", 1.0).await;
    drop(first);
    gateway.stop().await;
    sim.shutdown().await;
}

#[test]
fn an_open_vnc_listener_without_a_password_is_refused_by_config_validation() {
    let toml = r#"
[services.vnc]
enabled = true
bind = ["0.0.0.0"]

[[devices]]
name = "d"
host = "192.0.2.1"
trust = "tofu"
"#;
    let error = Config::from_toml("test", Path::new("."), toml)
        .unwrap_err()
        .to_string();
    assert!(error.contains("services.vnc.password_file"), "{error}");
    // On loopback only, viewers may go without a password.
    let loopback = toml.replace("0.0.0.0", "127.0.0.1");
    Config::from_toml("test", Path::new("."), &loopback).unwrap();
}

#[test]
fn the_amt_password_may_come_from_the_environment_and_a_missing_variable_is_named() {
    let device = |env: &str| {
        format!(
            r#"
[services.vnc]
enabled = true

[[devices]]
name = "d"
host = "192.0.2.1"
trust = "tofu"
amt_password_env = "{env}"
"#
        )
    };
    // PATH: a variable every test process has (tests cannot set one without `unsafe`).
    let config = Config::from_toml("test", Path::new("."), &device("PATH")).unwrap();
    let credentials = config.devices[0].amt_credentials.as_ref().unwrap();
    assert_eq!(credentials.username, "admin");
    assert!(credentials.password.file.is_none());
    assert!(
        !format!("{config:?}").contains(credentials.password.expose()),
        "never printed"
    );
    let error = Config::from_toml("test", Path::new("."), &device("AMTGW_TEST_NO_SUCH_VAR"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("devices[0].amt_password_env") && error.contains("AMTGW_TEST_NO_SUCH_VAR"),
        "{error}"
    );
}
