//! Real clients nobody here wrote, driven as the interop and device-reach tests use them:
//! `curl` (WS-Man, HTTP digest) and `amtterm` (serial-over-LAN through a pty), plus the
//! simulated device and a gateway in front of it.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use amtgw_sim::{DEMO_PASSWORD, DEMO_USERNAME, SimConfig, SimDevice};
use tokio::sync::mpsc;

use super::TestGateway;

/// Guard for every wait on an external program: a hang fails the test, it never paces it.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
pub const SOAP_CONTENT_TYPE: &str = "Content-Type: application/soap+xml;charset=UTF-8";
/// amtterm's escape key: ^] ends the SOL session and the program.
pub const CTRL_RIGHT_BRACKET: u8 = 0x1d;

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn identify_xml() -> String {
    repo_path("scripts/wsman/identify.xml")
        .display()
        .to_string()
}

pub fn get_settings_xml() -> String {
    repo_path("scripts/wsman/get-general-settings.xml")
        .display()
        .to_string()
}

/// `program` of the virtualenv `venv` that a scripts/install-*.sh put under
/// `${AMTGW_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/amtgw-tools}`, or `$override_var` when
/// set. Fails the test (never skips it) when it is not there.
pub fn venv_program(override_var: &str, venv: &str, program: &str, installer: &str) -> PathBuf {
    let path = match std::env::var_os(override_var) {
        Some(path) => PathBuf::from(path),
        None => {
            let tools = std::env::var_os("AMTGW_TOOLS_DIR")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("amtgw-tools"))
                })
                .or_else(|| {
                    std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/amtgw-tools"))
                })
                .unwrap();
            tools.join(venv).join("bin").join(program)
        }
    };
    assert!(
        path.is_file(),
        "{} not found: run scripts/install-test-deps.sh (or scripts/{installer})",
        path.display()
    );
    path
}

/// The first of `names` found on PATH; fails the test (never skips it) when none is.
pub fn require_program(names: &[&str]) -> PathBuf {
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

pub async fn start_sim(name: &str) -> SimDevice {
    SimDevice::start(SimConfig::demo(name)).await.unwrap()
}

/// All three services on 127.0.0.1, ephemeral ports, the simulator the default device of
/// each, trusted by its certificate pin.
pub async fn gateway_for(sim: &SimDevice) -> TestGateway {
    let pin = amtgw::tls::Pin::of_certificate(&sim.certificate()).to_string();
    gateway_with(sim, &format!("trust = \"pin\"\npins = [\"{pin}\"]"), "").await
}

/// Like [`gateway_for`], with the device's trust and TLS keys (`device_toml`, e.g.
/// `trust = "tofu"` and `tls_backend = "legacy"`) and extra `[gateway]` keys given.
pub async fn gateway_with(sim: &SimDevice, device_toml: &str, gateway_toml: &str) -> TestGateway {
    gateway_listening(
        sim,
        device_toml,
        gateway_toml,
        "listen_port = 0\nbind = [\"127.0.0.1\"]",
    )
    .await
}

/// Like [`gateway_with`], the WS-Man service's listening keys given (`wsman_listen`, e.g. a
/// fixed port on this process's private loopback address for a console that dials 16992 only).
pub async fn gateway_listening(
    sim: &SimDevice,
    device_toml: &str,
    gateway_toml: &str,
    wsman_listen: &str,
) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[gateway]
connect_timeout = "5s"
handshake_timeout = "5s"
shutdown_delay = "0s"
shutdown_timeout = "5s"
{gateway_toml}

[admin]
listen = "127.0.0.1:0"

[services.wsman]
{wsman_listen}
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
{device_toml}
"#,
        wsman = sim.wsman_addr().port(),
        redirection = sim.redirection_addr().port(),
        dash = sim.dash_addr().port(),
    ))
    .await
}

/// A running program whose stdout and stderr are collected into one transcript; killed and
/// reaped when dropped.
pub struct Spawned {
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
    pub fn start(command: &mut Command) -> Spawned {
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn transcript(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Waits until the output, past the previous match, contains `needle`.
    pub async fn expect(&mut self, needle: &str) {
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

    pub fn send(&mut self, bytes: &[u8]) {
        // A few bytes into an empty pipe: never blocks.
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Reads the output to its end (the program closed it, i.e. exited), then reaps it.
    pub async fn wait_exit(&mut self) -> ExitStatus {
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

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The clients

/// Runs curl to completion (its own `--max-time` bounds it) off the async threads.
pub async fn curl(args: Vec<String>) -> Output {
    curl_in(None, args).await
}

/// `program` run inside the network namespace `netns` (`ip netns exec`), or here when `None`.
pub fn command_in(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        None => Command::new(program),
        Some(netns) => {
            let mut command = Command::new(require_program(&["ip"]));
            command.args(["netns", "exec", netns]).arg(program);
            command
        }
    }
}

/// [`curl`], inside the network namespace `netns` when one is given.
pub async fn curl_in(netns: Option<&str>, args: Vec<String>) -> Output {
    let program = require_program(&["curl"]);
    let mut command = command_in(netns, &program);
    tokio::task::spawn_blocking(move || {
        command
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

pub fn wsman_url(addr: SocketAddr) -> String {
    format!("http://{addr}/wsman")
}

/// `curl --fail` POSTing `body_file`; returns the response body.
pub async fn curl_soap(addr: SocketAddr, body_file: String, extra: &[&str]) -> String {
    curl_soap_in(None, addr, body_file, extra).await
}

/// [`curl_soap`], inside the network namespace `netns` when one is given.
pub async fn curl_soap_in(
    netns: Option<&str>,
    addr: SocketAddr,
    body_file: String,
    extra: &[&str],
) -> String {
    let mut args: Vec<String> = vec![
        "--fail".into(),
        "-H".into(),
        SOAP_CONTENT_TYPE.into(),
        "--data-binary".into(),
        format!("@{body_file}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(wsman_url(addr));
    let output = curl_in(netns, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl to {addr} failed ({}): {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

pub async fn curl_identify(addr: SocketAddr) -> String {
    curl_soap(addr, identify_xml(), &[]).await
}

pub async fn curl_get_settings(addr: SocketAddr) -> String {
    curl_get_settings_in(None, addr).await
}

/// A WS-Man Get with digest authentication, inside the network namespace `netns` when one is
/// given.
pub async fn curl_get_settings_in(netns: Option<&str>, addr: SocketAddr) -> String {
    let credentials = format!("{DEMO_USERNAME}:{DEMO_PASSWORD}");
    curl_soap_in(
        netns,
        addr,
        get_settings_xml(),
        &["--digest", "-u", &credentials],
    )
    .await
}

pub fn assert_identify_response(body: &str, via: &str) {
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

pub fn assert_general_settings(body: &str, host_name: &str, via: &str) {
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
pub async fn amtterm_session(addr: SocketAddr, host_name: &str) -> String {
    amtterm_session_in(None, addr, host_name).await
}

/// [`amtterm_session`], inside the network namespace `netns` when one is given.
pub async fn amtterm_session_in(netns: Option<&str>, addr: SocketAddr, host_name: &str) -> String {
    let mut amtterm = amtterm_logged_in(netns, addr, host_name).await;

    // Typed keys travel as SOL data; the console echoes them, then answers the line (amtterm
    // sends Enter as CR) with a fresh prompt.
    let prompt = format!("{host_name} login: ");
    amtterm.send(b"root\r");
    amtterm.expect("root").await;
    amtterm
        .expect(&format!("{host_name}: received \"root\""))
        .await;
    amtterm.expect(&prompt).await;
    amtterm_quit(amtterm).await
}

/// amtterm started against `addr` and shown the simulated console's banner and login prompt.
pub async fn amtterm_logged_in(netns: Option<&str>, addr: SocketAddr, host_name: &str) -> Spawned {
    require_program(&["amtterm"]);
    let script = require_program(&["script"]);
    let netns = match netns {
        Some(netns) => format!("ip netns exec {netns} "),
        None => String::new(),
    };
    // amtterm puts its stdin in raw mode and will not run without a terminal; `script` gives
    // it a pty and relays our pipes to it. -q quiet, -f flush at once, -e amtterm's exit
    // status, -c the command; the typescript goes to /dev/null (we read its stdout).
    let command = format!(
        "exec {netns}amtterm -u {DEMO_USERNAME} -p '{DEMO_PASSWORD}' {ip} {port}",
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
    amtterm.expect(&format!("{host_name} login: ")).await;
    amtterm
}

/// Leaves amtterm with ^] and checks it ended cleanly; returns what it printed.
pub async fn amtterm_quit(mut amtterm: Spawned) -> String {
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
// `amtgw run` as a process

/// `command` without the `AMTGW_` variables (any case) of the environment the tests run in:
/// the configuration under test is the file, and nothing a developer exported may leak in.
pub fn without_amtgw_env(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with("AMTGW_")
        {
            command.env_remove(name);
        }
    }
    command
}

/// The listener a JSON log line of `amtgw run` announces: its service (`"admin"` for the admin
/// listener) and address; `None` for every other line.
pub fn announced_listener(line: &str) -> Option<(String, SocketAddr)> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    let addr = event["addr"].as_str()?.parse().ok()?;
    match event["message"].as_str()? {
        "listening" => Some((event["service"].as_str()?.to_owned(), addr)),
        m if m.starts_with("admin listening") => Some(("admin".to_owned(), addr)),
        _ => None,
    }
}
