//! The signature algorithms amtgw verifies device certificates and handshakes with.
//!
//! AMT firmware generates "2048-bit" RSA keys whose modulus is sometimes 2047 bits (nmap
//! reports "rsa 2047" on AMT 7; MeshCentral issue 6565). aws-lc-rs counts the modulus in bits
//! and refuses anything under 2048, so such a device failed every handshake with
//! `BadSignature`. ring counts the modulus in whole bytes before its 2048-bit check, so it
//! accepts 2041..=2048-bit moduli and still refuses 2040 bits and less (1024-bit keys
//! included). RSA verification therefore goes through ring; ECDSA and Ed25519 stay on
//! aws-lc-rs, rustls' default provider. Everything else (key exchange, ciphers, signing of the
//! client certificate) is aws-lc-rs.

use rustls::SignatureScheme;
use rustls::crypto::WebPkiSupportedAlgorithms;
use webpki::aws_lc_rs as aws;
use webpki::ring;

/// The same schemes as rustls' aws-lc-rs provider offers for TLS 1.2 and 1.3 (less ML-DSA,
/// which no AMT firmware uses), with RSA verified by ring.
pub(super) static SIGNATURE_ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        aws::ECDSA_P256_SHA256,
        aws::ECDSA_P256_SHA384,
        aws::ECDSA_P256_SHA512,
        aws::ECDSA_P384_SHA256,
        aws::ECDSA_P384_SHA384,
        aws::ECDSA_P384_SHA512,
        aws::ECDSA_P521_SHA256,
        aws::ECDSA_P521_SHA384,
        aws::ECDSA_P521_SHA512,
        aws::ED25519,
        ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        ring::RSA_PKCS1_2048_8192_SHA256,
        ring::RSA_PKCS1_2048_8192_SHA384,
        ring::RSA_PKCS1_2048_8192_SHA512,
        ring::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
        ring::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
        ring::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    ],
    mapping: &[
        // For TLS 1.2 the curve is not fixed by the scheme; for TLS 1.3 it is.
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[
                aws::ECDSA_P384_SHA384,
                aws::ECDSA_P256_SHA384,
                aws::ECDSA_P521_SHA384,
            ],
        ),
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[
                aws::ECDSA_P256_SHA256,
                aws::ECDSA_P384_SHA256,
                aws::ECDSA_P521_SHA256,
            ],
        ),
        (
            SignatureScheme::ECDSA_NISTP521_SHA512,
            &[
                aws::ECDSA_P521_SHA512,
                aws::ECDSA_P384_SHA512,
                aws::ECDSA_P256_SHA512,
            ],
        ),
        (SignatureScheme::ED25519, &[aws::ED25519]),
        (
            SignatureScheme::RSA_PSS_SHA512,
            &[ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA384,
            &[ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA256,
            &[ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA512,
            &[ring::RSA_PKCS1_2048_8192_SHA512],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA384,
            &[ring::RSA_PKCS1_2048_8192_SHA384],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA256,
            &[ring::RSA_PKCS1_2048_8192_SHA256],
        ),
    ],
};

#[cfg(test)]
mod tests {
    use openssl::hash::MessageDigest;
    use openssl::pkey::{PKey, Private};
    use openssl::rsa::Padding;
    use openssl::sign::{RsaPssSaltlen, Signer};
    use rustls::DigitallySignedStruct;
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature};
    use rustls::internal::msgs::codec::{Codec, Reader};
    use rustls_pki_types::CertificateDer;

    use super::*;
    use crate::tls::test_keys::rsa_device;

    fn signed(
        key: &PKey<Private>,
        scheme: SignatureScheme,
        message: &[u8],
    ) -> DigitallySignedStruct {
        let mut signer = Signer::new(MessageDigest::sha256(), key).unwrap();
        if scheme == SignatureScheme::RSA_PSS_SHA256 {
            signer.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
            signer
                .set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)
                .unwrap();
        }
        let signature = signer.sign_oneshot_to_vec(message).unwrap();
        // DigitallySignedStruct has no public constructor: decode it from its wire form.
        let mut wire = Vec::new();
        scheme.encode(&mut wire);
        (signature.len() as u16).encode(&mut wire);
        wire.extend_from_slice(&signature);
        DigitallySignedStruct::read(&mut Reader::init(&wire)).unwrap()
    }

    fn verifies(algorithms: &WebPkiSupportedAlgorithms, bits: u32) -> [bool; 3] {
        let (key, cert) = rsa_device(bits);
        let cert = CertificateDer::from(cert.to_der().unwrap());
        let message = b"handshake transcript";
        let pkcs1 = signed(&key, SignatureScheme::RSA_PKCS1_SHA256, message);
        let pss = signed(&key, SignatureScheme::RSA_PSS_SHA256, message);
        [
            verify_tls12_signature(message, &cert, &pkcs1, algorithms).is_ok(),
            verify_tls12_signature(message, &cert, &pss, algorithms).is_ok(),
            verify_tls13_signature(message, &cert, &pss, algorithms).is_ok(),
        ]
    }

    /// The firmware's 2047-bit "2048-bit" key: TLS 1.2 with PKCS#1 and PSS, TLS 1.3 (PSS).
    #[test]
    fn a_2047_bit_rsa_key_verifies_under_tls12_and_tls13() {
        assert_eq!(verifies(&SIGNATURE_ALGORITHMS, 2047), [true; 3]);
    }

    /// What the device failed with before: aws-lc-rs' own RSA algorithms refuse the key.
    #[test]
    fn aws_lc_rs_alone_refuses_a_2047_bit_key() {
        let stock = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        assert_eq!(verifies(&stock, 2047), [false; 3]);
    }

    #[test]
    fn rsa_keys_of_2040_bits_or_less_stay_refused() {
        assert_eq!(verifies(&SIGNATURE_ALGORITHMS, 1024), [false; 3]);
        assert_eq!(verifies(&SIGNATURE_ALGORITHMS, 2040), [false; 3]);
    }

    #[test]
    fn common_rsa_sizes_verify() {
        assert_eq!(verifies(&SIGNATURE_ALGORITHMS, 2048), [true; 3]);
        assert_eq!(verifies(&SIGNATURE_ALGORITHMS, 3072), [true; 3]);
    }
}
