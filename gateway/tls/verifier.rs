//! The verifiers for pinned and first-use trust.
//!
//! They replace three WebPKI checks (chain to a root, validity period, name) with a check of
//! the leaf's certificate or public-key SHA-256 (`LeafCheck`: configured pins, or the pin
//! stored on first use), and keep the fourth: the handshake signature is verified against the
//! leaf's key, so a peer must hold the pinned key. No WebPKI end-entity check runs: AMT
//! firmware marks its self-signed leaf CA:TRUE on some generations, which WebPKI rejects as an
//! end entity.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{Pin, TofuStore};

/// The fingerprints of a presented certificate, in both pin forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprints {
    pub certificate: Pin,
    pub public_key: Pin,
}

impl Fingerprints {
    /// `None` when the DER does not parse as an X.509 certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Option<Fingerprints> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        Some(Fingerprints {
            certificate: Pin::of_certificate(cert.as_ref()),
            public_key: Pin::of_public_key(parsed.tbs_certificate.subject_pki.raw),
        })
    }

    /// Whether any pin matches. Every pin is compared, so timing does not reveal which matched.
    pub fn match_any(&self, pins: &[Pin]) -> bool {
        pins.iter().fold(false, |matched, pin| {
            matched | pin.ct_eq(&self.certificate) | pin.ct_eq(&self.public_key)
        })
    }
}

/// The device presented a certificate matching none of its pins.
#[derive(Debug)]
pub struct PinMismatch {
    pub presented: Fingerprints,
    /// The pins it should have matched (configured, or stored on first use).
    pub expected: Vec<Pin>,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate matches no pin (presented {} / {}; expected ",
            self.presented.certificate, self.presented.public_key
        )?;
        for (i, pin) in self.expected.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            write!(f, "{pin}")?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for PinMismatch {}

fn mismatch(presented: Fingerprints, expected: Vec<Pin>) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PinMismatch {
        presented,
        expected,
    }))))
}

/// What a verifier checks of the presented leaf, in place of WebPKI's chain, validity and name
/// checks. Whatever the check, `LeafVerifier` verifies the handshake signature.
pub(crate) trait LeafCheck: fmt::Debug + Send + Sync {
    fn check(&self, presented: Fingerprints) -> Result<(), rustls::Error>;
}

/// A verifier that checks the leaf with `C` and the handshake signature against the leaf's
/// key, and runs no WebPKI end-entity check (AMT's self-signed leaf may be CA:TRUE).
#[derive(Debug)]
pub(crate) struct LeafVerifier<C> {
    check: C,
    algorithms: WebPkiSupportedAlgorithms,
    /// The last certificate seen and its fingerprints. A verifier serves one device, which
    /// presents the same certificate handshake after handshake: comparing bytes is cheaper
    /// than parsing and hashing it again (about a tenth of a full handshake's instructions).
    last_seen: ArcSwapOption<(CertificateDer<'static>, Fingerprints)>,
}

impl<C: LeafCheck> LeafVerifier<C> {
    pub(crate) fn new(check: C, algorithms: WebPkiSupportedAlgorithms) -> LeafVerifier<C> {
        LeafVerifier {
            check,
            algorithms,
            last_seen: ArcSwapOption::empty(),
        }
    }

    fn fingerprints(&self, presented: &CertificateDer<'_>) -> Option<Fingerprints> {
        if let Some(last) = self.last_seen.load().as_deref()
            && last.0.as_ref() == presented.as_ref()
        {
            return Some(last.1.clone());
        }
        let fingerprints = Fingerprints::of(presented)?;
        self.last_seen.store(Some(Arc::new((
            presented.clone().into_owned(),
            fingerprints.clone(),
        ))));
        Some(fingerprints)
    }
}

impl<C: LeafCheck> ServerCertVerifier for LeafVerifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = self
            .fingerprints(end_entity)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ))?;
        self.check
            .check(presented)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `trust = "pin"`: any configured pin matches.
#[derive(Debug)]
pub(crate) struct Pins(pub(crate) Vec<Pin>);

impl LeafCheck for Pins {
    fn check(&self, presented: Fingerprints) -> Result<(), rustls::Error> {
        if presented.match_any(&self.0) {
            Ok(())
        } else {
            Err(mismatch(presented, self.0.clone()))
        }
    }
}

/// `trust = "tofu"`: a device with a stored pin must match it. A device without one passes
/// *provisionally*: the pin is recorded only after the whole handshake has succeeded
/// (`upstream::connect`), so a peer that cannot prove possession of the key (the handshake
/// signature) never gets its certificate stored.
#[derive(Debug)]
pub(crate) struct FirstUse {
    pub(crate) device: String,
    pub(crate) store: TofuStore,
}

impl LeafCheck for FirstUse {
    fn check(&self, presented: Fingerprints) -> Result<(), rustls::Error> {
        match self.store.get(&self.device) {
            None => Ok(()),
            Some(stored) if stored.matches(&presented) => Ok(()),
            Some(stored) => Err(mismatch(
                presented,
                vec![stored.certificate, stored.public_key],
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    /// The remembered certificate is a cache of fingerprints, never of a verdict: a different
    /// certificate after a pinned one (and the pinned one after it) gets the full check.
    #[test]
    fn remembering_the_last_certificate_never_lets_another_one_through() {
        let (pinned, other) = (self_signed("amt-a"), self_signed("amt-b"));
        let verifier = LeafVerifier::new(
            Pins(vec![Pin::of_certificate(pinned.as_ref())]),
            super::super::provider().signature_verification_algorithms,
        );
        let name = ServerName::try_from("amt-a").unwrap();
        let verify = |cert: &CertificateDer<'_>| {
            verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        };
        for _ in 0..2 {
            assert!(verify(&pinned).is_ok());
            assert!(verify(&pinned).is_ok());
            let refused = verify(&other).unwrap_err();
            assert_eq!(
                super::super::HandshakeFailure::of(&refused),
                super::super::HandshakeFailure::PinMismatch
            );
        }
    }
}
