//! The configuration as written in TOML: plain serde shapes, every table `deny_unknown_fields`
//! so a typo is an error instead of a silently ignored setting. `validate.rs` turns this into
//! the typed [`super::Config`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawConfig {
    pub(crate) gateway: RawGateway,
    pub(crate) admin: RawAdmin,
    pub(crate) metrics: RawMetrics,
    pub(crate) services: RawServices,
    pub(crate) defaults: RawTrust,
    pub(crate) devices: Vec<RawDevice>,
    pub(crate) ranges: Vec<RawRange>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawGateway {
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_source: Option<usize>,
    pub(crate) console_first_byte_timeout: Option<String>,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) handshake_timeout: Option<String>,
    pub(crate) shutdown_delay: Option<String>,
    pub(crate) shutdown_timeout: Option<String>,
    pub(crate) tcp_keepalive: Option<String>,
    pub(crate) session_cache_per_device: Option<usize>,
    pub(crate) log_format: Option<String>,
    pub(crate) pin_store: Option<String>,
    pub(crate) pin_store_password_file: Option<String>,
    pub(crate) pin_store_ca_file: Option<String>,
    pub(crate) pin_store_reread_interval: Option<String>,
    pub(crate) pin_store_timeout: Option<String>,
    pub(crate) watch_interval: Option<String>,
    pub(crate) expiry_warning: Option<String>,
    pub(crate) workers: Option<usize>,
    pub(crate) busy_poll: Option<String>,
    pub(crate) max_range_devices: Option<usize>,
    pub(crate) proxy_header_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAdmin {
    pub(crate) enabled: Option<bool>,
    pub(crate) listen: Option<String>,
    pub(crate) token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawMetrics {
    pub(crate) per_device: Option<bool>,
    pub(crate) max_device_series: Option<usize>,
    pub(crate) device_series_idle: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawServices {
    pub(crate) wsman: RawService,
    pub(crate) redirection: RawService,
    pub(crate) dash: RawService,
    pub(crate) vnc: RawService,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawService {
    pub(crate) enabled: Option<bool>,
    pub(crate) listen_port: Option<u16>,
    pub(crate) device_port: Option<u16>,
    pub(crate) bind: Option<Vec<String>>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) default_device: Option<String>,
    pub(crate) routing: Option<String>,
    pub(crate) proxy_protocol: Option<String>,
    pub(crate) proxy_protocol_from: Option<Vec<String>>,
    /// `services.vnc` only: the viewers' VNC password, gateway-wide.
    pub(crate) password_file: Option<String>,
}

/// Trust settings: fleet-wide under `[defaults]`, overridable per device.
#[derive(Debug, Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawTrust {
    pub(crate) trust: Option<String>,
    pub(crate) pins: Option<Vec<String>>,
    pub(crate) ca_file: Option<String>,
    pub(crate) client_cert: Option<String>,
    pub(crate) client_key: Option<String>,
    pub(crate) tls_versions: Option<Vec<String>>,
    pub(crate) tls_backend: Option<String>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_source: Option<usize>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawDevice {
    pub(crate) name: Option<String>,
    pub(crate) host: Option<String>,
    pub(crate) listen: Option<String>,
    pub(crate) server_name: Option<String>,
    pub(crate) ports: BTreeMap<String, u16>,
    /// The VNC bridge: the AMT account it opens KVM sessions with, and this device's own
    /// viewer password.
    pub(crate) amt_username: Option<String>,
    pub(crate) amt_password_file: Option<String>,
    pub(crate) amt_password_env: Option<String>,
    pub(crate) vnc_password_file: Option<String>,
    // The trust keys of `RawTrust`, spelled out: serde cannot combine `flatten` with
    // `deny_unknown_fields`, and rejecting typos matters more here.
    pub(crate) trust: Option<String>,
    pub(crate) pins: Option<Vec<String>>,
    pub(crate) ca_file: Option<String>,
    pub(crate) client_cert: Option<String>,
    pub(crate) client_key: Option<String>,
    pub(crate) tls_versions: Option<Vec<String>>,
    pub(crate) tls_backend: Option<String>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_source: Option<usize>,
}

/// A `[[ranges]]` entry: every address in `cidr` is a device with these settings.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRange {
    pub(crate) cidr: Option<String>,
    pub(crate) ports: BTreeMap<String, u16>,
    // The trust keys of `RawTrust` but pins (a range cannot be pinned), spelled out as in
    // `RawDevice`.
    pub(crate) trust: Option<String>,
    pub(crate) ca_file: Option<String>,
    pub(crate) client_cert: Option<String>,
    pub(crate) client_key: Option<String>,
    pub(crate) tls_versions: Option<Vec<String>>,
    pub(crate) tls_backend: Option<String>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_source: Option<usize>,
}

impl RawRange {
    /// The range's trust keys, each falling back to the fleet-wide `[defaults]`.
    pub(crate) fn trust_over(&self, defaults: &RawTrust) -> RawTrust {
        RawTrust {
            trust: self.trust.clone(),
            pins: None,
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            tls_versions: self.tls_versions.clone(),
            tls_backend: self.tls_backend.clone(),
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
        }
        .over(defaults)
    }
}

impl RawDevice {
    /// This device's trust keys, each falling back to the fleet-wide `[defaults]`.
    pub(crate) fn trust_over(&self, defaults: &RawTrust) -> RawTrust {
        RawTrust {
            trust: self.trust.clone(),
            pins: self.pins.clone(),
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            tls_versions: self.tls_versions.clone(),
            tls_backend: self.tls_backend.clone(),
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
        }
        .over(defaults)
    }
}

impl RawTrust {
    /// These keys, each falling back to `defaults`.
    fn over(self, defaults: &RawTrust) -> RawTrust {
        // A device that picks a different trust mode than [defaults] takes none of the fleet's
        // pins or CA: otherwise a fleet-wide ca_file would forbid pinning any single device.
        let same_mode = self.trust.is_none() || self.trust == defaults.trust;
        RawTrust {
            trust: self.trust.or_else(|| defaults.trust.clone()),
            pins: self
                .pins
                .or_else(|| defaults.pins.clone().filter(|_| same_mode)),
            ca_file: self
                .ca_file
                .or_else(|| defaults.ca_file.clone().filter(|_| same_mode)),
            client_cert: self.client_cert.or_else(|| defaults.client_cert.clone()),
            client_key: self.client_key.or_else(|| defaults.client_key.clone()),
            tls_versions: self.tls_versions.or_else(|| defaults.tls_versions.clone()),
            tls_backend: self.tls_backend.or_else(|| defaults.tls_backend.clone()),
            max_connections: self.max_connections.or(defaults.max_connections),
            max_connections_per_source: self
                .max_connections_per_source
                .or(defaults.max_connections_per_source),
        }
    }
}
