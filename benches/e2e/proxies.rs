//! The proxies: each a child process with a temporary configuration written here, started,
//! waited for, paused and resumed (busy-polling HAProxy), and stopped.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::STEP_TIMEOUT;
use crate::kinds::{Kind, Program, amtgw_busy_poll, haproxy_busy_polling_threads};
use crate::machine::{
    PROXY_CPU, command_on_cpu, command_output, open_files_limits, running_as_root, tree,
};

/// Debian's dynamic stream module (libnginx-mod-stream).
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// How an nginx binary has its stream module, read from `nginx -V`: compiled in
/// (`--with-stream`, as nginx.org's packages build it), or as Debian's loadable module
/// (`--with-stream=dynamic`, the file from libnginx-mod-stream). `None`: it has none.
pub(crate) fn nginx_stream(nginx: &Path) -> Option<StreamModule> {
    let configure = command_output(&nginx.to_string_lossy(), &["-V"])?;
    let flags: Vec<&str> = configure.split_whitespace().collect();
    if flags.contains(&"--with-stream") {
        Some(StreamModule::BuiltIn)
    } else if flags.contains(&"--with-stream=dynamic") && Path::new(NGINX_STREAM_MODULE).is_file() {
        Some(StreamModule::Loaded(NGINX_STREAM_MODULE))
    } else {
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamModule {
    BuiltIn,
    Loaded(&'static str),
}

/// The next listening address for a proxy: this process's private loopback address (the
/// proxies bind it themselves, so they cannot be handed a bound socket), a port of its own.
fn proxy_listen_addr() -> SocketAddr {
    static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(20_000);
    let port = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert!(port < 32_768, "out of ports below the ephemeral range");
    SocketAddr::from((crate::loopback::private_loopback(), port))
}

/// Where a proxy listens and where it forwards.
pub(crate) struct Routes {
    /// -> the upstream that never resumes (a full handshake per connection)
    pub(crate) full: (SocketAddr, SocketAddr),
    /// -> the upstream that resumes (tickets; session IDs for amtgw-legacy)
    pub(crate) resumed: (SocketAddr, SocketAddr),
    /// -> the simulator's WS-Man port
    pub(crate) sim: (SocketAddr, SocketAddr),
}

pub(crate) struct Proxy {
    pub(crate) kind: Kind,
    child: Child,
    pub(crate) routes: Routes,
    log: PathBuf,
}

impl Proxy {
    /// Start `kind` trusting exactly the certificate in `leaf_pem` (`pin`, for amtgw), sized
    /// for `capacity` sessions.
    #[allow(clippy::too_many_arguments)] // one call site per use; a struct would only rename them
    pub(crate) async fn start(
        kind: Kind,
        program: &Path,
        dir: &Path,
        leaf_pem: &Path,
        pin: &str,
        upstreams: [SocketAddr; 3],
        label: &str,
        capacity: usize,
    ) -> Proxy {
        let routes = Routes {
            full: (proxy_listen_addr(), upstreams[0]),
            resumed: (proxy_listen_addr(), upstreams[1]),
            sim: (proxy_listen_addr(), upstreams[2]),
        };
        let all = [routes.full, routes.resumed, routes.sim];
        let stem = format!("{}-{label}", kind.name());
        let conf_path = dir.join(format!("{stem}.conf"));
        let log = dir.join(format!("{stem}.log"));
        let leaf = leaf_pem.display();
        let mut command = command_on_cpu(PROXY_CPU, program);
        let conf = match kind.program() {
            Program::Amtgw => {
                command.args(["run", "--config"]).arg(&conf_path);
                // One log line per connection at info; peers are configured not to log per
                // connection either.
                command.env("RUST_LOG", "warn");
                // For experiments: the data path runs on amtgw's own workers
                // (`gateway.workers`, default one per CPU it may run on), set through its
                // environment override.
                if let Ok(threads) = std::env::var("E2E_AMTGW_THREADS") {
                    command.env("AMTGW_GATEWAY__WORKERS", threads);
                }
                let busy_poll = if kind.busy_polls() {
                    format!("busy_poll = {:?}\n", amtgw_busy_poll())
                } else {
                    String::new()
                };
                // Every device of amtgw-legacy: its upstreams speak only TLS 1.2 with RSA key
                // exchange, which rustls cannot.
                let legacy = if kind.legacy() {
                    "[defaults]\ntls_backend = \"legacy\"\ntls_versions = [\"1.2\"]\n\n"
                } else {
                    ""
                };
                let mut c = format!(
                    "[gateway]\nmax_connections = 50000\nmax_connections_per_source = 50000\n\
                     connect_timeout = \"5s\"\n\
                     handshake_timeout = \"5s\"\nshutdown_delay = \"0s\"\nshutdown_timeout = \"1s\"\n{busy_poll}\n\
                     [admin]\nenabled = false\n\n{legacy}",
                );
                for (service, (listen, _), device) in [
                    ("wsman", routes.full, "up"),
                    ("redirection", routes.resumed, "up"),
                    ("dash", routes.sim, "sim"),
                ] {
                    let _ = write!(
                        c,
                        "[services.{service}]\nlisten_port = {}\nbind = [\"{}\"]\n\
                         default_device = \"{device}\"\nidle_timeout = \"10m\"\n\n",
                        listen.port(),
                        listen.ip()
                    );
                }
                let _ = write!(
                    c,
                    "[[devices]]\nname = \"up\"\nhost = \"127.0.0.1\"\n\
                     ports = {{ wsman = {}, redirection = {} }}\ntrust = \"pin\"\npins = [\"{pin}\"]\n\
                     max_connections = 50000\nmax_connections_per_source = 50000\n\n\
                     [[devices]]\nname = \"sim\"\nhost = \"127.0.0.1\"\nports = {{ dash = {} }}\n\
                     trust = \"pin\"\npins = [\"{pin}\"]\n\
                     max_connections = 50000\nmax_connections_per_source = 50000\n",
                    routes.full.1.port(),
                    routes.resumed.1.port(),
                    routes.sim.1.port()
                );
                c
            }
            Program::Stunnel => {
                command.arg(&conf_path);
                // verifyPeer: the leaf must be one of the certificates in CAfile, i.e. a pin.
                // Debian's stunnel is one process, a thread per connection.
                let mut c = format!(
                    "foreground = yes\npid =\ndebug = 3\nsyslog = no\nclient = yes\n\
                     verifyPeer = yes\nCAfile = {leaf}\n\
                     socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
                );
                for (i, (listen, up)) in all.iter().enumerate() {
                    let _ = write!(c, "\n[s{i}]\naccept = {listen}\nconnect = {up}\n");
                }
                c
            }
            Program::Haproxy => {
                command.arg("-db").arg("-f").arg(&conf_path);
                let maxconn =
                    capacity.min((open_files_limits().0 as usize).saturating_sub(100) / 2);
                let (threads, busy_polling) = if kind.busy_polls() {
                    (haproxy_busy_polling_threads(), "  busy-polling\n")
                } else {
                    (2, "")
                };
                // retries 0: a refused upstream closes the client at once instead of after
                // HAProxy's 1 s retry turn-around, a timer; with busy-polling, HAProxy 2.6's
                // timers never fired here, so the wrong-pin check would hang. No measured
                // connection fails, so no figure depends on it.
                let mut c = format!(
                    "global\n  nbthread {threads}\n  maxconn {maxconn}\n{busy_polling}\n\
                     defaults\n  mode tcp\n  retries 0\n  timeout connect 5s\n  \
                     timeout client 10m\n  timeout server 10m\n",
                );
                for (i, (listen, up)) in all.iter().enumerate() {
                    // The self-signed leaf is the only CA: a pin. No sni/verifyhost, so the
                    // name is not checked (the AMT-like certificate names no host).
                    let _ = write!(
                        c,
                        "\nlisten l{i}\n  bind {listen}\n  \
                         server s1 {up} ssl verify required ca-file {leaf}\n"
                    );
                }
                c
            }
            Program::Nginx => {
                command
                    .arg("-p")
                    .arg(dir)
                    .arg("-c")
                    .arg(&conf_path)
                    .arg("-e")
                    .arg(&log)
                    .args(["-g", "daemon off;"]);
                let user = if running_as_root() {
                    "user root;\n"
                } else {
                    ""
                };
                let load = match nginx_stream(program) {
                    Some(StreamModule::Loaded(module)) => format!("load_module {module};\n"),
                    Some(StreamModule::BuiltIn) | None => String::new(),
                };
                let mut c = format!(
                    "{load}{user}\
                     worker_processes 2;\nworker_rlimit_nofile {files};\n\
                     pid {dir}/{stem}.pid;\nerror_log {log} error;\n\
                     events {{ worker_connections {per_worker}; }}\n\
                     stream {{\n  access_log off;\n  proxy_ssl on;\n  proxy_ssl_verify on;\n  \
                     proxy_ssl_trusted_certificate {leaf};\n  proxy_ssl_name Unknown;\n  \
                     proxy_ssl_session_reuse on;\n  proxy_connect_timeout 5s;\n  \
                     proxy_ssl_protocols TLSv1.2 TLSv1.3;\n  \
                     proxy_timeout 10m;\n",
                    dir = dir.display(),
                    log = log.display(),
                    files = open_files_limits().0,
                    // Each proxied session takes two of a worker's connections, which nginx
                    // preallocates: size them to the run, not to the descriptor limit.
                    per_worker = (2 * capacity).min(open_files_limits().0 as usize),
                );
                for (listen, up) in all {
                    let _ = writeln!(c, "  server {{ listen {listen}; proxy_pass {up}; }}");
                }
                c.push_str("}\n");
                c
            }
        };
        std::fs::write(&conf_path, conf).expect("write proxy config");
        let out = File::create(&log).expect("proxy log");
        let err = out.try_clone().expect("proxy log");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let mut proxy = Proxy {
            kind,
            child,
            routes,
            log,
        };
        for (listen, _) in all {
            proxy.wait_listening(listen).await;
        }
        proxy
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -SIGNAL` to every process of the tree.
    fn signal_tree(&self, signal: &str) {
        let pids: Vec<String> = tree(self.pid()).iter().map(u32::to_string).collect();
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(&pids)
            .status();
    }

    /// Pause a proxy that spins when idle until its next `turn`; a paused process keeps its
    /// connections and session caches. Others keep running as they would in service.
    pub(crate) fn rest(&self) {
        if self.kind.spins_when_idle() {
            self.signal_tree("STOP");
        }
    }

    /// Undo `rest`.
    fn wake(&self) {
        if self.kind.spins_when_idle() {
            self.signal_tree("CONT");
        }
    }

    /// This proxy is measured until the guard drops: resumed if `rest` paused it, and paused
    /// again afterwards.
    pub(crate) fn turn(&self) -> Turn<'_> {
        self.wake();
        Turn(self)
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Readiness: the port accepts a connection (polled, bounded), the process still runs.
    async fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening on {addr}:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
            if TcpStream::connect(addr).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {addr} within {STEP_TIMEOUT:?}:\n{}",
                self.kind.name(),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM the main process (nginx's master stops its workers), SIGKILL whatever of the
    /// tree is left after a bounded wait, reap.
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // A stopped process would leave SIGTERM pending until the SIGKILL below.
        self.wake();
        let pids = tree(self.pid());
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let alive: Vec<String> = pids
            .iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .map(u32::to_string)
            .collect();
        if !alive.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&alive).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A proxy's turn to be measured (`Proxy::turn`).
pub(crate) struct Turn<'a>(&'a Proxy);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.rest();
    }
}

/// After the run: every proxy must still be running (a crash mid-run fails it); stop them.
pub(crate) fn stop_after_run(mut proxies: Vec<Proxy>) {
    for proxy in &mut proxies {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!(
                "{} exited ({status}) during the run:\n{}",
                proxy.kind.name(),
                proxy.log_tail()
            );
        }
        proxy.stop();
    }
}
