//! Running under systemd: deploy/systemd/amtgw.service passes `systemd-analyze verify`, and
//! `amtgw run` speaks the notification protocol (READY, RELOADING/READY on SIGHUP, STOPPING on
//! SIGTERM, WATCHDOG) to a `NOTIFY_SOCKET` that the test binds, as systemd would.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::clients::{announced_listener, repo_path, require_program, without_amtgw_env};
use common::http_get;

const UNIT: &str = "deploy/systemd/amtgw.service";
/// Where the unit expects the binary; the verify test points it at the one just built, since
/// `systemd-analyze verify` insists that ExecStart's program exists.
const INSTALLED_BINARY: &str = "/usr/local/bin/amtgw";

fn unit_text() -> String {
    std::fs::read_to_string(repo_path(UNIT)).unwrap()
}

/// The value of `Key=` in the unit (the last one, as systemd reads it).
fn directive(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .next_back()
        .map(str::to_owned)
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let analyze = require_program(&["systemd-analyze"]);
    let unit = unit_text();
    let exec_start = format!("ExecStart={INSTALLED_BINARY} ");
    assert_eq!(unit.matches(&exec_start).count(), 1, "{exec_start}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("amtgw.service");
    std::fs::write(
        &path,
        unit.replace(
            &exec_start,
            &format!("ExecStart={} ", env!("CARGO_BIN_EXE_amtgw")),
        ),
    )
    .unwrap();
    // --man=no: the man pages (`amtgw man --dir`) are not installed where man would look.
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // verify exits 0 after unknown keys and unparsable values ("…, ignoring"): any line is a
    // mistake in the unit.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify said:\n{stderr}"
    );

    // The hardening, as systemd scores it from the file alone: exposure 1.7 of 10 ("OK") when
    // written; --threshold fails it above 2.0, so a loosened sandbox shows here.
    let out = Command::new(require_program(&["systemd-analyze"]))
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("Overall exposure level for amtgw.service: 1."),
        "{report}"
    );
}

#[test]
fn the_units_user_passes_systemd_sysusers() {
    let sysusers = require_program(&["systemd-sysusers"]);
    let out = Command::new(sysusers)
        .arg("--dry-run")
        .arg(repo_path("deploy/systemd/amtgw.sysusers"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("ignoring"), "{stderr}");
}

#[test]
fn the_unit_sizes_descriptors_for_max_connections_and_writes_only_its_state_directory() {
    let unit = unit_text();
    let config = amtgw::Config::load(&repo_path("deploy/systemd/amtgw.toml")).unwrap();
    let limit: usize = directive(&unit, "LimitNOFILE").unwrap().parse().unwrap();
    // Two descriptors per connection and 1024 for everything else, as the unit's comment says.
    assert!(
        2 * config.gateway.max_connections + 1024 <= limit,
        "LimitNOFILE={limit} for max_connections = {}",
        config.gateway.max_connections
    );
    assert_eq!(directive(&unit, "Type").as_deref(), Some("notify"));
    assert_eq!(directive(&unit, "ProtectSystem").as_deref(), Some("strict"));
    assert_eq!(directive(&unit, "StateDirectory").as_deref(), Some("amtgw"));
    assert_eq!(
        directive(&unit, "RestartPreventExitStatus").as_deref(),
        Some("78"),
        "an invalid configuration is not restarted"
    );
    assert_eq!(
        directive(&unit, "AmbientCapabilities"),
        directive(&unit, "CapabilityBoundingSet")
    );
    // The example configuration keeps its pin store in StateDirectory=amtgw.
    let text = std::fs::read_to_string(repo_path("deploy/systemd/amtgw.toml")).unwrap();
    assert!(
        text.contains("pin_store = \"/var/lib/amtgw/amtgw-pins.toml\""),
        "{text}"
    );
    let exec = directive(&unit, "ExecStart").unwrap();
    assert!(
        exec.ends_with("run --config /etc/amtgw/amtgw.toml"),
        "{exec}"
    );
}

#[test]
fn the_example_configuration_for_the_unit_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_amtgw"))
        .args(["check", "--config"])
        .arg(repo_path("deploy/systemd/amtgw.toml"))
        .env_remove("AMTGW_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `amtgw run` with `NOTIFY_SOCKET` pointing at a datagram socket the test holds.
struct Notified {
    child: Child,
    socket: UnixDatagram,
    dir: tempfile::TempDir,
    wsman: SocketAddr,
    admin: SocketAddr,
}

impl Notified {
    fn start(watchdog_usec: Option<&str>) -> Notified {
        let dir = tempfile::tempdir().unwrap();
        let notify = dir.path().join("notify");
        let socket = UnixDatagram::bind(&notify).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let config = dir.path().join("amtgw.toml");
        std::fs::write(&config, config_text("")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_amtgw"));
        command
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify)
            .env("RUST_LOG", "info")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match watchdog_usec {
            Some(usec) => command.env("WATCHDOG_USEC", usec),
            None => command.env_remove("WATCHDOG_USEC"),
        };
        without_amtgw_env(&mut command);
        let mut child = command.spawn().unwrap();
        let (wsman, admin) = listening(child.stderr.take().unwrap());
        Notified {
            child,
            socket,
            dir,
            wsman,
            admin,
        }
    }

    /// The next notification other than WATCHDOG=1; counts those in `pings`.
    fn next(&self, pings: &mut usize) -> String {
        let mut buf = [0u8; 4096];
        loop {
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no notification within 20 s: {e}"));
            let text = String::from_utf8(buf[..n].to_vec()).unwrap();
            if text == "WATCHDOG=1" {
                *pings += 1;
                continue;
            }
            return text;
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn rewrite_config(&self, gateway: &str) {
        std::fs::write(self.dir.path().join("amtgw.toml"), config_text(gateway)).unwrap();
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// WS-Man on an ephemeral port with a default device nobody listens for (a connection is
/// served, then refused at the device's connect), admin on an ephemeral port, JSON logs; the
/// watcher slow enough that only SIGHUP reloads; no shutdown delay.
fn config_text(gateway: &str) -> String {
    format!(
        r#"
[gateway]
log_format = "json"
workers = 1
watch_interval = "1h"
shutdown_delay = "0s"
{gateway}
[admin]
listen = "127.0.0.1:0"
[services.wsman]
listen_port = 0
default_device = "amt"
[services.redirection]
enabled = false
[services.dash]
enabled = false
[[devices]]
name = "amt"
host = "127.0.0.1"
ports = {{ wsman = 9 }}
trust = "pin"
pins = ["cert-sha256:{zeros}"]
"#,
        zeros = "0".repeat(64)
    )
}

/// The WS-Man and admin addresses from the "listening" log lines; the rest of the log is
/// drained (and echoed) in the background.
fn listening(stderr: impl std::io::Read + Send + 'static) -> (SocketAddr, SocketAddr) {
    let (wsman, admin, _rest) = listening_then(stderr);
    (wsman, admin)
}

/// Like [`listening`], and the log lines after those.
fn listening_then(
    stderr: impl std::io::Read + Send + 'static,
) -> (SocketAddr, SocketAddr, mpsc::Receiver<String>) {
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            eprintln!("[amtgw] {line}");
            let _ = sender.send(line);
        }
    });
    let (mut wsman, mut admin) = (None, None);
    while wsman.is_none() || admin.is_none() {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("amtgw did not start listening: {e}"));
        match announced_listener(&line) {
            Some((service, addr)) if service == "wsman" => wsman = Some(addr),
            Some((service, addr)) if service == "admin" => admin = Some(addr),
            _ => {}
        }
    }
    (wsman.unwrap(), admin.unwrap(), lines)
}

fn field<'a>(notification: &'a str, key: &str) -> Option<&'a str> {
    notification
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

#[tokio::test]
async fn run_notifies_ready_reloading_and_stopping() {
    let gateway = Notified::start(None);
    let mut pings = 0;

    let ready = gateway.next(&mut pings);
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert_eq!(field(&ready, "STATUS"), Some("serving 1 device(s)"));
    // Ready means served: the admin listener answers, and a console connection is taken and
    // handled (the device is down, so it is closed once the console speaks).
    assert_eq!(http_get(gateway.admin, "/readyz").await.0, 200);
    let console = tokio::net::TcpStream::connect(gateway.wsman).await.unwrap();
    common::expect_refused(console).await;

    gateway.signal("HUP");
    let reloading = gateway.next(&mut pings);
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading}");
    let usec: u64 = field(&reloading, "MONOTONIC_USEC")
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    let ready = gateway.next(&mut pings);
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert_eq!(field(&ready, "STATUS"), Some("configuration reloaded"));

    // A rejected reload still ends in READY: the previous configuration serves on.
    gateway.rewrite_config("max_connections = 0");
    gateway.signal("HUP");
    assert_eq!(field(&gateway.next(&mut pings), "RELOADING"), Some("1"));
    let ready = gateway.next(&mut pings);
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert!(
        field(&ready, "STATUS")
            .unwrap()
            .starts_with("reload rejected"),
        "{ready}"
    );

    gateway.signal("TERM");
    let stopping = gateway.next(&mut pings);
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
    // The delay (0 s here) and the drain (shutdown_timeout, 30 s by default), and a margin.
    let extend: u64 = field(&stopping, "EXTEND_TIMEOUT_USEC")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(extend, 35_000_000);
    let mut gateway = gateway;
    let status = gateway.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(pings, 0, "no WATCHDOG_USEC, no pings");
}

#[tokio::test]
async fn run_pings_the_watchdog_at_half_its_interval() {
    // 200 ms: a ping every 100 ms. Five of them arrive within the receive timeout.
    let gateway = Notified::start(Some("200000"));
    let mut pings = 0;
    assert_eq!(field(&gateway.next(&mut pings), "READY"), Some("1"));
    let mut buf = [0u8; 64];
    let started = tokio::time::Instant::now();
    while pings < 5 {
        let n = gateway.socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        pings += 1;
    }
    // Five pings at 100 ms take about 400 ms; far less would mean pinging without pause.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    gateway.signal("TERM");
    assert_eq!(field(&gateway.next(&mut pings), "STOPPING"), Some("1"));
}

// ---------------------------------------------------------------------------------------------
// Socket activation

/// `amtgw run` as systemd starts it for a `.socket` unit: `listener` as descriptor 3,
/// `LISTEN_FDS=1` and `LISTEN_PID` naming the process itself (a shell sets it to its own pid
/// and execs amtgw, which keeps the pid, as systemd sets it between fork and exec).
fn activated(config: &str, listener: std::net::TcpListener) -> (Child, tempfile::TempDir) {
    use command_fds::{CommandFdExt as _, FdMapping};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("amtgw.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_amtgw"))
        .args(["run", "--config"])
        .arg(&path)
        .env("LISTEN_FDS", "1")
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    without_amtgw_env(&mut command);
    command
        .fd_mappings(vec![FdMapping {
            parent_fd: listener.into(),
            child_fd: 3,
        }])
        .unwrap();
    (command.spawn().unwrap(), dir)
}

#[test]
fn socket_activation_serves_on_the_socket_systemd_passed_including_connections_made_before_start() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let passed = listener.local_addr().unwrap();
    // A console that connects while the service is not running yet waits in the backlog.
    let mut early = std::net::TcpStream::connect(passed).unwrap();
    let config = config_text("").replace(
        "[services.wsman]\nlisten_port = 0\n",
        &format!(
            "[services.wsman]\nlisten_port = {}\nbind = [\"127.0.0.1\"]\n",
            passed.port()
        ),
    );
    assert!(config.contains(&format!("listen_port = {}", passed.port())));
    let (mut child, _dir) = activated(&config, listener);
    let (wsman, _admin, log) = listening_then(child.stderr.take().unwrap());
    assert_eq!(wsman, passed, "amtgw listens where systemd bound");

    // The early console is served: its first bytes make the gateway dial its device, which
    // refuses (port 9), and the connection's summary line says so.
    use std::io::Write as _;
    early.write_all(b"POST /wsman HTTP/1.1\r\n").unwrap();
    let console = early.local_addr().unwrap().to_string();
    let summary = loop {
        let line = log
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no summary line for {console}: {e}"));
        if line.contains("connection closed") && line.contains(&console) {
            break line;
        }
    };
    assert!(summary.contains("connect_refused"), "{summary}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_passed_socket_that_no_listener_uses_stops_the_start_naming_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let passed = listener.local_addr().unwrap();
    // WS-Man on an ephemeral port: nothing in the configuration is `passed`.
    let (child, _dir) = activated(&config_text(""), listener);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "systemd passed a socket for {passed} (LISTEN_FDS) that no listener of the \
             configuration uses"
        )),
        "{stderr}"
    );
}

#[test]
fn the_socket_unit_passes_systemd_analyze_verify_with_the_service() {
    let analyze = require_program(&["systemd-analyze"]);
    let dir = tempfile::tempdir().unwrap();
    let service = unit_text().replace(
        &format!("ExecStart={INSTALLED_BINARY} "),
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_amtgw")),
    );
    std::fs::write(dir.path().join("amtgw.service"), service).unwrap();
    let socket = std::fs::read_to_string(repo_path("deploy/systemd/amtgw.socket")).unwrap();
    for port in ["16992", "16994", "623"] {
        assert!(
            socket.contains(&format!("ListenStream=[::]:{port}\n")),
            "{port}"
        );
    }
    let path = dir.path().join("amtgw.socket");
    std::fs::write(&path, socket).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .arg(dir.path().join("amtgw.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "", "systemd-analyze verify complained");
}
