//! The README's first command, as a user runs it: `amtgw demo` (on free ports, so it can run
//! beside anything), real curl through both devices' alias addresses, then SIGTERM and a clean
//! exit.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn curl_get_settings(ip: &str, port: u16) -> String {
    let body = format!(
        "@{}/scripts/wsman/get-general-settings.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    let output = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--digest", "-u"])
        .arg(format!(
            "{}:{}",
            amtgw::sim::DEMO_USERNAME,
            amtgw::sim::DEMO_PASSWORD
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
    assert!(
        output.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn demo_serves_both_devices_and_exits_cleanly_on_sigterm() {
    let (wsman, redirection, dash, admin) = (free_port(), free_port(), free_port(), free_port());
    let mut demo = Command::new(env!("CARGO_BIN_EXE_amtgw"))
        .args(["demo", "--wsman-port", &wsman.to_string()])
        .args(["--redirection-port", &redirection.to_string()])
        .args(["--dash-port", &dash.to_string()])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

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
    assert!(
        printed.contains(&format!("http://127.0.0.1:{wsman}/wsman")),
        "{printed}"
    );
    assert!(printed.contains("amtterm 127.0.0.1"), "{printed}");
    assert!(printed.contains(amtgw::sim::DEMO_PASSWORD), "{printed}");

    assert!(curl_get_settings("127.0.0.1", wsman).contains("<g:HostName>amt-sim-01</g:HostName>"));
    assert!(curl_get_settings("127.0.0.2", wsman).contains("<g:HostName>amt-sim-02</g:HostName>"));

    let killed = Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = demo.wait().unwrap();
    assert_eq!(status.code(), Some(0), "every session drained, so exit 0");
}
