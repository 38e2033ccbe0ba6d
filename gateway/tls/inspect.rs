//! What an operator wants to know about a presented certificate: who it names, who issued it,
//! when it expires, and its pins.

use rustls_pki_types::CertificateDer;
use serde::Serialize;

use super::Fingerprints;

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
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let fingerprints = Fingerprints::of(cert)?;
        let validity = parsed.validity();
        Some(CertificateSummary {
            subject: parsed.subject().to_string(),
            issuer: parsed.issuer().to_string(),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            self_signed: parsed.subject() == parsed.issuer(),
            ca: parsed.is_ca(),
            certificate_pin: fingerprints.certificate.to_string(),
            public_key_pin: fingerprints.public_key.to_string(),
        })
    }
}

/// The notAfter of a certificate, in unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}
