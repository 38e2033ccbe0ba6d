//! amtgw: a TLS gateway for Intel AMT fleets.
//!
//! Legacy consoles speak plain TCP to the gateway on 16992 (WS-Man), 16994 (redirection) and
//! 623 (DASH); the gateway relays each connection byte for byte to the right device over TLS on
//! 16993, 16995 and 664, trusting the device by pin or by CA.
//!
//! ```text
//! console --TCP--> listener --(accept, spawn)--> proxy: limits -> router -> console's first
//!                                                       byte -> upstream (TCP connect -> TLS
//!                                                       handshake) -> relay (both directions,
//!                                                       half-close, idle timeout)
//!                                                       -> recorder: access log + metrics
//! ```
//!
//! Modules follow that path: [`listener`] accepts, `proxy` runs one connection (ending in one
//! [`Reason`] when it fails), [`router`] picks the device, [`upstream`] opens the device leg
//! with a config from [`tls`] built once by [`fleet`], [`relay`] moves bytes. [`state`] holds
//! what a reload swaps; [`reload`], `watch` and [`gateway`] apply it. [`metrics`], `admin` and
//! [`shutdown`] serve operators; `status_page` renders the admin listener's page for people
//! from the devices' status and `recent_failures`, which the connection recorder fills.
//! [`http_head`] reads console request heads for WS-Man routed by `Host`; pure, over bytes.
//! [`probe`] handshakes with a device only to report its certificate (for `amtgw pin`, whose
//! command code is in the binary). [`tls`] depends on no other module here. [`vnc`] is the
//! VNC bridge's two protocol ends (viewer and device), which `proxy` runs for `services.vnc`.
//!
//! The simulated AMT device is its own crate, `amtgw-sim` (sim/ in this workspace). With the
//! `sim` feature (the default) `demo` runs two of them behind a gateway for `amtgw demo`;
//! production builds leave both out (`--no-default-features`).

pub mod activation;
pub mod admin;
pub mod config;
#[cfg(feature = "sim")]
pub mod demo;
pub mod fleet;
pub mod gateway;
pub mod http_head;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod probe;
pub mod proxy_protocol;
pub mod reason;
pub mod relay;
pub mod reload;
pub mod router;
pub mod service;
pub mod shutdown;
pub mod state;
pub mod systemd;
pub mod tls;
pub mod upstream;
pub mod vnc;
pub mod workers;

mod expiry;
mod proxy;
mod recent_failures;
mod refusals;
#[cfg(test)]
mod sim_tests;
mod socket;
mod status_page;
mod watch;

pub use admin::AdminLimits;
pub use config::{Config, ConfigError};
pub use gateway::{DrainReport, Gateway, GatewayError};
pub use listener::BoundAddress;
pub use reason::Reason;
pub use reload::{ReloadError, ReloadHandle, ReloadSummary};
pub use service::Service;
