//! Configuration pipeline: TOML file (figment) < `AMTGW_` environment variables -> [`raw`]
//! serde shapes -> [`validate`] -> the typed [`Config`] the gateway runs on. Everything is
//! checked, and every file it names is read, before anything binds.
//!
//! A device's trust settings ([`TlsSettings`], [`Trust`], [`ClientIdentity`]) are `tls` types,
//! re-exported here; `validate` is what builds them from the raw shapes.
//!
//! Environment overrides use `__` between keys: `AMTGW_GATEWAY__MAX_CONNECTIONS=5000`,
//! `AMTGW_SERVICES__WSMAN__BIND='["0.0.0.0"]'`; only variables whose first segment is a
//! top-level key are configuration ([`env`]).

pub mod env;
mod raw;
mod validate;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use rustls_pki_types::ServerName;

pub use self::env::Environment;
pub use crate::proxy_protocol::Accept;
use crate::service::Service;
use crate::tls::PinStoreSettings;
// The trust settings live with the code that uses them; re-exported so `config::Trust` and
// friends keep working.
pub use crate::tls::{ClientIdentity, TlsSettings, Trust};

/// The environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "AMTGW_";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages: a file path or a description of an embedded config.
    pub source: String,
    /// The file it was loaded from, re-read on reload; `None` for an embedded config.
    pub path: Option<PathBuf>,
    pub gateway: GatewaySettings,
    /// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`, `/devices`), if enabled.
    pub admin: Option<SocketAddr>,
    /// The bearer token the admin listener's mutating and device-listing endpoints require
    /// (`admin.token_file`); required when `admin.listen` is not a loopback address.
    pub admin_token: Option<AdminToken>,
    pub metrics: MetricsSettings,
    /// Enabled services only.
    pub services: Vec<ServiceSettings>,
    pub devices: Vec<DeviceSettings>,
    /// `[[ranges]]`, in the order written.
    pub ranges: Vec<RangeSettings>,
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Connections open at once across all services; more are closed at accept.
    pub max_connections: usize,
    /// Connections open at once from one console address (an IPv6 /64), all services.
    pub max_connections_per_source: usize,
    /// How long a console may stay silent after connecting; the device is dialled only once
    /// it has spoken.
    pub console_first_byte_timeout: Duration,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// After SIGTERM/SIGINT, how long the listeners keep accepting and serving while
    /// `/readyz` already answers 503, so load balancers stop sending before they close.
    /// Zero: they close at once.
    pub shutdown_delay: Duration,
    /// How long live sessions may drain after SIGTERM/SIGINT before they are cut.
    pub shutdown_timeout: Duration,
    /// TCP keepalive idle time on both legs; dead peers behind NAT are found even when idle.
    pub tcp_keepalive: Duration,
    /// TLS sessions remembered per device for resumption.
    pub session_cache_per_device: usize,
    pub log_format: LogFormat,
    /// The trust-on-first-use pin store (used by devices with `trust = "tofu"`): a file, or a
    /// PostgreSQL database shared by replicas.
    pub pin_store: PinStoreSettings,
    /// How often the config, pin store and certificate files are checked for changes.
    pub watch_interval: Duration,
    /// Warn (log and `amtgw_certificates_expiring`) when a client certificate or a CA-validated
    /// device certificate expires within this window.
    pub expiry_warning: Duration,
    /// Data-path worker threads (`amtgw run`), each with its own single-threaded runtime.
    /// Read at start only.
    pub workers: usize,
    /// After a connection's last read, keep polling for this long instead of sleeping (zero:
    /// never). Trades CPU for latency where waking a sleeping CPU is slow (VMs).
    pub busy_poll: Duration,
    /// Devices of `[[ranges]]` kept in memory at once; beyond it the least recently used one
    /// without a connection is forgotten (its pin stays in the store).
    pub max_range_devices: usize,
    /// How long a listener expecting PROXY protocol waits for the complete header.
    pub proxy_header_timeout: Duration,
}

/// Per-device metric labels: off by default, because a fleet has 10,000+ devices and each
/// device costs a few series (a histogram is ~20).
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub per_device: bool,
    /// Devices with their own series at most; further devices share `device="_overflow"`.
    pub max_device_series: usize,
    /// A device's series are dropped after this long without a connection.
    pub device_series_idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `key=value` fields after a message (logfmt-like), for people.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub service: Service,
    /// Plain port consoles connect to; 0 picks an ephemeral port (tests).
    pub listen_port: u16,
    /// TLS port on the device, unless a device overrides it.
    pub device_port: u16,
    /// Addresses bound for this service besides each device's own `listen` address.
    pub bind: Vec<IpAddr>,
    pub idle_timeout: Duration,
    /// Device for connections whose local address belongs to no device (alias routing only).
    pub default_device: Option<String>,
    /// How a connection's device is chosen.
    pub routing: Routing,
    /// Connections come through an L4 load balancer that writes a PROXY protocol header
    /// first (`proxy_protocol`, `proxy_protocol_from`).
    pub proxy_protocol: Option<ProxyProtocol>,
    /// `services.vnc.password_file`: the VNC password viewers give, unless a device has its
    /// own. `None` (allowed on loopback only): viewers are not asked for one.
    pub password: Option<Secret>,
}

/// A password from a file (`*_password_file`) or an environment variable (`amt_password_env`):
/// where it came from, for messages and the file watcher; its value for the protocol only.
/// Never printed, not even by `Debug`.
#[derive(Clone)]
pub struct Secret {
    /// The file it was read from (watched: a change applies through a reload); `None` when it
    /// came from the environment.
    pub file: Option<PathBuf>,
    value: String,
}

impl Secret {
    pub(crate) fn new(file: Option<PathBuf>, value: String) -> Secret {
        Secret { file, value }
    }

    /// The password itself, for the protocol that needs it.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// The AMT account the VNC bridge opens KVM sessions with (`amt_username`,
/// `amt_password_file` or `amt_password_env`).
#[derive(Debug, Clone)]
pub struct AmtCredentials {
    pub username: String,
    pub password: Secret,
}

/// A listener behind a load balancer: every connection must come from one of `from` and
/// start with a header of an accepted version, whose addresses stand for the connection's.
#[derive(Debug, Clone)]
pub struct ProxyProtocol {
    pub accept: Accept,
    /// The load balancers' networks. A header is believed only from them: anyone else could
    /// claim any console address (and any device to reach).
    pub from: Vec<Cidr>,
}

impl ProxyProtocol {
    /// Whether a connection from `ip` may carry a header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.from.iter().any(|cidr| cidr.contains(ip))
    }
}

/// How a service finds the device a console connection is for (`services.<svc>.routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// The gateway address the console dialled is a device's `listen` alias (else the
    /// service's `default_device`).
    Alias,
    /// Consoles dial the device's own address; a NAT `REDIRECT` rule (iptables or nftables)
    /// diverts the connection to the gateway, which reads where it was going from the kernel
    /// (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`).
    Redirect,
    /// Consoles dial the device's own address; a `TPROXY` rule hands the connection, addresses
    /// untouched, to a transparent (`IP_TRANSPARENT`) listener, whose accepted socket's local
    /// address is where it was going.
    Tproxy,
    /// WS-Man only: the `Host` header of the console's first request names the device (a
    /// listed device's name or DNS host, or an address of a listed device or a range).
    Host,
}

impl Routing {
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Alias => "alias",
            Routing::Redirect => "redirect",
            Routing::Tproxy => "tproxy",
            Routing::Host => "host",
        }
    }

    /// Whether the device is the address the console dialled (the network diverted the
    /// connection), rather than an alias on the gateway.
    pub fn by_original_destination(self) -> bool {
        matches!(self, Routing::Redirect | Routing::Tproxy)
    }

    /// Whether the device is chosen by what the console asked for (its dialled address or its
    /// `Host`), so that devices are found by their `host` and `[[ranges]]` apply.
    pub fn by_request(self) -> bool {
        !matches!(self, Routing::Alias)
    }
}

#[derive(Clone)]
pub struct DeviceSettings {
    pub name: String,
    pub host: Host,
    /// The gateway-side alias address that selects this device.
    pub listen: Option<IpAddr>,
    /// TLS port per service (indexed by `Service::index`).
    pub ports: [u16; 3],
    /// Name sent as SNI (DNS names only) and checked in `ca` mode.
    pub server_name: ServerName<'static>,
    pub tls: TlsSettings,
    /// Connections to this device at once, all consoles and services.
    pub max_connections: usize,
    /// Connections to this device at once from one console address.
    pub max_connections_per_source: usize,
    /// For the VNC bridge; `None`: KVM through the bridge is refused (`amt_auth_failed`).
    pub amt_credentials: Option<AmtCredentials>,
    /// This device's viewer password (`vnc_password_file`), before `services.vnc`'s.
    pub vnc_password: Option<Secret>,
}

impl DeviceSettings {
    pub fn port(&self, service: Service) -> u16 {
        self.ports[service.device_service().index()]
    }
}

impl fmt::Debug for DeviceSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSettings")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("listen", &self.listen)
            .field("ports", &self.ports)
            .field("server_name", &self.server_name)
            .field("trust", &self.tls.trust)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_source",
                &self.max_connections_per_source,
            )
            .finish_non_exhaustive()
    }
}

/// A `[[ranges]]` entry: every address in `cidr` is a device with these settings, created
/// when a console first dials it and named by its address.
#[derive(Clone)]
pub struct RangeSettings {
    pub cidr: Cidr,
    /// TLS port per service (indexed by `Service::index`).
    pub ports: [u16; 3],
    /// `tofu` or `ca`, never `pin`.
    pub tls: TlsSettings,
    pub max_connections: usize,
    pub max_connections_per_source: usize,
}

impl RangeSettings {
    /// The settings of the device at `ip` (an address in the range): named by its address,
    /// reached at it, its certificate checked against it in `ca` mode.
    pub fn device(&self, ip: IpAddr) -> DeviceSettings {
        DeviceSettings {
            name: ip.to_string(),
            host: Host::Ip(ip),
            listen: None,
            ports: self.ports,
            server_name: ServerName::IpAddress(ip.into()),
            tls: self.tls.clone(),
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            amt_credentials: None,
            vnc_password: None,
        }
    }
}

impl fmt::Debug for RangeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RangeSettings")
            .field("cidr", &self.cidr)
            .field("ports", &self.ports)
            .field("trust", &self.tls.trust)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// An IPv4 or IPv6 network: an address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.20.0.0/16`, `fd00:20::/64`; a bare address is a /32 or /128. The message of an
    /// error says what is wrong and what to write instead.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| {
            format!("`{text}` is not a network; write it like \"10.20.0.0/16\" or \"fd00:20::/64\"")
        })?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {bits}"))?,
        };
        let cidr = Cidr { network, prefix };
        let masked = cidr.masked(network);
        if masked != network {
            return Err(format!(
                "`{text}` has bits set beyond its /{prefix} prefix; did you mean \"{masked}/{prefix}\"?"
            ));
        }
        Ok(cidr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network's first address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// `ip` with the bits beyond the prefix cleared (same family as the network).
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The admin bearer token and the file it was read from. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct AdminToken {
    pub file: PathBuf,
    secret: Vec<u8>,
}

impl AdminToken {
    pub(crate) fn new(file: PathBuf, secret: &str) -> AdminToken {
        AdminToken {
            file,
            secret: secret.as_bytes().to_vec(),
        }
    }

    /// Whether `presented` is the token, compared in constant time (for tokens of the same
    /// length; the length itself is not secret enough to matter).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.secret.as_slice().ct_eq(presented).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// A device address: an IP, or a DNS name resolved at connect time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Dns(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

/// A configuration problem, naming where it is and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the configuration: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

impl ConfigError {
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config_unreadable",
            ConfigError::Invalid { .. } => "config_invalid",
        }
    }

    /// The offending key, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

impl Config {
    /// Load a TOML file with this process's `AMTGW_` environment overrides. Relative paths
    /// inside it are relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, &Environment::from_process())
    }

    /// Load a TOML file with the overrides of `env`.
    pub fn load_with_env(path: &Path, env: &Environment) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        // figment treats a missing file as empty; an operator who names a file means it.
        std::fs::metadata(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut config = load_layers(&file, &base, Toml::file_exact(path), env)?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// Load a config held in memory (the embedded demo), with this process's overrides and
    /// the same checks.
    pub fn from_toml(source: &str, base: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(source, base, text, &Environment::from_process())
    }

    /// Load a config held in memory with the overrides of `env` (tests and fuzzers build it
    /// from pairs, leaving the process environment alone).
    pub fn from_toml_with_env(
        source: &str,
        base: &Path,
        text: &str,
        env: &Environment,
    ) -> Result<Config, ConfigError> {
        load_layers(source, base, Toml::string(text), env)
    }

    pub fn device(&self, name: &str) -> Option<&DeviceSettings> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// The settings of the device at `ip` if it is in a range and no listed device's host:
    /// the most specific range's.
    pub fn range_device(&self, ip: IpAddr) -> Option<DeviceSettings> {
        let ip = ip.to_canonical();
        if self.devices.iter().any(|d| d.host == Host::Ip(ip)) {
            return None;
        }
        self.ranges
            .iter()
            .filter(|r| r.cidr.contains(ip))
            .max_by_key(|r| r.cidr.prefix())
            .map(|r| r.device(ip))
    }

    /// Whether any device or range trusts on first use (and so needs the pin store).
    pub fn uses_pin_store(&self) -> bool {
        let tofu = |tls: &TlsSettings| matches!(tls.trust, Trust::Tofu);
        self.devices.iter().any(|d| tofu(&d.tls)) || self.ranges.iter().any(|r| tofu(&r.tls))
    }

    /// Every file whose change should reload the gateway: the config itself, the admin token,
    /// the pin store and every CA bundle, client certificate and key it names.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.path.iter().cloned().collect();
        files.extend(self.admin_token.iter().map(|token| token.file.clone()));
        // A changed password applies to the next session, through a reload.
        let secrets = self.services.iter().filter_map(|s| s.password.as_ref());
        let secrets = secrets.chain(self.devices.iter().flat_map(|d| {
            d.amt_credentials
                .iter()
                .map(|c| &c.password)
                .chain(d.vnc_password.iter())
        }));
        files.extend(secrets.filter_map(|secret| secret.file.clone()));
        if self.uses_pin_store() {
            match &self.gateway.pin_store {
                PinStoreSettings::File(path) => files.push(path.clone()),
                // A new password or CA reconnects (through a reload) with it.
                PinStoreSettings::Postgres(settings) => {
                    files.extend(settings.password_file.iter().cloned());
                    files.extend(settings.ca_file().cloned());
                }
            }
        }
        let tls = self
            .devices
            .iter()
            .map(|d| &d.tls)
            .chain(self.ranges.iter().map(|r| &r.tls));
        for tls in tls {
            if let Trust::Ca { ca_file, .. } = &tls.trust {
                files.push(ca_file.clone());
            }
            if let Some(identity) = &tls.client_identity {
                files.push(identity.cert_path.clone());
                files.push(identity.key_path.clone());
            }
        }
        files.sort();
        files.dedup();
        files
    }
}

fn load_layers(
    file: &str,
    base: &Path,
    toml: figment::providers::Data<Toml>,
    env: &Environment,
) -> Result<Config, ConfigError> {
    if let Some(problem) = env.problem() {
        return Err(ConfigError::Invalid {
            file: file.to_owned(),
            key: problem.key,
            message: problem.message,
        });
    }
    validate::load(
        file,
        base,
        env.state_directory(),
        Figment::from(toml).merge(env),
    )
}
