//! Serving a profile: the acceptor of its TLS library (rustls or OpenSSL) for one identity,
//! and the handshake. What follows the handshake is a byte stream either way.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use openssl::dh::Dh;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private};
use openssl::rsa::Padding;
use openssl::sign::RsaPssSaltlen;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, Signer, SigningKey, SingleCertAndKey};
use rustls::{
    RootCertStore, ServerConfig, SignatureAlgorithm, SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use tokio_rustls::TlsAcceptor;

use crate::cert::describe_key;
use crate::profile::{Backend, TlsVersion};
use crate::{CertStyle, KeyType, Profile, Tls12Signature};

/// Session IDs are only resumed within this context; OpenSSL refuses to resume without one
/// once client certificates are verified.
const SESSION_ID_CONTEXT: &[u8] = b"amtgw-sim";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("private key: {0}")]
    Key(#[source] ErrorStack),
    #[error("profile {profile} needs an RSA key (it has {key})")]
    ProfileNeedsRsa { profile: Profile, key: String },
    #[error("--tls12-signature needs an RSA key (it has {key})")]
    SignatureNeedsRsa { key: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("OpenSSL configuration: {0}")]
    OpenSsl(#[source] ErrorStack),
    #[error("provided identity has an empty certificate chain")]
    EmptyChain,
}

impl TlsError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Key(_) => "private_key",
            Self::ProfileNeedsRsa { .. } => "profile_needs_rsa",
            Self::SignatureNeedsRsa { .. } => "signature_needs_rsa",
            Self::Rustls(_) => "tls_config",
            Self::ClientVerifier(_) => "client_verifier",
            Self::OpenSsl(_) => "openssl_config",
            Self::EmptyChain => "empty_chain",
        }
    }
}

/// TLS settings that outlive one certificate.
pub(crate) struct TlsSettings {
    pub(crate) profile: Profile,
    /// What `unprovision` generates (the profile's, unless overridden).
    pub(crate) key_type: KeyType,
    pub(crate) client_auth_roots: Option<Vec<CertificateDer<'static>>>,
    pub(crate) tls12_only: bool,
    pub(crate) tls12_signature: Option<Tls12Signature>,
    /// The rest of what `unprovision` generates: the firmware always falls back to a
    /// self-signed certificate, even if a console had installed its own.
    pub(crate) regenerate: (bool, CertStyle),
}

/// One identity, ready to accept connections.
pub(crate) struct ServedIdentity {
    pub(crate) leaf: CertificateDer<'static>,
    /// "RSA 2047", "ECDSA P-384": for the startup line.
    pub(crate) key: String,
    pub(crate) acceptor: Acceptor,
}

pub(crate) enum Acceptor {
    Rustls(TlsAcceptor),
    OpenSsl(SslContext),
}

impl TlsSettings {
    /// The versions served: the profile's, without TLS 1.3 if `tls12_only` (the legacy
    /// profiles never have it).
    pub(crate) fn versions(&self) -> Vec<TlsVersion> {
        self.profile
            .versions()
            .iter()
            .copied()
            .filter(|v| !(self.tls12_only && *v == TlsVersion::Tls13))
            .collect()
    }

    pub(crate) fn build(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ServedIdentity, TlsError> {
        let leaf = chain.first().cloned().ok_or(TlsError::EmptyChain)?;
        let pkey = PKey::private_key_from_der(key.secret_der()).map_err(TlsError::Key)?;
        let described = describe_key(&pkey);
        let is_rsa = pkey.id() == Id::RSA;
        let backend = self.profile.backend();
        if backend == Backend::OpenSsl && !is_rsa {
            return Err(TlsError::ProfileNeedsRsa {
                profile: self.profile,
                key: described,
            });
        }
        if self.tls12_signature.is_some() && !is_rsa {
            return Err(TlsError::SignatureNeedsRsa { key: described });
        }
        let acceptor = match backend {
            Backend::Rustls => Acceptor::Rustls(self.rustls_acceptor(chain, key, pkey)?),
            Backend::OpenSsl => Acceptor::OpenSsl(
                self.openssl_context(&chain, &pkey)
                    .map_err(TlsError::OpenSsl)?,
            ),
        };
        Ok(ServedIdentity {
            leaf,
            key: described,
            acceptor,
        })
    }

    fn rustls_acceptor(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        pkey: PKey<Private>,
    ) -> Result<TlsAcceptor, TlsError> {
        // An explicit provider, so the simulator does not depend on (or fight over) the
        // process-wide default the gateway installs.
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(suites) = self.profile.suites() {
            provider
                .cipher_suites
                .retain(|s| s.suite().as_str().is_some_and(|n| suites.contains(&n)));
        }
        if let Some(groups) = self.profile.groups() {
            provider
                .kx_groups
                .retain(|g| g.name().as_str().is_some_and(|n| groups.contains(&n)));
        }
        let provider = Arc::new(provider);
        let versions: Vec<&'static SupportedProtocolVersion> = self
            .versions()
            .into_iter()
            .filter_map(|v| match v {
                TlsVersion::Tls12 => Some(&rustls::version::TLS12),
                TlsVersion::Tls13 => Some(&rustls::version::TLS13),
                TlsVersion::Tls10 | TlsVersion::Tls11 => None,
            })
            .collect();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)?;
        let builder = match &self.client_auth_roots {
            Some(roots) => {
                let mut store = RootCertStore::empty();
                for root in roots {
                    store.add(root.clone())?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        // aws-lc-rs refuses to sign with an RSA modulus under 2048 bits (the AMT 7 key), and
        // its signer offers every RSA scheme: OpenSSL signs in those cases.
        let config =
            if self.tls12_signature.is_some() || (pkey.id() == Id::RSA && pkey.bits() < 2048) {
                let signer = OpenSslRsaKey {
                    key: pkey,
                    tls12: self.tls12_signature,
                };
                builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(CertifiedKey::new(
                    chain,
                    Arc::new(signer),
                ))))
            } else {
                builder.with_single_cert(chain, key)?
            };
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    fn openssl_context(
        &self,
        chain: &[CertificateDer<'static>],
        key: &PKey<Private>,
    ) -> Result<SslContext, ErrorStack> {
        let mut ctx = SslContextBuilder::new(SslMethod::tls_server())?;
        let versions = self.versions();
        ctx.set_min_proto_version(versions.first().map(|v| ssl_version(*v)))?;
        ctx.set_max_proto_version(versions.last().map(|v| ssl_version(*v)))?;
        // OpenSSL 3 allows TLS 1.0/1.1 and SHA-1 MACs only at security level 0.
        ctx.set_security_level(0);
        let suites: Vec<&str> = self
            .profile
            .suites()
            .unwrap_or_default()
            .iter()
            .map(|iana| openssl::ssl::cipher_name(iana))
            .collect();
        ctx.set_cipher_list(&suites.join(":"))?;
        // No tickets: the server-side session cache (on by default) resumes by session ID,
        // as the rustls profiles do.
        ctx.set_options(SslOptions::CIPHER_SERVER_PREFERENCE | SslOptions::NO_TICKET);
        ctx.set_session_id_context(SESSION_ID_CONTEXT)?;
        // For amt12's DHE suite: the openssl crate does not expose OpenSSL 3's automatic DH
        // parameters, so the 2048-bit group of RFC 5114 it does ship.
        let dh = Dh::get_2048_256()?;
        ctx.set_tmp_dh(&dh)?;
        if let Some(signature) = self.tls12_signature {
            ctx.set_sigalgs_list(match signature {
                Tls12Signature::Pkcs1 => "rsa_pkcs1_sha256:rsa_pkcs1_sha384:rsa_pkcs1_sha512",
                Tls12Signature::Pss => {
                    "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512"
                }
            })?;
        }
        let mut certs = chain.iter().map(|der| X509::from_der(der.as_ref()));
        if let Some(leaf) = certs.next() {
            let leaf = leaf?;
            ctx.set_certificate(&leaf)?;
        }
        for intermediate in certs {
            ctx.add_extra_chain_cert(intermediate?)?;
        }
        ctx.set_private_key(key)?;
        ctx.check_private_key()?;
        if let Some(roots) = &self.client_auth_roots {
            for root in roots {
                let root = X509::from_der(root.as_ref())?;
                ctx.add_client_ca(&root)?;
                ctx.cert_store_mut().add_cert(root)?;
            }
            ctx.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        Ok(ctx.build())
    }
}

fn ssl_version(version: TlsVersion) -> SslVersion {
    match version {
        TlsVersion::Tls10 => SslVersion::TLS1,
        TlsVersion::Tls11 => SslVersion::TLS1_1,
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    }
}

pub(crate) async fn openssl_accept(
    ctx: &SslContext,
    tcp: TcpStream,
) -> io::Result<SslStream<TcpStream>> {
    let ssl = Ssl::new(ctx).map_err(io::Error::other)?;
    let mut stream = SslStream::new(ssl, tcp).map_err(io::Error::other)?;
    Pin::new(&mut stream)
        .accept()
        .await
        .map_err(io::Error::other)?;
    Ok(stream)
}

/// An RSA key that OpenSSL signs with, for the rustls profiles: any modulus size, and the
/// TLS 1.2 scheme family `--tls12-signature` asks for.
#[derive(Debug)]
struct OpenSslRsaKey {
    key: PKey<Private>,
    tls12: Option<Tls12Signature>,
}

/// An RSA signature scheme and how OpenSSL makes it.
#[derive(Debug)]
struct RsaScheme {
    scheme: SignatureScheme,
    /// A function: MessageDigest is not Debug.
    digest: fn() -> MessageDigest,
    pss: bool,
}

/// In rustls' own order: PSS first, stronger hash first.
static RSA_SCHEMES: [RsaScheme; 6] = [
    RsaScheme {
        scheme: SignatureScheme::RSA_PSS_SHA512,
        digest: MessageDigest::sha512,
        pss: true,
    },
    RsaScheme {
        scheme: SignatureScheme::RSA_PSS_SHA384,
        digest: MessageDigest::sha384,
        pss: true,
    },
    RsaScheme {
        scheme: SignatureScheme::RSA_PSS_SHA256,
        digest: MessageDigest::sha256,
        pss: true,
    },
    RsaScheme {
        scheme: SignatureScheme::RSA_PKCS1_SHA512,
        digest: MessageDigest::sha512,
        pss: false,
    },
    RsaScheme {
        scheme: SignatureScheme::RSA_PKCS1_SHA384,
        digest: MessageDigest::sha384,
        pss: false,
    },
    RsaScheme {
        scheme: SignatureScheme::RSA_PKCS1_SHA256,
        digest: MessageDigest::sha256,
        pss: false,
    },
];

impl SigningKey for OpenSslRsaKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        // rustls removes PKCS#1 schemes from what a TLS 1.3 client offered before asking, so
        // only a TLS 1.2 handshake gets here with one (and every TLS 1.2 client offers them).
        let tls12 = RSA_SCHEMES
            .iter()
            .any(|rsa| !rsa.pss && offered.contains(&rsa.scheme));
        let allowed = |pss: bool| match (tls12, self.tls12) {
            (false, _) | (true, Some(Tls12Signature::Pss)) => pss,
            (true, Some(Tls12Signature::Pkcs1)) => !pss,
            (true, None) => true,
        };
        let rsa = RSA_SCHEMES
            .iter()
            .find(|rsa| allowed(rsa.pss) && offered.contains(&rsa.scheme))?;
        Some(Box::new(OpenSslRsaSigner {
            key: self.key.clone(),
            rsa,
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::RSA
    }
}

#[derive(Debug)]
struct OpenSslRsaSigner {
    key: PKey<Private>,
    rsa: &'static RsaScheme,
}

impl OpenSslRsaSigner {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, ErrorStack> {
        let digest = (self.rsa.digest)();
        let mut signer = openssl::sign::Signer::new(digest, &self.key)?;
        if self.rsa.pss {
            signer.set_rsa_padding(Padding::PKCS1_PSS)?;
            signer.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
            signer.set_rsa_mgf1_md(digest)?;
        } else {
            signer.set_rsa_padding(Padding::PKCS1)?;
        }
        signer.sign_oneshot_to_vec(message)
    }
}

impl Signer for OpenSslRsaSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.try_sign(message)
            .map_err(|e| rustls::Error::General(format!("OpenSSL RSA signing: {e}")))
    }

    fn scheme(&self) -> SignatureScheme {
        self.rsa.scheme
    }
}
