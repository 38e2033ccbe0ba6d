//! The three AMT services amtgw relays, the VNC bridge into the fourth (KVM), and their
//! well-known ports.

use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use serde::Deserialize;

/// A legacy plain-TCP AMT service and its TLS twin on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// WS-Management over HTTP: 16992 plain, 16993 TLS.
    Wsman,
    /// Redirection protocol (SOL, IDE-R, KVM): 16994 plain, 16995 TLS.
    Redirection,
    /// DASH WS-Management: 623 plain, 664 TLS.
    Dash,
    /// The VNC bridge: standard VNC viewers on 5900, AMT KVM inside the redirection protocol
    /// on the device's 16995. Not byte-transparent: the gateway speaks both ends (`vnc`).
    Vnc,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Wsman,
        Service::Redirection,
        Service::Dash,
        Service::Vnc,
    ];
    /// The services whose device port is configured per device (`ports`): VNC uses the
    /// redirection port.
    pub const RELAYED: [Service; 3] = [Service::Wsman, Service::Redirection, Service::Dash];

    /// Stable name used in config keys, log fields and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Wsman => "wsman",
            Service::Redirection => "redirection",
            Service::Dash => "dash",
            Service::Vnc => "vnc",
        }
    }

    /// The plain port legacy consoles connect to.
    pub fn legacy_port(self) -> u16 {
        match self {
            Service::Wsman => 16992,
            Service::Redirection => 16994,
            Service::Dash => 623,
            Service::Vnc => 5900,
        }
    }

    /// The TLS port the device serves the same protocol on.
    pub fn device_port(self) -> u16 {
        match self {
            Service::Wsman => 16993,
            Service::Redirection => 16995,
            Service::Dash => 664,
            Service::Vnc => 16995,
        }
    }

    /// The relayed service whose TLS port on the device this one connects to: KVM lives inside
    /// the redirection protocol.
    pub fn device_service(self) -> Service {
        match self {
            Service::Vnc => Service::Redirection,
            relayed => relayed,
        }
    }

    /// Whether the console speaks first (every AMT protocol), so the device is not contacted
    /// before it has. A VNC viewer waits for the server's version instead.
    pub(crate) fn console_speaks_first(self) -> bool {
        self != Service::Vnc
    }

    /// Idle timeout when the config names none. AMT WS-Man operations may take 30 s and more,
    /// and SOL sessions can sit quiet between heartbeats, so the default is generous.
    pub fn default_idle_timeout(self) -> Duration {
        match self {
            // A KVM screen that does not change sends nothing, and a viewer waiting for a
            // change sends nothing either: an operator may leave one open for hours. AMT's own
            // SessionTimeout (IPS_KVMRedirectionSettingData) ends idle sessions when wanted.
            Service::Vnc => Duration::from_secs(8 * 3600),
            _ => Duration::from_secs(600),
        }
    }

    /// Whether request/response latency per exchange is meaningful for this protocol: WS-Man is
    /// strictly request then response; redirection interleaves heartbeats and echoes.
    pub(crate) fn measures_exchanges(self) -> bool {
        matches!(self, Service::Wsman | Service::Dash)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Metric labels carry the same stable name as config keys and logs.
impl EncodeLabelValue for Service {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}
