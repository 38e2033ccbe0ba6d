//! Certificate expiry: when a certificate the gateway depends on runs out, say so early.
//!
//! Client certificates are checked at every load; CA-validated device certificates at every
//! handshake (in the connection recorder). Inside `gateway.expiry_warning` a warning is
//! logged once per certificate and counted in `amtgw_certificates_expiring`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::tls;

/// Export each client certificate's expiry and warn about those inside the warning window.
pub(crate) fn record_client_certificates(metrics: &Metrics, config: &Config) {
    let mut files = BTreeMap::new();
    for identity in config
        .devices
        .iter()
        .filter_map(|d| d.tls.client_identity.as_ref())
    {
        if let Some(not_after) = identity.chain.first().and_then(crate::tls::not_after) {
            files.insert(identity.cert_path.display().to_string(), not_after);
        }
    }
    let mut expiring = 0;
    for (file, not_after) in &files {
        metrics.set_client_certificate_expiry(file, *not_after);
        if let Some(days) = expires_within(*not_after, config.gateway.expiry_warning) {
            expiring += 1;
            tracing::warn!(certificate = %file, days_left = days, "client certificate expires soon; devices in mutual-TLS mode will refuse it then");
        }
    }
    metrics.expiring("client").set(expiring);
}

/// Days left when `not_after` (unix seconds) falls within `window` from now (negative: expired).
pub(crate) fn expires_within(not_after: i64, window: Duration) -> Option<i64> {
    let left = not_after - tls::unix_now() as i64;
    (left < window.as_secs() as i64).then_some(left.div_euclid(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_the_window_gives_whole_days_left_and_negative_once_expired() {
        let now = tls::unix_now() as i64;
        let month = Duration::from_secs(30 * 86_400);
        assert_eq!(expires_within(now + 10 * 86_400 + 60, month), Some(10));
        assert_eq!(expires_within(now + 40 * 86_400, month), None);
        assert_eq!(expires_within(now - 3600, month), Some(-1));
    }
}
