//! The devices the gateway serves, as used at run time: settings plus everything built once at
//! load (the TLS connector, the connection limit).

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use crate::config::{Config, DeviceSettings};
use crate::tls::{self, TlsError};

pub struct Device {
    pub settings: DeviceSettings,
    pub(crate) connector: TlsConnector,
    /// Per-device connection limit; `None` means only the global limit applies.
    pub(crate) limit: Option<Arc<Semaphore>>,
}

impl Device {
    pub fn name(&self) -> &str {
        &self.settings.name
    }
}

#[derive(Debug, thiserror::Error)]
#[error("device `{device}`: {source}")]
pub struct FleetError {
    pub device: String,
    // Boxed: rustls errors are large and this travels up through every startup Result.
    pub source: Box<TlsError>,
}

impl FleetError {
    pub fn kind(&self) -> &'static str {
        self.source.kind()
    }
}

/// Build every device's TLS config once. Nothing here runs per connection.
pub fn build(config: &Config) -> Result<Vec<Arc<Device>>, FleetError> {
    let provider = tls::provider();
    config
        .devices
        .iter()
        .map(|settings| {
            let client_config =
                tls::client_config(&settings.tls, &provider).map_err(|source| FleetError {
                    device: settings.name.clone(),
                    source: Box::new(source),
                })?;
            Ok(Arc::new(Device {
                settings: settings.clone(),
                connector: TlsConnector::from(client_config),
                limit: settings
                    .max_connections
                    .map(|n| Arc::new(Semaphore::new(n))),
            }))
        })
        .collect()
}
