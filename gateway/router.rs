//! Which device a console connection is for.
//!
//! This is the one seam for routing policies. Today: the local (alias) address the console
//! connected to selects a device, else the listener's default device. Original-destination
//! routing (iptables REDIRECT/TPROXY) fits by filling `RouteQuery::original_destination`;
//! Host-header routing by a router that is handed the request head peeked from the console.
//! The data path only ever sees `Router::route`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::Config;
use crate::fleet::Device;
use crate::reason::Reason;
use crate::service::Service;

/// What is known about a console connection when it is routed.
#[derive(Debug, Clone, Copy)]
pub struct RouteQuery {
    pub service: Service,
    /// The gateway address the console connected to.
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(
        "no device for {service} connections to {local}: it is no device's listen address and the service has no default_device"
    )]
    NoRoute { service: Service, local: IpAddr },
}

impl RouteError {
    pub fn reason(&self) -> Reason {
        match self {
            RouteError::NoRoute { .. } => Reason::NoRoute,
        }
    }
}

pub trait Router: Send + Sync + 'static {
    fn route(&self, query: &RouteQuery) -> Result<Arc<Device>, RouteError>;
}

/// Routes by the local address, then the per-service default.
pub struct AddressRouter {
    by_listen: HashMap<IpAddr, Arc<Device>>,
    defaults: [Option<Arc<Device>>; 3],
}

impl AddressRouter {
    pub fn new(config: &Config, devices: &[Arc<Device>]) -> AddressRouter {
        let by_name: HashMap<&str, &Arc<Device>> = devices.iter().map(|d| (d.name(), d)).collect();
        let by_listen = devices
            .iter()
            .filter_map(|d| Some((d.settings.listen?, d.clone())))
            .collect();
        let mut defaults: [Option<Arc<Device>>; 3] = Default::default();
        for service in &config.services {
            defaults[service.service.index()] = service
                .default_device
                .as_deref()
                .and_then(|name| by_name.get(name))
                .map(|d| Arc::clone(d));
        }
        AddressRouter {
            by_listen,
            defaults,
        }
    }
}

impl Router for AddressRouter {
    fn route(&self, query: &RouteQuery) -> Result<Arc<Device>, RouteError> {
        // A dual-stack listener reports IPv4 consoles as ::ffff:a.b.c.d.
        let local = query.local.ip().to_canonical();
        self.by_listen
            .get(&local)
            .or(self.defaults[query.service.index()].as_ref())
            .cloned()
            .ok_or(RouteError::NoRoute {
                service: query.service,
                local,
            })
    }
}
