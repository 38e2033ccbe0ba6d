//! The last failed connections, for the status page (`GET /` on the admin listener): a small
//! ring buffer, written once per failed connection where its summary line is written, never
//! on the per-byte path.
//!
//! Memory is bounded: [`CAPACITY`] entries, each error text cut to [`MAX_ERROR_LEN`] bytes. The
//! lock is a plain mutex held only to push or copy, never across an await.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::reason::Reason;
use crate::service::Service;

/// How many failed connections the status page lists.
pub(crate) const CAPACITY: usize = 20;

/// Error texts name addresses and certificates; a longer one (a chain of nested causes) is
/// cut, so one entry stays small whatever the device sent.
pub(crate) const MAX_ERROR_LEN: usize = 400;

/// One failed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// Unix seconds.
    pub(crate) at: u64,
    pub(crate) service: Service,
    /// The device it was routed to; `None` when it failed before routing.
    pub(crate) device: Option<String>,
    pub(crate) reason: Reason,
    /// The summary line's `error`.
    pub(crate) error: String,
}

/// The last [`CAPACITY`] failed connections, oldest first.
#[derive(Default)]
pub(crate) struct RecentFailures {
    ring: Mutex<VecDeque<Failure>>,
}

impl RecentFailures {
    /// Keep `failure`, dropping the oldest once full.
    pub(crate) fn push(&self, mut failure: Failure) {
        if failure.error.len() > MAX_ERROR_LEN {
            let mut cut = MAX_ERROR_LEN;
            while !failure.error.is_char_boundary(cut) {
                cut -= 1;
            }
            failure.error.truncate(cut);
            failure.error.push('…');
        }
        // A poisoned lock only means a panic elsewhere while pushing: the ring is still a ring.
        let mut ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(failure);
    }

    /// The kept failures, newest first.
    pub(crate) fn newest_first(&self) -> Vec<Failure> {
        let ring = self
            .ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(at: u64, error: &str) -> Failure {
        Failure {
            at,
            service: Service::Wsman,
            device: Some("dut".to_owned()),
            reason: Reason::PinMismatch,
            error: error.to_owned(),
        }
    }

    #[test]
    fn keeps_the_last_capacity_failures_newest_first() {
        let recent = RecentFailures::default();
        for at in 0..(CAPACITY as u64 + 5) {
            recent.push(failure(at, "x"));
        }
        let kept: Vec<u64> = recent.newest_first().iter().map(|f| f.at).collect();
        let expected: Vec<u64> = (5..CAPACITY as u64 + 5).rev().collect();
        assert_eq!(kept, expected);
    }

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary() {
        let recent = RecentFailures::default();
        recent.push(failure(1, &"é".repeat(MAX_ERROR_LEN)));
        let kept = &recent.newest_first()[0].error;
        assert!(
            kept.len() <= MAX_ERROR_LEN + '…'.len_utf8(),
            "{}",
            kept.len()
        );
        assert!(kept.ends_with('…'));
    }
}
