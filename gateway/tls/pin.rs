//! Certificate pins: SHA-256 of the whole DER certificate (the form AMT consoles store) or of
//! its SubjectPublicKeyInfo (survives re-issuing a certificate for the same key).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a pin is a digest of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinKind {
    /// SHA-256 of the DER certificate.
    Certificate,
    /// SHA-256 of the DER SubjectPublicKeyInfo.
    PublicKey,
}

/// One pinned digest.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin {
    kind: PinKind,
    digest: [u8; 32],
}

/// Why a pin string was rejected; the message says what the accepted forms are.
#[derive(Debug, thiserror::Error)]
#[error(
    "{0}; expected cert-sha256:<64 hex digits, colons allowed> or spki-sha256:<base64 or hex of 32 bytes>"
)]
pub struct PinParseError(&'static str);

const CERT_PREFIX: &str = "cert-sha256:";
const SPKI_PREFIX: &str = "spki-sha256:";

impl Pin {
    pub fn parse(text: &str) -> Result<Pin, PinParseError> {
        let text = text.trim();
        let (kind, value) = if let Some(v) = text.strip_prefix(CERT_PREFIX) {
            (PinKind::Certificate, v)
        } else if let Some(v) = text.strip_prefix(SPKI_PREFIX) {
            (PinKind::PublicKey, v)
        } else {
            return Err(PinParseError("unknown pin prefix"));
        };
        if value.is_empty() {
            return Err(PinParseError("pin value is empty"));
        }
        let digest = decode_hex(value)
            .or_else(|| match kind {
                PinKind::PublicKey => BASE64.decode(value).ok(),
                PinKind::Certificate => None,
            })
            .ok_or(PinParseError("pin value is neither hex nor base64"))?;
        let digest: [u8; 32] = digest
            .try_into()
            .map_err(|_| PinParseError("a SHA-256 pin must be 32 bytes long"))?;
        Ok(Pin { kind, digest })
    }

    /// The certificate pin of a DER certificate.
    pub fn of_certificate(cert_der: &[u8]) -> Pin {
        Pin {
            kind: PinKind::Certificate,
            digest: Sha256::digest(cert_der).into(),
        }
    }

    /// The public-key pin of a DER SubjectPublicKeyInfo.
    pub fn of_public_key(spki_der: &[u8]) -> Pin {
        Pin {
            kind: PinKind::PublicKey,
            digest: Sha256::digest(spki_der).into(),
        }
    }

    pub fn kind(&self) -> PinKind {
        self.kind
    }

    /// Constant-time comparison, so a remote peer learns nothing from response timing.
    pub(crate) fn ct_eq(&self, other: &Pin) -> bool {
        self.kind == other.kind && bool::from(self.digest.ct_eq(&other.digest))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PinKind::Certificate => {
                f.write_str(CERT_PREFIX)?;
                for b in self.digest {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            PinKind::PublicKey => write!(f, "{SPKI_PREFIX}{}", BASE64.encode(self.digest)),
        }
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Hex with optional `:` separators, as tools print fingerprints (`openssl x509 -fingerprint`).
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
    if !digits.len().is_multiple_of(2) || digits.is_empty() {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_pin_accepts_plain_and_colon_hex_in_either_case() {
        let pin = Pin::of_certificate(b"certificate");
        let hex = pin.to_string();
        let colon = hex
            .trim_start_matches(CERT_PREFIX)
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(Pin::parse(&hex).unwrap(), pin);
        assert_eq!(Pin::parse(&format!("{CERT_PREFIX}{colon}")).unwrap(), pin);
    }

    #[test]
    fn public_key_pin_round_trips_through_base64_and_hex() {
        let pin = Pin::of_public_key(b"spki");
        assert_eq!(Pin::parse(&pin.to_string()).unwrap(), pin);
        let hex: String = pin.digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Pin::parse(&format!("{SPKI_PREFIX}{hex}")).unwrap(), pin);
    }

    #[test]
    fn rejects_malformed_pins_with_the_reason() {
        for (text, reason) in [
            ("sha256:abcd", "unknown pin prefix"),
            ("cert-sha256:zz", "neither hex nor base64"),
            ("cert-sha256:abcd", "must be 32 bytes"),
            ("spki-sha256:", "pin value is empty"),
        ] {
            let err = Pin::parse(text).unwrap_err().to_string();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn kinds_never_match_each_other() {
        let cert = Pin::of_certificate(b"same bytes");
        let spki = Pin::of_public_key(b"same bytes");
        assert!(!cert.ct_eq(&spki));
        assert!(cert.ct_eq(&cert.clone()));
    }
}
