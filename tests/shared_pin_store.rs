#![allow(clippy::unwrap_used)]
//! The pin store in PostgreSQL, shared by replicas: real `amtgw run` processes against a real
//! PostgreSQL server (Debian's `postgresql` package, found in /usr/lib/postgresql/*/bin) that
//! each test starts in a temporary directory, listening only on a Unix socket there (no port
//! to race for, no system service), and stops. Devices are simulated in this process.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amtgw::tls::Fingerprints;
use amtgw_sim::{SimConfig, SimDevice};
use common::clients::announced_listener;
use common::{Metrics, exchange, http_get, http_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PASSWORD: &str = "pin-store-test-password";
const PORT: u16 = 5432;

// ---------------------------------------------------------------------------------------------
// PostgreSQL, started and stopped by the test

/// A PostgreSQL server of our own: `initdb` into a temporary directory, `postgres` listening
/// on a Unix socket in it, password (SCRAM) authentication for the user `amtgw`.
struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Who runs it: PostgreSQL refuses to run as root.
    user: Option<(u32, u32)>,
    /// The TCP port, when it listens on one (TLS tests); else only a Unix socket.
    tcp_port: Option<u16>,
    server: Option<Child>,
}

impl Postgres {
    fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// With `tls` (a certificate chain and key, PEM), the server also listens on 127.0.0.1
    /// with TLS, on a port it is given: PostgreSQL cannot pick one itself, so a port found
    /// taken is replaced by the next, and the server started again.
    fn start_with(tls: Option<(String, String)>) -> Postgres {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        let user = unprivileged_user();
        std::fs::write(dir.path().join("pg.password"), format!("{PASSWORD}\n")).unwrap();
        if let Some((cert, key)) = &tls {
            std::fs::write(dir.path().join("server.pem"), cert).unwrap();
            std::fs::write(dir.path().join("server.key"), key).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                dir.path().join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        if let Some((uid, gid)) = user {
            for entry in std::fs::read_dir(dir.path()).unwrap() {
                std::os::unix::fs::chown(entry.unwrap().path(), Some(uid), Some(gid)).unwrap();
            }
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let initdb = Command::new(bin.join("initdb"))
            .args(["--username=amtgw", "--auth=scram-sha-256", "--no-sync"])
            .arg(format!(
                "--pwfile={}",
                dir.path().join("pg.password").display()
            ))
            .arg("-D")
            .arg(dir.path().join("data"))
            .run_as(user)
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut postgres = Postgres {
            dir,
            bin,
            user,
            tcp_port: tls
                .is_some()
                .then(|| 20_000 + (std::process::id() % 20_000) as u16),
            server: None,
        };
        postgres.resume();
        postgres
    }

    /// Start the server on the existing data directory and wait for it to accept connections.
    fn resume(&mut self) {
        assert!(self.server.is_none());
        for _ in 0..20 {
            let port = self.port();
            let mut command = Command::new(self.bin.join("postgres"));
            command
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .arg("-k")
                .arg(self.dir.path())
                .args(["-p", &port.to_string(), "-c", "fsync=off"]);
            match self.tcp_port {
                None => command.args(["-c", "listen_addresses="]),
                Some(_) => command.args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "ssl=on",
                    "-c",
                    "ssl_cert_file=../server.pem",
                    "-c",
                    "ssl_key_file=../server.key",
                ]),
            };
            let mut server = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .run_as(self.user)
                .spawn()
                .unwrap();
            let lines = lines_of(server.stderr.take().unwrap(), "postgres");
            let ready = Instant::now() + Duration::from_secs(30);
            let started = loop {
                let line = lines
                    .recv_timeout(ready.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(|e| panic!("postgres did not come up: {e}"));
                if line.contains("ready to accept connections") {
                    break true;
                }
                if line.contains("could not bind")
                    || line.contains("could not create any TCP/IP sockets")
                {
                    break false;
                }
            };
            if started {
                self.server = Some(server);
                return;
            }
            let _ = server.wait();
            self.tcp_port = Some(port + 1);
        }
        panic!("postgres found no free port");
    }

    fn port(&self) -> u16 {
        self.tcp_port.unwrap_or(PORT)
    }

    /// Fast shutdown (SIGINT): clients are disconnected, then the server exits.
    fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &server.id().to_string()])
            .status();
        let _ = server.wait();
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://amtgw@<socket dir>/postgres`.
    fn url(&self) -> String {
        let dir = self.socket_dir().display().to_string().replace('/', "%2F");
        format!("postgres://amtgw@{dir}:{}/postgres", self.port())
    }

    /// Run SQL with psql; its unaligned, tuples-only output.
    fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "amtgw",
            ])
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port().to_string(), "-d", "postgres", "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The stored certificate pin of `device`, if any.
    fn stored(&self, device: &str) -> Option<String> {
        let out = self.psql(&format!(
            "SELECT certificate FROM amtgw_pins WHERE device = '{device}'"
        ));
        (!out.is_empty()).then_some(out)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The newest PostgreSQL's binaries (Debian installs each major version side by side).
fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: run scripts/install-test-deps.sh")
        .1
}

/// As root, the `postgres` user (Debian's package creates it), else `nobody`; otherwise
/// ourselves.
fn unprivileged_user() -> Option<(u32, u32)> {
    let me = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    if me.trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    ["postgres", "nobody"]
        .iter()
        .find_map(|name| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() > 3 && fields[0] == *name)
                    .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                    .flatten()
            })
        })
        .or_else(|| panic!("running as root, and neither user postgres nor nobody exists"))
}

trait RunAs {
    fn run_as(&mut self, user: Option<(u32, u32)>) -> &mut Self;
}

impl RunAs for Command {
    fn run_as(&mut self, user: Option<(u32, u32)>) -> &mut Self {
        use std::os::unix::process::CommandExt;
        if let Some((uid, gid)) = user {
            self.uid(uid).gid(gid);
        }
        self
    }
}

/// Every line of a child's output, as it comes, on a channel; also echoed to the test's
/// stderr (shown when a test fails).
fn lines_of(
    pipe: impl std::io::Read + Send + 'static,
    who: &'static str,
) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            eprintln!("[{who}] {line}");
            // The receiver may be gone; the pipe must still be drained.
            let _ = sender.send(line);
        }
    });
    receiver
}

// ---------------------------------------------------------------------------------------------
// amtgw replicas, as processes

/// One `amtgw run` process.
struct Replica {
    child: Child,
    dir: tempfile::TempDir,
    wsman: SocketAddr,
    admin: SocketAddr,
    /// Every log line so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    /// Start `amtgw run` with `devices` (`(name, sim)`, each `trust = "tofu"`) and the pin
    /// store in `postgres`; returns once it listens.
    fn start(postgres: &Postgres, devices: &[(&str, &SimDevice)]) -> Replica {
        Replica::start_with(&postgres.url(), "", devices)
    }

    /// The same with another store URL and extra `[gateway]` lines.
    fn start_with(url: &str, gateway: &str, devices: &[(&str, &SimDevice)]) -> Replica {
        let (mut command, dir) = Replica::command(url, gateway, devices);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stderr.take().unwrap(), "amtgw");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (mut wsman, mut admin) = (None, None);
        let started = Instant::now() + Duration::from_secs(30);
        while wsman.is_none() || admin.is_none() {
            let line = lines
                .recv_timeout(started.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|e| panic!("amtgw did not start listening: {e}"));
            log.lock().unwrap().push(line.clone());
            match announced_listener(&line) {
                Some((service, addr)) if service == "wsman" => wsman = Some(addr),
                Some((service, addr)) if service == "admin" => admin = Some(addr),
                _ => {}
            }
        }
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in lines {
                collected.lock().unwrap().push(line);
            }
        });
        Replica {
            child,
            dir,
            wsman: wsman.unwrap(),
            admin: admin.unwrap(),
            log,
        }
    }

    /// `amtgw run` with a config in a new directory (beside it the database password).
    fn command(
        url: &str,
        gateway: &str,
        devices: &[(&str, &SimDevice)],
    ) -> (Command, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pg.password"), format!("{PASSWORD}\n")).unwrap();
        let mut toml = format!(
            r#"
[gateway]
log_format = "json"
workers = 1
pin_store = "{url}"
pin_store_password_file = "pg.password"
pin_store_reread_interval = "1h"
{gateway}
[admin]
listen = "127.0.0.1:0"
[services.wsman]
listen_port = 0
default_device = "{first}"
[services.redirection]
enabled = false
[services.dash]
enabled = false
"#,
            first = devices[0].0,
        );
        for (name, sim) in devices {
            toml.push_str(&format!(
                "[[devices]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nports = {{ wsman = {} }}\ntrust = \"tofu\"\n",
                sim.wsman_addr().port()
            ));
        }
        let config = dir.path().join("amtgw.toml");
        std::fs::write(&config, toml).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_amtgw"));
        command.arg("run").arg("--config").arg(&config);
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy().to_ascii_uppercase();
            if name_text.starts_with(amtgw::config::ENV_PREFIX) || name_text == "PGPASSWORD" {
                command.env_remove(name);
            }
        }
        command.env("RUST_LOG", "info");
        (command, dir)
    }

    async fn metrics(&self) -> Metrics {
        Metrics(http_get(self.admin, "/metrics").await.1)
    }

    /// Scrape until `settled` holds (20 s at most): what another replica did, or the database
    /// going away, reaches this one asynchronously.
    async fn metrics_until(&self, what: &str, settled: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metrics = self.metrics().await;
            if settled(&metrics) {
                return metrics;
            }
            assert!(Instant::now() < deadline, "never {what}:\n{}", metrics.0);
            tokio::task::yield_now().await;
        }
    }

    fn connected(metrics: &Metrics) -> Option<f64> {
        metrics.sample("amtgw_pin_store_connected", &[("backend", "postgres")])
    }

    /// Failed connections for `reason` so far (0 when none).
    async fn failed(&self, reason: &str) -> f64 {
        self.metrics()
            .await
            .sample(
                "amtgw_connections_failed_total",
                &[("service", "wsman"), ("reason", reason)],
            )
            .unwrap_or(0.0)
    }

    /// The pins `/devices` shows for `device` (empty when none is known).
    async fn pins(&self, device: &str) -> Vec<String> {
        let (_, body) = http_get(self.admin, "/devices").await;
        let devices: serde_json::Value = serde_json::from_str(&body).unwrap();
        devices["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == device)
            .unwrap()["pins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect()
    }

    /// Wait until this replica's memory holds `pin` (or no pin, for `None`) for `device`.
    async fn pin_becomes(&self, device: &str, pin: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pins = self.pins(device).await;
            if pins.first().map(String::as_str) == pin {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{device}: pins stayed {pins:?}, expected {pin:?}"
            );
            tokio::task::yield_now().await;
        }
    }

    /// WS-Man Identify through this replica (to its one device): whether the device answered.
    async fn identify(&self) -> bool {
        let request = identify_request(true);
        let answer = exchange(TcpStream::connect(self.wsman).await.unwrap(), &request)
            .await
            .unwrap_or_default();
        String::from_utf8_lossy(&answer).contains("IdentifyResponse")
    }

    fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|line| line.contains(text))
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("amtgw.toml")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WS-Man Identify, on a connection that closes after it or stays open.
fn identify_request(close: bool) -> Vec<u8> {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:i=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header/><s:Body><i:Identify/></s:Body></s:Envelope>";
    format!(
        "POST /wsman HTTP/1.1\r\nHost: x\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

fn pin_of(sim: &SimDevice) -> String {
    Fingerprints::of(&sim.certificate())
        .unwrap()
        .certificate
        .to_string()
}

async fn sim(name: &str) -> SimDevice {
    SimDevice::start(SimConfig::demo(name)).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// The scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_learned_by_one_replica_is_enforced_and_re_pinned_by_both() {
    let postgres = Postgres::start();
    let device = sim("amt-shared").await;
    let a = Replica::start(&postgres, &[("amt-shared", &device)]);
    let b = Replica::start(&postgres, &[("amt-shared", &device)]);
    assert!(a.logged("pin store schema migrated") || b.logged("pin store schema migrated"));
    assert_eq!(
        postgres.psql("SELECT max(version) FROM amtgw_schema_version"),
        amtgw::tls::SCHEMA_VERSION.to_string()
    );

    // Learned once, by A; B hears of it without a connection of its own.
    assert!(a.identify().await, "first use through A");
    let learned = pin_of(&device);
    assert_eq!(postgres.stored("amt-shared"), Some(learned.clone()));
    b.pin_becomes("amt-shared", Some(&learned)).await;
    assert!(b.identify().await, "B trusts what A learned");

    // An impostor (the device with a new key) is refused by both; nothing is overwritten.
    device.unprovision().unwrap();
    assert!(!b.identify().await);
    assert!(!a.identify().await);
    assert_eq!(b.failed("pin_mismatch").await, 1.0);
    assert_eq!(a.failed("pin_mismatch").await, 1.0);
    assert_eq!(postgres.stored("amt-shared"), Some(learned.clone()));

    // Re-pinned once, on A's admin endpoint: B forgets the old pin and learns the new one.
    let (status, body) = http_request(a.admin, "POST", "/devices/amt-shared/repin").await;
    assert_eq!(status, 200, "{body}");
    b.pin_becomes("amt-shared", None).await;
    assert!(b.identify().await, "B learns the new key");
    let second = pin_of(&device);
    assert_eq!(postgres.stored("amt-shared"), Some(second.clone()));
    a.pin_becomes("amt-shared", Some(&second)).await;
    assert!(a.identify().await, "A trusts what B learned");

    // And `amtgw pin --replace` (here with A's config) reaches both as well.
    device.unprovision().unwrap();
    let replaced = tokio::task::spawn_blocking({
        let config = a.config();
        move || {
            Command::new(env!("CARGO_BIN_EXE_amtgw"))
                .args(["pin", "--config"])
                .arg(config)
                .args(["--replace", "amt-shared"])
                .env_remove("PGPASSWORD")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    let third = pin_of(&device);
    for replica in [&a, &b] {
        replica.pin_becomes("amt-shared", Some(&third)).await;
        assert!(replica.identify().await);
    }
    for replica in [&a, &b] {
        assert!(
            !replica
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(PASSWORD)),
            "the database password is never logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_to_learn_two_keys_for_one_device_agree_on_one() {
    let postgres = Postgres::start();
    // Two devices answering to one name, one behind each replica: whichever first use is
    // recorded first wins, and the other replica refuses the other key.
    let (left, right) = (sim("amt-race").await, sim("amt-race").await);
    let a = Replica::start(&postgres, &[("amt-race", &left)]);
    let b = Replica::start(&postgres, &[("amt-race", &right)]);

    let (through_a, through_b) = tokio::join!(a.identify(), b.identify());
    assert!(
        through_a != through_b,
        "exactly one first use wins (A: {through_a}, B: {through_b})"
    );
    let (winner, loser, winning_key) = match through_a {
        true => (&a, &b, pin_of(&left)),
        false => (&b, &a, pin_of(&right)),
    };
    assert_eq!(postgres.stored("amt-race"), Some(winning_key.clone()));
    assert_eq!(loser.failed("pin_mismatch").await, 1.0);
    // The loser adopted the winner's pin: its own device stays refused, and the winner's works.
    loser.pin_becomes("amt-race", Some(&winning_key)).await;
    assert!(!loser.identify().await);
    assert!(winner.identify().await);
    assert_eq!(postgres.psql("SELECT count(*) FROM amtgw_pins"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_known_pins_work_and_first_uses_are_refused() {
    let mut postgres = Postgres::start();
    let (known, unknown) = (sim("amt-known").await, sim("amt-unknown").await);
    let a = Replica::start(&postgres, &[("amt-known", &known)]);
    let b = Replica::start(&postgres, &[("amt-unknown", &unknown)]);
    assert!(a.identify().await);
    assert_eq!(postgres.stored("amt-known"), Some(pin_of(&known)));

    postgres.stop();
    for replica in [&a, &b] {
        replica
            .metrics_until("disconnected", |m| Replica::connected(m) == Some(0.0))
            .await;
    }
    assert!(a.identify().await, "a known pin works from memory");
    known.unprovision().unwrap();
    assert!(!a.identify().await, "and is still enforced");
    assert!(!b.identify().await, "a first use is refused");
    assert_eq!(b.failed("pin_store_failed").await, 1.0);
    assert_eq!(b.failed("pin_mismatch").await, 0.0);
    assert!(b.pins("amt-unknown").await.is_empty(), "nothing learned");
    assert!(
        b.logged("the database is unreachable"),
        "the refusal names the store's state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_traffic_keeps_sessions_and_learning_resumes() {
    let mut postgres = Postgres::start();
    let (known, later) = (sim("amt-busy").await, sim("amt-later").await);
    let a = Replica::start(&postgres, &[("amt-busy", &known)]);
    let b = Replica::start(&postgres, &[("amt-later", &later)]);
    // A keep-alive session through A, open across the restart.
    let mut session = TcpStream::connect(a.wsman).await.unwrap();
    let keep_alive = || identify_request(false);
    assert!(ask(&mut session, &keep_alive()).await, "first use, learned");

    postgres.stop();
    a.metrics_until("disconnected", |m| Replica::connected(m) == Some(0.0))
        .await;
    assert!(ask(&mut session, &keep_alive()).await, "during the outage");
    assert!(a.identify().await, "new connections too");
    assert!(!b.identify().await, "no first use while down");

    postgres.resume();
    for replica in [&a, &b] {
        replica
            .metrics_until("reconnected", |m| Replica::connected(m) == Some(1.0))
            .await;
    }
    assert!(ask(&mut session, &keep_alive()).await, "after the restart");
    assert!(b.identify().await, "learning works again");
    assert_eq!(postgres.stored("amt-later"), Some(pin_of(&later)));
    a.pin_becomes("amt-busy", Some(&pin_of(&known))).await;
    // The notification channel was re-established: a re-pin made in SQL reaches A.
    postgres.psql("DELETE FROM amtgw_pins WHERE device = 'amt-busy'");
    a.pin_becomes("amt-busy", None).await;
    assert!(b.logged("pin store reconnected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_reached_over_verified_tls_with_pin_store_ca_file() {
    let ca = common::TestCa::new("pin store test CA");
    let server = ca.server(&["127.0.0.1"]);
    let tls = (
        common::pem_block("CERTIFICATE", server.leaf().as_ref()),
        common::pem_block("PRIVATE KEY", server.key.secret_der()),
    );
    let postgres = Postgres::start_with(Some(tls));
    let url = format!("postgres://amtgw@127.0.0.1:{}/postgres", postgres.port());
    let device = sim("amt-tls").await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(ca_dir.path(), "db-ca");

    let a = Replica::start_with(
        &url,
        &format!("pin_store_ca_file = \"{ca_file}\""),
        &[("amt-tls", &device)],
    );
    assert!(a.identify().await);
    assert_eq!(postgres.stored("amt-tls"), Some(pin_of(&device)));
    assert_eq!(
        postgres.psql(
            "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE application_name = 'amtgw'"
        ),
        "t",
        "amtgw's connection is TLS"
    );

    // A server whose certificate the CA did not sign is refused at start: exit 1, naming the
    // store and the certificate problem.
    let other_dir = tempfile::tempdir().unwrap();
    let other = common::TestCa::new("another CA").write_pem(other_dir.path(), "other");
    let (mut command, _dir) = Replica::command(
        &url,
        &format!("pin_store_ca_file = \"{other}\""),
        &[("amt-tls", &device)],
    );
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_table_keeps_known_pins_and_learns_nothing_until_rows_are_back() {
    let postgres = Postgres::start();
    let (known, unknown) = (sim("amt-kept").await, sim("amt-new").await);
    let a = Replica::start(&postgres, &[("amt-kept", &known)]);
    // B knows A's device too (its default is the new one), so it holds a pin when the table
    // empties.
    let b = Replica::start(&postgres, &[("amt-new", &unknown), ("amt-kept", &known)]);
    assert!(a.identify().await);
    let learned = pin_of(&known);
    b.pin_becomes("amt-kept", Some(&learned)).await;

    // A restore of the wrong backup, say: every replica hears of it and keeps what it knows.
    postgres.psql("TRUNCATE amtgw_pins");
    for replica in [&a, &b] {
        replica
            .metrics_until("seen the emptied table", |m| {
                m.sample(
                    "amtgw_pin_store_errors_total",
                    &[("kind", "pin_store_lost")],
                )
                .is_some_and(|n| n >= 1.0)
            })
            .await;
    }
    assert_eq!(a.pins("amt-kept").await.first(), Some(&learned));
    assert!(a.identify().await, "the known pin stays in force");
    known.unprovision().unwrap();
    assert!(
        !a.identify().await,
        "and is enforced: the new key is not learned"
    );
    assert_eq!(a.failed("pin_mismatch").await, 1.0);
    assert!(
        !b.identify().await,
        "no first use while the table is emptied"
    );
    assert_eq!(b.failed("pin_store_failed").await, 1.0);
    assert_eq!(postgres.psql("SELECT count(*) FROM amtgw_pins"), "0");

    // Re-pinning on purpose puts a row back: learning resumes everywhere.
    let replaced = tokio::task::spawn_blocking({
        let config = a.config();
        move || {
            Command::new(env!("CARGO_BIN_EXE_amtgw"))
                .args(["pin", "--config"])
                .arg(config)
                .args(["--replace", "amt-kept"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        replaced.status.success(),
        "{}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    for replica in [&a, &b] {
        replica.pin_becomes("amt-kept", Some(&pin_of(&known))).await;
    }
    assert!(a.identify().await);
    assert!(b.identify().await, "learning resumed");
    assert_eq!(postgres.stored("amt-new"), Some(pin_of(&unknown)));
}

/// One keep-alive request on an open session; whether the device answered it.
async fn ask(session: &mut TcpStream, request: &[u8]) -> bool {
    session.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Duration::from_secs(10);
    while !answer.ends_with(b"0\r\n\r\n") {
        match tokio::time::timeout(deadline, session.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    String::from_utf8_lossy(&answer).contains("IdentifyResponse")
}
