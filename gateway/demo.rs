//! `amtgw demo`: the embedded default for a first run. Two simulated AMT devices and a gateway
//! in one process, listening on the legacy ports of 127.0.0.1 (device `amt-sim-01`, the
//! default, pinned to its certificate) and of the alias 127.0.0.2 (device `amt-sim-02`, trusted
//! on first use): a fleet in miniature, reached the way legacy consoles reach one. The
//! effective configuration and the pin store live in a state directory, so `amtgw pin` and
//! the reload machinery work on the demo exactly as on a real installation.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use amtgw_sim::{self as sim, SimConfig, SimDevice, SimError};

use crate::ConfigError;
use crate::config::Config;
use crate::gateway::{Gateway, GatewayError};
use crate::service::Service;
use crate::tls::Fingerprints;

/// Names of the simulated devices, in order; the first is every service's default.
pub const DEVICE_NAMES: [&str; 2] = ["amt-sim-01", "amt-sim-02"];

/// The device that trusts on first use, and that SIGUSR1 unprovisions.
pub const TOFU_DEVICE: usize = 1;

/// Where the demo's gateway listens. A port of 0 (admin's too) picks a free one; the
/// instructions name the ports actually bound.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub wsman_port: u16,
    pub redirection_port: u16,
    pub dash_port: u16,
    pub admin: SocketAddr,
    /// Where the effective config and the pin store are written; emptied when the demo ends.
    pub state_dir: PathBuf,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            wsman_port: Service::Wsman.legacy_port(),
            redirection_port: Service::Redirection.legacy_port(),
            dash_port: Service::Dash.legacy_port(),
            admin: SocketAddr::from(([127, 0, 0, 1], 9716)),
            state_dir: std::env::temp_dir().join(format!("amtgw-demo-{}", std::process::id())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start simulated device {name}: {source}")]
    Simulator {
        name: &'static str,
        source: SimError,
    },
    #[error("demo configuration is invalid (a bug): {0}")]
    Config(#[from] ConfigError),
    #[error("cannot write the demo state in {dir}: {source}")]
    State { dir: PathBuf, source: io::Error },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

impl DemoError {
    pub fn kind(&self) -> &'static str {
        match self {
            DemoError::Simulator { source, .. } => source.kind(),
            DemoError::Config(e) => e.kind(),
            DemoError::State { .. } => "demo_state",
            DemoError::Gateway(e) => e.kind(),
        }
    }
}

/// A running demo, not yet serving: `gateway.run(token)` serves it.
pub struct Demo {
    pub devices: Vec<SimDevice>,
    pub gateway: Gateway,
    /// Why a service was left out (DASH on 623 without the privilege to bind it).
    pub skipped: Vec<String>,
    pub state: DemoState,
}

/// The demo's state directory; removed when dropped.
pub struct DemoState {
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Drop for DemoState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Demo {
    pub async fn start(options: &DemoOptions) -> Result<Demo, DemoError> {
        let mut devices = Vec::new();
        for name in DEVICE_NAMES {
            let device = SimDevice::start(SimConfig::demo(name))
                .await
                .map_err(|source| DemoError::Simulator { name, source })?;
            devices.push(device);
        }
        let mut skipped = Vec::new();
        let dash_enabled = match can_bind(options.dash_port) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                skipped.push(format!(
                    "DASH on port {} skipped: binding a port below 1024 needs root or \
                     CAP_NET_BIND_SERVICE (e.g. `sudo setcap cap_net_bind_service=+ep \
                     target/release/amtgw`), or pass --dash-port 1623",
                    options.dash_port
                ));
                false
            }
            // Anything else (port in use) is reported by the gateway's own bind, with a hint.
            Err(_) => true,
        };
        let state_error = |source| DemoError::State {
            dir: options.state_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&options.state_dir).map_err(state_error)?;
        let state = DemoState {
            dir: options.state_dir.clone(),
            config: options.state_dir.join("amtgw.toml"),
        };
        let toml = demo_config(options, &devices, dash_enabled);
        std::fs::write(&state.config, toml).map_err(state_error)?;
        let config = Config::load(&state.config)?;
        let gateway = Gateway::bind(config).await?;
        Ok(Demo {
            devices,
            gateway,
            skipped,
            state,
        })
    }

    /// What to type next, for the terminal.
    pub fn instructions(&self) -> String {
        let mut out = String::new();
        // The real ports: with port 0 each address gets its own.
        let port_on = |service, ip: [u8; 4]| {
            self.gateway
                .local_addr(service, IpAddr::from(ip))
                .map(|a| a.port())
        };
        let port = |service| port_on(service, [127, 0, 0, 1]);
        let _ = writeln!(
            out,
            "amtgw demo: a gateway in front of {} simulated AMT devices.\n",
            self.devices.len()
        );
        for (i, device) in self.devices.iter().enumerate() {
            let ip = if i == 0 { "127.0.0.1" } else { "127.0.0.2" };
            let trust = if i == TOFU_DEVICE {
                "trusted on first use".to_owned()
            } else {
                format!(
                    "pinned {}",
                    Fingerprints::of(&device.certificate())
                        .map(|f| f.certificate.to_string())
                        .unwrap_or_default()
                )
            };
            let _ = writeln!(
                out,
                "  {name}  consoles use {ip}; device TLS on {wsman} / {redir} / {dash}\n              {trust}",
                name = DEVICE_NAMES[i],
                wsman = device.wsman_addr(),
                redir = device.redirection_addr(),
                dash = device.dash_addr().port(),
            );
        }
        let _ = writeln!(
            out,
            "\nCredentials: {} / {}\n",
            sim::DEMO_USERNAME,
            sim::DEMO_PASSWORD
        );
        let _ = writeln!(out, "Try, from the repository root in another terminal:");
        if let Some(wsman) = port(Service::Wsman) {
            let other = port_on(Service::Wsman, [127, 0, 0, 2]).unwrap_or(wsman);
            let _ = writeln!(
                out,
                "  curl --digest -u '{user}:{pass}' -H 'Content-Type: application/soap+xml;charset=UTF-8' \\\n       --data-binary @scripts/wsman/get-general-settings.xml http://127.0.0.1:{wsman}/wsman\n  curl --digest -u '{user}:{pass}' -H 'Content-Type: application/soap+xml;charset=UTF-8' \\\n       --data-binary @scripts/wsman/get-general-settings.xml http://127.0.0.2:{other}/wsman   # the other device\n  scripts/try-wsman.sh",
                user = sim::DEMO_USERNAME,
                pass = sim::DEMO_PASSWORD,
            );
        }
        if let Some(redir) = port(Service::Redirection) {
            let port_arg = if redir == Service::Redirection.legacy_port() {
                String::new()
            } else {
                format!(" {redir}")
            };
            let _ = writeln!(
                out,
                "  AMT_PASSWORD='{pass}' amtterm 127.0.0.1{port_arg}    # serial-over-LAN; Ctrl-] quits",
                pass = sim::DEMO_PASSWORD,
            );
        }
        let admin = self.gateway.admin_addr();
        if let Some(admin) = admin {
            let _ = writeln!(out, "  curl http://{admin}/metrics        # and /devices");
        }
        let config = self.state.config.display();
        let tofu = DEVICE_NAMES[TOFU_DEVICE];
        let _ = writeln!(
            out,
            "\nDevice trust (the demo's config and pin store are in {}):\n  amtgw pin --config {config} --all\n  kill -USR1 {pid}      # unprovision {tofu}: new key, so it is refused until re-pinned\n  amtgw pin --config {config} --replace {tofu}",
            self.state.dir.display(),
            pid = std::process::id(),
        );
        if let Some(admin) = admin {
            let _ = writeln!(
                out,
                "  curl -X POST http://{admin}/devices/{tofu}/repin   # or re-pin through the admin listener"
            );
        }
        for note in &self.skipped {
            let _ = writeln!(out, "\nNote: {note}");
        }
        let _ = writeln!(out, "\nCtrl-C stops the demo.");
        out
    }
}

fn can_bind(port: u16) -> io::Result<()> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map(drop)
}

fn demo_config(options: &DemoOptions, devices: &[SimDevice], dash_enabled: bool) -> String {
    let mut toml = format!(
        r#"# Written by `amtgw demo`; removed when it stops.
[gateway]
pin_store = "pins.toml"
watch_interval = "250ms"

[admin]
listen = "{admin}"

[services.wsman]
listen_port = {wsman}
default_device = "{default}"

[services.redirection]
listen_port = {redirection}
default_device = "{default}"

[services.dash]
enabled = {dash_enabled}
listen_port = {dash}
default_device = "{default}"
"#,
        admin = options.admin,
        wsman = options.wsman_port,
        redirection = options.redirection_port,
        dash = options.dash_port,
        default = DEVICE_NAMES[0],
    );
    for (i, device) in devices.iter().enumerate() {
        let trust = if i == TOFU_DEVICE {
            "trust = \"tofu\"".to_owned()
        } else {
            format!(
                "trust = \"pin\"\npins = [\"{}\"]",
                Fingerprints::of(&device.certificate())
                    .map(|f| f.certificate.to_string())
                    .unwrap_or_default()
            )
        };
        let _ = write!(
            toml,
            r#"
[[devices]]
name = "{name}"
host = "127.0.0.1"
listen = "127.0.0.{alias}"
ports = {{ wsman = {wsman}, redirection = {redirection}, dash = {dash} }}
{trust}
"#,
            name = DEVICE_NAMES[i],
            alias = i + 1,
            wsman = device.wsman_addr().port(),
            redirection = device.redirection_addr().port(),
            dash = device.dash_addr().port(),
        );
    }
    toml
}
