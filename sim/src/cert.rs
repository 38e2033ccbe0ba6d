//! A TLS identity shaped like the one AMT firmware generates for itself.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256, PublicKeyData as _, RsaKeySize, SerialNumber,
    date_time_ymd,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest as _, Sha256};

/// Which firmware generation's subject the certificate imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertStyle {
    /// Intel's documentation: every DN field is "Unknown".
    #[default]
    Unknown,
    /// Seen on AMT 19: `CN=Intel(R) AMT self-signed certificate`, O/issuer
    /// "Intel Corporation".
    IntelNamed,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("RSA key generation failed: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    #[error("certificate signing failed: {0}")]
    Signing(#[source] rcgen::Error),
}

impl CertError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::KeyGeneration(_) => "key_generation",
            Self::Signing(_) => "cert_signing",
        }
    }
}

/// Length of the serial number taken from the public-key hash. Intel only says
/// "a hash of the public key"; 16 bytes stays well inside RFC 5280's 20.
const SERIAL_LEN: usize = 16;

/// Generates a fresh RSA-2048 key and a self-signed certificate like the
/// firmware's. `ca_true` adds basicConstraints CA:TRUE and keyCertSign, which
/// some firmware sets and which WebPKI refuses for an end entity.
pub fn generate_amt_identity(
    ca_true: bool,
    style: CertStyle,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CertError> {
    let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)
        .map_err(CertError::KeyGeneration)?;

    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(style);
    params.serial_number = Some(serial_from_spki(&key.subject_public_key_info()));
    // The firmware falls back to 1/1/2020 when BIOS time is unset, which is
    // the common case on freshly provisioned machines.
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2049, 12, 31);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    if ca_true {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages.push(KeyUsagePurpose::KeyCertSign);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

    let cert = params.self_signed(&key).map_err(CertError::Signing)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key_der))
}

/// A certificate's two pins as amtgw's configuration takes them: `cert-sha256:<hex>` (SHA-256
/// of the whole certificate, as `openssl x509 -fingerprint -sha256` prints it) and
/// `spki-sha256:<base64>` (of its public key). `None` when the DER is no X.509 certificate.
pub fn pins_of(cert: &CertificateDer<'_>) -> Option<(String, String)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let certificate: String = Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let public_key = BASE64.encode(Sha256::digest(parsed.tbs_certificate.subject_pki.raw));
    Some((
        format!("cert-sha256:{certificate}"),
        format!("spki-sha256:{public_key}"),
    ))
}

fn distinguished_name(style: CertStyle) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    match style {
        CertStyle::Unknown => {
            for field in [
                DnType::CommonName,
                DnType::CountryName,
                DnType::OrganizationName,
                DnType::OrganizationalUnitName,
                DnType::StateOrProvinceName,
                DnType::LocalityName,
            ] {
                dn.push(field, "Unknown");
            }
        }
        CertStyle::IntelNamed => {
            dn.push(DnType::CommonName, "Intel(R) AMT self-signed certificate");
            dn.push(DnType::OrganizationName, "Intel Corporation");
        }
    }
    dn
}

/// First bytes of SHA-256(SPKI) with the top bit cleared, so the DER INTEGER
/// stays positive without a padding byte.
fn serial_from_spki(spki: &[u8]) -> SerialNumber {
    let hash = Sha256::digest(spki);
    let mut serial = [0u8; SERIAL_LEN];
    serial.copy_from_slice(&hash[..SERIAL_LEN]);
    serial[0] &= 0x7f;
    SerialNumber::from_slice(&serial)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (project rule)
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn expected_serial(cert: &X509Certificate<'_>) -> Vec<u8> {
        let hash = Sha256::digest(cert.public_key().raw);
        let mut want = hash[..SERIAL_LEN].to_vec();
        want[0] &= 0x7f;
        // DER drops leading zero bytes of a positive INTEGER.
        while want.first() == Some(&0) {
            want.remove(0);
        }
        want
    }

    #[test]
    fn unknown_style_matches_intel_description() {
        let (der, key) = generate_amt_identity(false, CertStyle::Unknown).unwrap();
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();

        let attrs: Vec<_> = cert.subject().iter_attributes().collect();
        assert_eq!(attrs.len(), 6);
        for attr in attrs {
            assert_eq!(attr.as_str().unwrap(), "Unknown");
        }
        assert_eq!(cert.subject(), cert.issuer());

        match cert.public_key().parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 2048),
            other => panic!("not RSA: {other:?}"),
        }
        assert_eq!(cert.raw_serial(), expected_serial(&cert).as_slice());
        assert_eq!(cert.validity().not_before.timestamp(), 1_577_836_800);
        assert!(cert.validity().not_after.timestamp() > 2_500_000_000);

        let bc = cert.basic_constraints().unwrap();
        assert!(bc.is_none_or(|bc| !bc.value.ca));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        assert!(
            cert.extended_key_usage()
                .unwrap()
                .unwrap()
                .value
                .server_auth
        );
    }

    #[test]
    fn ca_true_and_intel_named() {
        let (der, _) = generate_amt_identity(true, CertStyle::IntelNamed).unwrap();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "Intel(R) AMT self-signed certificate");
        let org = cert.issuer().iter_organization().next().unwrap();
        assert_eq!(org.as_str().unwrap(), "Intel Corporation");
        assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
    }
}
