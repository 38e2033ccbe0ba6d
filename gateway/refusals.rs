//! Log volume under a flood: connections refused before any device was contacted are logged
//! one line each only for the first of their service and reason in every interval; the rest are
//! counted (in the metrics, as always) and summarised in one line per interval.
//!
//! A flood of 400,000 refused connections so writes a few lines a minute instead of 400,000,
//! while every connection that reached a device keeps its own summary line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::reason::Reason;
use crate::service::Service;

/// How often suppressed refusals are summarised.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

const REASONS: usize = Reason::ALL.len();

/// Refusals in the current interval, per service and reason.
pub(crate) struct Refusals {
    counts: [[AtomicU64; REASONS]; Service::ALL.len()],
}

impl Default for Refusals {
    fn default() -> Refusals {
        Refusals {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl Refusals {
    /// Count a refusal; true when it is the first of its service and reason in this interval
    /// and should be logged on its own line.
    pub(crate) fn count(&self, service: Service, reason: Reason) -> bool {
        self.counts[service.index()][reason.index()].fetch_add(1, Ordering::Relaxed) == 0
    }

    /// Log one line per service and reason with refusals not logged one by one, and start a new
    /// interval.
    pub(crate) fn summarise(&self, interval: Duration) {
        for service in Service::ALL {
            for &reason in Reason::ALL {
                let refused =
                    self.counts[service.index()][reason.index()].swap(0, Ordering::Relaxed);
                if refused > 1 {
                    tracing::warn!(
                        service = service.as_str(),
                        outcome = reason.as_str(),
                        refused,
                        not_logged = refused - 1,
                        interval_s = interval.as_secs(),
                        "connections refused; only the first was logged on its own line"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_refusal_of_a_kind_per_interval_is_logged_alone() {
        let refusals = Refusals::default();
        assert!(refusals.count(Service::Wsman, Reason::Limit));
        assert!(!refusals.count(Service::Wsman, Reason::Limit));
        assert!(
            refusals.count(Service::Wsman, Reason::NoRoute),
            "another reason"
        );
        assert!(
            refusals.count(Service::Dash, Reason::Limit),
            "another service"
        );
        refusals.summarise(INTERVAL);
        assert!(
            refusals.count(Service::Wsman, Reason::Limit),
            "a new interval"
        );
    }
}
