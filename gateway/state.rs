//! The gateway's runtime state: what a new connection needs, swapped whole on reload.
//!
//! Reload has one swap point: an `ArcSwap<Snapshot>` holding the config, the devices (with
//! their TLS configs) and the router. Each new connection loads it once; live sessions keep the
//! `Arc<Device>` they started with and are never touched.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{Semaphore, watch};

use crate::config::{Config, ServiceSettings};
use crate::fleet::{self, Device, FleetError, Ranges};
use crate::metrics::Metrics;
use crate::router::{AddressRouter, Router};
use crate::service::Service;
use crate::tls::{PinStoreError, PinStoreSettings, StoreEvents, TofuStore};

/// Why a configuration could not be turned into a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("pin store: {0}")]
    PinStore(#[from] PinStoreError),
}

impl SnapshotError {
    pub fn kind(&self) -> &'static str {
        match self {
            SnapshotError::Fleet(e) => e.kind(),
            SnapshotError::PinStore(e) => e.kind(),
        }
    }
}

/// Everything a new connection needs, built together and swapped whole on reload.
pub(crate) struct Snapshot {
    pub(crate) config: Config,
    pub(crate) devices: Vec<Arc<Device>>,
    /// The devices of `[[ranges]]`, made on first use; also in `router`.
    pub(crate) ranges: Arc<Ranges>,
    pub(crate) router: Arc<dyn Router>,
    pub(crate) pin_store: Option<TofuStore>,
}

impl Snapshot {
    /// Build every device's TLS config and the router for `config`. With a `previous`
    /// snapshot (a reload), devices keep their status and unchanged limits (range devices at
    /// their first use under the new config), and the pin store is re-read rather than
    /// reopened when it is the same file or database. A database store reports its connection
    /// state and background errors to `events`.
    pub(crate) async fn build(
        config: Config,
        previous: Option<&Snapshot>,
        events: Arc<dyn StoreEvents>,
    ) -> Result<Snapshot, SnapshotError> {
        let pin_store =
            open_pin_store(&config, previous.and_then(|p| p.pin_store.as_ref()), events).await?;
        let devices = fleet::build(
            &config,
            pin_store.as_ref(),
            previous.map_or(&[], |p| &p.devices),
        )?;
        let ranges = Arc::new(Ranges::new(
            &config,
            pin_store.as_ref(),
            previous.map(|p| &*p.ranges),
        )?);
        let router = AddressRouter::new(&config, &devices).with_ranges(ranges.clone());
        let router: Arc<dyn Router> = Arc::new(router);
        Ok(Snapshot {
            config,
            devices,
            ranges,
            router,
            pin_store,
        })
    }

    pub(crate) fn service(&self, service: Service) -> Option<&ServiceSettings> {
        self.config.services.iter().find(|s| s.service == service)
    }

    pub(crate) fn device(&self, name: &str) -> Option<&Arc<Device>> {
        self.devices.iter().find(|d| d.name() == name)
    }
}

/// State shared by every listener, connection and operator endpoint for the gateway's life.
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Counts successful reloads and pin store re-reads, for whoever needs to wait for one.
    pub(crate) generation: watch::Sender<u64>,
    pub(crate) metrics: Arc<Metrics>,
    /// `gateway.max_connections`, resized on reload.
    pub(crate) global_limit: Arc<Semaphore>,
}

impl Shared {
    pub(crate) fn new(snapshot: Snapshot, metrics: Arc<Metrics>) -> Shared {
        let global_limit = Arc::new(Semaphore::new(snapshot.config.gateway.max_connections));
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            generation: watch::Sender::new(0),
            metrics,
            global_limit,
        }
    }

    /// Swap in `next` (new connections use it from now on), keeping the global limit at its configured size. Permits held by open
    /// sessions can't be taken back: `forget_permits` takes what is free and the rest
    /// disappears as sessions close.
    pub(crate) fn install(&self, next: Snapshot) {
        let old = self.snapshot.load().config.gateway.max_connections;
        let new = next.config.gateway.max_connections;
        if new > old {
            self.global_limit.add_permits(new - old);
        } else if old > new {
            self.global_limit.forget_permits(old - new);
        }
        self.snapshot.store(Arc::new(next));
    }

    pub(crate) fn bump_generation(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// The pin store, if any device trusts on first use: the current one (re-read) when it is the
/// same file or database, else opened anew.
async fn open_pin_store(
    config: &Config,
    current: Option<&TofuStore>,
    events: Arc<dyn StoreEvents>,
) -> Result<Option<TofuStore>, PinStoreError> {
    if !config.uses_pin_store() {
        return Ok(None);
    }
    let settings = &config.gateway.pin_store;
    match current {
        Some(store) if store.is(settings) => {
            match store {
                TofuStore::File(file) => file.reload()?,
                TofuStore::Postgres(database) => database.request_reread(),
            }
            Ok(Some(store.clone()))
        }
        _ => {
            if let PinStoreSettings::Postgres(_) = settings {
                tracing::info!(store = %settings.name(), "opening the shared pin store");
            }
            Ok(Some(TofuStore::open(settings, events).await?))
        }
    }
}
