#![allow(clippy::unwrap_used)]
//! `amtgw pin`: the real binary against simulated AMT devices running in this process.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use amtgw::tls::{Fingerprints, Pin, PinStore};
use amtgw_sim::{SimConfig, SimDevice};
use rustls_pki_types::CertificateDer;

use common::TestCa;

/// Run `amtgw ARGS` off the runtime's thread, so the simulated devices keep serving meanwhile.
async fn amtgw(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_amtgw"))
            .args(&args)
            .env_remove("AMTGW_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn cert_pin(cert: &CertificateDer<'_>) -> String {
    Pin::of_certificate(cert).to_string()
}

/// The value after `label:` in the single-device output.
fn field<'a>(out: &'a str, label: &str) -> &'a str {
    let prefix = format!("{label}:");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label}: line in\n{out}"))
}

/// A port nothing listens on: bound, then closed.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `[[devices]]` for a device on `addr`, with extra TOML lines (trust and friends).
fn device_toml(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        "\n[[devices]]\nname = \"{name}\"\nhost = \"{}\"\nports = {{ wsman = {} }}\n{extra}\n",
        addr.ip(),
        addr.port()
    )
}

/// A config with no listener of its own to worry about (`pin` binds nothing anyway) and the
/// pin store next to it.
fn write_config(dir: &Path, devices: &[String]) -> PathBuf {
    let path = dir.join("amtgw.toml");
    let text = format!(
        r#"
[gateway]
connect_timeout = "5s"
handshake_timeout = "5s"
pin_store = "pins.toml"

[services.wsman]
listen_port = 0

[services.redirection]
enabled = false

[services.dash]
enabled = false
{}"#,
        devices.concat()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The table's rows (header dropped) as whitespace-separated cells.
fn rows(out: &str) -> Vec<Vec<String>> {
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("DEVICE") && header.contains("DAYS_LEFT"),
        "{out}"
    );
    lines
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn probes_an_address_and_prints_both_pins() {
    let device = SimDevice::start(SimConfig::demo("amt-pin-1"))
        .await
        .unwrap();
    let cert = device.certificate();
    let out = amtgw(&["pin", &device.wsman_addr().to_string()]).await;
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));

    let pins: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("cert-sha256:") || l.starts_with("spki-sha256:"))
        .collect();
    assert_eq!(
        pins,
        [
            cert_pin(&cert),
            Fingerprints::of(&cert).unwrap().public_key.to_string()
        ],
        "{text}"
    );
    assert!(field(&text, "subject").contains("CN=Unknown"), "{text}");
    assert_eq!(field(&text, "self-signed"), "yes", "{text}");
    assert_eq!(field(&text, "ca"), "no", "{text}");
    assert_eq!(field(&text, "tls-version"), "TLSv1_3", "{text}");
    assert!(field(&text, "cipher").starts_with("TLS13_"), "{text}");
    let not_after = field(&text, "not-after");
    assert!(
        not_after.len() == 20 && not_after.ends_with('Z') && not_after.as_bytes()[10] == b'T',
        "{text}"
    );
    let days: i64 = field(&text, "days-left").parse().unwrap();
    assert!(days > 0, "{text}");
    device.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_address_fails_naming_the_reason() {
    let out = amtgw(&["pin", &closed_port().to_string()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("connect_refused"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
}

#[tokio::test]
async fn all_prints_a_table_and_fails_unless_every_device_matches() {
    let first = SimDevice::start(SimConfig::demo("amt-a")).await.unwrap();
    let second = SimDevice::start(SimConfig::demo("amt-b")).await.unwrap();
    let pinned_to_first = format!(
        "trust = \"pin\"\npins = [\"{}\"]",
        cert_pin(&first.certificate())
    );
    let dir = tempfile::tempdir().unwrap();
    // Declared out of order: the table is sorted by name.
    let config = write_config(
        dir.path(),
        &[
            device_toml("c-closed", closed_port(), &pinned_to_first),
            device_toml("b-mismatch", second.wsman_addr(), &pinned_to_first),
            device_toml("a-match", first.wsman_addr(), &pinned_to_first),
        ],
    );
    let out = amtgw(&["pin", "--config", config.to_str().unwrap(), "--all"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    let table = rows(&text);
    let cells = |row: &Vec<String>| (row[0].clone(), row[2].clone(), row[4].clone());
    assert_eq!(
        table.iter().map(cells).collect::<Vec<_>>(),
        [
            ("a-match".into(), "yes".into(), "match".into()),
            ("b-mismatch".into(), "yes".into(), "MISMATCH".into()),
            ("c-closed".into(), "no:connect_refused".into(), "-".into()),
        ],
        "{text}"
    );
    assert_eq!(table[0][1], first.wsman_addr().to_string(), "{text}");
    assert_eq!(table[0][7], "TLSv1_3", "{text}");
    // The mismatch names what was presented.
    assert!(
        stderr(&out).contains(&cert_pin(&second.certificate())),
        "{}",
        stderr(&out)
    );

    let config = write_config(
        dir.path(),
        &[device_toml("a-match", first.wsman_addr(), &pinned_to_first)],
    );
    let out = amtgw(&[
        "pin",
        "--config",
        config.to_str().unwrap(),
        "--all",
        "--concurrency",
        "1",
    ])
    .await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(rows(&stdout(&out))[0][4], "match");
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn a_configured_device_mismatches_after_it_is_unprovisioned() {
    let device = SimDevice::start(SimConfig::demo("amt-unprov"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[device_toml(
            "amt",
            device.wsman_addr(),
            &format!(
                "trust = \"pin\"\npins = [\"{}\"]",
                cert_pin(&device.certificate())
            ),
        )],
    );
    let config = config.to_str().unwrap();
    let out = amtgw(&["pin", "--config", config, "amt"]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(field(&stdout(&out), "pin"), "match");
    assert_eq!(field(&stdout(&out), "trust"), "pin");

    device.unprovision().unwrap();
    let out = amtgw(&["pin", "--config", config, "amt"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(field(&text, "pin"), "MISMATCH", "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim() == cert_pin(&device.certificate())),
        "{text}"
    );

    let out = amtgw(&["pin", "--config", config, "nope"]).await;
    assert_eq!(out.status.code(), Some(2), "usage: NAME names nothing");
    assert!(
        stderr(&out).contains("no device named \"nope\""),
        "{}",
        stderr(&out)
    );
    device.shutdown().await;
}

#[tokio::test]
async fn write_learns_once_and_replace_re_pins() {
    let device = SimDevice::start(SimConfig::demo("amt-tofu")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &[device_toml("amt", device.wsman_addr(), "trust = \"tofu\"")],
    );
    let config = config.to_str().unwrap();
    let store_path = dir.path().join("pins.toml");
    let stored_cert_pin = || {
        PinStore::open(&store_path)
            .unwrap()
            .get("amt")
            .map(|p| p.certificate.to_string())
    };
    let pin_of = |out: &Output| field(&stdout(out), "pin").to_owned();

    // Without --write nothing is stored.
    let out = amtgw(&["pin", "--config", config, "amt"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pin_of(&out), "new");
    assert_eq!(stored_cert_pin(), None);

    let out = amtgw(&["pin", "--config", config, "--write", "amt"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pin_of(&out), "learned");
    let first = cert_pin(&device.certificate());
    assert_eq!(stored_cert_pin(), Some(first.clone()));

    let out = amtgw(&["pin", "--config", config, "--write", "amt"]).await;
    assert_eq!(pin_of(&out), "match");

    // Unprovisioned: --write reports the mismatch and keeps the stored pin.
    device.unprovision().unwrap();
    let out = amtgw(&["pin", "--config", config, "--write", "amt"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(pin_of(&out), "MISMATCH");
    assert_eq!(stored_cert_pin(), Some(first.clone()));
    let out = amtgw(&["pin", "--config", config, "--all"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(rows(&stdout(&out))[0][4], "MISMATCH");

    let out = amtgw(&["pin", "--config", config, "--replace", "amt"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pin_of(&out), "replaced");
    assert!(
        stdout(&out).contains(&format!("was: {first}")),
        "{}",
        stdout(&out)
    );
    assert_eq!(stored_cert_pin(), Some(cert_pin(&device.certificate())));

    let out = amtgw(&["pin", "--config", config, "--all", "--write"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(rows(&stdout(&out))[0][4], "match");
    device.shutdown().await;
}

#[tokio::test]
async fn write_and_replace_refuse_devices_that_are_not_tofu() {
    let dir = tempfile::tempdir().unwrap();
    let pin = format!(
        "trust = \"pin\"\npins = [\"{}\"]",
        Pin::of_certificate(b"x")
    );
    let config = write_config(dir.path(), &[device_toml("amt", closed_port(), &pin)]);
    let config = config.to_str().unwrap();
    for args in [
        &["pin", "--config", config, "--write", "amt"][..],
        &["pin", "--config", config, "--replace", "amt"][..],
    ] {
        let out = amtgw(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("tofu"), "{}", stderr(&out));
    }
    assert!(!dir.path().join("pins.toml").exists());
}

#[tokio::test]
async fn presents_the_configured_client_certificate_to_a_mutual_tls_device() {
    let ca = TestCa::new("amtgw test client CA");
    let dir = tempfile::tempdir().unwrap();
    let (client_cert, client_key) = ca.client("amtgw").write_pem(dir.path(), "client");
    let mut sim = SimConfig::demo("amt-mtls");
    sim.client_auth_roots = Some(vec![ca.cert.clone()]);
    // Under TLS 1.2 the refusal is part of the handshake, so the probe can see it.
    sim.tls12_only = true;
    let device = SimDevice::start(sim).await.unwrap();
    let pin = format!(
        "trust = \"pin\"\npins = [\"{}\"]",
        cert_pin(&device.certificate())
    );
    let config = write_config(
        dir.path(),
        &[
            device_toml(
                "with-cert",
                device.wsman_addr(),
                &format!("{pin}\nclient_cert = \"{client_cert}\"\nclient_key = \"{client_key}\""),
            ),
            device_toml("without-cert", device.wsman_addr(), &pin),
        ],
    );
    let config = config.to_str().unwrap();

    let out = amtgw(&["pin", "--config", config, "with-cert"]).await;
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(field(&stdout(&out), "pin"), "match");
    assert_eq!(field(&stdout(&out), "tls-version"), "TLSv1_2");

    let out = amtgw(&["pin", "--config", config, "without-cert"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("client_cert_rejected"),
        "{}",
        stderr(&out)
    );
    device.shutdown().await;
}
