//! Why a console connection failed: the closed set of reasons, one name each.
//!
//! A reason is the `reason` label of `amtgw_connections_failed_total`, the `outcome` of the
//! summary line and of the outcome-labelled histograms, and the `result` of a device's last
//! handshake in `/devices`. The names are API: the README's reason table lists exactly
//! [`Reason::ALL`] (a test checks it), and a name never changes meaning.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

use crate::tls::HandshakeFailure;

macro_rules! reasons {
    ($($variant:ident => $name:literal,)+) => {
        /// Why a console connection failed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($variant,)+
        }

        impl Reason {
            /// Every reason, in the README's order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)+];

            /// The stable name used in logs and metric labels.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)+
                }
            }
        }
    };
}

reasons! {
    Limit => "limit",
    DeviceLimit => "device_limit",
    NoRoute => "no_route",
    Loop => "loop",
    BadRequest => "bad_request",
    HeadTooLarge => "head_too_large",
    HostMismatch => "host_mismatch",
    ResolveFailed => "resolve_failed",
    ConnectRefused => "connect_refused",
    ConnectUnreachable => "connect_unreachable",
    ConnectFailed => "connect_failed",
    ConnectTimeout => "connect_timeout",
    HandshakeTimeout => "handshake_timeout",
    PinMismatch => "pin_mismatch",
    NameMismatch => "name_mismatch",
    CertExpired => "cert_expired",
    CertInvalid => "cert_invalid",
    ClientCertRejected => "client_cert_rejected",
    TlsAlert => "tls_alert",
    TlsIncompatible => "tls_incompatible",
    TlsError => "tls_error",
    HandshakeFailed => "handshake_failed",
    NotTls => "not_tls",
    DeviceReset => "device_reset",
    VncAuthFailed => "vnc_auth_failed",
    AmtAuthFailed => "amt_auth_failed",
    KvmRefused => "kvm_refused",
    KvmProtocol => "kvm_protocol",
    PinStoreFailed => "pin_store_failed",
    SourceLimit => "source_limit",
    ProxyUntrusted => "proxy_untrusted",
    ProxyHeader => "proxy_header",
    ConsoleTimeout => "console_timeout",
    ConsoleClosed => "console_closed",
    ConsoleReset => "console_reset",
    IdleTimeout => "idle_timeout",
    Shutdown => "shutdown",
}

impl Reason {
    /// Position in [`Reason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Whether the connection was refused before any device was contacted, the kind of
    /// failure a flood produces by the thousand (see `refusals`).
    pub const fn is_refusal(self) -> bool {
        matches!(
            self,
            Reason::Limit
                | Reason::DeviceLimit
                | Reason::SourceLimit
                | Reason::NoRoute
                | Reason::Loop
                | Reason::ProxyUntrusted
                | Reason::ProxyHeader
                | Reason::BadRequest
                | Reason::HeadTooLarge
                | Reason::ConsoleTimeout
        )
    }

    /// Whether the connection ended the way connections routinely do (the console went away,
    /// the gateway is stopping and cancelled it before it reached a device): logged at INFO.
    /// Every other reason is worth a WARN, and so is a session cut at the drain deadline.
    pub const fn is_routine(self) -> bool {
        matches!(self, Reason::ConsoleReset | Reason::Shutdown)
    }

    /// The outcome label of a connection or phase: `ok`, or the reason it failed.
    pub fn outcome(failure: Option<Reason>) -> &'static str {
        failure.map_or("ok", Reason::as_str)
    }
}

impl From<HandshakeFailure> for Reason {
    fn from(failure: HandshakeFailure) -> Reason {
        match failure {
            HandshakeFailure::PinMismatch => Reason::PinMismatch,
            HandshakeFailure::NameMismatch => Reason::NameMismatch,
            HandshakeFailure::CertExpired => Reason::CertExpired,
            HandshakeFailure::CertInvalid => Reason::CertInvalid,
            HandshakeFailure::ClientCertRejected => Reason::ClientCertRejected,
            HandshakeFailure::Alert => Reason::TlsAlert,
            HandshakeFailure::NotTls => Reason::NotTls,
            HandshakeFailure::Incompatible => Reason::TlsIncompatible,
            HandshakeFailure::Other => Reason::TlsError,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        self.as_str().encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_not_ok() {
        let names: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        for name in names {
            assert_ne!(name, "ok");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
        }
    }

    /// The README's "Failure reasons" table is the documentation of this enum: same names,
    /// same order, nothing missing, nothing extra.
    #[test]
    fn the_readme_reason_table_lists_every_reason() {
        let readme = include_str!("../README.md");
        let table = readme
            .split_once("### Failure reasons")
            .expect("README has a Failure reasons section")
            .1;
        let mut documented = Vec::new();
        for row in table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
        {
            let first_cell = row.split('|').nth(1).unwrap_or_default();
            documented.extend(
                first_cell
                    .split('/')
                    .map(|name| name.trim().trim_matches('`').to_owned()),
            );
        }
        let declared: Vec<String> = Reason::ALL.iter().map(|r| r.as_str().to_owned()).collect();
        assert_eq!(documented, declared);
    }
}
