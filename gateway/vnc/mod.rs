//! The VNC bridge: standard VNC viewers reach AMT KVM over TLS. AMT serves KVM only inside its
//! redirection protocol (16995), which VNC viewers do not speak; the gateway speaks RFB to the
//! viewer ([`viewer`], downstream) and the redirection protocol plus RFB to the device
//! ([`device`], upstream), then relays the RFB stream between them unchanged.
//!
//! The order protects the device: the viewer is authenticated by the gateway (its VNC password)
//! before any device is contacted, because AMT holds only a few sessions; then the device's
//! KVM session is opened up to its ServerInit, which the viewer receives as the gateway's.

mod device;
mod viewer;

use std::time::Duration;

pub(crate) use device::{KvmError, open_kvm};
pub use viewer::vncpasswd_file_contents;
pub(crate) use viewer::{ViewerError, handshake as viewer_handshake, server_init};

/// How long a viewer has for its side of the handshake, password included: a person may be
/// typing it into the viewer's dialog. Only a gateway socket is held meanwhile, no device
/// session.
pub const VIEWER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
