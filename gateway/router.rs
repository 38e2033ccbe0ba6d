//! Which device a console connection is for.
//!
//! This is the one seam for routing policies. A service routes in one of two ways:
//!
//! - **alias** (`routing = "alias"`): the local address the console connected to is a device's
//!   `listen` alias, else the service's default device;
//! - **original destination** (`routing = "redirect"` or `"tproxy"`): the console dialled the
//!   device's own address and the network diverted the connection to the gateway; the proxy
//!   puts that address in [`RouteQuery::original_destination`], and it selects the listed
//!   device whose `host` it is, else the device of that address in a `[[ranges]]` entry (made
//!   on first use, see `fleet::Ranges`). An address that is the gateway's own is refused
//!   (`loop`), one that is no device's is refused (`no_route`): the gateway is never an open
//!   relay.
//!
//! - **Host** (`routing = "host"`, WS-Man only): the proxy reads the console's first request
//!   head and puts its `Host` in [`RouteQuery::host`]; a name selects the listed device of
//!   that name or DNS host (case aside), an address the listed device whose `host` it is, else
//!   the device of that address in a `[[ranges]]` entry. Anything else is `no_route`.
//!
//! Behind a load balancer (PROXY protocol) the proxy fills `peer`, `local` and, for routing by
//! original destination, `original_destination` from the header, so the router never knows a
//! balancer was there. The data path only ever sees `Router::route`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::config::{Config, Host, Routing};
use crate::fleet::{Device, RangeError, Ranges};
use crate::reason::Reason;
use crate::service::Service;

/// The host a console's request names (`routing = "host"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedHost<'a> {
    /// A DNS name, lower case, without a trailing dot.
    Name(&'a str),
    Ip(IpAddr),
}

/// What is known about a console connection when it is routed.
#[derive(Debug, Clone, Copy)]
pub struct RouteQuery<'a> {
    pub service: Service,
    /// The gateway address the console connected to; behind a load balancer, the PROXY
    /// header's destination (the address the console dialled on the balancer).
    pub local: SocketAddr,
    /// The console; behind a load balancer, the PROXY header's source.
    pub peer: SocketAddr,
    /// The address the console dialled, when the network diverted the connection to the
    /// gateway (`routing = "redirect"` or `"tproxy"`): the device's own address. `None` for
    /// alias routing, where `local` selects the device. IPv4 addresses are plain IPv4 here,
    /// not IPv4-mapped IPv6.
    pub original_destination: Option<SocketAddr>,
    /// The host the console's first request names, for `routing = "host"`; `None` otherwise.
    pub host: Option<NamedHost<'a>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(
        "no device for {service} connections to {local}: it is no device's listen address and the service has no default_device"
    )]
    NoRoute { service: Service, local: IpAddr },
    #[error(
        "no device at {destination}, where the console was going: it is no listed device's host and in no [[ranges]]"
    )]
    NoDevice { destination: SocketAddr },
    #[error(
        "no device for Host {host}: it is no listed device's name or host, nor an address of one or in a [[ranges]] entry"
    )]
    UnknownHost { host: String },
    #[error(transparent)]
    Range(#[from] RangeError),
    #[error(
        "the console was going to {destination}, an address of the gateway itself: relaying it would reach the gateway again (is the REDIRECT/TPROXY rule matching the devices' addresses only?)"
    )]
    Loop { destination: SocketAddr },
}

impl RouteError {
    pub fn reason(&self) -> Reason {
        match self {
            RouteError::NoRoute { .. }
            | RouteError::NoDevice { .. }
            | RouteError::UnknownHost { .. } => Reason::NoRoute,
            RouteError::Loop { .. } => Reason::Loop,
            RouteError::Range(RangeError::Full { .. }) => Reason::Limit,
            RouteError::Range(RangeError::Device { .. }) => Reason::NoRoute,
        }
    }
}

pub trait Router: Send + Sync + 'static {
    fn route(&self, query: &RouteQuery<'_>) -> Result<Arc<Device>, RouteError>;
}

/// Routes by address: the local address (an alias) then the per-service default, or the
/// original destination (a device's own address).
pub struct AddressRouter {
    by_listen: HashMap<IpAddr, Arc<Device>>,
    defaults: [Option<Arc<Device>>; Service::ALL.len()],
    /// Listed devices by the IP address they are reached at, for routing by original
    /// destination. Devices named by DNS name are reachable through aliases only.
    by_host: HashMap<IpAddr, Arc<Device>>,
    /// Every other address in a `[[ranges]]` entry, for routing by original destination.
    ranges: Option<Arc<Ranges>>,
    /// Listed devices by name and by DNS host, lower case without a trailing dot, for routing
    /// by `Host`. Empty unless a service routes so.
    by_name: HashMap<String, Arc<Device>>,
    own: OwnAddresses,
}

impl AddressRouter {
    pub fn new(config: &Config, devices: &[Arc<Device>]) -> AddressRouter {
        let by_name: HashMap<&str, &Arc<Device>> = devices.iter().map(|d| (d.name(), d)).collect();
        let by_listen = devices
            .iter()
            .filter_map(|d| Some((d.settings.listen?, d.clone())))
            .collect();
        let by_host = devices
            .iter()
            .filter_map(|d| match d.settings.host {
                Host::Ip(ip) => Some((ip.to_canonical(), d.clone())),
                Host::Dns(_) => None,
            })
            .collect();
        let mut defaults: [Option<Arc<Device>>; Service::ALL.len()] = Default::default();
        for service in &config.services {
            defaults[service.service.index()] = service
                .default_device
                .as_deref()
                .and_then(|name| by_name.get(name))
                .map(|d| Arc::clone(d));
        }
        let mut by_name = HashMap::new();
        if config.services.iter().any(|s| s.routing == Routing::Host) {
            for device in devices {
                let folded =
                    |name: &str| name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
                by_name.insert(folded(device.name()), device.clone());
                if let Host::Dns(host) = &device.settings.host {
                    by_name.insert(folded(host), device.clone());
                }
            }
        }
        AddressRouter {
            by_listen,
            defaults,
            by_host,
            ranges: None,
            by_name,
            own: OwnAddresses::default(),
        }
    }

    /// Route original destinations that are no listed device's to the devices of `ranges`.
    pub fn with_ranges(mut self, ranges: Arc<Ranges>) -> AddressRouter {
        self.ranges = Some(ranges);
        self
    }

    /// `destination` as the proxy gives it: IPv4 as IPv4, never `::ffff:a.b.c.d`.
    fn by_destination(&self, destination: SocketAddr) -> Result<Arc<Device>, RouteError> {
        let ip = destination.ip();
        // Listed devices win over ranges.
        let listed = self.by_host.get(&ip);
        let in_range = || {
            self.ranges
                .as_ref()
                .is_some_and(|ranges| ranges.range_of(ip).is_some())
        };
        if listed.is_none() && !in_range() {
            // Refused either way; only which reason to give needs the kernel.
            return Err(match is_own_address(ip) {
                true => RouteError::Loop { destination },
                false => RouteError::NoDevice { destination },
            });
        }
        if self.own.contains(ip) {
            return Err(RouteError::Loop { destination });
        }
        self.by_address(ip)?
            .ok_or(RouteError::NoDevice { destination })
    }

    /// The listed device whose host `ip` is, else the device of `ip` in a range.
    fn by_address(&self, ip: IpAddr) -> Result<Option<Arc<Device>>, RouteError> {
        let ip = ip.to_canonical();
        // Listed devices win over ranges.
        if let Some(device) = self.by_host.get(&ip) {
            return Ok(Some(device.clone()));
        }
        Ok(match &self.ranges {
            Some(ranges) => ranges.device(ip)?,
            None => None,
        })
    }

    /// No loop check here, unlike routing by original destination: the console reached the
    /// gateway on purpose and named a device, and the gateway dials that device's TLS port,
    /// never its own plain listener.
    fn by_named_host(&self, host: NamedHost<'_>) -> Result<Arc<Device>, RouteError> {
        let found = match host {
            NamedHost::Name(name) => self.by_name.get(name).cloned(),
            NamedHost::Ip(ip) => self.by_address(ip)?,
        };
        found.ok_or_else(|| RouteError::UnknownHost {
            host: match host {
                NamedHost::Name(name) => name.to_owned(),
                NamedHost::Ip(ip) => ip.to_string(),
            },
        })
    }
}

impl Router for AddressRouter {
    fn route(&self, query: &RouteQuery<'_>) -> Result<Arc<Device>, RouteError> {
        if let Some(host) = query.host {
            return self.by_named_host(host);
        }
        if let Some(destination) = query.original_destination {
            return self.by_destination(destination);
        }
        // A dual-stack listener reports IPv4 consoles as ::ffff:a.b.c.d.
        let local = query.local.ip().to_canonical();
        self.by_listen
            .get(&local)
            .or(self.defaults[query.service.index()].as_ref())
            .cloned()
            .ok_or(RouteError::NoRoute {
                service: query.service,
                local,
            })
    }
}

/// Whether device addresses are this host's, as [`is_own_address`] says, remembered for
/// [`OwnAddresses::FRESH`]: asking the kernel costs a socket and two system calls (~15 µs on
/// the bench machine, against ~0.1 µs for the rest of a route lookup), and routing by original
/// destination asks for every connection. An address added to the host is recognised within
/// that time. Only addresses that are a device's are kept, and at most [`OwnAddresses::MAX`].
#[derive(Default)]
struct OwnAddresses {
    checked: DashMap<IpAddr, (Instant, bool)>,
}

impl OwnAddresses {
    const FRESH: Duration = Duration::from_secs(1);
    /// A range can hold millions of addresses; past this many remembered, start over.
    const MAX: usize = 65_536;

    fn contains(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        if let Some(entry) = self.checked.get(&ip) {
            let (at, own) = *entry;
            if now.duration_since(at) < Self::FRESH {
                return own;
            }
        }
        let own = is_own_address(ip);
        if self.checked.len() >= Self::MAX {
            self.checked.clear();
        }
        self.checked.insert(ip, (now, own));
        own
    }
}

/// Whether `ip` is an address of this host, as the kernel's routing sees it now: a UDP socket
/// connected to a local address is given that very address as its source, any other gets the
/// address of the interface towards it. No packet is sent. Asked at run time rather than from
/// a list read at start, so an address added to the host later is recognised; and unlike a
/// test bind it does not depend on `net.ipv4.ip_nonlocal_bind`. A console that dials the
/// gateway's own address (a connection no REDIRECT rule rewrote, or one reaching a TPROXY
/// listener directly) has it as its original destination.
fn is_own_address(ip: IpAddr) -> bool {
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    let unbound = match ip {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let Ok(probe) = UdpSocket::bind(unbound) else {
        return false;
    };
    // Port 9 (discard): any port would do, nothing is sent.
    if probe.connect(SocketAddr::new(ip, 9)).is_err() {
        return false; // No route to it at all: certainly not an address of this host.
    }
    probe
        .local_addr()
        .is_ok_and(|source| source.ip().to_canonical() == ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;

    /// A router for a wsman service routed by original destination: one listed device at
    /// 192.0.2.10 inside the range 192.0.2.0/24, which keeps at most one device.
    fn router() -> AddressRouter {
        let toml = r#"
[gateway]
max_range_devices = 1

[services.wsman]
routing = "tproxy"
listen_port = 0

[services.redirection]
enabled = false

[services.dash]
enabled = false

[[devices]]
name = "listed"
host = "192.0.2.10"
trust = "pin"
pins = ["cert-sha256:7732ca35d959c35dc893899e414d2ef6e476c9afca869aa0e5b1daed1c31c511"]

[[ranges]]
cidr = "192.0.2.0/24"
trust = "tofu"
"#;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_toml("router test", Path::new("."), toml).unwrap();
        let path = dir.path().join("pins.toml");
        config.gateway.pin_store = crate::tls::PinStoreSettings::File(path.clone());
        let store =
            crate::tls::TofuStore::File(Arc::new(crate::tls::PinStore::open(&path).unwrap()));
        let devices = crate::fleet::build(&config, Some(&store), &[]).unwrap();
        let ranges = Ranges::new(&config, Some(&store), None).unwrap();
        AddressRouter::new(&config, &devices).with_ranges(Arc::new(ranges))
    }

    fn to(destination: &str) -> RouteQuery<'static> {
        let destination: SocketAddr = destination.parse().unwrap();
        RouteQuery {
            service: Service::Wsman,
            local: destination,
            peer: SocketAddr::from(([198, 51, 100, 1], 40000)),
            original_destination: Some(destination),
            host: None,
        }
    }

    #[test]
    fn a_listed_device_wins_over_the_range_holding_its_address() {
        let router = router();
        assert_eq!(
            router.route(&to("192.0.2.10:16992")).unwrap().name(),
            "listed"
        );
        assert_eq!(
            router.route(&to("192.0.2.11:16992")).unwrap().name(),
            "192.0.2.11"
        );
    }

    #[test]
    fn an_address_outside_every_device_and_range_is_no_route() {
        let refused = router().route(&to("198.51.100.7:16992")).err().unwrap();
        assert_eq!(refused.reason(), Reason::NoRoute, "{refused}");
    }

    #[test]
    fn the_gateways_own_address_is_a_loop_even_inside_a_range() {
        let mut query = to("192.0.2.11:16992");
        query.original_destination = Some(SocketAddr::from(([127, 0, 0, 1], 16992)));
        let refused = router().route(&query).err().unwrap();
        assert_eq!(refused.reason(), Reason::Loop, "{refused}");
    }

    #[test]
    fn a_new_range_device_with_every_kept_one_busy_is_refused_as_limit() {
        let router = router();
        let _busy = router.route(&to("192.0.2.11:16992")).unwrap();
        let refused = router.route(&to("192.0.2.12:16992")).err().unwrap();
        assert_eq!(refused.reason(), Reason::Limit, "{refused}");
    }

    #[test]
    fn alias_routing_ignores_ranges() {
        let mut query = to("192.0.2.11:16992");
        query.original_destination = None;
        let refused = router().route(&query).err().unwrap();
        assert!(matches!(refused, RouteError::NoRoute { .. }), "{refused}");
    }

    /// A wsman service routed by Host: a device by name, one by DNS host, and an IPv6 range.
    fn host_router() -> AddressRouter {
        let toml = r#"
[services.wsman]
routing = "host"
listen_port = 0

[services.redirection]
enabled = false

[services.dash]
enabled = false

[[devices]]
name = "AMT-01"
host = "192.0.2.10"
trust = "tofu"

[[devices]]
name = "amt-02"
host = "amt-02.example.net."
trust = "tofu"

[[ranges]]
cidr = "fd00:20::/64"
trust = "tofu"
"#;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_toml("router test", Path::new("."), toml).unwrap();
        let path = dir.path().join("pins.toml");
        config.gateway.pin_store = crate::tls::PinStoreSettings::File(path.clone());
        let store =
            crate::tls::TofuStore::File(Arc::new(crate::tls::PinStore::open(&path).unwrap()));
        let devices = crate::fleet::build(&config, Some(&store), &[]).unwrap();
        let ranges = Ranges::new(&config, Some(&store), None).unwrap();
        AddressRouter::new(&config, &devices).with_ranges(Arc::new(ranges))
    }

    fn named(host: NamedHost<'_>) -> RouteQuery<'_> {
        let mut query = to("192.0.2.1:16992");
        query.original_destination = None;
        query.host = Some(host);
        query
    }

    #[test]
    fn routing_by_host_finds_names_dns_hosts_and_addresses() {
        let router = host_router();
        let route = |host| router.route(&named(host)).map(|d| d.name().to_owned());
        let v6: IpAddr = "fd00:20::11".parse().unwrap();
        // Names are folded by the proxy's parser; the router folds its own side.
        assert_eq!(route(NamedHost::Name("amt-01")).unwrap(), "AMT-01");
        assert_eq!(route(NamedHost::Name("amt-02")).unwrap(), "amt-02");
        assert_eq!(
            route(NamedHost::Name("amt-02.example.net")).unwrap(),
            "amt-02"
        );
        let listed = IpAddr::from([192, 0, 2, 10]);
        assert_eq!(route(NamedHost::Ip(listed)).unwrap(), "AMT-01");
        assert_eq!(route(NamedHost::Ip(v6)).unwrap(), "fd00:20::11");
        for unknown in [
            NamedHost::Name("amt-03"),
            NamedHost::Name("fd00:20::11"),
            NamedHost::Ip(IpAddr::from([192, 0, 2, 11])),
        ] {
            let refused = router.route(&named(unknown)).err().unwrap();
            assert_eq!(refused.reason(), Reason::NoRoute, "{refused}");
        }
    }

    #[test]
    fn the_hosts_own_addresses_are_recognised() {
        assert!(is_own_address(IpAddr::from([127, 0, 0, 1])));
        assert!(is_own_address(IpAddr::from([127, 0, 0, 53])));
        assert!(is_own_address("::1".parse().unwrap()));
        assert!(is_own_address(IpAddr::from([0, 0, 0, 0])));
        // TEST-NET-1 (RFC 5737) is on no host.
        assert!(!is_own_address(IpAddr::from([192, 0, 2, 1])));
    }
}
