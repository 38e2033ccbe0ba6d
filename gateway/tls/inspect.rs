//! What an operator wants to know about a presented certificate: who it names, who issued it,
//! when it expires, and its pins; and the clock and date format those answers use.

use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use x509_parser::time::ASN1Time;

use super::Pin;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertificateSummary {
    pub subject: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    pub self_signed: bool,
    pub ca: bool,
    pub certificate_pin: String,
    pub public_key_pin: String,
}

impl CertificateSummary {
    /// `None` when the DER is not an X.509 certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Option<CertificateSummary> {
        // One parse serves every field, the public-key pin included.
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let validity = parsed.validity();
        Some(CertificateSummary {
            subject: parsed.subject().to_string(),
            issuer: parsed.issuer().to_string(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            self_signed: parsed.subject() == parsed.issuer(),
            ca: parsed.is_ca(),
            certificate_pin: Pin::of_certificate(cert.as_ref()).to_string(),
            public_key_pin: Pin::of_public_key(parsed.tbs_certificate.subject_pki.raw).to_string(),
        })
    }
}

/// The notAfter of a certificate, in unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Now, in unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// RFC 3339 UTC, second precision (`2049-12-31T23:59:59Z`). The calendar arithmetic is the
/// `time` crate's, reached through x509-parser's `ASN1Time`, so no date code is duplicated
/// here; a time outside its range (beyond year 9999) is shown as unix seconds.
pub fn rfc3339(unix: i64) -> String {
    match ASN1Time::from_timestamp(unix) {
        Ok(time) => {
            let t = time.to_datetime();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        Err(_) => format!("@{unix}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339(2_524_607_999), "2049-12-31T23:59:59Z");
        assert_eq!(rfc3339(-86_400), "1969-12-31T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), format!("@{}", i64::MAX));
    }
}
