//! The devices of `[[ranges]]`: every address in a range is a device, made when a console
//! first dials it (its TLS client built then, once, as for a listed device) and named by its
//! address in logs, metrics and the pin store.
//!
//! At most `gateway.max_range_devices` are kept. Making room forgets the least recently used
//! one that no connection holds; a forgotten device keeps its pin (the store is by name) and is
//! made again at its next connection, which then pays a full TLS handshake. A device that a
//! connection holds is never forgotten, so its `max_connections` stays one count; with every
//! kept device busy a new one is refused (`limit`).
//!
//! Routing takes a read lock to find a known device, and the write lock only to add one: once
//! per new device, never per byte.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use tokio::sync::Semaphore;

use super::{Device, DeviceStatus, FleetError, connector};
use crate::config::{Cidr, Config, DeviceSettings, RangeSettings};
use crate::tls::{self, Connector, TlsError, TofuStore, Trust};

#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error(
        "gateway.max_range_devices ({max}) devices of ranges all have connections open: no room for {ip}"
    )]
    Full { ip: IpAddr, max: usize },
    #[error("device {ip} of range {cidr}: cannot set up its TLS client: {source}")]
    Device {
        ip: IpAddr,
        cidr: Cidr,
        // Boxed: rustls errors are large.
        source: Box<TlsError>,
    },
}

pub struct Ranges {
    /// The most specific first, so a smaller range inside a larger one wins.
    ranges: Vec<RangeSettings>,
    max: usize,
    provider: Arc<CryptoProvider>,
    pin_store: Option<TofuStore>,
    known: RwLock<HashMap<IpAddr, Known>>,
    /// Ticks at each use, for least-recently-used order without a clock read.
    clock: AtomicU64,
    /// What the previous configuration's devices hand over at their first use under this one:
    /// their status, and their connection limit while `max_connections` is unchanged (sessions
    /// still open on the old device keep counting against it).
    inherited: Mutex<HashMap<IpAddr, Inherited>>,
}

struct Known {
    device: Arc<Device>,
    last_used: AtomicU64,
}

#[derive(Clone)]
struct Inherited {
    status: Arc<DeviceStatus>,
    limit: Arc<Semaphore>,
    max_connections: usize,
}

impl Ranges {
    /// The ranges of `config`, with nothing made yet. Each range's TLS client is built once
    /// here, for its network address, so what would fail for its devices fails at load.
    /// `previous` (a reload) hands its devices' status and limits over.
    pub fn new(
        config: &Config,
        pin_store: Option<&TofuStore>,
        previous: Option<&Ranges>,
    ) -> Result<Ranges, FleetError> {
        let provider = tls::provider();
        let mut ranges = config.ranges.clone();
        ranges.sort_by_key(|r| std::cmp::Reverse(r.cidr.prefix()));
        for range in &ranges {
            let trial = range.device(range.cidr.network());
            connector(&trial, &provider, pin_store).map_err(|source| FleetError {
                device: format!("range {}", range.cidr),
                source: Box::new(source),
            })?;
        }
        Ok(Ranges {
            ranges,
            max: config.gateway.max_range_devices,
            provider,
            pin_store: pin_store.cloned(),
            known: RwLock::default(),
            clock: AtomicU64::new(0),
            inherited: Mutex::new(previous.map(Ranges::hand_over).unwrap_or_default()),
        })
    }

    /// What this generation leaves to the next: every known device, what it inherited itself
    /// and has not used yet while sessions are open on it, and the rest of that while there is
    /// room (at most `gateway.max_range_devices` idle ones in all).
    fn hand_over(&self) -> HashMap<IpAddr, Inherited> {
        let mut left: HashMap<IpAddr, Inherited> = HashMap::new();
        for (ip, known) in read(&self.known).iter() {
            let device = &known.device;
            left.insert(
                *ip,
                Inherited {
                    status: device.status.clone(),
                    limit: device.limit.clone(),
                    max_connections: device.settings.max_connections,
                },
            );
        }
        let inherited = lock(&self.inherited);
        let (open, idle): (Vec<_>, Vec<_>) = inherited
            .iter()
            .filter(|(ip, _)| !left.contains_key(*ip))
            .partition(|(_, i)| i.status.open_connections() > 0);
        for (ip, unused) in open {
            left.insert(*ip, unused.clone());
        }
        for (ip, unused) in idle {
            if left.len() >= self.max {
                break;
            }
            left.insert(*ip, unused.clone());
        }
        left
    }

    /// The range `ip` is in (the most specific), if any.
    pub fn range_of(&self, ip: IpAddr) -> Option<&RangeSettings> {
        self.ranges.iter().find(|r| r.cidr.contains(ip))
    }

    /// The device at `ip`: the known one, or one made now. `None` when `ip` is in no range.
    pub fn device(&self, ip: IpAddr) -> Result<Option<Arc<Device>>, RangeError> {
        let ip = ip.to_canonical();
        let Some(range) = self.range_of(ip) else {
            return Ok(None);
        };
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(known) = read(&self.known).get(&ip) {
            known.last_used.store(now, Ordering::Relaxed);
            return Ok(Some(known.device.clone()));
        }
        // Built outside the lock: a TLS client takes some microseconds, and other connections
        // are routed meanwhile.
        let settings = range.device(ip);
        let connector =
            connector(&settings, &self.provider, self.pin_store.as_ref()).map_err(|source| {
                RangeError::Device {
                    ip,
                    cidr: range.cidr,
                    source: Box::new(source),
                }
            })?;
        let mut known = write(&self.known);
        if let Some(known) = known.get(&ip) {
            // Another connection made it first.
            known.last_used.store(now, Ordering::Relaxed);
            return Ok(Some(known.device.clone()));
        }
        if known.len() >= self.max {
            forget_least_recently_used(&mut known).ok_or(RangeError::Full { ip, max: self.max })?;
        }
        let device = Arc::new(self.make(range, ip, settings, connector));
        known.insert(
            ip,
            Known {
                device: device.clone(),
                last_used: AtomicU64::new(now),
            },
        );
        tracing::debug!(device = %ip, range = %range.cidr, known = known.len(), "range device made");
        Ok(Some(device))
    }

    fn make(
        &self,
        range: &RangeSettings,
        ip: IpAddr,
        settings: DeviceSettings,
        connector: Connector,
    ) -> Device {
        let inherited = lock(&self.inherited).remove(&ip);
        let limit = match &inherited {
            Some(old) if old.max_connections == settings.max_connections => old.limit.clone(),
            _ => Arc::new(Semaphore::new(settings.max_connections)),
        };
        Device {
            pin_store: match settings.tls.trust {
                Trust::Tofu => self.pin_store.clone(),
                _ => None,
            },
            range: Some(range.cidr),
            settings,
            connector,
            limit,
            status: inherited.map(|old| old.status).unwrap_or_default(),
        }
    }

    /// The devices known now (for `/devices`), by address.
    pub fn known(&self) -> Vec<Arc<Device>> {
        let mut devices: Vec<Arc<Device>> = read(&self.known)
            .values()
            .map(|k| k.device.clone())
            .collect();
        devices.sort_by_key(|d| d.settings.host.to_string());
        devices
    }

    /// How many devices are known now.
    pub fn len(&self) -> usize {
        read(&self.known).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Forget the least recently used device no connection holds (a connection holds its
/// `Arc<Device>` from routing to close); `None` when every one is held.
fn forget_least_recently_used(known: &mut HashMap<IpAddr, Known>) -> Option<()> {
    let oldest = known
        .iter()
        .filter(|(_, k)| Arc::strong_count(&k.device) == 1)
        .min_by_key(|(_, k)| k.last_used.load(Ordering::Relaxed))
        .map(|(ip, _)| *ip)?;
    known.remove(&oldest);
    tracing::debug!(device = %oldest, "range device forgotten to make room (gateway.max_range_devices)");
    Some(())
}

// A panic while holding one of these locks cannot leave the maps half-changed (every change is
// one insert or remove), so a poisoned lock is used as it is.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::Config;

    /// A config whose wsman service routes by original destination, with `ranges` (TOML) and
    /// at most `max` range devices. Every range trusts by CA (no pin store needed).
    fn config(max: usize, ranges: &str) -> Config {
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let toml = format!(
            r#"
[gateway]
max_range_devices = {max}

[services.wsman]
routing = "redirect"
listen_port = 0

[services.redirection]
enabled = false

[services.dash]
enabled = false

[defaults]
trust = "ca"
ca_file = "ca.pem"

{ranges}
"#
        );
        Config::from_toml("range test", dir.path(), &toml).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn one_range(max: usize) -> Ranges {
        Ranges::new(
            &config(max, "[[ranges]]\ncidr = \"192.0.2.0/24\""),
            None,
            None,
        )
        .unwrap()
    }

    #[test]
    fn an_address_in_a_range_is_a_device_named_by_it_and_made_once() {
        let ranges = one_range(8);
        let device = ranges.device(ip("192.0.2.7")).unwrap().unwrap();
        assert_eq!(device.name(), "192.0.2.7");
        assert_eq!(device.range.unwrap().to_string(), "192.0.2.0/24");
        assert_eq!(device.settings.port(crate::Service::Wsman), 16993);
        let again = ranges.device(ip("192.0.2.7")).unwrap().unwrap();
        assert!(Arc::ptr_eq(&device, &again), "its TLS client is built once");
        // An IPv4-mapped IPv6 address is the same device.
        let mapped = ranges.device(ip("::ffff:192.0.2.7")).unwrap().unwrap();
        assert!(Arc::ptr_eq(&device, &mapped));
        assert_eq!(ranges.len(), 1);
    }

    #[test]
    fn an_address_outside_every_range_is_no_device() {
        let ranges = one_range(8);
        assert!(ranges.device(ip("192.0.3.1")).unwrap().is_none());
        assert!(ranges.device(ip("2001:db8::1")).unwrap().is_none());
        assert!(ranges.is_empty());
    }

    #[test]
    fn the_most_specific_range_wins() {
        let ranges = Ranges::new(
            &config(
                8,
                "[[ranges]]\ncidr = \"192.0.2.0/24\"\n\n[[ranges]]\ncidr = \"192.0.2.128/25\"\nmax_connections = 3",
            ),
            None,
            None,
        )
        .unwrap();
        let inner = ranges.device(ip("192.0.2.200")).unwrap().unwrap();
        assert_eq!(inner.settings.max_connections, 3);
        assert_eq!(inner.range.unwrap().to_string(), "192.0.2.128/25");
        let outer = ranges.device(ip("192.0.2.100")).unwrap().unwrap();
        assert_eq!(outer.settings.max_connections, 8);
    }

    #[test]
    fn at_the_cap_the_least_recently_used_device_without_a_connection_is_forgotten() {
        let ranges = one_range(2);
        let held = ranges.device(ip("192.0.2.1")).unwrap().unwrap();
        let idle = Arc::downgrade(&ranges.device(ip("192.0.2.2")).unwrap().unwrap());
        // .1 is the least recently used, but a connection holds it: .2 goes instead.
        ranges.device(ip("192.0.2.3")).unwrap().unwrap();
        assert_eq!(ranges.len(), 2);
        let known: Vec<String> = ranges.known().iter().map(|d| d.name().to_owned()).collect();
        assert_eq!(known, ["192.0.2.1", "192.0.2.3"]);
        assert!(
            idle.upgrade().is_none(),
            "nothing holds the forgotten device any more"
        );
        drop(held);
    }

    #[test]
    fn with_every_kept_device_busy_a_new_one_is_refused() {
        let ranges = one_range(1);
        let _held = ranges.device(ip("192.0.2.1")).unwrap().unwrap();
        let refused = ranges.device(ip("192.0.2.2")).err().unwrap();
        assert!(
            matches!(refused, RangeError::Full { max: 1, .. }),
            "{refused}"
        );
    }

    #[test]
    fn a_reload_applies_new_range_settings_and_keeps_status_and_unchanged_limits() {
        let before = one_range(8);
        let device = before.device(ip("192.0.2.1")).unwrap().unwrap();
        let other = before.device(ip("192.0.2.2")).unwrap().unwrap();
        let _open = device.status.open_guard();

        // Same limits: the semaphore is handed over, so open sessions keep counting.
        let same = Ranges::new(
            &config(8, "[[ranges]]\ncidr = \"192.0.2.0/24\""),
            None,
            Some(&before),
        )
        .unwrap();
        let after = same.device(ip("192.0.2.1")).unwrap().unwrap();
        assert!(
            !Arc::ptr_eq(&device, &after),
            "rebuilt with the new settings"
        );
        assert!(Arc::ptr_eq(&device.limit, &after.limit));
        assert!(Arc::ptr_eq(&device.status, &after.status));
        assert_eq!(after.status.open_connections(), 1);

        // Changed limits apply to the next connection; the status stays.
        let changed = Ranges::new(
            &config(
                8,
                "[[ranges]]\ncidr = \"192.0.2.0/24\"\nmax_connections = 2",
            ),
            None,
            Some(&same),
        )
        .unwrap();
        let changed_device = changed.device(ip("192.0.2.2")).unwrap().unwrap();
        assert_eq!(changed_device.settings.max_connections, 2);
        assert!(!Arc::ptr_eq(&other.limit, &changed_device.limit));
        assert!(Arc::ptr_eq(&other.status, &changed_device.status));
        // 192.0.2.2 was handed to `same`, unused there, and on to `changed`; 192.0.2.1 came
        // from `same`'s known ones.
        let again = changed.device(ip("192.0.2.1")).unwrap().unwrap();
        assert!(Arc::ptr_eq(&device.status, &again.status));

        // A range removed: its addresses are no device's any more.
        let removed = Ranges::new(
            &config(8, "[[ranges]]\ncidr = \"198.51.100.0/24\""),
            None,
            Some(&changed),
        )
        .unwrap();
        assert!(removed.device(ip("192.0.2.1")).unwrap().is_none());
    }
}
