//! The store behind `trust = "tofu"`, whichever it is: the file ([`PinStore`], the default,
//! one gateway) or PostgreSQL ([`PostgresPinStore`], shared by replicas). The verifier, the
//! data path, the admin endpoint and `amtgw pin` use [`TofuStore`] and never ask which.
//!
//! Both keep every pin in memory for handshakes (no lock, no I/O per handshake); writes go to
//! the file (blocking I/O and fsync, run on tokio's blocking pool) or the database.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Fingerprints;
use super::postgres::{PostgresPinStore, PostgresSettings, StoreEvents};
use super::store::{Learned, PinStore, PinStoreError, StoredPin};

/// Where `gateway.pin_store` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinStoreSettings {
    /// A TOML file (relative paths already resolved against the config's directory).
    File(PathBuf),
    /// A PostgreSQL database shared by several gateways.
    Postgres(Box<PostgresSettings>),
}

impl PinStoreSettings {
    /// The file's path, or the URL without its password: safe to log.
    pub fn name(&self) -> String {
        match self {
            PinStoreSettings::File(path) => path.display().to_string(),
            PinStoreSettings::Postgres(settings) => settings.name().to_owned(),
        }
    }

    pub fn file(&self) -> Option<&Path> {
        match self {
            PinStoreSettings::File(path) => Some(path),
            PinStoreSettings::Postgres(_) => None,
        }
    }
}

/// An open pin store. Cheap to clone (it is an `Arc`).
#[derive(Debug, Clone)]
pub enum TofuStore {
    File(Arc<PinStore>),
    Postgres(Arc<PostgresPinStore>),
}

impl TofuStore {
    /// Open the store `settings` name. A database store connects, checks its schema and reads
    /// every pin before returning, then stays current in the background, reporting to `events`.
    pub async fn open(
        settings: &PinStoreSettings,
        events: Arc<dyn StoreEvents>,
    ) -> Result<TofuStore, PinStoreError> {
        match settings {
            PinStoreSettings::File(path) => {
                let opening = path.clone();
                blocking(path, move || PinStore::open(&opening))
                    .await
                    .map(|store| TofuStore::File(Arc::new(store)))
            }
            PinStoreSettings::Postgres(settings) => {
                PostgresPinStore::open(PostgresSettings::clone(settings), events)
                    .await
                    .map(|store| TofuStore::Postgres(Arc::new(store)))
            }
        }
    }

    /// Whether this is the store `settings` name (so a reload can keep it).
    pub fn is(&self, settings: &PinStoreSettings) -> bool {
        match (self, settings) {
            (TofuStore::File(store), PinStoreSettings::File(path)) => store.path() == path,
            (TofuStore::Postgres(store), PinStoreSettings::Postgres(settings)) => {
                store.settings() == settings.as_ref()
            }
            _ => false,
        }
    }

    /// The file's path, or the URL without its password: safe to log.
    pub fn name(&self) -> String {
        match self {
            TofuStore::File(store) => store.path().display().to_string(),
            TofuStore::Postgres(store) => store.settings().name().to_owned(),
        }
    }

    /// The device's pin, from memory: no lock, no I/O. Cheap enough for every handshake.
    pub fn get(&self, device: &str) -> Option<StoredPin> {
        match self {
            TofuStore::File(store) => store.get(device),
            TofuStore::Postgres(store) => store.get(device),
        }
    }

    /// Every pin in memory, by device name.
    pub fn snapshot(&self) -> Arc<std::collections::BTreeMap<String, StoredPin>> {
        match self {
            TofuStore::File(store) => store.snapshot(),
            TofuStore::Postgres(store) => store.snapshot(),
        }
    }

    /// Trust on first use: store the presented pins if the device has none (durably, in the
    /// file or the database), else compare. Never overwrites a pin.
    pub async fn learn(
        &self,
        device: &str,
        presented: &Fingerprints,
    ) -> Result<Learned, PinStoreError> {
        match self {
            TofuStore::File(store) => {
                let (store, device, presented) =
                    (store.clone(), device.to_owned(), presented.clone());
                let path = store.path().to_owned();
                blocking(&path, move || store.learn(&device, &presented)).await
            }
            // Boxed: every connection's future would otherwise carry the database query's
            // state inline, which costs memory per idle connection for a rare event.
            TofuStore::Postgres(store) => Box::pin(store.learn(device, presented)).await,
        }
    }

    /// Re-pin a device, whether or not it had a pin.
    pub async fn replace(
        &self,
        device: &str,
        presented: &Fingerprints,
    ) -> Result<(), PinStoreError> {
        match self {
            TofuStore::File(store) => {
                let (store, device, presented) =
                    (store.clone(), device.to_owned(), presented.clone());
                let path = store.path().to_owned();
                blocking(&path, move || store.replace(&device, &presented)).await
            }
            TofuStore::Postgres(store) => store.replace(device, presented).await,
        }
    }

    /// Forget a device's pin, so its next handshake learns one. Whether it had one.
    pub async fn remove(&self, device: &str) -> Result<bool, PinStoreError> {
        match self {
            TofuStore::File(store) => {
                let (store, device) = (store.clone(), device.to_owned());
                let path = store.path().to_owned();
                blocking(&path, move || store.remove(&device)).await
            }
            TofuStore::Postgres(store) => store.remove(device).await,
        }
    }
}

/// The file store blocks on I/O and fsync: run it on tokio's blocking pool, as its
/// documentation asks.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, PinStoreError> + Send + 'static,
) -> Result<T, PinStoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|joined| {
            // A panic in the store (a bug) or a runtime shutting down: report, don't unwind.
            Err(PinStoreError::Io {
                path: path.to_owned(),
                action: "finish the update",
                source: io::Error::other(joined.to_string()),
            })
        })
}
