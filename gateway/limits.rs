//! Per-source connection limits: one console address cannot take more than its share of the
//! gateway, or of one device.
//!
//! Counts live only while connections are open (an entry goes when its last connection
//! closes), so memory is bounded by the open connections, not by how many addresses ever
//! connected. They are touched twice per connection, never on the per-byte path.

use std::net::IpAddr;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// Whom a limit counts: an IPv4 address, or an IPv6 /64 (one host's, or one LAN's, share of
/// addresses: an IPv6 host can pick new addresses inside its /64 at will).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(prefix.into()))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Open connections per source.
#[derive(Debug, Default)]
pub struct SourceCounts {
    open: DashMap<Source, usize>,
}

impl SourceCounts {
    /// Count one more connection from `source` unless it already has `max` open.
    pub fn try_enter(&self, source: Source, max: usize) -> Option<SourceGuard<'_>> {
        let mut open = self.open.entry(source).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(SourceGuard {
            counts: self,
            source,
        })
    }

    /// Connections open from `source` now.
    #[cfg(test)]
    fn open(&self, source: Source) -> usize {
        self.open.get(&source).map_or(0, |n| *n)
    }

    /// Sources with a connection open now.
    #[cfg(test)]
    fn sources(&self) -> usize {
        self.open.len()
    }
}

/// One counted connection; dropping it uncounts it.
#[derive(Debug)]
pub struct SourceGuard<'a> {
    counts: &'a SourceCounts,
    source: Source,
}

impl Drop for SourceGuard<'_> {
    fn drop(&mut self) {
        if let Entry::Occupied(mut open) = self.counts.open.entry(self.source) {
            *open.get_mut() -= 1;
            if *open.get() == 0 {
                open.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_at_most_its_share_and_its_entry_goes_with_its_last_connection() {
        let counts = SourceCounts::default();
        let (a, b) = (
            Source::of("192.0.2.1".parse().unwrap()),
            Source::of("192.0.2.2".parse().unwrap()),
        );
        let first = counts.try_enter(a, 2).unwrap();
        let second = counts.try_enter(a, 2).unwrap();
        assert!(counts.try_enter(a, 2).is_none(), "a third is refused");
        assert!(counts.try_enter(b, 2).is_some(), "another source is not");
        drop(first);
        let third = counts.try_enter(a, 2).unwrap();
        drop((second, third));
        assert_eq!(counts.open(a), 0);
        assert_eq!(counts.sources(), 0, "no entry outlives its connections");
    }

    #[test]
    fn ipv6_sources_count_by_64_and_mapped_ipv4_as_ipv4() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_lan: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_lan: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(one), Source::of(same_lan));
        assert_ne!(Source::of(one), Source::of(other_lan));
        assert_eq!(Source::of(one).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of("192.0.2.7".parse().unwrap()));
    }
}
