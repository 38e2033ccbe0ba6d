//! `amtgw demo`: the embedded default for a first run. Simulated AMT devices and a gateway in
//! one process, listening on the legacy ports of 127.0.0.1 (device `amt-sim-01`, the default,
//! pinned to its certificate), of the alias 127.0.0.2 (device `amt-sim-02`, trusted on first
//! use) and, with the legacy TLS backend built in, of 127.0.0.3 (device `amt-sim-07`, AMT 7
//! firmware: TLS 1.0/1.1 with RSA key exchange, reached with `tls_backend = "legacy"`): a
//! fleet in miniature, reached the way legacy consoles reach one. The
//! effective configuration and the pin store live in a state directory, so `amtgw pin` and
//! the reload machinery work on the demo exactly as on a real installation.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use amtgw_sim::{self as sim, Profile, SimConfig, SimDevice, SimError};

use crate::ConfigError;
use crate::config::Config;
use crate::gateway::{Gateway, GatewayError};
use crate::service::Service;
use crate::tls::Fingerprints;

/// Names of the simulated devices, in order; the first is every service's default. Device `i`
/// is reached on 127.0.0.`i+1`.
pub const DEVICE_NAMES: [&str; 3] = ["amt-sim-01", "amt-sim-02", "amt-sim-07"];

/// The AMT 7 device, reached over the legacy TLS backend (when it is built in).
const LEGACY_DEVICE: usize = 2;

/// The devices this build can reach: the legacy one only with the `legacy-tls` feature.
fn device_count() -> usize {
    if cfg!(feature = "legacy-tls") {
        DEVICE_NAMES.len()
    } else {
        LEGACY_DEVICE
    }
}

fn profile(device: usize) -> Profile {
    if device == LEGACY_DEVICE {
        Profile::Amt7
    } else {
        Profile::Amt16
    }
}

/// The device that trusts on first use, and that SIGUSR1 unprovisions.
pub const TOFU_DEVICE: usize = 1;

/// Where the demo's gateway listens. A port of 0 (admin's too) picks a free one; the
/// instructions name the ports actually bound.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub wsman_port: u16,
    pub redirection_port: u16,
    pub dash_port: u16,
    /// The VNC bridge (every device's KVM, the first device's by default).
    pub vnc_port: u16,
    pub admin: SocketAddr,
    /// Where the effective config and the pin store are written. Created if missing, else it
    /// must be empty; when the demo ends only what it wrote there is removed (and the
    /// directory, if the demo created it).
    pub state_dir: PathBuf,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            wsman_port: Service::Wsman.legacy_port(),
            redirection_port: Service::Redirection.legacy_port(),
            dash_port: Service::Dash.legacy_port(),
            vnc_port: Service::Vnc.legacy_port(),
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
    #[error(
        "--state-dir {dir} is not empty: the demo writes its config and pin store there and removes them at exit, so it takes only a new or empty directory"
    )]
    StateDirNotEmpty { dir: PathBuf },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

impl DemoError {
    pub fn kind(&self) -> &'static str {
        match self {
            DemoError::Simulator { source, .. } => source.kind(),
            DemoError::Config(e) => e.kind(),
            DemoError::State { .. } | DemoError::StateDirNotEmpty { .. } => "demo_state",
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

/// The demo's state directory. Dropping it removes the files the demo writes there, and the
/// directory only if the demo created it and nothing else was put in it meanwhile.
pub struct DemoState {
    pub dir: PathBuf,
    pub config: PathBuf,
    created_dir: bool,
}

/// The pin store's file name in the demo config; its lock and temporary files start with it.
const PIN_STORE: &str = "pins.toml";
/// The VNC viewers' password (`services.vnc.password_file`), the same in `vncpasswd`'s format
/// for `vncsnapshot -passwd`, and the devices' AMT password for the bridge.
const VNC_PASSWORD_FILE: &str = "vnc.password";
const VNCPASSWD_FILE: &str = "vnc.passwd";
const AMT_PASSWORD_FILE: &str = "amt.password";
/// What the demo's VNC viewers type (RFB passwords count 8 characters).
pub const DEMO_VNC_PASSWORD: &str = "demo-kvm";

impl DemoState {
    /// Take `dir`: create it when missing, refuse it when it holds anything.
    pub fn prepare(dir: &std::path::Path) -> Result<DemoState, DemoError> {
        let state_error = |source| DemoError::State {
            dir: dir.to_owned(),
            source,
        };
        let created_dir = match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(DemoError::StateDirNotEmpty {
                        dir: dir.to_owned(),
                    });
                }
                false
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(state_error)?;
                }
                std::fs::create_dir(dir).map_err(state_error)?;
                true
            }
            Err(e) => return Err(state_error(e)),
        };
        Ok(DemoState {
            dir: dir.to_owned(),
            config: dir.join("amtgw.toml"),
            created_dir,
        })
    }

    /// Whether `name` is a file the demo writes: its config, the pin store and the store's lock
    /// and temporary files.
    fn is_ours(name: &std::ffi::OsStr) -> bool {
        let name = name.to_string_lossy();
        name == "amtgw.toml"
            || name == VNC_PASSWORD_FILE
            || name == VNCPASSWD_FILE
            || name == AMT_PASSWORD_FILE
            || name == PIN_STORE
            || name == format!("{PIN_STORE}.lock")
            || name.starts_with(&format!(".{PIN_STORE}.tmp."))
    }
}

impl Drop for DemoState {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if Self::is_ours(&entry.file_name()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if self.created_dir {
            // Fails, and so keeps everything, if anything else is in it now.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

impl Demo {
    pub async fn start(options: &DemoOptions) -> Result<Demo, DemoError> {
        let mut devices = Vec::new();
        for (i, name) in DEVICE_NAMES.into_iter().take(device_count()).enumerate() {
            let config = SimConfig {
                profile: profile(i),
                ..SimConfig::demo(name)
            };
            let device = SimDevice::start(config)
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
        let state = DemoState::prepare(&options.state_dir)?;
        let toml = demo_config(options, &devices, dash_enabled);
        for (file, contents) in [
            (VNC_PASSWORD_FILE, DEMO_VNC_PASSWORD.as_bytes().to_vec()),
            (
                VNCPASSWD_FILE,
                crate::vnc::vncpasswd_file_contents(DEMO_VNC_PASSWORD).to_vec(),
            ),
            (AMT_PASSWORD_FILE, sim::DEMO_PASSWORD.as_bytes().to_vec()),
        ] {
            std::fs::write(state.dir.join(file), contents).map_err(state_error)?;
        }
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
            let ip = format!("127.0.0.{}", i + 1);
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
            let trust = if i == LEGACY_DEVICE {
                format!(
                    "{trust}\n              AMT 7 firmware (TLS 1.0/1.1, RSA key exchange): tls_backend = \"legacy\""
                )
            } else {
                trust
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
            // One authenticated Get per device, each on its own alias address.
            let notes = ["", "   # the other device", "   # AMT 7, over TLS 1.1"];
            for (i, note) in notes.iter().enumerate().take(self.devices.len()) {
                let alias = [127, 0, 0, i as u8 + 1];
                let port = port_on(Service::Wsman, alias).unwrap_or(wsman);
                let _ = writeln!(
                    out,
                    "  curl --digest -u '{user}:{pass}' -H 'Content-Type: application/soap+xml;charset=UTF-8' \\\n       --data-binary @scripts/wsman/get-general-settings.xml http://127.0.0.{n}:{port}/wsman{note}",
                    user = sim::DEMO_USERNAME,
                    pass = sim::DEMO_PASSWORD,
                    n = i + 1,
                );
            }
            let _ = writeln!(out, "  scripts/try-wsman.sh");
            // The PyPI `amt` package's console dials 16992 and nothing else.
            if wsman == Service::Wsman.legacy_port() {
                let _ = writeln!(
                    out,
                    "  echo '{pass}' | ~/.cache/amtgw-tools/amt/bin/amtctrl -p 127.0.0.1 status   # the PyPI `amt` console (scripts/install-amt-client.sh); also off, on, reboot, pxeboot, vncstatus",
                    pass = sim::DEMO_PASSWORD,
                );
            }
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
        if let Some(vnc) = port(Service::Vnc) {
            let _ = writeln!(
                out,
                "  vncsnapshot -passwd {passwd} 127.0.0.1::{vnc} {name}.jpg   # KVM through the VNC bridge, over TLS\n  vncviewer 127.0.0.1::{vnc}    # any VNC viewer; password {DEMO_VNC_PASSWORD}",
                passwd = self.state.dir.join(VNCPASSWD_FILE).display(),
                name = DEVICE_NAMES[0],
            );
        }
        let admin = self.gateway.admin_addr();
        if let Some(admin) = admin {
            let _ = writeln!(out, "  curl http://{admin}/metrics        # and /devices");
        }
        let config = self.state.config.display();
        let tofu = DEVICE_NAMES[TOFU_DEVICE];
        let amtgw = own_command();
        let _ = writeln!(
            out,
            "\nDevice trust (the demo's config and pin store are in {}):\n  {amtgw} pin --config {config} --all\n  kill -USR1 {pid}      # unprovision {tofu}: new key, so it is refused until re-pinned\n  {amtgw} pin --config {config} --replace {tofu}",
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

/// How to run this very program from another terminal: `amtgw` when that is what PATH finds,
/// else its own path (after `cargo run`, target/release/amtgw is on no PATH).
fn own_command() -> String {
    let Ok(exe) = std::env::current_exe().and_then(std::fs::canonicalize) else {
        return "amtgw".to_owned();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .filter_map(|dir| std::fs::canonicalize(dir.join("amtgw")).ok())
            .next()
            .is_some_and(|found| found == exe)
    });
    if on_path {
        return "amtgw".to_owned();
    }
    let path = exe.display().to_string();
    // Quoted for the shell when it holds anything a shell would split or expand.
    if path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@".contains(c))
    {
        path
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    }
}

fn can_bind(port: u16) -> io::Result<()> {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map(drop)
}

fn demo_config(options: &DemoOptions, devices: &[SimDevice], dash_enabled: bool) -> String {
    let mut toml = format!(
        r#"# Written by `amtgw demo`; removed when it stops.
[gateway]
pin_store = "{PIN_STORE}"
watch_interval = "250ms"
# No load balancer follows the demo's /readyz: Ctrl-C drains at once.
shutdown_delay = "0s"

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

# The VNC bridge: VNC viewers on 127.0.0.1 reach the devices' KVM over TLS.
[services.vnc]
enabled = true
listen_port = {vnc}
default_device = "{default}"
password_file = "{VNC_PASSWORD_FILE}"
"#,
        admin = options.admin,
        wsman = options.wsman_port,
        redirection = options.redirection_port,
        dash = options.dash_port,
        vnc = options.vnc_port,
        default = DEVICE_NAMES[0],
    );
    for (i, device) in devices.iter().enumerate() {
        let mut trust = if i == TOFU_DEVICE {
            "trust = \"tofu\"".to_owned()
        } else {
            format!(
                "trust = \"pin\"\npins = [\"{}\"]",
                Fingerprints::of(&device.certificate())
                    .map(|f| f.certificate.to_string())
                    .unwrap_or_default()
            )
        };
        if i == LEGACY_DEVICE {
            trust.push_str("\ntls_backend = \"legacy\"");
        }
        let _ = write!(
            toml,
            r#"
[[devices]]
name = "{name}"
host = "127.0.0.1"
listen = "127.0.0.{alias}"
ports = {{ wsman = {wsman}, redirection = {redirection}, dash = {dash} }}
amt_username = "{user}"
amt_password_file = "{AMT_PASSWORD_FILE}"
{trust}
"#,
            user = sim::DEMO_USERNAME,
            name = DEVICE_NAMES[i],
            alias = i + 1,
            wsman = device.wsman_addr().port(),
            redirection = device.redirection_addr().port(),
            dash = device.dash_addr().port(),
        );
    }
    toml
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the demo leaves behind in `dir` when it ends, having written its files there.
    fn run_demo_state_in(dir: &std::path::Path) -> Result<(), DemoError> {
        let state = DemoState::prepare(dir)?;
        for file in [
            "amtgw.toml",
            VNC_PASSWORD_FILE,
            VNCPASSWD_FILE,
            AMT_PASSWORD_FILE,
            PIN_STORE,
            "pins.toml.lock",
            ".pins.toml.tmp.1.2",
        ] {
            std::fs::write(dir.join(file), "x").unwrap();
        }
        drop(state);
        Ok(())
    }

    #[test]
    fn a_state_dir_with_files_of_its_own_is_refused_and_left_alone() {
        let parent = tempfile::tempdir().unwrap();
        std::fs::write(parent.path().join("Cargo.toml"), "mine").unwrap();
        let refused = run_demo_state_in(parent.path()).unwrap_err();
        assert_eq!(refused.kind(), "demo_state");
        assert!(refused.to_string().contains("not empty"), "{refused}");
        assert_eq!(
            std::fs::read_to_string(parent.path().join("Cargo.toml")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn an_empty_state_dir_is_kept_and_only_the_demos_files_go() {
        let dir = tempfile::tempdir().unwrap();
        run_demo_state_in(dir.path()).unwrap();
        assert!(
            dir.path().is_dir(),
            "the directory was there before: it stays"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_state_dir_the_demo_created_goes_unless_someone_else_wrote_in_it() {
        let parent = tempfile::tempdir().unwrap();
        let created = parent.path().join("state");
        run_demo_state_in(&created).unwrap();
        assert!(!created.exists(), "created by the demo, removed by it");

        let state = DemoState::prepare(&created).unwrap();
        std::fs::write(created.join("notes.txt"), "an operator's").unwrap();
        drop(state);
        assert!(created.join("notes.txt").exists(), "not the demo's: kept");
    }
}
