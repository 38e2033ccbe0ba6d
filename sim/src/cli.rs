//! The command line of one simulated device, shared by the `amtgw-sim` binary and `amtgw sim`:
//! the arguments, and serving the device until SIGTERM or SIGINT.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::{self, PemObject as _};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};

use crate::{
    CertStyle, DEFAULT_HEARTBEAT, DEMO_PASSWORD, DEMO_USERNAME, KeyType, Profile, SimConfig,
    SimDevice, SimError, SimIdentity, Tls12Signature, pins_of,
};

/// Run one simulated AMT device (TLS only; --profile picks the firmware generation, CSME 16.1+
/// by default). SIGUSR1 "unprovisions" it: a new key and self-signed certificate, as the
/// firmware makes.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Host name the device reports in AMT_GeneralSettings.
    #[arg(long, default_value = "amt-sim")]
    name: String,
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    #[arg(long, default_value_t = 16993)]
    wsman_port: u16,
    #[arg(long, default_value_t = 16995)]
    redirection_port: u16,
    #[arg(long, default_value_t = 664)]
    dash_port: u16,
    /// The firmware generation imitated: TLS versions, cipher suites, key (see the README's
    /// profile table). amt7, amt11 and amt12 are served by OpenSSL.
    #[arg(long, value_enum, default_value_t = Profile::Amt16)]
    profile: Profile,
    /// The key generated, now and on SIGUSR1, instead of the profile's (amt7: rsa2047, amt22:
    /// rsa3072, the others rsa2048).
    #[arg(long, value_enum)]
    key_type: Option<KeyType>,
    /// Mark the generated certificate CA:TRUE, as some firmware does.
    #[arg(long)]
    ca_true: bool,
    /// Generate "CN=Intel(R) AMT self-signed certificate" instead of all-"Unknown" DN fields.
    #[arg(long)]
    intel_named: bool,
    /// Serve this certificate chain (PEM) instead of a generated one; needs --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Require a client certificate chaining to these CA certificates (mutual TLS).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// No TLS 1.3, like AMT 19.0.5.
    #[arg(long)]
    tls12_only: bool,
    /// Sign TLS 1.2 handshakes with RSA PKCS#1 v1.5 only or RSA-PSS only (RSA keys).
    #[arg(long, value_enum)]
    tls12_signature: Option<Tls12Signature>,
    #[arg(long, default_value = DEMO_USERNAME)]
    user: String,
    #[arg(long, env = "AMT_SIM_PASSWORD", default_value = DEMO_PASSWORD)]
    password: String,
}

/// A PEM file named on the command line could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    #[error("cannot read certificates from {path}: {source}")]
    Certificates { path: PathBuf, source: pem::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot read a private key from {path}: {source}")]
    Key { path: PathBuf, source: pem::Error },
}

impl SimArgs {
    /// The device these arguments describe, with the PEM files they name read.
    pub fn into_config(self) -> Result<SimConfig, ArgsError> {
        let identity = match (self.cert, self.key) {
            (Some(cert), Some(key)) => SimIdentity::Provided {
                chain: load_certificates(&cert)?,
                key: PrivateKeyDer::from_pem_file(&key)
                    .map_err(|source| ArgsError::Key { path: key, source })?,
            },
            _ => SimIdentity::Generated {
                ca_true: self.ca_true,
                style: if self.intel_named {
                    CertStyle::IntelNamed
                } else {
                    CertStyle::Unknown
                },
            },
        };
        let client_auth_roots = self
            .client_ca
            .as_deref()
            .map(load_certificates)
            .transpose()?;
        Ok(SimConfig {
            name: self.name,
            bind: self.bind,
            wsman_port: self.wsman_port,
            redirection_port: self.redirection_port,
            dash_port: self.dash_port,
            identity,
            client_auth_roots,
            profile: self.profile,
            key_type: self.key_type,
            tls12_only: self.tls12_only,
            tls12_signature: self.tls12_signature,
            username: self.user,
            password: self.password,
            heartbeat: DEFAULT_HEARTBEAT,
        })
    }
}

/// Every certificate in a PEM file, leaf first.
fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ArgsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ArgsError::Certificates {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ArgsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("starting the simulated device: {0}")]
    Start(#[source] SimError),
    #[error("installing SIGUSR1: {0}")]
    Usr1(#[source] io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
}

/// Starts the device, prints its bound addresses (the real ports, where a port was 0) and
/// pins, and serves it until SIGTERM or SIGINT. SIGUSR1 unprovisions it; SIGHUP is ignored.
pub async fn serve(config: SimConfig) -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let name = config.name.clone();
    let profile = config.profile;
    let device = SimDevice::start(config).await.map_err(ServeError::Start)?;
    // Every handler is in place before the first line is printed: whoever reads that line may
    // signal at once.
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(ServeError::Usr1)?;
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
    println!(
        "simulated AMT device {name} (profile {profile}): WS-Man TLS {}, redirection TLS {}, \
         DASH TLS {}",
        device.wsman_addr(),
        device.redirection_addr(),
        device.dash_addr()
    );
    print_pins(&device);
    println!("SIGUSR1 unprovisions it (new key and certificate); Ctrl-C stops it.");
    let signal = loop {
        tokio::select! {
            _ = usr1.recv() => match device.unprovision() {
                Ok(()) => {
                    println!("unprovisioned: new key and certificate");
                    print_pins(&device);
                }
                Err(e) => warn!(error = %e, "unprovision failed"),
            },
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => info!("SIGHUP ignored: this configuration is not reloadable"),
        }
    };
    info!(signal, "stopping");
    device.shutdown().await;
    Ok(())
}

fn print_pins(device: &SimDevice) {
    if let Some((certificate, public_key)) = pins_of(&device.certificate()) {
        println!("  pins: {certificate}  {public_key}");
    }
}
