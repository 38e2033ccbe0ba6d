//! The `amtgw` command: parses the CLI, loads the config, sets up logging, and hands over to
//! the library. Exit codes, one scheme for every subcommand: 0 success (for `run`, every session
//! drained), 1 runtime failure or sessions cut at the drain deadline, 2 usage (clap's own code
//! for malformed arguments, and arguments that parse but name nothing usable), 78 invalid
//! configuration (sysexits' `EX_CONFIG`).
//!
//! Subcommands with output of their own live beside this file in `cli/` (`amtgw pin`:
//! `cli/pin.rs`); they belong to the binary, not to the library.

#[cfg(feature = "sim")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use amtgw::activation::InheritedListeners;
use amtgw::config::{Environment, LogFormat};
#[cfg(feature = "sim")]
use amtgw::demo::{Demo, DemoOptions};
use amtgw::shutdown::{DelaySkip, Signal, Signals};
use amtgw::systemd::{self, Notifier};
use amtgw::workers::Workers;
use amtgw::{Config, Gateway, ReloadHandle};

mod cli {
    pub(crate) mod health;
    pub(crate) mod pin;
}

/// Arguments that parse but cannot be used; the same code clap exits with for malformed ones.
#[cfg(feature = "sim")]
const EX_USAGE: u8 = 2;
/// An invalid configuration (file or `AMTGW_` variables): sysexits' `EX_CONFIG`, which is also
/// what systemd's `RestartPreventExitStatus=` in deploy/systemd/amtgw.service names.
const EX_CONFIG: u8 = 78;

/// The exit codes, environment and signals, for `run --help` and `check --help`.
const RUN_HELP: &str = "\
Configuration: the TOML file, then AMTGW_ environment variables over it. `__` separates keys:
  AMTGW_GATEWAY__MAX_CONNECTIONS=5000   AMTGW_SERVICES__WSMAN__BIND='[\"0.0.0.0\"]'
A variable counts only when its first segment names a top-level table (GATEWAY, ADMIN, METRICS,
SERVICES, DEFAULTS, DEVICES, RANGES); other AMTGW_ variables (Kubernetes' AMTGW_SERVICE_HOST...)
are ignored. AMTGW_CONFIG is the --config default.

Environment:
  RUST_LOG        log filter (default: info), e.g. RUST_LOG=debug or RUST_LOG=amtgw::proxy=debug
  NOTIFY_SOCKET   set by systemd (Type=notify): READY, RELOADING, STOPPING and WATCHDOG are sent
                  there (WATCHDOG_USEC: every half of it)
  LISTEN_FDS      set by systemd (socket activation): listeners to use for the configured
                  addresses they are bound to, instead of binding those
  STATE_DIRECTORY set by systemd (StateDirectory=) and the container image: with
                  gateway.pin_store unset, the pin store is amtgw-pins.toml there

Signals:
  SIGHUP          reload the configuration; a bad one is rejected and the running one stays
  SIGTERM, SIGINT drain: refuse new connections, let sessions finish until
                  gateway.shutdown_timeout, then cut the rest

Exit codes:
  0   stopped, every session drained
  1   runtime failure (e.g. an address cannot be bound), or sessions cut at the drain deadline
  2   usage: malformed arguments
  78  invalid configuration (file, key and fix on stderr; nothing was bound)";

const CHECK_HELP: &str = "\
Reads the file, applies AMTGW_ environment variables over it (`__` separates keys:
AMTGW_GATEWAY__MAX_CONNECTIONS=5000; AMTGW_CONFIG is the --config default), validates every key
and reads every certificate, key and CA file it names. Binds nothing. Warnings about AMTGW_
variables that look misspelt go to stderr. RUST_LOG plays no part.

Exit codes:
  0   valid (one line on stdout: devices, ranges and services)
  2   usage: malformed arguments
  78  invalid configuration (file, key and fix on stderr)";

#[derive(Parser)]
#[command(name = "amtgw", version, about = "TLS gateway for Intel AMT fleets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    #[command(after_help = RUN_HELP)]
    Run {
        /// Configuration file (TOML).
        #[arg(long, short, env = "AMTGW_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit: 0 if valid, 78 with the reason if not.
    #[command(after_help = CHECK_HELP)]
    Check {
        /// Configuration file (TOML).
        #[arg(long, short, env = "AMTGW_CONFIG")]
        config: PathBuf,
    },
    /// Run the demo: simulated AMT devices behind the gateway on the legacy ports of
    /// 127.0.0.1 (and 127.0.0.2 for the second device).
    ///
    /// A port of 0 picks a free one; the printed instructions name the ports actually bound.
    #[cfg(feature = "sim")]
    Demo {
        #[arg(long, default_value_t = 16992)]
        wsman_port: u16,
        #[arg(long, default_value_t = 16994)]
        redirection_port: u16,
        #[arg(long, default_value_t = 623)]
        dash_port: u16,
        /// The VNC bridge to the first device's KVM.
        #[arg(long, default_value_t = 5900)]
        vnc_port: u16,
        #[arg(long, default_value = "127.0.0.1:9716")]
        admin: SocketAddr,
        /// Where the demo writes its effective config and pin store (removed at exit).
        /// Default: a fresh directory under the system's temporary directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Run one simulated AMT device (TLS only, like CSME 16.1+). SIGUSR1 "unprovisions" it:
    /// a new key and self-signed certificate, as the firmware makes.
    ///
    /// The same as the `amtgw-sim` command. A port of 0 picks a free one; the first line
    /// printed names the addresses actually bound.
    #[cfg(feature = "sim")]
    Sim(amtgw_sim::cli::SimArgs),
    /// Probe a device's TLS certificate, like ssh-keyscan: subject, issuer, validity, both pin
    /// forms, TLS version and cipher; with --config, whether it matches the device's pins.
    #[command(after_help = "\
Forms:
  amtgw pin HOST[:PORT]                          probe and print (port 16993 by default)
  amtgw pin --config FILE NAME                   the configured device NAME (its host, WS-Man TLS
                                                 port, server_name and client certificate), and
                                                 whether it matches its pins or stored pin
  amtgw pin --config FILE --write NAME           trust = \"tofu\": store the pin if none is stored
                                                 (never overwrites; reports a mismatch)
  amtgw pin --config FILE --replace NAME         trust = \"tofu\": re-pin (after unprovisioning)
  amtgw pin --config FILE --all [--write]        every device, concurrently; one table row each

PIN column: match, MISMATCH, - (trust = \"ca\": not pinned), new (tofu, nothing stored yet),
learned (tofu, stored by --write), replaced (--replace).

Exit codes: 0 every device probed was reachable and no pin mismatched; 1 a device was
unreachable, its handshake failed, a pin mismatched or the pin store failed; 2 malformed
arguments, unknown NAME, or --write/--replace for a device that is not tofu; 78 invalid
configuration.")]
    Pin {
        /// HOST[:PORT] to probe; with --config, the NAME of a configured device.
        #[arg(
            value_name = "HOST[:PORT] | NAME",
            required_unless_present_any = ["all", "replace"]
        )]
        target: Option<String>,
        /// Configuration file (TOML). Not taken from AMTGW_CONFIG, which would turn HOST into NAME.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Probe every configured device and print a table.
        #[arg(long, requires = "config", conflicts_with = "target")]
        all: bool,
        /// Probes in flight at once with --all.
        #[arg(long, default_value_t = cli::pin::DEFAULT_CONCURRENCY,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        concurrency: usize,
        /// Record the presented pin in the pin store for trust = "tofu" devices that have none.
        #[arg(long, requires = "config")]
        write: bool,
        /// Replace the stored pin of the trust = "tofu" device NAME with the presented one.
        #[arg(long, value_name = "NAME", requires = "config",
              conflicts_with_all = ["target", "all", "write"])]
        replace: Option<String>,
        /// Connect and handshake timeout each [default: the config's, or 10s].
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Ask a running gateway whether it is alive (its admin listener's /healthz), or with
    /// --ready whether it takes connections (/readyz): the container image's health check.
    #[command(after_help = "\
The admin listener's address is admin.listen from the configuration (--config or AMTGW_CONFIG,
with AMTGW_ variables applied as `run` applies them; a wildcard address is asked over loopback),
or --admin ADDRESS.

Exit codes:
  0   healthy (ready): the answer's line on stdout
  1   not: no answer, an error status, or no answer within --timeout (the reason on stderr)
  2   usage: malformed arguments, or no admin listener to ask
  78  invalid configuration")]
    Health {
        /// Configuration file (TOML) of the gateway to ask.
        #[arg(long, short, env = "AMTGW_CONFIG", conflicts_with = "admin")]
        config: Option<PathBuf>,
        /// The admin listener's address, instead of reading it from the configuration.
        #[arg(long, value_name = "ADDRESS")]
        admin: Option<std::net::SocketAddr>,
        /// Ask /readyz (503 while draining) instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// Connecting and answering, together.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print a shell completion script for SHELL (bash, zsh, fish, elvish, powershell), e.g.
    /// `amtgw completions bash > /usr/share/bash-completion/completions/amtgw`.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of amtgw, or with --dir write amtgw.1 and one amtgw-COMMAND.1
    /// per command there, e.g. `amtgw man --dir /usr/local/share/man/man1`.
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => {
            let env = Environment::from_process();
            // No logging is set up for `check`: its warnings go to stderr like its errors.
            for warning in env.warnings() {
                eprintln!("warning: {warning}");
            }
            check(&config, &env)
        }
        Command::Run { config } => {
            let env = Environment::from_process();
            let config = match Config::load_with_env(&config, &env) {
                Ok(config) => config,
                Err(e) => {
                    for warning in env.warnings() {
                        eprintln!("warning: {warning}");
                    }
                    eprintln!("error: {e}");
                    return ExitCode::from(EX_CONFIG);
                }
            };
            init_logging(config.gateway.log_format);
            report_environment(&env);
            // Before any thread starts: taking the descriptors unsets LISTEN_FDS and LISTEN_PID.
            let inherited = match InheritedListeners::from_systemd() {
                Ok(inherited) => inherited,
                Err(e) => return report(Err(e.into())),
            };
            report(runtime().and_then(|rt| rt.block_on(serve(config, inherited))))
        }
        #[cfg(feature = "sim")]
        Command::Demo {
            wsman_port,
            redirection_port,
            dash_port,
            vnc_port,
            admin,
            state_dir,
        } => {
            init_logging(LogFormat::Text);
            let defaults = DemoOptions::default();
            let options = DemoOptions {
                wsman_port,
                redirection_port,
                dash_port,
                vnc_port,
                admin,
                state_dir: state_dir.unwrap_or(defaults.state_dir),
            };
            report(runtime().and_then(|rt| rt.block_on(demo(options))))
        }
        #[cfg(feature = "sim")]
        Command::Sim(args) => {
            init_logging(LogFormat::Text);
            let config = match args.into_config() {
                Ok(config) => config,
                Err(e) => return usage_error(&e),
            };
            report(runtime().and_then(|rt| {
                rt.block_on(amtgw_sim::cli::serve(config))
                    .map(|()| true)
                    .map_err(anyhow::Error::from)
            }))
        }
        Command::Pin {
            target,
            config,
            all,
            concurrency,
            write,
            replace,
            timeout,
        } => {
            let args = cli::pin::PinArgs {
                target,
                config,
                all,
                concurrency,
                write,
                replace,
                timeout,
            };
            match runtime() {
                Ok(rt) => ExitCode::from(rt.block_on(cli::pin::pin_command(args))),
                Err(e) => report(Err(e)),
            }
        }
        Command::Health {
            config,
            admin,
            ready,
            timeout,
        } => {
            let args = cli::health::HealthArgs {
                config,
                admin,
                ready,
                timeout,
            };
            match runtime() {
                Ok(rt) => ExitCode::from(rt.block_on(cli::health::health_command(args))),
                Err(e) => report(Err(e)),
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "amtgw", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => report(man_pages(dir.as_deref()).map(|()| true)),
    }
}

/// The man pages, from the same clap definitions as `--help`: amtgw(1) on stdout, or in `dir`
/// amtgw.1 and amtgw-COMMAND.1 for each command users see.
fn man_pages(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let command = Cli::command();
    let Some(dir) = dir else {
        return clap_mangen::Man::new(command)
            .render(&mut std::io::stdout())
            .context("writing the man page");
    };
    // One page per command users see, each titled by its full name as git's are
    // (amtgw-run(1)); hidden commands (these two) get none.
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("writing man pages to {}", dir.display()))
}

#[cfg(feature = "sim")]
fn usage_error(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(EX_USAGE)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn report(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let message = describe(&e);
            tracing::error!("{message}");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: amtgw's errors already include their cause in
/// their own message, which anyhow's `{:#}` would repeat.
fn describe(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

fn check(path: &std::path::Path, env: &Environment) -> ExitCode {
    match Config::load_with_env(path, env) {
        Ok(config) => {
            let ranges = match config.ranges.len() {
                0 => String::new(),
                n => format!(", {n} range(s)"),
            };
            let services: Vec<String> = config
                .services
                .iter()
                .map(|s| match s.routing {
                    amtgw::config::Routing::Alias => s.service.as_str().to_owned(),
                    routing => format!("{} ({})", s.service, routing.as_str()),
                })
                .collect();
            println!(
                "{}: valid ({} device(s){ranges}, services: {})",
                config.source,
                config.devices.len(),
                services.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

/// Once at start: the environment does not change under a running process, so reloads stay
/// quiet about it.
fn report_environment(env: &Environment) {
    for warning in env.warnings() {
        tracing::warn!("{warning}");
    }
    if !env.ignored().is_empty() {
        // Names only: values of other programs' variables are none of our business to log.
        tracing::info!(
            variables = %env.ignored().join(","),
            "ignoring AMTGW_ variables that are not configuration (their first segment names no table)"
        );
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout is for what a command prints on purpose (the demo's
    // instructions, `check`'s verdict).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Bind, serve until SIGTERM/SIGINT, drain. `Ok(true)` when every session drained.
async fn serve(config: Config, inherited: InheritedListeners) -> anyhow::Result<bool> {
    let source = config.source.clone();
    let notifier = notifier();
    // Before anything is announced: a SIGTERM sent as soon as "amtgw starting" is logged must
    // drain, not kill the process with the default action.
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let workers = start_workers(&config)?;
    if !inherited.is_empty() {
        tracing::info!(
            sockets = inherited.len(),
            "socket activation: listening on the sockets systemd passed"
        );
    }
    let gateway = Gateway::bind_inheriting(config, inherited)
        .await
        .with_context(|| format!("starting from {source}"))?
        .with_workers(workers);
    announce(&gateway);
    let reload = gateway.reload_handle();
    let skip = gateway.delay_skip();
    let shutdown = CancellationToken::new();
    // What stopping may take: the delay (listeners still serving), then the drain.
    let stopping =
        gateway.config().gateway.shutdown_delay + gateway.config().gateway.shutdown_timeout;
    let devices = gateway.config().devices.len();
    let run = tokio::spawn(gateway.run(shutdown.clone()));
    // Every listener is bound (in `bind`), so connections queue from now on.
    if let Some(notifier) = &notifier {
        tell(notifier.ready(&format!("serving {devices} device(s)")));
        if let Some(every) = systemd::watchdog_interval() {
            tracing::info!(every_ms = every.as_millis() as u64, "systemd watchdog on");
            tokio::spawn(watchdog(notifier.clone(), every));
        }
    }
    until_stopped(
        &mut signals,
        Some(&reload),
        None::<fn()>,
        notifier.as_deref(),
    )
    .await?;
    if let Some(notifier) = &notifier {
        // A margin for the rest of the exit.
        tell(notifier.stopping(stopping + std::time::Duration::from_secs(5)));
    }
    shutdown.cancel();
    let report = stopped(run, signals, skip).await?;
    tracing::info!(cut = report.cut, "stopped");
    Ok(report.drained())
}

/// systemd's notification socket, when amtgw runs under it as `Type=notify`.
fn notifier() -> Option<Arc<Notifier>> {
    match Notifier::from_env() {
        Ok(notifier) => notifier.map(Arc::new),
        Err(e) => {
            tracing::warn!(kind = e.kind(), error = %e, "not notifying systemd");
            None
        }
    }
}

/// A failed notification is logged, never fatal: the gateway serves either way, and systemd
/// will act on the missing message (a start or watchdog timeout) by itself.
fn tell(result: Result<(), systemd::NotifyError>) {
    if let Err(e) = result {
        tracing::warn!(kind = e.kind(), error = %e, "systemd notification failed");
    }
}

/// Ping systemd's watchdog from the main runtime: if it stops being scheduled (a wedged
/// reload, a blocked control loop), the pings stop and systemd restarts the service.
async fn watchdog(notifier: Arc<Notifier>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        tell(notifier.watchdog());
    }
}

fn start_workers(config: &Config) -> anyhow::Result<Arc<Workers>> {
    let workers = Workers::start(config.gateway.workers).context("starting the data path")?;
    tracing::info!(
        workers = workers.len(),
        busy_poll_us = config.gateway.busy_poll.as_micros() as u64,
        "data-path workers started"
    );
    Ok(Arc::new(workers))
}

fn announce(gateway: &Gateway) {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %gateway.config().source, devices = gateway.config().devices.len(), "amtgw starting");
    if let Some(addr) = gateway.admin_addr() {
        tracing::info!(%addr, "admin listening (/metrics /healthz /readyz)");
    }
}

#[cfg(feature = "sim")]
async fn demo(options: DemoOptions) -> anyhow::Result<bool> {
    let mut signals = Signals::install().context("cannot install signal handlers")?;
    let demo = Demo::start(&options).await.context("starting the demo")?;
    announce(&demo.gateway);
    println!("{}", demo.instructions());
    let Demo {
        devices,
        gateway,
        state,
        ..
    } = demo;
    let workers = start_workers(&gateway.config())?;
    let gateway = gateway.with_workers(workers);
    let shutdown = CancellationToken::new();
    let reload = gateway.reload_handle();
    let skip = gateway.delay_skip();
    let run = tokio::spawn(gateway.run(shutdown.clone()));
    let unprovisioned = &devices[amtgw::demo::TOFU_DEVICE];
    let name = amtgw::demo::DEVICE_NAMES[amtgw::demo::TOFU_DEVICE];
    until_stopped(
        &mut signals,
        Some(&reload),
        Some(|| match unprovisioned.unprovision() {
            Ok(()) => println!(
                "unprovisioned {name}: new key and certificate; it is refused until re-pinned"
            ),
            Err(e) => tracing::warn!(error = %e, "unprovision failed"),
        }),
        None,
    )
    .await?;
    shutdown.cancel();
    let report = stopped(run, signals, skip).await?;
    for device in devices {
        device.shutdown().await;
    }
    drop(state);
    Ok(report.drained())
}

/// The gateway's report once it has drained. Another SIGTERM or SIGINT meanwhile ends
/// `gateway.shutdown_delay` at once, as operators expect of a second Ctrl-C. SIGHUP is
/// ignored: a reload answered only during the delay would leave it hanging once the drain has
/// begun (changed files are still picked up by the watcher during the delay).
async fn stopped(
    mut run: tokio::task::JoinHandle<amtgw::DrainReport>,
    mut signals: Signals,
    skip: DelaySkip,
) -> anyhow::Result<amtgw::DrainReport> {
    loop {
        tokio::select! {
            report = &mut run => return report.context("gateway task failed"),
            signal = signals.next() => match signal {
                Signal::Stop(signal) => {
                    tracing::info!(signal, "stopping now: the shutdown delay, if any is left, is skipped");
                    skip.skip();
                }
                Signal::Reload => tracing::info!("SIGHUP ignored: shutting down"),
            },
        }
    }
}

/// Until SIGTERM or SIGINT: SIGHUP reloads through `reload` (the outcome is logged and counted
/// there; systemd, when it runs us, hears RELOADING before and READY after), SIGUSR1 runs
/// `on_usr1` when there is one.
async fn until_stopped(
    signals: &mut Signals,
    reload: Option<&ReloadHandle>,
    mut on_usr1: Option<impl FnMut()>,
    notifier: Option<&Notifier>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = match on_usr1 {
        Some(_) => Some(signal(SignalKind::user_defined1()).context("installing SIGUSR1")?),
        None => None,
    };
    let usr1_received = async |usr1: &mut Option<tokio::signal::unix::Signal>| match usr1 {
        Some(usr1) => usr1.recv().await,
        None => std::future::pending().await,
    };
    loop {
        tokio::select! {
            _ = usr1_received(&mut usr1) => {
                if let Some(on_usr1) = on_usr1.as_mut() {
                    on_usr1();
                }
            }
            signal = signals.next() => match (signal, reload) {
                (Signal::Stop(signal), _) => {
                    tracing::info!(signal, "stopping");
                    return Ok(());
                }
                (Signal::Reload, Some(reload)) => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    if let Some(notifier) = notifier {
                        tell(notifier.reloading());
                    }
                    let result = reload.reload().await;
                    if let Some(notifier) = notifier {
                        // READY whatever the result: the last good configuration serves on.
                        let status = match &result {
                            Ok(_) => "configuration reloaded".to_owned(),
                            Err(e) => format!("reload rejected ({}); the previous configuration serves", e.kind()),
                        };
                        tell(notifier.ready(&status));
                    }
                }
                (Signal::Reload, None) => {
                    tracing::info!("SIGHUP ignored: this configuration is not reloadable")
                }
            },
        }
    }
}
