//! The README's first command, as a user runs it: `amtgw demo` (every port 0, so it binds free
//! ones and can run beside anything), real curl through both devices' alias addresses, then
//! SIGTERM and a clean exit.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The port in the instructions' `http://IP:PORT/wsman`: only the demo knows which port it
/// bound, and it prints the real one.
fn wsman_port(printed: &str, ip: &str) -> u16 {
    let prefix = format!("http://{ip}:");
    printed
        .split_whitespace()
        .find_map(|word| {
            word.strip_prefix(&prefix)?
                .strip_suffix("/wsman")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no WS-Man URL for {ip} in:\n{printed}"))
}

/// Curl's stdout, or `None` when the request failed (connection closed by the gateway).
fn try_curl_get_settings(ip: &str, port: u16) -> Option<String> {
    let body = format!(
        "@{}/scripts/wsman/get-general-settings.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    let output = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--digest", "-u"])
        .arg(format!(
            "{}:{}",
            amtgw_sim::DEMO_USERNAME,
            amtgw_sim::DEMO_PASSWORD
        ))
        .args([
            "-H",
            "Content-Type: application/soap+xml;charset=UTF-8",
            "--data-binary",
        ])
        .arg(body)
        .arg(format!("http://{ip}:{port}/wsman"))
        .output()
        .expect("curl is missing: run scripts/install-test-deps.sh");
    output
        .status
        .success()
        .then(|| String::from_utf8(output.stdout).unwrap())
}

fn curl_get_settings(ip: &str, port: u16) -> String {
    try_curl_get_settings(ip, port).expect("curl through the demo failed")
}

fn amtgw(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_amtgw"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The row of `device` in `amtgw pin --all`'s table, split into columns.
fn pin_row(table: &str, device: &str) -> Vec<String> {
    table
        .lines()
        .find(|line| line.starts_with(device))
        .unwrap_or_else(|| panic!("no row for {device}:\n{table}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The README's first command and issue 5's walk-through: both devices served, the TOFU
/// device learned, `amtgw pin --all` right, unprovisioning refused until `--replace`, all in
/// one running demo, which then exits cleanly on SIGTERM.
#[test]
fn demo_serves_repins_and_exits_cleanly_on_sigterm() {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_amtgw"))
        .args(["demo", "--wsman-port", "0", "--redirection-port", "0"])
        .args([
            "--dash-port",
            "0",
            "--vnc-port",
            "0",
            "--admin",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut logs = BufReader::new(demo.stderr.take().unwrap()).lines();

    // The instructions are printed once everything listens.
    let mut printed = String::new();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("Ctrl-C stops the demo.") {
            break;
        }
    }
    // Port 0 on each address: the two aliases get a port each.
    let (wsman, other_wsman) = (
        wsman_port(&printed, "127.0.0.1"),
        wsman_port(&printed, "127.0.0.2"),
    );
    assert!(printed.contains("amtterm 127.0.0.1"), "{printed}");
    assert!(printed.contains(amtgw_sim::DEMO_PASSWORD), "{printed}");

    assert!(curl_get_settings("127.0.0.1", wsman).contains("<g:HostName>amt-sim-01</g:HostName>"));
    assert!(
        curl_get_settings("127.0.0.2", other_wsman).contains("<g:HostName>amt-sim-02</g:HostName>")
    );
    // The AMT 7 device, over the legacy backend (the default build has it).
    let legacy_wsman = wsman_port(&printed, "127.0.0.3");
    assert!(
        curl_get_settings("127.0.0.3", legacy_wsman)
            .contains("<g:HostName>amt-sim-07</g:HostName>")
    );

    // The printed VNC command captures the first device's simulated screen through the bridge
    // (vncsnapshot, from scripts/install-test-deps.sh), run as printed but for the output path.
    let snapshot = printed
        .lines()
        .find(|line| line.trim_start().starts_with("vncsnapshot "))
        .unwrap_or_else(|| panic!("no vncsnapshot command in:\n{printed}"));
    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join("amt-sim-01.jpg");
    let words: Vec<&str> = snapshot.split_whitespace().take(4).collect();
    let output = Command::new(words[0])
        .args(&words[1..])
        .arg(&shot)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{snapshot}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(&std::fs::read(&shot).unwrap()[..2], [0xFF, 0xD8], "a JPEG");

    let config = printed
        .split_whitespace()
        .skip_while(|word| *word != "--config")
        .nth(1)
        .unwrap()
        .to_owned();
    // The printed command works as printed: the test's binary is on no PATH, like
    // target/release/amtgw after `cargo run`, so it names the binary by its path.
    let command = printed
        .lines()
        .find(|line| line.contains(" pin --config ") && line.ends_with("--all"))
        .unwrap_or_else(|| panic!("no pin --all command in:\n{printed}"));
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(
        std::fs::canonicalize(words[0]).unwrap(),
        std::fs::canonicalize(env!("CARGO_BIN_EXE_amtgw")).unwrap(),
        "{command}"
    );
    let output = Command::new(words[0]).args(&words[1..]).output().unwrap();
    let (code, table) = (
        output.status.code().unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    );
    assert_eq!(code, 0, "{table}");
    assert_eq!(pin_row(&table, "amt-sim-01")[3..5], ["pin", "match"]);
    assert_eq!(
        pin_row(&table, "amt-sim-02")[3..5],
        ["tofu", "match"],
        "learned on first use"
    );

    // Unprovision the TOFU device: a new key, refused by the running gateway...
    Command::new("kill")
        .args(["-USR1", &demo.id().to_string()])
        .status()
        .unwrap();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("unprovisioned amt-sim-02") {
            break;
        }
    }
    assert_eq!(try_curl_get_settings("127.0.0.2", other_wsman), None);
    let (code, table) = amtgw(&["pin", "--config", &config, "--all"]);
    assert_eq!(code, 1);
    assert_eq!(pin_row(&table, "amt-sim-02")[4], "MISMATCH");

    // ...until it is re-pinned, which the running gateway picks up.
    let (code, out) = amtgw(&["pin", "--config", &config, "--replace", "amt-sim-02"]);
    assert_eq!(code, 0, "{out}");
    for line in logs.by_ref() {
        if line
            .unwrap()
            .contains("pin store changed by another process")
        {
            break;
        }
    }
    assert!(
        curl_get_settings("127.0.0.2", other_wsman).contains("<g:HostName>amt-sim-02</g:HostName>")
    );
    assert!(curl_get_settings("127.0.0.1", wsman).contains("<g:HostName>amt-sim-01</g:HostName>"));
    // Keep draining the logs so the demo never blocks on a full pipe.
    std::thread::spawn(move || logs.for_each(drop));

    let killed = Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = demo.wait().unwrap();
    assert_eq!(status.code(), Some(0), "every session drained, so exit 0");
    let state_dir = std::path::Path::new(&config).parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(state_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !state_dir.exists(),
        "the demo removes its state directory; left in it: {left:?}"
    );
}
