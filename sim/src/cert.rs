//! A TLS identity shaped like the one AMT firmware generates for itself.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use openssl::asn1::{Asn1Integer, Asn1Time, Asn1Type};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, PKeyRef, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use openssl::x509::{X509, X509Name, X509NameBuilder};
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

/// The key pair the firmware generates (`--key-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// What nmap reports as "rsa 2047" on AMT 7: a "2048-bit" key whose modulus has a zero top
    /// bit, which aws-lc-rs refuses.
    Rsa2047,
    Rsa2048,
    /// AMT 22's key generation (RSA-2K is disallowed there).
    Rsa3072,
    P256,
    /// AMT 22's ECC alternative.
    P384,
}

impl KeyType {
    fn generate(self) -> Result<PKey<Private>, ErrorStack> {
        match self {
            Self::Rsa2047 => PKey::from_rsa(Rsa::generate(2047)?),
            Self::Rsa2048 => PKey::from_rsa(Rsa::generate(2048)?),
            Self::Rsa3072 => PKey::from_rsa(Rsa::generate(3072)?),
            Self::P256 => ec_key(Nid::X9_62_PRIME256V1),
            Self::P384 => ec_key(Nid::SECP384R1),
        }
    }

    /// The certificate's signature hash: SHA-384 to match a P-384 key's strength.
    fn digest(self) -> MessageDigest {
        match self {
            Self::P384 => MessageDigest::sha384(),
            _ => MessageDigest::sha256(),
        }
    }
}

fn ec_key(curve: Nid) -> Result<PKey<Private>, ErrorStack> {
    let group = EcGroup::from_curve_name(curve)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

/// What a key is, as the startup line names it: "RSA 2047", "ECDSA P-384". From the key
/// itself, since a provided one may be of any type and size.
pub(crate) fn describe_key(key: &PKeyRef<Private>) -> String {
    match key.id() {
        Id::RSA => format!("RSA {}", key.bits()),
        Id::EC => format!("ECDSA P-{}", key.bits()),
        other => format!("{other:?} {}", key.bits()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("key generation failed: {0}")]
    KeyGeneration(#[source] ErrorStack),
    #[error("certificate signing failed: {0}")]
    Signing(#[source] ErrorStack),
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

/// Generates a fresh key of `key_type` and a self-signed certificate like the firmware's.
/// `ca_true` adds basicConstraints CA:TRUE and keyCertSign, which some firmware sets and which
/// WebPKI refuses for an end entity. OpenSSL, not rcgen, because rcgen (aws-lc-rs) can neither
/// generate nor sign with a 2047-bit RSA key.
pub fn generate_amt_identity(
    key_type: KeyType,
    ca_true: bool,
    style: CertStyle,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CertError> {
    let key = key_type.generate().map_err(CertError::KeyGeneration)?;
    let cert = self_signed(&key, key_type, ca_true, style).map_err(CertError::Signing)?;
    let key_der = key
        .private_key_to_pkcs8()
        .map_err(CertError::KeyGeneration)?;
    Ok((
        CertificateDer::from(cert),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
    ))
}

fn self_signed(
    key: &PKey<Private>,
    key_type: KeyType,
    ca_true: bool,
    style: CertStyle,
) -> Result<Vec<u8>, ErrorStack> {
    let name = distinguished_name(style)?;
    let mut cert = X509::builder()?;
    cert.set_version(2)?;
    let serial = serial_from_spki(&key.public_key_to_der()?);
    let serial = BigNum::from_slice(&serial)?;
    cert.set_serial_number(Asn1Integer::from_bn(&serial)?.as_ref())?;
    cert.set_subject_name(&name)?;
    cert.set_issuer_name(&name)?;
    cert.set_pubkey(key)?;
    // The firmware falls back to 1/1/2020 when BIOS time is unset, which is
    // the common case on freshly provisioned machines.
    cert.set_not_before(Asn1Time::from_str("20200101000000Z")?.as_ref())?;
    cert.set_not_after(Asn1Time::from_str("20491231000000Z")?.as_ref())?;
    if ca_true {
        cert.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    }
    let mut usage = KeyUsage::new();
    usage.critical().digital_signature();
    // keyEncipherment is RSA key transport (the RSA key exchange suites); an EC key cannot do it.
    if key.id() == Id::RSA {
        usage.key_encipherment();
    }
    if ca_true {
        usage.key_cert_sign();
    }
    cert.append_extension(usage.build()?)?;
    cert.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    cert.sign(key, key_type.digest())?;
    cert.build().to_der()
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

fn distinguished_name(style: CertStyle) -> Result<X509Name, ErrorStack> {
    let mut dn = X509NameBuilder::new()?;
    match style {
        CertStyle::Unknown => {
            for field in [
                Nid::COMMONNAME,
                Nid::COUNTRYNAME,
                Nid::ORGANIZATIONNAME,
                Nid::ORGANIZATIONALUNITNAME,
                Nid::STATEORPROVINCENAME,
                Nid::LOCALITYNAME,
            ] {
                // With an explicit type: OpenSSL would otherwise enforce countryName's two
                // characters, which the firmware's "Unknown" does not have.
                dn.append_entry_by_nid_with_type(field, "Unknown", Asn1Type::UTF8STRING)?;
            }
        }
        CertStyle::IntelNamed => {
            dn.append_entry_by_nid(Nid::COMMONNAME, "Intel(R) AMT self-signed certificate")?;
            dn.append_entry_by_nid(Nid::ORGANIZATIONNAME, "Intel Corporation")?;
        }
    }
    Ok(dn.build())
}

/// First bytes of SHA-256(SPKI) with the top bit cleared, so the DER INTEGER
/// stays positive without a padding byte.
fn serial_from_spki(spki: &[u8]) -> [u8; SERIAL_LEN] {
    let hash = Sha256::digest(spki);
    let mut serial = [0u8; SERIAL_LEN];
    serial.copy_from_slice(&hash[..SERIAL_LEN]);
    serial[0] &= 0x7f;
    serial
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
        let (der, key) =
            generate_amt_identity(KeyType::Rsa2048, false, CertStyle::Unknown).unwrap();
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
        let (der, _) =
            generate_amt_identity(KeyType::Rsa2048, true, CertStyle::IntelNamed).unwrap();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "Intel(R) AMT self-signed certificate");
        let org = cert.issuer().iter_organization().next().unwrap();
        assert_eq!(org.as_str().unwrap(), "Intel Corporation");
        assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
    }

    #[test]
    fn each_key_type_generates_the_key_it_names() {
        for (key_type, id, bits) in [
            (KeyType::Rsa2047, Id::RSA, 2047),
            (KeyType::Rsa2048, Id::RSA, 2048),
            (KeyType::Rsa3072, Id::RSA, 3072),
            (KeyType::P256, Id::EC, 256),
            (KeyType::P384, Id::EC, 384),
        ] {
            let (der, _) = generate_amt_identity(key_type, false, CertStyle::Unknown).unwrap();
            let key = X509::from_der(der.as_ref()).unwrap().public_key().unwrap();
            assert_eq!((key.id(), key.bits()), (id, bits), "{key_type:?}");
        }
    }

    #[test]
    fn ec_certificate_claims_no_key_encipherment() {
        let (der, _) = generate_amt_identity(KeyType::P384, false, CertStyle::Unknown).unwrap();
        let (_, cert) = X509Certificate::from_der(der.as_ref()).unwrap();
        assert!(!cert.key_usage().unwrap().unwrap().value.key_encipherment());
    }
}
