//! MD5 digest authentication as AMT uses it: RFC 2617 `qop="auth"` on HTTP
//! (WS-Man) and the same arithmetic inside the binary redirection protocol.

use std::collections::VecDeque;
use std::sync::Mutex;

use md5::{Digest as _, Md5};
use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

/// The request URI every redirection client puts into its digest; AMT hashes
/// `POST:/RedirectionService` whatever the transport.
pub(crate) const REDIRECTION_URI: &str = "/RedirectionService";
pub(crate) const REDIRECTION_METHOD: &str = "POST";
pub(crate) const QOP_AUTH: &str = "auth";

/// How many issued nonces stay acceptable. Consoles answer a challenge within
/// one round trip, so a short window is enough and bounds memory.
const NONCE_WINDOW: usize = 64;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DigestError {
    #[error("authorization scheme is not Digest")]
    NotDigest,
    #[error("malformed digest parameter list")]
    Malformed,
    #[error("digest field {0} missing")]
    MissingField(&'static str),
}

impl DigestError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::NotDigest => "not_digest",
            Self::Malformed => "malformed_digest",
            Self::MissingField(_) => "digest_field_missing",
        }
    }
}

pub(crate) fn md5_hex(data: &[u8]) -> String {
    hex_lower(&Md5::digest(data))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex_upper(len_bytes: usize) -> String {
    let mut bytes = vec![0u8; len_bytes];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A realm shaped like the firmware's (`Digest:` + 32 upper-case hex digits).
pub(crate) fn new_realm() -> String {
    format!("Digest:{}", random_hex_upper(16))
}

/// The fields of a digest response, whether they came from an HTTP
/// `Authorization` header or from a redirection AuthenticateSession message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct DigestFields {
    pub(crate) username: String,
    pub(crate) realm: String,
    pub(crate) nonce: String,
    pub(crate) uri: String,
    pub(crate) cnonce: String,
    pub(crate) nc: String,
    pub(crate) qop: String,
    pub(crate) response: String,
}

/// RFC 2617 with `qop=auth`: MD5(HA1:nonce:nc:cnonce:qop:HA2).
pub(crate) fn expected_response(fields: &DigestFields, password: &str, method: &str) -> String {
    let ha1 = md5_hex(format!("{}:{}:{password}", fields.username, fields.realm).as_bytes());
    let ha2 = md5_hex(format!("{method}:{}", fields.uri).as_bytes());
    md5_hex(
        format!(
            "{ha1}:{}:{}:{}:{}:{ha2}",
            fields.nonce, fields.nc, fields.cnonce, fields.qop
        )
        .as_bytes(),
    )
}

/// The credentials and challenge state a device checks digests against.
pub(crate) struct DigestVerifier<'a> {
    pub(crate) username: &'a str,
    pub(crate) password: &'a str,
    pub(crate) realm: &'a str,
    pub(crate) nonces: &'a NonceStore,
}

impl DigestVerifier<'_> {
    /// True when the response proves knowledge of the password for a nonce
    /// this device issued. Consoles differ in `nc` formatting, so `nc` is only
    /// hashed, never interpreted.
    pub(crate) fn verify(&self, fields: &DigestFields, method: &str, uri: &str) -> bool {
        if fields.username != self.username
            || fields.realm != self.realm
            || fields.uri != uri
            || fields.qop != QOP_AUTH
            || !self.nonces.contains(&fields.nonce)
        {
            return false;
        }
        let expected = expected_response(fields, self.password, method);
        // Case-insensitive hex; compared in constant time so timing does not
        // leak how much of the response was right.
        let given = fields.response.to_ascii_lowercase();
        expected.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

/// Recently issued nonces; a digest is accepted only for one of these.
pub(crate) struct NonceStore {
    recent: Mutex<VecDeque<String>>,
}

impl NonceStore {
    pub(crate) fn new() -> Self {
        Self {
            recent: Mutex::new(VecDeque::with_capacity(NONCE_WINDOW)),
        }
    }

    pub(crate) fn issue(&self) -> String {
        let nonce = random_hex_upper(16).to_ascii_lowercase();
        // A poisoned lock only means another connection panicked mid-push;
        // the deque itself is still consistent.
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == NONCE_WINDOW {
            recent.pop_front();
        }
        recent.push_back(nonce.clone());
        nonce
    }

    pub(crate) fn contains(&self, nonce: &str) -> bool {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().any(|n| n == nonce)
    }
}

/// Parses `Digest k=v, k="v", ...` (quoted or bare values, any order, any
/// case of the scheme) into the fields a device needs.
pub(crate) fn parse_authorization(value: &str) -> Result<DigestFields, DigestError> {
    let value = value.trim();
    let (scheme, params) = value.split_once(' ').ok_or(DigestError::NotDigest)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(DigestError::NotDigest);
    }
    let mut fields = DigestFields::default();
    let mut seen_response = false;
    let mut rest = params.trim_start();
    while !rest.is_empty() {
        let (key, after_key) = rest.split_once('=').ok_or(DigestError::Malformed)?;
        let key = key.trim().to_ascii_lowercase();
        let after_key = after_key.trim_start();
        let (val, after_val) = if let Some(quoted) = after_key.strip_prefix('"') {
            let end = quoted.find('"').ok_or(DigestError::Malformed)?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after_key.find(',').unwrap_or(after_key.len());
            (after_key[..end].trim_end(), &after_key[end..])
        };
        let slot = match key.as_str() {
            "username" => Some(&mut fields.username),
            "realm" => Some(&mut fields.realm),
            "nonce" => Some(&mut fields.nonce),
            "uri" => Some(&mut fields.uri),
            "cnonce" => Some(&mut fields.cnonce),
            "nc" => Some(&mut fields.nc),
            "qop" => Some(&mut fields.qop),
            "response" => {
                seen_response = true;
                Some(&mut fields.response)
            }
            _ => None,
        };
        if let Some(slot) = slot {
            *slot = val.to_owned();
        }
        let after_val = after_val.trim_start();
        rest = match after_val.strip_prefix(',') {
            Some(r) => r.trim_start(),
            None if after_val.is_empty() => after_val,
            None => return Err(DigestError::Malformed),
        };
    }
    for (name, value) in [
        ("username", &fields.username),
        ("nonce", &fields.nonce),
        ("uri", &fields.uri),
    ] {
        if value.is_empty() {
            return Err(DigestError::MissingField(name));
        }
    }
    if !seen_response {
        return Err(DigestError::MissingField("response"));
    }
    Ok(fields)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (project rule)
mod tests {
    use super::*;

    fn rfc2617_fields() -> DigestFields {
        DigestFields {
            username: "Mufasa".into(),
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            uri: "/dir/index.html".into(),
            cnonce: "0a4f113b".into(),
            nc: "00000001".into(),
            qop: "auth".into(),
            response: String::new(),
        }
    }

    #[test]
    fn rfc2617_example_vector() {
        assert_eq!(
            expected_response(&rfc2617_fields(), "Circle Of Life", "GET"),
            "6629fae49393a05397450978507c4ef1"
        );
    }

    #[test]
    fn parses_header_with_mixed_quoting() {
        let header = r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let fields = parse_authorization(header).unwrap();
        let mut want = rfc2617_fields();
        want.response = "6629fae49393a05397450978507c4ef1".into();
        assert_eq!(fields, want);
    }

    #[test]
    fn rejects_other_schemes_and_garbage() {
        assert!(matches!(
            parse_authorization("Basic YWRtaW46eA=="),
            Err(DigestError::NotDigest)
        ));
        assert!(parse_authorization("Digest username=\"unterminated").is_err());
        assert!(matches!(
            parse_authorization("Digest realm=\"x\""),
            Err(DigestError::MissingField("username"))
        ));
    }

    #[test]
    fn verifier_accepts_only_issued_nonces_and_right_password() {
        let nonces = NonceStore::new();
        let realm = new_realm();
        assert!(realm.starts_with("Digest:") && realm.len() == 7 + 32);
        let verifier = DigestVerifier {
            username: "admin",
            password: "pw",
            realm: &realm,
            nonces: &nonces,
        };
        let mut fields = DigestFields {
            username: "admin".into(),
            realm: realm.clone(),
            nonce: nonces.issue(),
            uri: "/wsman".into(),
            cnonce: "abc".into(),
            nc: "00000001".into(),
            qop: "auth".into(),
            response: String::new(),
        };
        fields.response = expected_response(&fields, "pw", "POST").to_ascii_uppercase();
        assert!(verifier.verify(&fields, "POST", "/wsman"));
        assert!(!verifier.verify(&fields, "POST", "/other"));
        let mut wrong = fields.clone();
        wrong.response = expected_response(&fields, "nope", "POST");
        assert!(!verifier.verify(&wrong, "POST", "/wsman"));
        let mut stale = fields.clone();
        stale.nonce = "0123".into();
        stale.response = expected_response(&stale, "pw", "POST");
        assert!(!verifier.verify(&stale, "POST", "/wsman"));
    }

    #[test]
    fn nonce_window_is_bounded() {
        let nonces = NonceStore::new();
        let first = nonces.issue();
        for _ in 0..NONCE_WINDOW {
            nonces.issue();
        }
        assert!(!nonces.contains(&first));
    }
}
