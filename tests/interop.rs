//! Interop with real, unmodified clients nobody here wrote: `curl` speaks WS-Man (identify,
//! HTTP digest) and `amtterm` runs a serial-over-LAN session, first through amtgw to the
//! simulated device, then straight to the simulator through `stunnel4` as a second,
//! independent TLS client (OpenSSL instead of rustls) that pins the simulator's certificate.
//!
//! The programs come from Debian packages; `scripts/install-test-deps.sh` installs them. A
//! missing program fails the test rather than skipping it.

// Tests may unwrap (the crate lints against it for gateway code): a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use amtgw::Service;
use amtgw_sim::{DEMO_PASSWORD, DEMO_USERNAME, SimConfig, SimDevice};
use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Guard for every wait on an external program: a hang fails the test, it never paces it.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const SOAP_CONTENT_TYPE: &str = "Content-Type: application/soap+xml;charset=UTF-8";
/// amtterm's escape key: ^] ends the SOL session and the program.
const CTRL_RIGHT_BRACKET: u8 = 0x1d;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn identify_xml() -> String {
    repo_path("scripts/wsman/identify.xml")
        .display()
        .to_string()
}

fn get_settings_xml() -> String {
    repo_path("scripts/wsman/get-general-settings.xml")
        .display()
        .to_string()
}

/// The first of `names` found on PATH; fails the test (never skips it) when none is.
fn require_program(names: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{} not found on PATH: run scripts/install-test-deps.sh (as root) to install \
                 the interop test dependencies",
                names.join(" or ")
            )
        })
}

// ---------------------------------------------------------------------------------------------
// Setup: simulator, gateway, stunnel

async fn start_sim(name: &str) -> SimDevice {
    SimDevice::start(SimConfig::demo(name)).await.unwrap()
}

/// All three services on 127.0.0.1, ephemeral ports, the simulator the default device of
/// each, trusted by its certificate pin.
async fn gateway_for(sim: &SimDevice) -> TestGateway {
    let pin = amtgw::tls::Pin::of_certificate(&sim.certificate()).to_string();
    TestGateway::start(&format!(
        r#"
[gateway]
connect_timeout = "5s"
handshake_timeout = "5s"
shutdown_timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[services.wsman]
listen_port = 0
bind = ["127.0.0.1"]
default_device = "sim"

[services.redirection]
listen_port = 0
bind = ["127.0.0.1"]
default_device = "sim"

[services.dash]
listen_port = 0
bind = ["127.0.0.1"]
default_device = "sim"

[[devices]]
name = "sim"
host = "127.0.0.1"
ports = {{ wsman = {wsman}, redirection = {redirection}, dash = {dash} }}
trust = "pin"
pins = ["{pin}"]
"#,
        wsman = sim.wsman_addr().port(),
        redirection = sim.redirection_addr().port(),
        dash = sim.dash_addr().port(),
    ))
    .await
}

/// Where stunnel listens for `service` (0, 1, 2) in the test numbered `test` (each stunnel test
/// passes its own number): this process's private loopback address (see `common::loopback`),
/// a fixed port per test and service. Every other test uses 127.0.0.1 to 127.0.0.3 only.
fn stunnel_addr(test: u16, service: u16) -> SocketAddr {
    SocketAddr::from((
        common::loopback::private_loopback(),
        20_000 + 10 * test + service,
    ))
}

/// stunnel in client mode in front of the simulator: plain TCP in on the returned ports, TLS
/// out, the simulator's certificate (and nothing else) trusted.
struct Stunnel {
    process: Spawned,
    wsman: SocketAddr,
    redirection: SocketAddr,
    dash: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Stunnel {
    /// `test` is the caller's own number, for [`stunnel_addr`].
    async fn start(sim: &SimDevice, test: u16) -> Stunnel {
        let program = require_program(&["stunnel4", "stunnel"]);
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("sim-cert.pem");
        std::fs::write(&ca_file, pem_block("CERTIFICATE", &sim.certificate())).unwrap();
        let (wsman, redirection, dash) = (
            stunnel_addr(test, 0),
            stunnel_addr(test, 1),
            stunnel_addr(test, 2),
        );
        // verifyPeer: the server's leaf certificate must be one of those in CAfile, i.e. a
        // pin. No checkHost: AMT certificates name no host, like amtgw's `trust = "pin"`.
        let mut conf = format!(
            "foreground = yes\npid =\ndebug = info\nsyslog = no\n\
             CAfile = {ca}\nverifyPeer = yes\nclient = yes\n",
            ca = ca_file.display()
        );
        for (name, accept, connect) in [
            ("wsman", wsman, sim.wsman_addr()),
            ("redirection", redirection, sim.redirection_addr()),
            ("dash", dash, sim.dash_addr()),
        ] {
            conf.push_str(&format!(
                "\n[{name}]\naccept = {accept}\nconnect = {connect}\n"
            ));
        }
        let conf_file = dir.path().join("stunnel.conf");
        std::fs::write(&conf_file, &conf).unwrap();

        let mut process = Spawned::start(Command::new(program).arg(&conf_file));
        // Logged once every service is bound and listening: a condition, not a delay.
        process.expect("Accepting new connections").await;
        Stunnel {
            process,
            wsman,
            redirection,
            dash,
            _dir: dir,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// External processes

/// A running program whose stdout and stderr are collected into one transcript; killed and
/// reaped when dropped.
struct Spawned {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    output: mpsc::UnboundedReceiver<Vec<u8>>,
    seen: Vec<u8>,
    /// Where the next `expect` starts looking.
    cursor: usize,
    eof: bool,
}

impl Spawned {
    fn start(command: &mut Command) -> Spawned {
        let what = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let (tx, output) = mpsc::unbounded_channel();
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for mut stream in streams {
            let tx = tx.clone();
            // Blocking pipe reads on their own threads; the channel closes when both end.
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            });
        }
        Spawned {
            what,
            stdin: child.stdin.take(),
            child,
            output,
            seen: Vec::new(),
            cursor: 0,
            eof: false,
        }
    }

    fn transcript(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Waits until the output, past the previous match, contains `needle`.
    async fn expect(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(pos) = find(&self.seen[self.cursor..], needle.as_bytes()) {
                self.cursor += pos + needle.len();
                return;
            }
            if self.eof {
                panic!(
                    "{} ended before printing {needle:?}; output:\n{}",
                    self.what,
                    self.transcript()
                );
            }
            match tokio::time::timeout_at(deadline, self.output.recv()).await {
                Ok(Some(chunk)) => self.seen.extend_from_slice(&chunk),
                Ok(None) => self.eof = true,
                Err(_) => panic!(
                    "{} did not print {needle:?} within {STEP_TIMEOUT:?}; output:\n{}",
                    self.what,
                    self.transcript()
                ),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        // A few bytes into an empty pipe: never blocks.
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Reads the output to its end (the program closed it, i.e. exited), then reaps it.
    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        while !self.eof {
            match tokio::time::timeout_at(deadline, self.output.recv()).await {
                Ok(Some(chunk)) => self.seen.extend_from_slice(&chunk),
                Ok(None) => self.eof = true,
                Err(_) => panic!(
                    "{} did not exit within {STEP_TIMEOUT:?}; output:\n{}",
                    self.what,
                    self.transcript()
                ),
            }
        }
        // Both pipes are closed, so the process is exiting; reaping it takes a moment at most.
        let reap = async {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status;
                }
                tokio::task::yield_now().await;
            }
        };
        match tokio::time::timeout_at(deadline, reap).await {
            Ok(status) => status,
            Err(_) => panic!("{} closed its output but did not exit", self.what),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The clients

/// Runs curl to completion (its own `--max-time` bounds it) off the async threads.
async fn curl(args: Vec<String>) -> Output {
    let program = require_program(&["curl"]);
    tokio::task::spawn_blocking(move || {
        Command::new(program)
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn wsman_url(addr: SocketAddr) -> String {
    format!("http://{addr}/wsman")
}

/// `curl --fail` POSTing `body_file`; returns the response body.
async fn curl_soap(addr: SocketAddr, body_file: String, extra: &[&str]) -> String {
    let mut args: Vec<String> = vec![
        "--fail".into(),
        "-H".into(),
        SOAP_CONTENT_TYPE.into(),
        "--data-binary".into(),
        format!("@{body_file}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(wsman_url(addr));
    let output = curl(args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl to {addr} failed ({}): {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn curl_identify(addr: SocketAddr) -> String {
    curl_soap(addr, identify_xml(), &[]).await
}

async fn curl_get_settings(addr: SocketAddr) -> String {
    let credentials = format!("{DEMO_USERNAME}:{DEMO_PASSWORD}");
    curl_soap(addr, get_settings_xml(), &["--digest", "-u", &credentials]).await
}

fn assert_identify_response(body: &str, via: &str) {
    for expected in [
        "<b:IdentifyResponse>",
        "<b:ProtocolVersion>http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd</b:ProtocolVersion>",
        "<b:ProductVendor>Intel Corporation</b:ProductVendor>",
        "<b:SecurityProfileName>http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/digest</b:SecurityProfileName>",
        "</a:Envelope>",
    ] {
        assert!(body.contains(expected), "{via}: no {expected} in:\n{body}");
    }
}

fn assert_general_settings(body: &str, host_name: &str, via: &str) {
    for expected in [
        "<b:Action a:mustUnderstand=\"true\">http://schemas.xmlsoap.org/ws/2004/09/transfer/GetResponse</b:Action>",
        // The request's MessageID, echoed: the body went through unaltered.
        "<b:RelatesTo>uuid:6f0a3c52-1d4e-4b7a-9c1e-2f5d8a7b3e01</b:RelatesTo>",
        "<g:AMT_GeneralSettings>",
        &format!("<g:HostName>{host_name}</g:HostName>"),
        "</a:Envelope>",
    ] {
        assert!(body.contains(expected), "{via}: no {expected} in:\n{body}");
    }
}

/// A whole amtterm SOL session against `addr`: log in, see the simulated console's prompt,
/// type a line, see the console answer it, leave with ^]. Returns what amtterm printed.
async fn amtterm_session(addr: SocketAddr, host_name: &str) -> String {
    require_program(&["amtterm"]);
    let script = require_program(&["script"]);
    // amtterm puts its stdin in raw mode and will not run without a terminal; `script` gives
    // it a pty and relays our pipes to it. -q quiet, -f flush at once, -e amtterm's exit
    // status, -c the command; the typescript goes to /dev/null (we read its stdout).
    let command = format!(
        "exec amtterm -u {DEMO_USERNAME} -p '{DEMO_PASSWORD}' {ip} {port}",
        ip = addr.ip(),
        port = addr.port()
    );
    let mut amtterm = Spawned::start(
        Command::new(script)
            .args(["-qfec", &command, "/dev/null"])
            .env("TERM", "dumb"),
    );

    // amtterm's own progress (stderr, on the same pty), then the console banner sent by the
    // device right after StartSOL succeeded.
    amtterm.expect("serial-over-lan redirection ok").await;
    amtterm
        .expect(&format!("{host_name} (simulated Intel AMT host) ttyS0"))
        .await;
    let prompt = format!("{host_name} login: ");
    amtterm.expect(&prompt).await;

    // Typed keys travel as SOL data; the console echoes them, then answers the line (amtterm
    // sends Enter as CR) with a fresh prompt.
    amtterm.send(b"root\r");
    amtterm.expect("root").await;
    amtterm
        .expect(&format!("{host_name}: received \"root\""))
        .await;
    amtterm.expect(&prompt).await;

    // ^] makes amtterm send EndSOL; on the device's reply it ends the redirection session
    // and exits. Its state trace shows a clean close, not ERROR.
    amtterm.send(&[CTRL_RIGHT_BRACKET]);
    amtterm.expect("saw ^], exiting").await;
    amtterm.expect("RUN_SOL -> CLOSING").await;
    amtterm.expect("CLOSING -> CLOSED").await;
    let status = amtterm.wait_exit().await;
    let transcript = amtterm.transcript();
    assert!(
        status.success(),
        "amtterm exited with {status}; output:\n{transcript}"
    );
    assert!(
        !transcript.contains("ERROR"),
        "amtterm reported an error:\n{transcript}"
    );
    transcript
}

// ---------------------------------------------------------------------------------------------
// Through the gateway

#[tokio::test]
async fn curl_identify_through_gateway_on_wsman_and_dash() {
    let sim = start_sim("interop-identify").await;
    let gateway = gateway_for(&sim).await;
    for service in [Service::Wsman, Service::Dash] {
        let body = curl_identify(gateway.addr(service)).await;
        assert_identify_response(&body, &format!("gateway {service}"));
    }
    let metrics = gateway.metrics().await;
    for service in ["wsman", "dash"] {
        assert_eq!(
            metrics.value(
                "amtgw_connections_established_total",
                &[("service", service)]
            ),
            1.0,
            "{service}: one connection to the device\n{}",
            metrics.0
        );
    }
}

#[tokio::test]
async fn curl_digest_get_through_gateway_returns_the_device_host_name() {
    let sim = start_sim("interop-digest-host").await;
    let gateway = gateway_for(&sim).await;
    let body = curl_get_settings(gateway.addr(Service::Wsman)).await;
    assert_general_settings(&body, "interop-digest-host", "gateway wsman");
    // Digest is two connections: the device answers the bare request with 401 and closes
    // (as AMT does), curl retries with the Authorization header on a new one.
    let metrics = gateway.metrics().await;
    assert_eq!(
        metrics.value(
            "amtgw_connections_established_total",
            &[("service", "wsman")]
        ),
        2.0,
        "{}",
        metrics.0
    );
}

#[tokio::test]
async fn curl_wrong_password_gets_401_and_the_connection_is_closed() {
    let sim = start_sim("interop-401").await;
    let gateway = gateway_for(&sim).await;
    let addr = gateway.addr(Service::Wsman);

    let output = curl(vec![
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        "--digest".into(),
        "-u".into(),
        format!("{DEMO_USERNAME}:wrong-Passw0rd!"),
        "-H".into(),
        SOAP_CONTENT_TYPE.into(),
        "--data-binary".into(),
        format!("@{}", get_settings_xml()),
        wsman_url(addr),
    ])
    .await;
    assert!(
        output.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "401");

    // The same without credentials over a raw socket: the 401 says `Connection: close` and
    // the close follows (EOF, the console's half of the connection still open).
    let body = std::fs::read(get_settings_xml()).unwrap();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!(
            "POST /wsman HTTP/1.1\r\nHost: {addr}\r\n{SOAP_CONTENT_TYPE}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    conn.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(STEP_TIMEOUT, conn.read_to_end(&mut response))
        .await
        .expect("the 401 must be followed by a close")
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, rest) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
    let headers: Vec<&str> = head.split("\r\n").skip(1).collect();
    assert!(headers.contains(&"Connection: close"), "{head}");
    assert!(headers.contains(&"Content-Length: 0"), "{head}");
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("WWW-Authenticate: Digest realm=\"")
                && h.contains("qop=\"auth\"")),
        "{head}"
    );
    assert_eq!(rest, "", "nothing after the 401");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amtterm_sol_session_through_gateway() {
    let sim = start_sim("interop-sol").await;
    let gateway = gateway_for(&sim).await;
    amtterm_session(gateway.addr(Service::Redirection), "interop-sol").await;

    // amtterm has exited; the gateway notices both ends closing and records the session.
    let closed = |metrics: &Metrics, outcome: Option<&str>| {
        let mut labels = vec![("service", "redirection")];
        labels.extend(outcome.map(|o| ("outcome", o)));
        metrics.sample("amtgw_connections_closed_total", &labels)
    };
    let metrics = gateway
        .metrics_settled(|metrics| closed(metrics, None).is_some_and(|n| n >= 1.0))
        .await;
    assert_eq!(closed(&metrics, None), Some(1.0), "{}", metrics.0);
    assert_eq!(
        closed(&metrics, Some("ok")),
        Some(1.0),
        "the SOL session did not end cleanly:\n{}",
        metrics.0
    );
    assert_eq!(
        metrics.value(
            "amtgw_connections_established_total",
            &[("service", "redirection")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// Straight to the simulator through stunnel (OpenSSL), without amtgw

#[tokio::test]
async fn stunnel_curl_identify_and_digest_get_against_simulator() {
    let sim = start_sim("interop-stunnel-wsman").await;
    let stunnel = Stunnel::start(&sim, 1).await;
    assert_identify_response(&curl_identify(stunnel.wsman).await, "stunnel wsman");
    assert_identify_response(&curl_identify(stunnel.dash).await, "stunnel dash");
    let body = curl_get_settings(stunnel.wsman).await;
    assert_general_settings(&body, "interop-stunnel-wsman", "stunnel wsman");
    drop(stunnel);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stunnel_amtterm_sol_session_against_simulator() {
    let sim = start_sim("interop-stunnel-sol").await;
    let stunnel = Stunnel::start(&sim, 2).await;
    amtterm_session(stunnel.redirection, "interop-stunnel-sol").await;
    drop(stunnel);
}

#[tokio::test]
async fn stunnel_refuses_the_simulator_once_its_certificate_changes() {
    // The pin is real: after unprovisioning, the device serves a new self-signed certificate,
    // and OpenSSL, still trusting only the old one, refuses the handshake.
    let sim = start_sim("interop-stunnel-unprovision").await;
    let mut stunnel = Stunnel::start(&sim, 3).await;
    assert_identify_response(&curl_identify(stunnel.wsman).await, "stunnel before");

    sim.unprovision().unwrap();
    let output = curl(vec![
        "-H".into(),
        SOAP_CONTENT_TYPE.into(),
        "--data-binary".into(),
        format!("@{}", identify_xml()),
        wsman_url(stunnel.wsman),
    ])
    .await;
    assert!(
        !output.status.success() && output.stdout.is_empty(),
        "curl got an answer through a tunnel that should have refused the device: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    stunnel.process.expect("certificate verify failed").await;
}
