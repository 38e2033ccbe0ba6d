//! The `amtgw-sim` command: one simulated AMT device, the same as `amtgw sim`. Parses the CLI,
//! sets up logging and hands over to the library. Exit codes: 0 stopped by SIGTERM or SIGINT,
//! 1 runtime failure, 2 usage: malformed arguments (clap) or an unreadable --cert, --key or
//! --client-ca, the same scheme as `amtgw`.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use amtgw_sim::cli::{self, SimArgs};

/// clap's code for malformed arguments, used for arguments that parse but cannot be used.
const EX_USAGE: u8 = 2;

#[derive(Parser)]
#[command(
    name = "amtgw-sim",
    version,
    about = "A simulated Intel AMT device (TLS only; --profile picks the firmware generation, \
             CSME 16.1+ by default). SIGUSR1 \"unprovisions\" it: a new key and self-signed \
             certificate, as the firmware makes."
)]
struct Cli {
    #[command(flatten)]
    sim: SimArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let config = match cli.sim.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let result = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime
            .block_on(cli::serve(config))
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot start the async runtime: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`): stdout is for the device's
/// addresses and pins.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
