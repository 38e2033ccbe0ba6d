//! The `amtgw` command: parses the CLI, loads the config, sets up logging, and hands over to
//! the library. Exit codes: 0 success (all sessions drained), 1 runtime failure or sessions cut
//! at the drain deadline, 64 invalid configuration or usage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use amtgw::config::LogFormat;
use amtgw::{Config, Gateway};

const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(name = "amtgw", version, about = "TLS gateway for Intel AMT fleets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short, env = "AMTGW_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit: 0 if valid, 64 with the reason if not.
    Check {
        #[arg(long, short, env = "AMTGW_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(config) => {
                println!(
                    "{}: valid ({} device(s), services: {})",
                    config.source,
                    config.devices.len(),
                    config
                        .services
                        .iter()
                        .map(|s| s.service.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EX_USAGE)
            }
        },
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            init_logging(config.gateway.log_format);
            report(runtime().and_then(|rt| rt.block_on(serve(config))))
        }
    }
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
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Bind, serve until SIGTERM/SIGINT, drain. `Ok(true)` when every session drained.
async fn serve(config: Config) -> anyhow::Result<bool> {
    let source = config.source.clone();
    let gateway = Gateway::bind(config)
        .await
        .with_context(|| format!("starting from {source}"))?;
    announce(&gateway);
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(gateway.run(shutdown.clone()));
    let signal = amtgw::shutdown::signal()
        .await
        .context("cannot install signal handlers")?;
    tracing::info!(signal, "shutdown requested");
    shutdown.cancel();
    let report = run.await.context("gateway task failed")?;
    tracing::info!(cut = report.cut, "stopped");
    Ok(report.drained())
}

fn announce(gateway: &Gateway) {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %gateway.config().source, devices = gateway.config().devices.len(), "amtgw starting");
    for bound in gateway.local_addrs() {
        tracing::info!(service = bound.service.as_str(), addr = %bound.addr, "listening");
    }
    if let Some(addr) = gateway.admin_addr() {
        tracing::info!(%addr, "admin listening (/metrics /healthz /readyz)");
    }
}
