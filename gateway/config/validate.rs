//! `RawConfig` -> `Config`: every value parsed, every file read, every cross-field rule checked,
//! each failure naming its key and the fix.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use rustls::RootCertStore;
use rustls_pki_types::ServerName;

use super::raw::{RawConfig, RawDevice, RawGateway, RawRange, RawService, RawTrust};

/// A device's `max_connections` unless configured. AMT firmware publishes no session limit;
/// its web and redirection services handle a few TLS sessions at a time (one SOL, IDE-R and
/// KVM session each). Eight keeps a console's WS-Man, SOL, IDE-R and KVM working side by side
/// with room for retries; beyond it the gateway refuses (`device_limit`) instead of queueing
/// sessions in the firmware.
const DEVICE_MAX_CONNECTIONS: usize = 8;
use super::{
    AdminToken, AmtCredentials, Cidr, Config, ConfigError, DeviceSettings, GatewaySettings, Host,
    LogFormat, MetricsSettings, ProxyProtocol, RangeSettings, Routing, Secret, ServiceSettings,
};
use crate::proxy_protocol::Accept;
use crate::service::Service;
use crate::tls::{
    Backend, ClientIdentity, PasswordSource, Pin, PinStoreSettings, PostgresSettings, TlsSettings,
    TlsVersion, Trust, load_certificates, load_private_key,
};

const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9716";

/// Devices of `[[ranges]]` kept in memory at once unless configured: each holds its TLS client
/// and up to `session_cache_per_device` sessions (some KiB), so 4096 stay within tens of MiB,
/// and a forgotten one costs only a full handshake at its next connection.
const DEFAULT_MAX_RANGE_DEVICES: usize = 4096;
/// Long enough for a load balancer that health-checks every second or two, or Kubernetes'
/// endpoint updates, to stop sending new connections; short enough not to hold up a restart.
const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);

/// The pin store's file name when `gateway.pin_store` is unset.
const DEFAULT_PIN_STORE_FILE: &str = "amtgw-pins.toml";

pub(super) fn load(
    file: &str,
    base: &Path,
    state_directory: Option<&Path>,
    figment: Figment,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = figment.extract().map_err(|e| from_figment(file, e))?;
    Validator {
        file,
        base,
        state_directory,
        figment: &figment,
    }
    .config(raw)
}

/// Turn figment's error into ours, naming the key the way the validator does
/// (`devices[0].pins[1]`) and, for environment overrides, the variable to fix.
fn from_figment(file: &str, error: figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = error.path.clone();
    if let Kind::UnknownField(field, _) = &error.kind {
        // figment's path usually ends with the unknown field already; never name it twice.
        if path.last() != Some(field) {
            path.push(field.clone());
        }
    }
    let origin = match &error.metadata {
        Some(meta) if meta.name.contains("environment") => {
            format!(" (from environment variable {})", env_var(&path))
        }
        _ => String::new(),
    };
    // Durations are strings with a unit; a bare number is the usual mistake.
    let hint = match (&error.kind, path.last().map(String::as_str)) {
        (Kind::InvalidType(..), Some(last))
            if last.ends_with("_timeout") || last == "tcp_keepalive" =>
        {
            "; write a duration as a quoted string with a unit, like \"600s\" or \"10m\""
        }
        _ => "",
    };
    let message = match &error.kind {
        Kind::UnknownField(field, expected) => format!(
            "unknown key `{field}`{origin}; expected one of: {}",
            expected.join(", ")
        ),
        kind => format!("{kind}{origin}{hint}"),
    };
    let key = key_of(&path);
    ConfigError::Invalid {
        file: file.to_owned(),
        key: if key.is_empty() {
            "(document)".to_owned()
        } else {
            key
        },
        message,
    }
}

/// A figment path spelled like the validator's keys: `devices.0.pins.1` -> `devices[0].pins[1]`.
fn key_of(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// The variable that sets a key: `AMTGW_` + the path up to the first array index, `__`-joined
/// (an array is overridden as a whole: `AMTGW_SERVICES__WSMAN__BIND='["0.0.0.0"]'`).
fn env_var(path: &[String]) -> String {
    let parts: Vec<String> = path
        .iter()
        .take_while(|part| part.parse::<usize>().is_err())
        .map(|part| part.to_ascii_uppercase())
        .collect();
    format!("{}{}", super::ENV_PREFIX, parts.join("__"))
}

struct Validator<'a> {
    file: &'a str,
    base: &'a Path,
    /// Where a pin store file with no `gateway.pin_store` goes (`STATE_DIRECTORY`); unset: `base`.
    state_directory: Option<&'a Path>,
    figment: &'a Figment,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        let mut message = message.into();
        // The figment key that supplied the value: up to the first `[index]`, since arrays
        // (devices, pins, bind) come whole from one source.
        let source_key = key.split('[').next().unwrap_or_default();
        if let Some(meta) = self.figment.find_metadata(source_key)
            && meta.name.contains("environment")
        {
            let path: Vec<String> = source_key.split('.').map(str::to_owned).collect();
            message.push_str(&format!(" (from environment variable {})", env_var(&path)));
        }
        ConfigError::Invalid {
            file: self.file.to_owned(),
            key,
            message,
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let gateway = self.gateway(&raw)?;
        let admin = match raw.admin.enabled.unwrap_or(true) {
            false => None,
            true => Some(self.socket_addr(
                "admin.listen",
                raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
            )?),
        };
        let admin_token = self.admin_token(admin, raw.admin.token_file.as_deref())?;

        let metrics = MetricsSettings {
            per_device: raw.metrics.per_device.unwrap_or(false),
            max_device_series: self.positive(
                "metrics.max_device_series",
                raw.metrics.max_device_series.unwrap_or(1000),
            )?,
            device_series_idle: self.duration(
                "metrics.device_series_idle",
                raw.metrics.device_series_idle.as_deref(),
                Duration::from_secs(600),
            )?,
        };

        let mut devices = Vec::with_capacity(raw.devices.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut listens: HashMap<IpAddr, usize> = HashMap::new();
        for (i, device) in raw.devices.iter().enumerate() {
            let device = self.device(i, device, &raw.defaults, &gateway, &raw)?;
            if let Some(first) = names.insert(device.name.clone(), i) {
                return Err(self.err(
                    format!("devices[{i}].name"),
                    format!(
                        "device name `{}` is already used by devices[{first}]; names must be unique",
                        device.name
                    ),
                ));
            }
            if let Some(listen) = device.listen
                && let Some(first) = listens.insert(listen, i)
            {
                return Err(self.err(
                    format!("devices[{i}].listen"),
                    format!(
                        "{listen} is already the listen address of devices[{first}] ({}); \
                             give each device its own alias address",
                        devices
                            .get(first)
                            .map(|d: &DeviceSettings| d.name.as_str())
                            .unwrap_or("?")
                    ),
                ));
            }
            devices.push(device);
        }

        let mut services = Vec::new();
        for service in Service::ALL {
            let raw_service = match service {
                Service::Wsman => &raw.services.wsman,
                Service::Redirection => &raw.services.redirection,
                Service::Dash => &raw.services.dash,
                Service::Vnc => &raw.services.vnc,
            };
            if let Some(settings) = self.service(service, raw_service, &devices)? {
                services.push(settings);
            }
        }
        for (i, a) in services.iter().enumerate() {
            if a.device_port == 0 {
                return Err(self.err(
                    format!("services.{}.device_port", a.service),
                    "must be a port from 1 to 65535",
                ));
            }
            if let Some(b) = services[..i]
                .iter()
                .find(|b| b.listen_port == a.listen_port && a.listen_port != 0)
            {
                return Err(self.err(
                    format!("services.{}.listen_port", a.service),
                    format!(
                        "port {} is also services.{}.listen_port; give each service its own port",
                        a.listen_port, b.service
                    ),
                ));
            }
        }
        if services.is_empty() {
            return Err(self.err(
                "services",
                "every service is disabled; enable at least one of services.wsman, \
                 services.redirection, services.dash",
            ));
        }
        if services.iter().any(|s| s.routing.by_request()) {
            self.unique_hosts(&devices)?;
        }
        if services.iter().any(|s| s.routing == Routing::Host) {
            self.unique_host_names(&devices)?;
        }
        let ranges = self.ranges(&raw, &gateway, &services, &devices)?;

        Ok(Config {
            source: self.file.to_owned(),
            path: None,
            gateway,
            admin,
            admin_token,
            metrics,
            services,
            devices,
            ranges,
        })
    }

    /// With routing by original destination the address a console dialled selects the device,
    /// so no two devices may share an IP address as their host.
    fn unique_hosts(&self, devices: &[DeviceSettings]) -> Result<(), ConfigError> {
        let mut hosts: HashMap<IpAddr, usize> = HashMap::new();
        for (i, device) in devices.iter().enumerate() {
            let Host::Ip(ip) = device.host else { continue };
            if let Some(first) = hosts.insert(ip.to_canonical(), i) {
                return Err(self.err(
                    format!("devices[{i}].host"),
                    format!(
                        "{ip} is also the host of devices[{first}] ({}); a service routes by the \
                         address the console dialled (routing = \"redirect\" or \"tproxy\"), so \
                         each device needs its own address: merge the two entries",
                        devices[first].name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// With routing by `Host` a request names a device by its name or its DNS host, compared
    /// without regard to case (as DNS does): no two devices may answer to one name.
    fn unique_host_names(&self, devices: &[DeviceSettings]) -> Result<(), ConfigError> {
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, device) in devices.iter().enumerate() {
            let mut own = vec![("name", device.name.as_str())];
            if let Host::Dns(host) = &device.host {
                own.push(("host", host.as_str()));
            }
            for (key, text) in own {
                let folded = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
                match names.get(&folded) {
                    Some(&first) if first != i => {
                        return Err(self.err(
                            format!("devices[{i}].{key}"),
                            format!(
                                "`{text}` is also the name or host of devices[{first}] ({}); \
                                 services.wsman.routing = \"host\" finds a device by the name a \
                                 request's Host header gives (case aside), so each name must be \
                                 one device's: rename one of them",
                                devices[first].name
                            ),
                        ));
                    }
                    _ => {
                        names.insert(folded, i);
                    }
                }
            }
        }
        Ok(())
    }

    /// `admin.token_file`: read and trimmed; required when the admin listener is reachable
    /// from beyond this host, since `POST /devices/NAME/repin` changes trust.
    fn admin_token(
        &self,
        admin: Option<SocketAddr>,
        token_file: Option<&str>,
    ) -> Result<Option<AdminToken>, ConfigError> {
        const KEY: &str = "admin.token_file";
        let Some(file) = token_file else {
            return match admin {
                Some(addr) if !addr.ip().is_loopback() => Err(self.err(
                    KEY,
                    format!(
                        "admin.listen is {addr}, not a loopback address, so anyone who reaches \
                         it could re-pin devices; set admin.token_file to a file holding a bearer \
                         token (for example `head -c 32 /dev/urandom | base64 > admin.token`), \
                         or listen on 127.0.0.1"
                    ),
                )),
                _ => Ok(None),
            };
        };
        let path = self.base.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            self.err(
                KEY,
                format!("cannot read the admin token {}: {e}", path.display()),
            )
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(self.err(
                KEY,
                format!(
                    "{} is empty; write a token into it (for example \
                     `head -c 32 /dev/urandom | base64`)",
                    path.display()
                ),
            ));
        }
        Ok(Some(AdminToken::new(path, secret)))
    }

    fn gateway(&self, raw: &RawConfig) -> Result<GatewaySettings, ConfigError> {
        let g = &raw.gateway;
        let log_format = match g.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(self.err(
                    "gateway.log_format",
                    format!("`{other}` is not a log format; use \"text\" or \"json\""),
                ));
            }
        };
        let max_connections = self.positive(
            "gateway.max_connections",
            g.max_connections.unwrap_or(10_000),
        )?;
        Ok(GatewaySettings {
            max_connections,
            max_connections_per_source: self.positive(
                "gateway.max_connections_per_source",
                g.max_connections_per_source
                    .unwrap_or((max_connections / 4).max(1)),
            )?,
            console_first_byte_timeout: self.duration(
                "gateway.console_first_byte_timeout",
                g.console_first_byte_timeout.as_deref(),
                Duration::from_secs(5),
            )?,
            connect_timeout: self.duration(
                "gateway.connect_timeout",
                g.connect_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            handshake_timeout: self.duration(
                "gateway.handshake_timeout",
                g.handshake_timeout.as_deref(),
                Duration::from_secs(10),
            )?,
            shutdown_delay: self.duration_or_zero(
                "gateway.shutdown_delay",
                g.shutdown_delay.as_deref(),
                DEFAULT_SHUTDOWN_DELAY,
            )?,
            shutdown_timeout: self.duration(
                "gateway.shutdown_timeout",
                g.shutdown_timeout.as_deref(),
                Duration::from_secs(30),
            )?,
            tcp_keepalive: self.duration(
                "gateway.tcp_keepalive",
                g.tcp_keepalive.as_deref(),
                Duration::from_secs(60),
            )?,
            session_cache_per_device: g.session_cache_per_device.unwrap_or(8),
            log_format,
            pin_store: self.pin_store(g)?,
            watch_interval: self.duration(
                "gateway.watch_interval",
                g.watch_interval.as_deref(),
                Duration::from_secs(2),
            )?,
            expiry_warning: self.duration(
                "gateway.expiry_warning",
                g.expiry_warning.as_deref(),
                Duration::from_secs(30 * 24 * 3600),
            )?,
            workers: self.positive(
                "gateway.workers",
                g.workers
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            )?,
            busy_poll: self.busy_poll(g.busy_poll.as_deref())?,
            max_range_devices: self.positive(
                "gateway.max_range_devices",
                g.max_range_devices.unwrap_or(DEFAULT_MAX_RANGE_DEVICES),
            )?,
            proxy_header_timeout: self.duration(
                "gateway.proxy_header_timeout",
                g.proxy_header_timeout.as_deref(),
                Duration::from_secs(5),
            )?,
        })
    }

    fn service(
        &self,
        service: Service,
        raw: &RawService,
        devices: &[DeviceSettings],
    ) -> Result<Option<ServiceSettings>, ConfigError> {
        let key = |k: &str| format!("services.{service}.{k}");
        // The VNC bridge opens KVM sessions with stored AMT credentials: only where asked for.
        if !raw.enabled.unwrap_or(service != Service::Vnc) {
            return Ok(None);
        }
        if service != Service::Vnc && raw.password_file.is_some() {
            return Err(self.err(
                key("password_file"),
                "only services.vnc takes a password_file (the VNC viewers' password); remove it",
            ));
        }
        if service == Service::Vnc && raw.device_port.is_some() {
            return Err(self.err(
                key("device_port"),
                "KVM is reached inside the redirection protocol, on the device's redirection \
                 port: set services.redirection.device_port or a device's ports.redirection",
            ));
        }
        let bind = match &raw.bind {
            None => vec![IpAddr::from([127, 0, 0, 1])],
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, text)| self.ip(&key(&format!("bind[{i}]")), text))
                .collect::<Result<_, _>>()?,
        };
        let routing = match raw.routing.as_deref() {
            None | Some("alias") => Routing::Alias,
            Some("redirect") => Routing::Redirect,
            Some("tproxy") => Routing::Tproxy,
            Some("host") if service == Service::Wsman => Routing::Host,
            Some("host") => {
                return Err(self.err(
                    key("routing"),
                    format!(
                        "routing = \"host\" reads the Host header of HTTP requests, and only \
                         WS-Man (services.wsman) speaks HTTP; {service} cannot be routed so: use \
                         \"alias\", \"redirect\" or \"tproxy\" here"
                    ),
                ));
            }
            Some(other) => {
                return Err(self.err(
                    key("routing"),
                    format!(
                        "`{other}` is not a routing mode; use \"alias\" (the default: a device's \
                         listen address), \"redirect\" (NAT REDIRECT to the gateway), \
                         \"tproxy\" (TPROXY to a transparent listener) or, for wsman only, \
                         \"host\" (the HTTP Host header)"
                    ),
                ));
            }
        };
        if let Some(name) = &raw.default_device {
            if routing.by_request() {
                let chosen_by = match routing {
                    Routing::Host => "the Host the console's request names",
                    _ => "the address the console dialled",
                };
                return Err(self.err(
                    key("default_device"),
                    format!(
                        "with routing = \"{}\" the device is {chosen_by}, and a default device \
                         would receive every request that names no device: remove \
                         default_device (or use routing = \"alias\")",
                        routing.as_str()
                    ),
                ));
            }
            if !devices.iter().any(|d| &d.name == name) {
                return Err(self.err(
                    key("default_device"),
                    format!("no device is named `{name}`; name one of the [[devices]]"),
                ));
            }
        }
        let proxy_protocol = self.proxy_protocol(service, raw)?;
        let password = raw
            .password_file
            .as_deref()
            .map(|file| self.secret(&key("password_file"), file))
            .transpose()?;
        if service == Service::Vnc
            && password.is_none()
            && let Some(open) = bind.iter().find(|ip| !ip.is_loopback())
        {
            return Err(self.err(
                key("password_file"),
                format!(
                    "services.vnc binds {open}, not a loopback address, so anyone who reaches it \
                     would get the devices' screens and keyboards; set services.vnc.password_file \
                     to a file holding the viewers' VNC password (at most 8 characters count), \
                     or bind 127.0.0.1 only"
                ),
            ));
        }
        Ok(Some(ServiceSettings {
            service,
            listen_port: raw.listen_port.unwrap_or(service.legacy_port()),
            device_port: raw.device_port.unwrap_or(service.device_port()),
            bind,
            idle_timeout: self.duration(
                &key("idle_timeout"),
                raw.idle_timeout.as_deref(),
                service.default_idle_timeout(),
            )?,
            default_device: raw.default_device.clone(),
            routing,
            proxy_protocol,
            password,
        }))
    }

    /// A password file (`*_password_file`): read, its trailing newline dropped; not empty.
    fn secret(&self, key: &str, file: &str) -> Result<Secret, ConfigError> {
        let path = self.base.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            self.err(
                key,
                format!("cannot read the password file {}: {e}", path.display()),
            )
        })?;
        let value = text.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            return Err(self.err(
                key,
                format!("{} is empty; write the password into it", path.display()),
            ));
        }
        Ok(Secret::new(Some(path), value.to_owned()))
    }

    /// `proxy_protocol` and `proxy_protocol_from`: both or neither. No default for the
    /// trusted networks: a header is believed only from sources named for it.
    fn proxy_protocol(
        &self,
        service: Service,
        raw: &RawService,
    ) -> Result<Option<ProxyProtocol>, ConfigError> {
        let key = |k: &str| format!("services.{service}.{k}");
        let accept = match raw.proxy_protocol.as_deref() {
            None | Some("off") => None,
            Some("v1") => Some(Accept::V1),
            Some("v2") => Some(Accept::V2),
            Some("any") => Some(Accept::Any),
            Some(other) => {
                return Err(self.err(
                    key("proxy_protocol"),
                    format!(
                        "`{other}` is not a PROXY protocol setting; use \"v1\", \"v2\", \"any\" \
                         (either, told apart by their first bytes) or \"off\" (the default)"
                    ),
                ));
            }
        };
        let Some(accept) = accept else {
            if raw.proxy_protocol_from.is_some() {
                return Err(self.err(
                    key("proxy_protocol_from"),
                    "names the load balancers allowed to send a PROXY protocol header, but \
                     proxy_protocol is off: set proxy_protocol = \"v1\", \"v2\" or \"any\", or \
                     remove proxy_protocol_from",
                ));
            }
            return Ok(None);
        };
        let from = match &raw.proxy_protocol_from {
            Some(list) if !list.is_empty() => list
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    Cidr::parse(text).map_err(|message| {
                        self.err(key(&format!("proxy_protocol_from[{i}]")), message)
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => {
                return Err(self.err(
                    key("proxy_protocol_from"),
                    "proxy_protocol is on, so the load balancers' networks must be named: a \
                     header from anyone else could claim any console address; list them, like \
                     proxy_protocol_from = [\"10.0.0.0/24\"]",
                ));
            }
        };
        Ok(Some(ProxyProtocol { accept, from }))
    }

    fn device(
        &self,
        i: usize,
        raw: &RawDevice,
        defaults: &RawTrust,
        gateway: &GatewaySettings,
        whole: &RawConfig,
    ) -> Result<DeviceSettings, ConfigError> {
        let key = |k: &str| format!("devices[{i}].{k}");
        let name = raw
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| self.err(key("name"), "every device needs a name"))?;
        let host_text = raw.host.as_deref().ok_or_else(|| {
            self.err(
                key("host"),
                format!("device `{name}` has no host: set its IP address or DNS name"),
            )
        })?;
        let host = match host_text.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => match ServerName::try_from(host_text) {
                Ok(ServerName::DnsName(_)) => Host::Dns(host_text.to_owned()),
                _ => {
                    return Err(self.err(
                        key("host"),
                        format!("`{host_text}` is neither an IP address nor a DNS name"),
                    ));
                }
            },
        };
        let listen = raw
            .listen
            .as_deref()
            .map(|text| self.ip(&key("listen"), text))
            .transpose()?;
        if let Some(ip) = listen
            && ip.is_unspecified()
        {
            return Err(self.err(
                key("listen"),
                format!("{ip} matches every address; give the device its own alias address"),
            ));
        }
        let server_name_text = raw.server_name.as_deref().unwrap_or(host_text);
        let server_name = ServerName::try_from(server_name_text.to_owned()).map_err(|_| {
            self.err(
                key("server_name"),
                format!("`{server_name_text}` is neither a DNS name nor an IP address"),
            )
        })?;

        let ports = self.ports(&format!("devices[{i}]"), &raw.ports, whole)?;
        let trust = raw.trust_over(defaults);
        let tls = self.tls(
            &format!("devices[{i}]"),
            &format!("device `{name}`"),
            &trust,
            gateway,
        )?;
        let (max_connections, max_connections_per_source) =
            self.device_limits(&format!("devices[{i}]"), &trust)?;
        let amt_password = match (&raw.amt_password_file, &raw.amt_password_env) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    key("amt_password_env"),
                    "give the AMT password one way: amt_password_file or amt_password_env, not both",
                ));
            }
            (Some(file), None) => Some(self.secret(&key("amt_password_file"), file)?),
            (None, Some(variable)) => {
                // Read like PGPASSWORD for the pin store: the process's own environment.
                let value = std::env::var(variable).ok().filter(|v| !v.is_empty());
                let value = value.ok_or_else(|| {
                    self.err(
                        key("amt_password_env"),
                        format!(
                            "the environment variable {variable} is not set (or empty); set it to \
                             device `{name}`'s AMT password, or use amt_password_file"
                        ),
                    )
                })?;
                Some(Secret::new(None, value))
            }
            (None, None) => None,
        };
        let amt_credentials = match (&raw.amt_username, amt_password) {
            (_, Some(password)) => Some(AmtCredentials {
                // AMT's built-in administrator, which every provisioned device has.
                username: raw
                    .amt_username
                    .clone()
                    .unwrap_or_else(|| "admin".to_owned()),
                password,
            }),
            (Some(_), None) => {
                return Err(self.err(
                    key("amt_password_file"),
                    format!(
                        "device `{name}` has an amt_username but no amt_password_file (or \
                         amt_password_env); the VNC bridge needs the AMT password too"
                    ),
                ));
            }
            (None, None) => None,
        };
        let vnc_password = raw
            .vnc_password_file
            .as_deref()
            .map(|file| self.secret(&key("vnc_password_file"), file))
            .transpose()?;
        Ok(DeviceSettings {
            amt_credentials,
            vnc_password,
            name,
            host,
            listen,
            ports,
            server_name,
            tls,
            max_connections,
            max_connections_per_source,
        })
    }

    /// A device's TLS port per service: its `ports` at `prefix`, else the service's
    /// `device_port`.
    fn ports(
        &self,
        prefix: &str,
        raw: &BTreeMap<String, u16>,
        whole: &RawConfig,
    ) -> Result<[u16; 3], ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let mut ports = [0u16; 3];
        for service in Service::RELAYED {
            let configured = match service {
                Service::Wsman => whole.services.wsman.device_port,
                Service::Redirection | Service::Vnc => whole.services.redirection.device_port,
                Service::Dash => whole.services.dash.device_port,
            };
            ports[service.index()] = configured.unwrap_or(service.device_port());
        }
        for (svc, port) in raw {
            let service = Service::RELAYED
                .into_iter()
                .find(|s| s.as_str() == svc)
                .ok_or_else(|| {
                    self.err(
                        key(&format!("ports.{svc}")),
                        "unknown service; use wsman, redirection or dash",
                    )
                })?;
            if *port == 0 {
                return Err(self.err(
                    key(&format!("ports.{svc}")),
                    "must be a port from 1 to 65535",
                ));
            }
            ports[service.index()] = *port;
        }
        Ok(ports)
    }

    /// `max_connections` and `max_connections_per_source` of a device (or of each device of a
    /// range) at `prefix`.
    fn device_limits(&self, prefix: &str, trust: &RawTrust) -> Result<(usize, usize), ConfigError> {
        let max_connections = self.positive(
            &format!("{prefix}.max_connections"),
            trust.max_connections.unwrap_or(DEVICE_MAX_CONNECTIONS),
        )?;
        let max_connections_per_source = self.positive(
            &format!("{prefix}.max_connections_per_source"),
            trust
                .max_connections_per_source
                .unwrap_or((max_connections / 2).max(1)),
        )?;
        Ok((max_connections, max_connections_per_source))
    }

    /// One `[[ranges]]` entry: every address in it is a device with these settings.
    fn range(
        &self,
        i: usize,
        raw: &RawRange,
        defaults: &RawTrust,
        gateway: &GatewaySettings,
        whole: &RawConfig,
    ) -> Result<RangeSettings, ConfigError> {
        let prefix = format!("ranges[{i}]");
        let key = |k: &str| format!("{prefix}.{k}");
        let text = raw.cidr.as_deref().ok_or_else(|| {
            self.err(
                key("cidr"),
                "every range needs a cidr, like \"10.20.0.0/16\" or \"fd00:20::/64\"",
            )
        })?;
        let cidr = Cidr::parse(text).map_err(|message| self.err(key("cidr"), message))?;
        let trust = raw.trust_over(defaults);
        let inherited = match raw.trust {
            None => " (the range takes it from [defaults]; set trust on the range)",
            Some(_) => "",
        };
        match trust.trust.as_deref() {
            Some("pin") => {
                return Err(self.err(
                    key("trust"),
                    format!(
                        "range {cidr} cannot trust by pin{inherited}: a pin names one device's \
                         certificate and a range is many devices; use trust = \"tofu\" (each \
                         device's certificate learnt on first use) or trust = \"ca\" with ca_file, \
                         or list the pinned devices under [[devices]] (listed devices win over \
                         ranges)"
                    ),
                ));
            }
            None => {
                return Err(self.err(
                    key("trust"),
                    format!(
                        "range {cidr} has no trust mode: set trust = \"tofu\" (learn each \
                         device's certificate on first use) or trust = \"ca\" with ca_file, on \
                         the range or under [defaults]"
                    ),
                ));
            }
            Some(_) => {}
        }
        let ports = self.ports(&prefix, &raw.ports, whole)?;
        let tls = self.tls(&prefix, &format!("range {cidr}"), &trust, gateway)?;
        let (max_connections, max_connections_per_source) = self.device_limits(&prefix, &trust)?;
        Ok(RangeSettings {
            cidr,
            ports,
            tls,
            max_connections,
            max_connections_per_source,
        })
    }

    /// Every `[[ranges]]` entry; declared only where some service routes by original
    /// destination (the only way an address in a range is reached), each CIDR once, and no
    /// listed device named like an address in one (range devices are named by address).
    fn ranges(
        &self,
        raw: &RawConfig,
        gateway: &GatewaySettings,
        services: &[ServiceSettings],
        devices: &[DeviceSettings],
    ) -> Result<Vec<RangeSettings>, ConfigError> {
        let mut ranges: Vec<RangeSettings> = Vec::with_capacity(raw.ranges.len());
        for (i, range) in raw.ranges.iter().enumerate() {
            let range = self.range(i, range, &raw.defaults, gateway, raw)?;
            if let Some(first) = ranges.iter().position(|r| r.cidr == range.cidr) {
                return Err(self.err(
                    format!("ranges[{i}].cidr"),
                    format!(
                        "{} is also ranges[{first}]; declare each range once (a smaller range \
                         inside a larger one is fine: the most specific wins)",
                        range.cidr
                    ),
                ));
            }
            ranges.push(range);
        }
        if !ranges.is_empty() && !services.iter().any(|s| s.routing.by_request()) {
            return Err(self.err(
                "ranges",
                "a range's devices are reached only by the address consoles dial or name: set \
                 routing = \"redirect\" or \"tproxy\" on a service (see the README's \
                 \"Transparent routing\"), or \"host\" on wsman, or remove [[ranges]]",
            ));
        }
        for (i, device) in devices.iter().enumerate() {
            let Ok(ip) = device.name.parse::<IpAddr>() else {
                continue;
            };
            if let Some(range) = ranges.iter().find(|r| r.cidr.contains(ip)) {
                return Err(self.err(
                    format!("devices[{i}].name"),
                    format!(
                        "`{}` is an address in range {}, and devices in a range are named by \
                         their address (in logs, metrics and the pin store); give the listed \
                         device another name",
                        device.name, range.cidr
                    ),
                ));
            }
        }
        Ok(ranges)
    }

    /// The trust settings at `prefix` (`devices[3]`), for `what` (`` device `amt-3` ``).
    fn tls(
        &self,
        prefix: &str,
        what: &str,
        raw: &RawTrust,
        gateway: &GatewaySettings,
    ) -> Result<TlsSettings, ConfigError> {
        let key = |k: &str| format!("{prefix}.{k}");
        let trust = match raw.trust.as_deref() {
            None => {
                return Err(self.err(
                    key("trust"),
                    format!(
                        "{what} has no trust mode: set trust = \"pin\" with pins, \
                         trust = \"ca\" with ca_file, or trust = \"tofu\" (learn the pin on \
                         first use), on the device or under [defaults]"
                    ),
                ));
            }
            Some("pin") => {
                if raw.ca_file.is_some() {
                    return Err(self.err(
                        key("ca_file"),
                        "ca_file is not used with trust = \"pin\"; remove it or use trust = \"ca\"",
                    ));
                }
                let texts = raw.pins.as_deref().unwrap_or_default();
                if texts.is_empty() {
                    return Err(self.err(
                        key("pins"),
                        format!(
                            "{what} trusts by pin but has no pins; add its certificate \
                             pin (amtgw prints it with `openssl x509 -fingerprint -sha256`, as \
                             cert-sha256:<hex>)"
                        ),
                    ));
                }
                let pins = texts
                    .iter()
                    .enumerate()
                    .map(|(p, text)| {
                        Pin::parse(text)
                            .map_err(|e| self.err(key(&format!("pins[{p}]")), e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Trust::Pin(pins)
            }
            Some("ca") => {
                if raw.pins.as_ref().is_some_and(|p| !p.is_empty()) {
                    return Err(self.err(
                        key("pins"),
                        "pins are not used with trust = \"ca\"; remove them or use trust = \"pin\"",
                    ));
                }
                let file = raw.ca_file.as_deref().ok_or_else(|| {
                    self.err(
                        key("ca_file"),
                        format!("{what} trusts by CA but no ca_file is set"),
                    )
                })?;
                let path = self.base.join(file);
                let certs = load_certificates(&path)
                    .map_err(|e| self.err(key("ca_file"), e.to_string()))?;
                let mut roots = RootCertStore::empty();
                for (n, cert) in certs.into_iter().enumerate() {
                    roots.add(cert).map_err(|e| {
                        self.err(
                            key("ca_file"),
                            format!(
                                "certificate #{} of {} is not a usable CA: {e}",
                                n + 1,
                                path.display()
                            ),
                        )
                    })?;
                }
                Trust::Ca {
                    ca_file: path,
                    roots: Arc::new(roots),
                }
            }
            Some("tofu") => {
                if raw.pins.as_ref().is_some_and(|p| !p.is_empty()) {
                    return Err(self.err(
                        key("pins"),
                        "pins are not used with trust = \"tofu\" (it learns them into \
                         gateway.pin_store); remove them or use trust = \"pin\"",
                    ));
                }
                if raw.ca_file.is_some() {
                    return Err(self.err(
                        key("ca_file"),
                        "ca_file is not used with trust = \"tofu\"; remove it or use trust = \"ca\"",
                    ));
                }
                Trust::Tofu
            }
            Some(other) => {
                return Err(self.err(
                    key("trust"),
                    format!("`{other}` is not a trust mode; use \"pin\", \"ca\" or \"tofu\""),
                ));
            }
        };

        let client_identity = match (&raw.client_cert, &raw.client_key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.err(
                    key("client_key"),
                    "client_cert is set but client_key is not; give both or neither",
                ));
            }
            (None, Some(_)) => {
                return Err(self.err(
                    key("client_cert"),
                    "client_key is set but client_cert is not; give both or neither",
                ));
            }
            (Some(cert), Some(key_file)) => {
                let cert_path = self.base.join(cert);
                let key_path = self.base.join(key_file);
                let chain = load_certificates(&cert_path)
                    .map_err(|e| self.err(key("client_cert"), e.to_string()))?;
                let private_key = load_private_key(&key_path)
                    .map_err(|e| self.err(key("client_key"), e.to_string()))?;
                // Caught here, not at the first handshake: the key must be usable and belong
                // to the certificate.
                rustls::sign::CertifiedKey::from_der(
                    chain.clone(),
                    private_key.clone_key(),
                    &crate::tls::provider(),
                )
                .map_err(|e| {
                    self.err(
                        key("client_key"),
                        format!(
                            "{} cannot be used with {}: {e}; give the key that belongs to the certificate",
                            key_path.display(),
                            cert_path.display()
                        ),
                    )
                })?;
                Some(Arc::new(ClientIdentity {
                    cert_path,
                    key_path,
                    chain,
                    key: private_key,
                }))
            }
        };

        let backend = match raw.tls_backend.as_deref() {
            None | Some("rustls") => Backend::Rustls,
            Some("legacy") if cfg!(feature = "legacy-tls") => Backend::Legacy,
            Some("legacy") => {
                return Err(self.err(
                    key("tls_backend"),
                    "this amtgw was built without the legacy TLS backend (cargo feature \
                     legacy-tls); use a build with it, or remove the key",
                ));
            }
            Some(other) => {
                return Err(self.err(
                    key("tls_backend"),
                    format!(
                        "`{other}` is not a TLS backend; use \"rustls\" (the default) or \
                         \"legacy\" (OpenSSL, for AMT 12 and older)"
                    ),
                ));
            }
        };
        let spoken: Vec<&str> = TlsVersion::ALL
            .into_iter()
            .filter(|v| v.spoken_by(backend))
            .map(TlsVersion::as_str)
            .collect();
        let versions: Vec<TlsVersion> = match raw.tls_versions.as_deref() {
            None => TlsVersion::ALL
                .into_iter()
                .filter(|v| v.spoken_by(backend))
                .collect(),
            Some([]) => {
                return Err(self.err(
                    key("tls_versions"),
                    format!("list at least one of {}", quoted(&spoken)),
                ));
            }
            Some(list) => list
                .iter()
                .map(|text| match TlsVersion::parse(text) {
                    Some(v) if v.spoken_by(backend) => Ok(v),
                    Some(v) if backend == Backend::Rustls => Err(self.err(
                        key("tls_versions"),
                        format!(
                            "TLS {} needs tls_backend = \"legacy\" (AMT 11 and older speak only \
                             TLS 1.0/1.1, which rustls does not); or use {}",
                            v.as_str(),
                            quoted(&spoken)
                        ),
                    )),
                    _ => Err(self.err(
                        key("tls_versions"),
                        format!(
                            "`{text}` is not supported with tls_backend = \"{}\"; use {}",
                            backend.as_str(),
                            quoted(&spoken)
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?,
        };

        Ok(TlsSettings {
            trust,
            client_identity,
            backend,
            versions,
            session_cache: gateway.session_cache_per_device,
        })
    }

    fn ip(&self, key: &str, text: &str) -> Result<IpAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.err(
                key,
                format!("`{text}` is not an IP address (for example 127.0.0.1, 0.0.0.0 or ::1)"),
            )
        })
    }

    /// `gateway.pin_store`: a file (the default), or a `postgres://` URL with its password
    /// from `pin_store_password_file`, the URL or `PGPASSWORD`, and TLS with
    /// `pin_store_ca_file`. No message repeats the password.
    fn pin_store(&self, g: &RawGateway) -> Result<PinStoreSettings, ConfigError> {
        const KEY: &str = "gateway.pin_store";
        let location = match g.pin_store.as_deref() {
            Some(url) if PostgresSettings::is_url(url) => url,
            file => {
                for (key, set) in [
                    (
                        "pin_store_password_file",
                        g.pin_store_password_file.is_some(),
                    ),
                    ("pin_store_ca_file", g.pin_store_ca_file.is_some()),
                    (
                        "pin_store_reread_interval",
                        g.pin_store_reread_interval.is_some(),
                    ),
                    ("pin_store_timeout", g.pin_store_timeout.is_some()),
                ] {
                    if set {
                        return Err(self.err(
                            format!("gateway.{key}"),
                            "is used only with a PostgreSQL pin store (gateway.pin_store = \
                         \"postgres://USER@HOST/DATABASE\"); remove it",
                        ));
                    }
                }
                return Ok(PinStoreSettings::File(match file {
                    Some(file) => self.base.join(file),
                    None => self
                        .state_directory
                        .unwrap_or(self.base)
                        .join(DEFAULT_PIN_STORE_FILE),
                }));
            }
        };
        let password = match &g.pin_store_password_file {
            Some(file) => {
                let path = self.base.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.err(
                        "gateway.pin_store_password_file",
                        format!("cannot read the database password {}: {e}", path.display()),
                    )
                })?;
                // A trailing newline is what `echo` and editors leave, never part of a password.
                let password = text.trim_end_matches(['\r', '\n']).to_owned();
                if password.is_empty() {
                    return Err(self.err(
                        "gateway.pin_store_password_file",
                        format!(
                            "{} is empty; write the database password into it",
                            path.display()
                        ),
                    ));
                }
                Some((PasswordSource::File(path), password))
            }
            None => std::env::var("PGPASSWORD")
                .ok()
                .filter(|p| !p.is_empty())
                .map(|p| (PasswordSource::Environment, p)),
        };
        let ca = match &g.pin_store_ca_file {
            Some(file) => {
                let path = self.base.join(file);
                let certs = load_certificates(&path)
                    .map_err(|e| self.err("gateway.pin_store_ca_file", e.to_string()))?;
                Some((path, certs))
            }
            None => None,
        };
        let reread_interval = self.duration(
            "gateway.pin_store_reread_interval",
            g.pin_store_reread_interval.as_deref(),
            Duration::from_secs(60),
        )?;
        let timeout = self.duration(
            "gateway.pin_store_timeout",
            g.pin_store_timeout.as_deref(),
            Duration::from_secs(5),
        )?;
        PostgresSettings::parse(location, password, ca, reread_interval, timeout)
            .map(|settings| PinStoreSettings::Postgres(Box::new(settings)))
            .map_err(|message| self.err(KEY, message))
    }

    fn socket_addr(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.err(
                key,
                format!("`{text}` is not an address with a port (for example 127.0.0.1:9716)"),
            )
        })
    }

    fn duration(
        &self,
        key: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(text) = text else {
            return Ok(default);
        };
        let value = humantime::parse_duration(text).map_err(|e| {
            self.err(
                key,
                format!(
                    "`{text}` is not a duration ({e}); write it like \"500ms\", \"10s\" or \"5m\""
                ),
            )
        })?;
        if value.is_zero() {
            return Err(self.err(key, "must be longer than zero"));
        }
        Ok(value)
    }

    /// Like `duration`, where zero means "not at all".
    fn duration_or_zero(
        &self,
        key: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match text.map(humantime::parse_duration) {
            Some(Ok(value)) if value.is_zero() => Ok(Duration::ZERO),
            _ => self.duration(key, text, default),
        }
    }

    /// Zero turns busy polling off; more than a millisecond would keep a core spinning through
    /// whole device round trips, which is never what low latency needs.
    fn busy_poll(&self, text: Option<&str>) -> Result<Duration, ConfigError> {
        const KEY: &str = "gateway.busy_poll";
        const MAX: Duration = Duration::from_millis(1);
        let value = match text {
            None | Some("0" | "0s" | "0us" | "0ms") => return Ok(Duration::ZERO),
            Some(text) => self.duration(KEY, Some(text), Duration::ZERO)?,
        };
        if value > MAX {
            return Err(self.err(
                KEY,
                format!(
                    "`{}` is too long; use at most \"1ms\" (\"50us\" to \"200us\" is typical), or \"0s\" to turn it off",
                    humantime::format_duration(value)
                ),
            ));
        }
        Ok(value)
    }

    fn positive(&self, key: &str, value: usize) -> Result<usize, ConfigError> {
        if value == 0 {
            return Err(self.err(key, "must be at least 1"));
        }
        Ok(value)
    }
}

/// `"1.0", "1.1" or "1.2"`.
fn quoted(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}
