//! The file watcher: a change to the config file, the pin store or any certificate, key or CA
//! file the config names is noticed by polling modification times and sizes.
//!
//! A change to the pin store alone re-reads the store (the TOFU verifiers read it per
//! handshake); any other change asks for a reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::reload::ReloadHandle;
use crate::state::Shared;
use crate::tls::TofuStore;

/// Modification time and size of each watched file (`None`: missing or unreadable).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FileStamps(Vec<(PathBuf, Option<(SystemTime, u64)>)>);

impl FileStamps {
    pub(crate) fn of(files: Vec<PathBuf>) -> FileStamps {
        FileStamps(
            files
                .into_iter()
                .map(|file| {
                    let stamp = std::fs::metadata(&file)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())));
                    (file, stamp)
                })
                .collect(),
        )
    }

    fn files(&self) -> Vec<PathBuf> {
        self.0.iter().map(|(f, _)| f.clone()).collect()
    }

    /// Files whose stamp differs from `earlier`'s.
    fn changed_since<'a>(&'a self, earlier: &FileStamps) -> Vec<&'a PathBuf> {
        self.0
            .iter()
            .filter(|(file, stamp)| {
                earlier
                    .0
                    .iter()
                    .find(|(f, _)| f == file)
                    .is_none_or(|(_, s)| s != stamp)
            })
            .map(|(file, _)| file)
            .collect()
    }

    /// The stamps for `files`: taken from `self` where known (so a change made while a reload
    /// was reading them is seen next time), fresh for files new to the list.
    fn carried_to(&self, files: Vec<PathBuf>) -> FileStamps {
        let fresh = FileStamps::of(
            files
                .iter()
                .filter(|f| !self.0.iter().any(|(known, _)| known == *f))
                .cloned()
                .collect(),
        );
        FileStamps(
            files
                .into_iter()
                .map(|file| {
                    let stamp = self
                        .0
                        .iter()
                        .chain(fresh.0.iter())
                        .find(|(f, _)| *f == file)
                        .and_then(|(_, s)| *s);
                    (file, stamp)
                })
                .collect(),
        )
    }
}

/// Poll the watched files' modification times; a change to the pin store alone re-reads the
/// store (the TOFU verifiers read it per handshake), any other change reloads everything.
pub(crate) async fn watch_files(
    shared: Arc<Shared>,
    mut seen: FileStamps,
    handle: ReloadHandle,
    stop: CancellationToken,
) {
    loop {
        let interval = shared.snapshot.load().config.gateway.watch_interval;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let now = FileStamps::of(seen.files());
        let changed = now.changed_since(&seen);
        if changed.is_empty() {
            continue;
        }
        let snapshot = shared.snapshot.load_full();
        // Only a file store is watched; a database store hears of changes by LISTEN/NOTIFY.
        let file_store = match &snapshot.pin_store {
            Some(TofuStore::File(store)) => Some(store),
            _ => None,
        };
        let store_path = file_store.map(|s| s.path().to_path_buf());
        let only_store = changed.iter().all(|f| Some(*f) == store_path.as_ref());
        if let (true, Some(store)) = (only_store, file_store) {
            // The gateway's own writes (pins learned on first use) change the file too; only
            // a change made elsewhere (`amtgw pin --replace`) changes what is in memory.
            let before = store.snapshot();
            match store.reload() {
                Ok(()) if *store.snapshot() == *before => {}
                Ok(()) => {
                    tracing::info!(store = %store.path().display(), "pin store changed by another process; re-read");
                    shared.bump_generation();
                }
                Err(e) => {
                    shared.metrics.observe_pin_store_error(e.kind());
                    tracing::error!(reason = e.kind(), error = %e, "pin store re-read failed; keeping the pins in memory")
                }
            }
        } else {
            tracing::info!(changed = ?changed, "watched files changed; reloading");
            // The result is logged and counted by the reload itself.
            let _ = handle.reload().await;
        }
        seen = now.carried_to(shared.snapshot.load().config.watched_files());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_is_a_change_and_an_unchanged_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (edited, untouched) = (dir.path().join("a.toml"), dir.path().join("b.pem"));
        std::fs::write(&edited, "one").unwrap();
        std::fs::write(&untouched, "two").unwrap();
        let before = FileStamps::of(vec![edited.clone(), untouched.clone()]);
        // A different size is a change even within the file system's timestamp resolution.
        std::fs::write(&edited, "one, edited").unwrap();
        let after = FileStamps::of(before.files());
        assert_eq!(after.changed_since(&before), vec![&edited]);
    }

    #[test]
    fn a_file_that_appears_or_disappears_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pins.json");
        let missing = FileStamps::of(vec![file.clone()]);
        std::fs::write(&file, "{}").unwrap();
        let present = FileStamps::of(missing.files());
        assert_eq!(present.changed_since(&missing), vec![&file]);
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            FileStamps::of(present.files()).changed_since(&present),
            vec![&file]
        );
    }

    #[test]
    fn carried_stamps_keep_what_was_seen_and_stamp_new_files_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, added) = (dir.path().join("kept"), dir.path().join("added"));
        std::fs::write(&kept, "x").unwrap();
        let seen = FileStamps::of(vec![kept.clone()]);
        // Changed while a reload was reading it: the carried stamp is the old one, so the
        // next poll still sees the change.
        std::fs::write(&kept, "xy").unwrap();
        std::fs::write(&added, "z").unwrap();
        let carried = seen.carried_to(vec![kept.clone(), added.clone()]);
        let now = FileStamps::of(carried.files());
        assert_eq!(now.changed_since(&carried), vec![&kept]);
    }
}
