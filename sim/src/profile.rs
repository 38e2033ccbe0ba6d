//! The firmware generations the simulator imitates (`--profile`): TLS versions, cipher suites,
//! the key the firmware generates and which TLS library can serve that. The evidence behind
//! each profile is in the README's profile table (the AMT protocol reference, §2 and §3).

use crate::KeyType;

/// A firmware generation's TLS behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Profile {
    /// AMT 7: TLS 1.0 and 1.1, static-RSA AES-CBC suites only, server preference, RSA 2047.
    Amt7,
    /// AMT 11: TLS 1.1 at most, static-RSA AES-CBC suites.
    Amt11,
    /// AMT 12: TLS 1.2 (and 1.1), RSA key exchange and DHE; no ECDHE.
    Amt12,
    /// CSME 16.1 and later: TLS 1.2 ECDHE-AEAD and TLS 1.3 (rustls' defaults).
    #[default]
    Amt16,
    /// AMT 22's crypto hardening: AES-256 suites only, P-384 key exchange, RSA-3072 key.
    Amt22,
}

/// The TLS library serving a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Rustls,
    /// For what rustls does not implement: TLS 1.0/1.1, RSA key exchange, DHE.
    OpenSsl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TlsVersion {
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Tls10 => "TLS 1.0",
            Self::Tls11 => "TLS 1.1",
            Self::Tls12 => "TLS 1.2",
            Self::Tls13 => "TLS 1.3",
        }
    }
}

impl Profile {
    /// The key the firmware generates for itself (and again on unprovisioning).
    pub fn default_key_type(self) -> KeyType {
        match self {
            Self::Amt7 => KeyType::Rsa2047,
            Self::Amt11 | Self::Amt12 | Self::Amt16 => KeyType::Rsa2048,
            Self::Amt22 => KeyType::Rsa3072,
        }
    }

    /// The firmware version the device reports (CIM_SoftwareIdentity, the `Server` header): a
    /// representative release of the generation. AMT 7.1.91 and 12.0.67 are versions seen in
    /// the field evidence; the others are plausible releases of their line.
    pub fn firmware_version(self) -> &'static str {
        match self {
            Self::Amt7 => "7.1.91",
            Self::Amt11 => "11.8.55",
            Self::Amt12 => "12.0.67",
            Self::Amt16 => "16.1.27",
            Self::Amt22 => "22.0.10",
        }
    }

    /// The build number CIM_SoftwareIdentity reports with the version.
    pub(crate) fn firmware_build(self) -> &'static str {
        match self {
            Self::Amt7 => "1037",
            Self::Amt11 => "3399",
            Self::Amt12 => "1579",
            Self::Amt16 => "2225",
            Self::Amt22 => "1162",
        }
    }

    pub(crate) fn backend(self) -> Backend {
        match self {
            Self::Amt7 | Self::Amt11 | Self::Amt12 => Backend::OpenSsl,
            Self::Amt16 | Self::Amt22 => Backend::Rustls,
        }
    }

    /// Every version the profile speaks, oldest first (OpenSSL takes the first and last as its
    /// range).
    pub(crate) fn versions(self) -> &'static [TlsVersion] {
        match self {
            Self::Amt7 | Self::Amt11 => &[TlsVersion::Tls10, TlsVersion::Tls11],
            // Intel: release 12.0 added TLS 1.2 and removed 1.0; 1.1 went with CSME 15/16.
            Self::Amt12 => &[TlsVersion::Tls11, TlsVersion::Tls12],
            Self::Amt16 | Self::Amt22 => &[TlsVersion::Tls12, TlsVersion::Tls13],
        }
    }

    /// The cipher suites by IANA name, the server's preference first; `None` keeps rustls'
    /// defaults.
    pub(crate) fn suites(self) -> Option<&'static [&'static str]> {
        match self {
            // The order nmap listed on an AMT 7.1.91 (MeshCentral#6565).
            Self::Amt7 => Some(&[
                "TLS_RSA_WITH_AES_256_CBC_SHA",
                "TLS_RSA_WITH_AES_128_CBC_SHA",
            ]),
            // DES-CBC3-SHA would belong here, but Debian's OpenSSL 3 is built without it.
            Self::Amt11 => Some(&[
                "TLS_RSA_WITH_AES_128_CBC_SHA",
                "TLS_RSA_WITH_AES_256_CBC_SHA",
            ]),
            // What Intel's DMT console had to add for AMT 11 and 12 (console#445), in its order.
            Self::Amt12 => Some(&[
                "TLS_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_RSA_WITH_AES_128_CBC_SHA",
                "TLS_RSA_WITH_AES_256_CBC_SHA",
                "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
            ]),
            Self::Amt16 => None,
            Self::Amt22 => Some(&[
                "TLS13_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            ]),
        }
    }

    /// The (EC)DHE groups of a rustls profile by name; `None` keeps rustls' defaults. AMT 22
    /// "disallows ECC-256", which leaves P-384 of the curves AMT is seen to use.
    pub(crate) fn groups(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Amt22 => Some(&["secp384r1"]),
            _ => None,
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Amt7 => "amt7",
            Self::Amt11 => "amt11",
            Self::Amt12 => "amt12",
            Self::Amt16 => "amt16",
            Self::Amt22 => "amt22",
        })
    }
}

/// How the device signs TLS 1.2 handshakes with an RSA key (`--tls12-signature`). TLS 1.3
/// always uses RSA-PSS (RFC 8446 forbids PKCS#1 v1.5 there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tls12Signature {
    /// RSA PKCS#1 v1.5 only.
    Pkcs1,
    /// RSA-PSS only.
    Pss,
}
