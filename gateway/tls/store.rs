//! The durable pin store behind trust-on-first-use (`trust = "tofu"`).
//!
//! AMT generates a new key pair and self-signed certificate whenever a device is unprovisioned,
//! so a fleet of thousands cannot be pinned by hand. In `tofu` mode the gateway records a
//! device's pins on its first successful handshake and requires them afterwards; this module
//! keeps those pins in one human-readable TOML file:
//!
//! ```toml
//! # amtgw pin store: device certificate pins learned on first use (trust = "tofu").
//! # Written by amtgw; re-pin a device with `amtgw pin --replace NAME`.
//!
//! [devices.amt-sim-01]
//! certificate = "cert-sha256:…"
//! public_key = "spki-sha256:…"
//! learned_at = "2026-11-22T05:00:00Z"
//! ```
//!
//! # Durability
//!
//! Every change rewrites the whole file: a temporary file in the same directory (rename is only
//! atomic within one filesystem), `fsync` of its data, `rename` over the store, `fsync` of the
//! directory (so the rename itself survives a power cut). A reader therefore sees either the
//! old file or the new one, never a torn one, even if the writer is killed with `kill -9`
//! mid-write. A writer killed before its rename leaves a temporary file
//! (`.<name>.tmp.<pid>.<n>`); the next writer, and [`PinStore::open`], remove such leftovers
//! while holding the lock, when no live writer can own one.
//!
//! # Concurrency
//!
//! Every read-modify-write holds, in this order, an in-process [`Mutex`] (many connection tasks
//! may learn the same new device at once) and an advisory lock on the sibling file
//! `<name>.lock` (another process, such as `amtgw pin --replace`, may write at the same time).
//! Under both, the file is re-read before it is modified, so another process's update is never
//! lost and [`PinStore::learn`] never overwrites a pin that someone else learned first. The lock
//! file is never deleted: deleting it would let two writers lock two different files.
//!
//! Reads ([`PinStore::get`]) come from an in-memory snapshot swapped atomically after each
//! write or [`PinStore::reload`]; they take no lock and do no I/O, so they are cheap enough for
//! every handshake. Every other method blocks on disk I/O and `fsync` (milliseconds, more on a
//! slow disk): from async code call it through `tokio::task::spawn_blocking`, and call `get`
//! first so `learn` only runs for a device without a pin.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use serde::Deserialize;
use toml::Spanned;

use super::{Fingerprints, Pin, PinKind};

/// Written at the top of every store, so an operator who opens the file knows what it is and
/// how to re-pin a device. Comments elsewhere in the file are not kept across writes.
const HEADER: &str = "# amtgw pin store: device certificate pins learned on first use (trust = \"tofu\").\n\
                      # Written by amtgw; re-pin a device with `amtgw pin --replace NAME`.\n";

/// The last line of every store amtgw writes. A file that lacks it and misses pins known in
/// memory was cut short (a full disk, a crash of whatever copied it), not edited.
const END: &str = "# end of the pin store";

/// The pins recorded for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPin {
    /// SHA-256 of the DER certificate (`cert-sha256:…`).
    pub certificate: Pin,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo (`spki-sha256:…`).
    pub public_key: Pin,
    /// When the pin was learned or replaced, RFC 3339 UTC (`2026-11-22T05:00:00Z`).
    pub learned_at: String,
}

impl StoredPin {
    /// Whether a presented certificate matches: its certificate or its public key equals the
    /// stored one (a certificate re-issued for the same key still matches). Constant time.
    pub fn matches(&self, presented: &Fingerprints) -> bool {
        presented.match_any(&[self.certificate.clone(), self.public_key.clone()])
    }

    fn new(presented: &Fingerprints, learned_at: String) -> StoredPin {
        StoredPin {
            certificate: presented.certificate.clone(),
            public_key: presented.public_key.clone(),
            learned_at,
        }
    }
}

/// What [`PinStore::learn`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    /// The device had no pin; the presented one is now stored (and on disk).
    New,
    /// The device's stored pin matches the presented certificate.
    Matches,
    /// The device has a different pin, which was left as it is.
    Mismatch { stored: StoredPin },
}

/// Why the pin store could not be read or written. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PinStoreError {
    #[error("pin store {}: cannot {action}: {source}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "pin store {}: cannot take the lock on {}: {source}",
        .path.display(),
        .lock.display()
    )]
    Lock {
        path: PathBuf,
        lock: PathBuf,
        source: io::Error,
    },
    #[error(
        "pin store {}: {message}; fix the file or delete the device's table to learn it again",
        at(.path, *.line)
    )]
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// The file is gone, empty or cut short while pins are known: treated as damage, never as
    /// "no pins", or every device would be learned again from whoever answers.
    #[error(
        "pin store {}: the file {what} while {known} pin(s) are known; they stay in force from memory and no new device is learned until the file is restored from a backup, or rewritten on purpose with `amtgw pin --replace NAME` (which starts it afresh)",
        .path.display()
    )]
    Lost {
        path: PathBuf,
        what: String,
        known: usize,
    },
    #[error(
        "pin store {}: device {device:?}: {field}: {reason}; fix the value or re-pin with `amtgw pin --replace {device}`",
        at(.path, Some(*.line))
    )]
    InvalidPin {
        path: PathBuf,
        line: usize,
        device: String,
        field: &'static str,
        reason: String,
    },
    // The PostgreSQL store (`tls::postgres`). `store` is its URL with the password hidden.
    #[error("pin store {store}: cannot {action}: {message}")]
    Database {
        store: String,
        action: &'static str,
        message: String,
    },
    /// Not connected: known pins stay in force from memory, nothing new is learned.
    #[error(
        "pin store {store}: the database is unreachable ({why}); devices with a known pin keep working, none is learned until it is back"
    )]
    Unavailable { store: String, why: String },
    #[error("pin store {store}: cannot {action} within {}", humantime::format_duration(*.after))]
    Timeout {
        store: String,
        action: &'static str,
        after: std::time::Duration,
    },
    #[error(
        "pin store {store}: the database's schema is version {found}, newer than this amtgw's {known}; run a newer amtgw, or point gateway.pin_store at another database"
    )]
    Schema {
        store: String,
        found: i32,
        known: i32,
    },
    /// The table is empty while pins are known: damage, like an emptied file.
    #[error(
        "pin store {store}: the table amtgw_pins is empty while {known} pin(s) are known; they stay in force from memory and no new device is learned until rows are back (restore the table from a backup, or re-pin a device with `amtgw pin --replace NAME`)"
    )]
    Emptied { store: String, known: usize },
    #[error(
        "pin store {store}: device {device:?}: {field}: {reason}; fix the row or re-pin with `amtgw pin --replace {device}`"
    )]
    InvalidRow {
        store: String,
        device: String,
        field: &'static str,
        reason: String,
    },
}

impl PinStoreError {
    /// A stable reason for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PinStoreError::Io { .. } => "pin_store_io",
            PinStoreError::Lock { .. } => "pin_store_lock",
            PinStoreError::Syntax { .. } => "pin_store_syntax",
            PinStoreError::Lost { .. } => "pin_store_lost",
            PinStoreError::InvalidPin { .. } | PinStoreError::InvalidRow { .. } => {
                "pin_store_invalid_pin"
            }
            PinStoreError::Database { .. } => "pin_store_database",
            PinStoreError::Unavailable { .. } => "pin_store_unavailable",
            PinStoreError::Timeout { .. } => "pin_store_timeout",
            PinStoreError::Schema { .. } => "pin_store_schema",
            PinStoreError::Emptied { .. } => "pin_store_lost",
        }
    }
}

/// `path:line`, the form editors and terminals jump to.
fn at(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}

/// Every device's stored pin, by device name: what a store file holds.
pub type Pins = BTreeMap<String, StoredPin>;

/// The pin store: one TOML file plus an in-memory snapshot of it. `Send + Sync`; share it in an
/// `Arc`.
pub struct PinStore {
    path: PathBuf,
    dir: PathBuf,
    lock_path: PathBuf,
    /// `.<file name>.tmp.`: every temporary file of this store starts with it.
    temp_prefix: OsString,
    snapshot: ArcSwap<Pins>,
    /// Serialises this process's read-modify-writes (the file lock does it between processes;
    /// within one process it would too, but a mutex is cheaper and makes the order obvious).
    write: Mutex<()>,
}

impl std::fmt::Debug for PinStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinStore")
            .field("path", &self.path)
            .field("devices", &self.snapshot.load().len())
            .finish()
    }
}

/// Distinguishes temporary files of one process, so two writers can never share one even if
/// the advisory lock is not honoured (some network filesystems).
static TEMP_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl PinStore {
    /// Open the store at `path`. A missing file is an empty store (created on the first write);
    /// a missing directory, or a file that does not parse, is an error naming the path (and the
    /// line). Leftover temporary files of a writer that died are removed.
    pub fn open(path: &Path) -> Result<PinStore, PinStoreError> {
        let file_name = path.file_name().ok_or_else(|| PinStoreError::Io {
            path: path.to_owned(),
            action: "use the path",
            source: io::Error::new(io::ErrorKind::InvalidInput, "it names no file"),
        })?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        // Fail at startup, not at the first device's handshake, when the directory is wrong.
        let meta = fs::metadata(&dir).map_err(|source| PinStoreError::Io {
            path: path.to_owned(),
            action: "open its directory",
            source,
        })?;
        if !meta.is_dir() {
            return Err(PinStoreError::Io {
                path: path.to_owned(),
                action: "open its directory",
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let store = PinStore {
            path: path.to_owned(),
            lock_path: sibling(path, file_name, ".lock"),
            temp_prefix: concat(&[OsStr::new("."), file_name, OsStr::new(".tmp.")]),
            dir,
            snapshot: ArcSwap::from_pointee(Pins::new()),
            write: Mutex::new(()),
        };
        store.clean_up_after_crash();
        store.reload()?;
        Ok(store)
    }

    /// The device's stored pin, from the in-memory snapshot: no lock, no I/O.
    pub fn get(&self, device: &str) -> Option<StoredPin> {
        self.snapshot.load().get(device).cloned()
    }

    /// Every stored pin, by device name, as of the last write or reload.
    pub fn snapshot(&self) -> Arc<BTreeMap<String, StoredPin>> {
        self.snapshot.load_full()
    }

    /// Trust on first use. If the device has no pin (in the file, re-read under the lock), store
    /// the presented one durably and return [`Learned::New`]; otherwise compare in constant time
    /// and return [`Learned::Matches`] or [`Learned::Mismatch`]. Never overwrites a pin.
    /// Blocks on I/O and, for `New`, on `fsync`.
    pub fn learn(&self, device: &str, presented: &Fingerprints) -> Result<Learned, PinStoreError> {
        self.modify(|pins| match pins.get(device) {
            Some(stored) if stored.matches(presented) => (Learned::Matches, false),
            Some(stored) => (
                Learned::Mismatch {
                    stored: stored.clone(),
                },
                false,
            ),
            None => {
                pins.insert(device.to_owned(), StoredPin::new(presented, now()));
                (Learned::New, true)
            }
        })
    }

    /// Re-pin a device (after it was unprovisioned and made a new certificate), whether or not
    /// it had a pin. Blocks on I/O and `fsync`.
    pub fn replace(&self, device: &str, presented: &Fingerprints) -> Result<(), PinStoreError> {
        self.modify(|pins| {
            pins.insert(device.to_owned(), StoredPin::new(presented, now()));
            ((), true)
        })
    }

    /// Forget a device's pin, so its next handshake learns a new one. Whether it had one.
    pub fn remove(&self, device: &str) -> Result<bool, PinStoreError> {
        self.modify(|pins| {
            let removed = pins.remove(device).is_some();
            (removed, removed)
        })
    }

    /// Re-read the file (another process changed it). On error the snapshot is left as it was.
    pub fn reload(&self) -> Result<(), PinStoreError> {
        // Under the mutex, so a reload that read the file before one of this process's writes
        // cannot publish its older snapshot after that write's.
        let _guard = self.lock_in_process();
        let pins = self.read()?;
        self.snapshot.store(Arc::new(pins));
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read-modify-write under both locks. `change` returns its result and whether it changed
    /// the pins (no write otherwise).
    fn modify<T>(&self, change: impl FnOnce(&mut Pins) -> (T, bool)) -> Result<T, PinStoreError> {
        let _guard = self.lock_in_process();
        let _lock = self.lock_file()?;
        // Authoritative state is the file, not the snapshot: another process may have written.
        let mut pins = self.read()?;
        let (result, changed) = change(&mut pins);
        if changed {
            self.remove_temp_files();
            self.write_file(&render(&pins))?;
        }
        self.snapshot.store(Arc::new(pins));
        if changed {
            // After publishing: the new file is already what every reader sees, so the snapshot
            // must match it even if making the rename durable fails.
            self.sync_dir()?;
        }
        Ok(result)
    }

    fn lock_in_process(&self) -> MutexGuard<'_, ()> {
        // A thread that panicked while holding the mutex cannot have left the file half
        // written (writes are atomic renames), so the poison carries no information.
        self.write.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The advisory lock shared with other processes, released when the returned file closes.
    fn lock_file(&self) -> Result<File, PinStoreError> {
        let lock_error = |source| PinStoreError::Lock {
            path: self.path.clone(),
            lock: self.lock_path.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
        let file = options.open(&self.lock_path).map_err(lock_error)?;
        file.lock().map_err(lock_error)?;
        Ok(file)
    }

    /// The file's pins. Gone, empty or cut short while this process knows pins is an error
    /// ([`PinStoreError::Lost`]): callers keep what they know and learn nothing new.
    fn read(&self) -> Result<Pins, PinStoreError> {
        let known = self.snapshot.load();
        let lost = |what: String| PinStoreError::Lost {
            path: self.path.clone(),
            what,
            known: known.len(),
        };
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return match known.is_empty() {
                    true => Ok(Pins::new()),
                    false => Err(lost("is gone".to_owned())),
                };
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(PinStoreError::Syntax {
                    path: self.path.clone(),
                    line: None,
                    message: "the file is not UTF-8 text".to_owned(),
                });
            }
            Err(source) => return Err(self.io_error("read the file", source)),
        };
        if text.trim().is_empty() {
            return match known.is_empty() {
                true => Ok(Pins::new()),
                false => Err(lost("is empty".to_owned())),
            };
        }
        let pins = parse(&self.path, &text)?;
        let complete = text.lines().any(|line| line.trim_end() == END);
        let missing = known.keys().filter(|d| !pins.contains_key(*d)).count();
        if !complete && missing > 0 {
            return Err(lost(format!(
                "ends early (its last line is not `{END}`) and lacks {missing} of them"
            )));
        }
        Ok(pins)
    }

    /// Temporary file, data `fsync`, rename over the store. The caller syncs the directory.
    fn write_file(&self, text: &str) -> Result<(), PinStoreError> {
        let temp = self.dir.join(concat(&[
            &self.temp_prefix,
            OsStr::new(&format!(
                "{}.{}",
                std::process::id(),
                TEMP_SEQUENCE.fetch_add(1, Ordering::Relaxed)
            )),
        ]));
        let result = self.write_temp(&temp, text).and_then(|()| {
            fs::rename(&temp, &self.path)
                .map_err(|source| self.io_error("rename the temporary file over it", source))
        });
        if result.is_err() {
            // Best effort: a leftover is also removed by the next writer.
            let _ = fs::remove_file(&temp);
        }
        result
    }

    fn write_temp(&self, temp: &Path, text: &str) -> Result<(), PinStoreError> {
        let mut options = OpenOptions::new();
        // create_new: never follow or reuse whatever already has that name.
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o644);
        let mut file = options
            .open(temp)
            .map_err(|source| self.io_error("create a temporary file", source))?;
        // Keep an operator's choice of permissions (0600, 0640) across rewrites.
        if let Ok(meta) = fs::metadata(&self.path) {
            file.set_permissions(meta.permissions())
                .map_err(|source| self.io_error("set the temporary file's permissions", source))?;
        }
        file.write_all(text.as_bytes())
            .map_err(|source| self.io_error("write a temporary file", source))?;
        // Data before rename: otherwise a power cut could leave the new name on empty blocks.
        file.sync_all()
            .map_err(|source| self.io_error("fsync a temporary file", source))
    }

    /// Make the rename durable: it is an update of the directory, not of the file.
    fn sync_dir(&self) -> Result<(), PinStoreError> {
        #[cfg(unix)]
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| self.io_error("fsync its directory", source))?;
        Ok(())
    }

    /// Remove temporary files left by writers that died before their rename. Only under both
    /// locks: then no live writer owns one. Best effort; a failure is logged, not fatal.
    fn remove_temp_files(&self) {
        for temp in self.temp_files() {
            if let Err(e) = fs::remove_file(&temp) {
                tracing::warn!(path = %temp.display(), error = %e, "cannot remove leftover pin store temporary file");
            }
        }
    }

    fn temp_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let prefix = self.temp_prefix.as_encoded_bytes();
        entries
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().as_encoded_bytes().starts_with(prefix))
            .map(|entry| entry.path())
            .collect()
    }

    /// At open: if a writer died mid-write, take the locks and remove what it left. Skipped
    /// (no lock taken) in the usual case of no leftovers, so a read-only store opens fine.
    fn clean_up_after_crash(&self) {
        if self.temp_files().is_empty() {
            return;
        }
        let _guard = self.lock_in_process();
        match self.lock_file() {
            Ok(_lock) => self.remove_temp_files(),
            Err(e) => tracing::warn!(error = %e, "cannot clean up pin store temporary files"),
        }
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> PinStoreError {
        PinStoreError::Io {
            path: self.path.clone(),
            action,
            source,
        }
    }
}

fn concat(parts: &[&OsStr]) -> OsString {
    let mut joined = OsString::new();
    for part in parts {
        joined.push(part);
    }
    joined
}

fn sibling(path: &Path, file_name: &OsStr, suffix: &str) -> PathBuf {
    path.with_file_name(concat(&[file_name, OsStr::new(suffix)]))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    devices: BTreeMap<String, RawPin>,
}

// Unknown fields are errors: a misspelt `certifcate` in a hand edit must not silently vanish
// on the next rewrite.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPin {
    certificate: Spanned<String>,
    public_key: Spanned<String>,
    learned_at: String,
}

/// A store file's text as pins; `path` only names the file in errors. Pure: no I/O. Whatever
/// `text` is, this returns (the `pin_store` fuzzer checks that, and that
/// `parse(render(pins)) == pins` for whatever it parsed).
pub fn parse(path: &Path, text: &str) -> Result<Pins, PinStoreError> {
    let raw: RawStore = toml::from_str(text).map_err(|e| PinStoreError::Syntax {
        path: path.to_owned(),
        line: e.span().map(|span| line_of(text, span.start)),
        // toml's messages span lines; one log line per error is easier to grep.
        message: e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": "),
    })?;
    raw.devices
        .into_iter()
        .map(|(device, raw)| {
            let parse_field = |field, value: Spanned<String>, kind| {
                // The line only on error: counting newlines for every field is quadratic.
                let invalid = |reason: String| PinStoreError::InvalidPin {
                    path: path.to_owned(),
                    line: line_of(text, value.span().start),
                    device: device.clone(),
                    field,
                    reason,
                };
                let pin = Pin::parse(value.get_ref()).map_err(|e| invalid(e.to_string()))?;
                if pin.kind() != kind {
                    return Err(invalid(format!(
                        "expected a {} pin",
                        match kind {
                            PinKind::Certificate => "cert-sha256:",
                            PinKind::PublicKey => "spki-sha256:",
                        }
                    )));
                }
                Ok(pin)
            };
            let certificate = parse_field("certificate", raw.certificate, PinKind::Certificate)?;
            let public_key = parse_field("public_key", raw.public_key, PinKind::PublicKey)?;
            Ok((
                device,
                StoredPin {
                    certificate,
                    public_key,
                    learned_at: raw.learned_at,
                },
            ))
        })
        .collect()
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    before.iter().filter(|&&b| b == b'\n').count() + 1
}

/// The file amtgw writes for `pins`: the header, one table per device, the end marker.
pub fn render(pins: &Pins) -> String {
    let mut out = String::from(HEADER);
    for (device, pin) in pins {
        out.push_str(&format!(
            "\n[devices.{}]\ncertificate = {}\npublic_key = {}\nlearned_at = {}\n",
            toml_key(device),
            toml_string(&pin.certificate.to_string()),
            toml_string(&pin.public_key.to_string()),
            toml_string(&pin.learned_at),
        ));
    }
    out.push('\n');
    out.push_str(END);
    out.push('\n');
    out
}

/// A bare key when TOML allows one (the usual host-like names), else a quoted one.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        key.to_owned()
    } else {
        toml_string(key)
    }
}

/// A TOML basic string: quote, backslash and control characters escaped.
fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn now() -> String {
    super::rfc3339(super::unix_now() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn fingerprints(seed: &str) -> Fingerprints {
        Fingerprints {
            certificate: Pin::of_certificate(seed.as_bytes()),
            public_key: Pin::of_public_key(seed.as_bytes()),
        }
    }

    fn store_in(dir: &tempfile::TempDir) -> (PathBuf, PinStore) {
        let path = dir.path().join("pins.toml");
        let store = PinStore::open(&path).unwrap();
        (path, store)
    }

    fn stored(seed: &str, learned_at: &str) -> StoredPin {
        StoredPin::new(&fingerprints(seed), learned_at.to_owned())
    }

    #[test]
    fn missing_file_is_an_empty_store_and_is_not_created_by_open() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(&dir);
        assert!(store.get("amt-sim-01").is_none());
        assert!(store.snapshot().is_empty());
        assert_eq!(store.path(), path);
        assert!(!path.exists());
    }

    #[test]
    fn missing_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope/pins.toml");
        let err = PinStore::open(&path).unwrap_err();
        assert_eq!(err.kind(), "pin_store_io");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn round_trips_through_the_file_including_awkward_names() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(&dir);
        let names = [
            "amt-sim-01",
            "host.example.com",
            "with \"quotes\" and \\ back\\slash",
            "tab\tnewline\ncontrol\u{1}",
            "ünïcode",
            "",
        ];
        for (i, name) in names.iter().enumerate() {
            store.replace(name, &fingerprints(&i.to_string())).unwrap();
        }
        let reopened = PinStore::open(&path).unwrap();
        assert_eq!(*reopened.snapshot(), *store.snapshot());
        for (i, name) in names.iter().enumerate() {
            let pin = reopened.get(name).unwrap();
            assert!(pin.matches(&fingerprints(&i.to_string())), "{name:?}");
        }
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("[devices.amt-sim-01]\n"), "{text}");
        assert!(text.contains("[devices.\"host.example.com\"]\n"), "{text}");
    }

    #[test]
    fn file_is_the_documented_format() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(&dir);
        let presented = fingerprints("a");
        store.learn("amt-sim-01", &presented).unwrap();
        let learned_at = store.get("amt-sim-01").unwrap().learned_at;
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!(
                "{HEADER}\n[devices.amt-sim-01]\ncertificate = \"{}\"\npublic_key = \"{}\"\nlearned_at = \"{learned_at}\"\n\n{END}\n",
                presented.certificate, presented.public_key
            )
        );
    }

    #[test]
    fn learn_is_new_then_matches_then_mismatch_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(&dir);
        let first = fingerprints("first");
        assert_eq!(store.learn("amt", &first).unwrap(), Learned::New);
        let pin = store.get("amt").unwrap();
        assert_eq!(pin.certificate, first.certificate);
        assert_eq!(pin.public_key, first.public_key);
        assert_eq!(store.learn("amt", &first).unwrap(), Learned::Matches);

        // Same key, re-issued certificate: still the device.
        let reissued = Fingerprints {
            certificate: Pin::of_certificate(b"reissued"),
            public_key: first.public_key.clone(),
        };
        assert_eq!(store.learn("amt", &reissued).unwrap(), Learned::Matches);

        let before = fs::read(&path).unwrap();
        assert_eq!(
            store.learn("amt", &fingerprints("second")).unwrap(),
            Learned::Mismatch {
                stored: pin.clone()
            }
        );
        assert_eq!(store.get("amt").unwrap(), pin);
        assert_eq!(
            fs::read(&path).unwrap(),
            before,
            "a mismatch must not write"
        );
    }

    #[test]
    fn replace_re_pins_and_remove_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(&dir);
        store.learn("amt", &fingerprints("old")).unwrap();
        store.replace("amt", &fingerprints("new")).unwrap();
        assert_eq!(
            store.learn("amt", &fingerprints("new")).unwrap(),
            Learned::Matches
        );
        assert!(matches!(
            store.learn("amt", &fingerprints("old")).unwrap(),
            Learned::Mismatch { .. }
        ));
        // replace also works for a device that never had a pin.
        store.replace("other", &fingerprints("x")).unwrap();

        assert!(store.remove("amt").unwrap());
        assert!(!store.remove("amt").unwrap());
        assert!(store.get("amt").is_none());
        let reopened = PinStore::open(&path).unwrap();
        assert!(reopened.get("amt").is_none());
        assert!(reopened.get("other").is_some());
        assert_eq!(
            store.learn("amt", &fingerprints("old")).unwrap(),
            Learned::New
        );
    }

    #[test]
    fn header_is_written_even_when_a_hand_edit_dropped_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        let a = fingerprints("a");
        fs::write(
            &path,
            format!(
                "[devices.hand]\ncertificate = \"{}\"\npublic_key = \"{}\"\nlearned_at = \"2026-01-01T00:00:00Z\"\n",
                a.certificate, a.public_key
            ),
        )
        .unwrap();
        let store = PinStore::open(&path).unwrap();
        assert_eq!(
            store.get("hand").unwrap(),
            stored("a", "2026-01-01T00:00:00Z")
        );
        store.learn("new", &fingerprints("b")).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert_eq!(text.matches(HEADER).count(), 1, "{text}");
        let reopened = PinStore::open(&path).unwrap();
        assert_eq!(reopened.snapshot().len(), 2);
        assert_eq!(
            reopened.get("hand").unwrap().learned_at,
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn corrupt_file_is_an_error_naming_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        fs::write(&path, format!("{HEADER}\n[devices.amt\ncertificate = 1\n")).unwrap();
        let err = PinStore::open(&path).unwrap_err();
        assert_eq!(err.kind(), "pin_store_syntax");
        let message = err.to_string();
        assert!(
            message.contains(&format!("{}:4", path.display())),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");

        fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        let err = PinStore::open(&path).unwrap_err();
        assert_eq!(err.kind(), "pin_store_syntax");
        assert!(err.to_string().contains("UTF-8"), "{err}");

        fs::write(&path, "[devices.amt]\ncertifcate = \"x\"\n").unwrap();
        let err = PinStore::open(&path).unwrap_err();
        assert!(err.to_string().contains("certifcate"), "{err}");
    }

    #[test]
    fn invalid_pin_is_an_error_naming_path_line_device_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        let a = fingerprints("a");
        let good = |name: &str| {
            format!(
                "[devices.{name}]\ncertificate = \"{}\"\npublic_key = \"{}\"\nlearned_at = \"x\"\n",
                a.certificate, a.public_key
            )
        };
        fs::write(
            &path,
            format!(
                "{}\n[devices.bad]\ncertificate = \"{}\"\npublic_key = \"spki-sha256:zz\"\nlearned_at = \"x\"\n",
                good("ok"),
                a.certificate
            ),
        )
        .unwrap();
        let err = PinStore::open(&path).unwrap_err();
        assert_eq!(err.kind(), "pin_store_invalid_pin");
        let message = err.to_string();
        assert!(
            message.contains(&format!("{}:8", path.display())),
            "{message}"
        );
        assert!(message.contains("\"bad\""), "{message}");
        assert!(message.contains("public_key"), "{message}");

        // A valid pin of the wrong kind in a field.
        fs::write(
            &path,
            format!(
                "[devices.swapped]\ncertificate = \"{}\"\npublic_key = \"{}\"\nlearned_at = \"x\"\n",
                a.public_key, a.certificate
            ),
        )
        .unwrap();
        let err = PinStore::open(&path).unwrap_err();
        assert!(
            err.to_string().contains("expected a cert-sha256: pin"),
            "{err}"
        );
    }

    /// The store after learning two devices, with the file's text.
    fn two_learned(dir: &tempfile::TempDir) -> (PathBuf, PinStore, String) {
        let (path, store) = store_in(dir);
        store.learn("amt-a", &fingerprints("a")).unwrap();
        store.learn("amt-b", &fingerprints("b")).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        (path, store, text)
    }

    /// Lost: the pins stay, nothing new is learned, and the damaged file is left for the
    /// operator to see.
    fn assert_lost(path: &Path, store: &PinStore, what: &str) {
        let err = store.reload().unwrap_err();
        assert_eq!(err.kind(), "pin_store_lost", "{err}");
        assert!(err.to_string().contains(what), "{err}");
        assert!(store.get("amt-a").is_some() && store.get("amt-b").is_some());
        let on_disk = fs::read(path).ok();
        let learned = store.learn("impostor", &fingerprints("x")).unwrap_err();
        assert_eq!(learned.kind(), "pin_store_lost");
        assert_eq!(fs::read(path).ok(), on_disk, "the file is not overwritten");
    }

    #[test]
    fn an_emptied_store_is_damage_while_pins_are_known() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store, _) = two_learned(&dir);
        fs::write(&path, "").unwrap();
        assert_lost(&path, &store, "is empty");
    }

    #[test]
    fn a_deleted_store_is_damage_while_pins_are_known() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store, _) = two_learned(&dir);
        fs::remove_file(&path).unwrap();
        assert_lost(&path, &store, "is gone");
    }

    #[test]
    fn a_store_cut_between_two_devices_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store, text) = two_learned(&dir);
        // Valid TOML up to the cut: only the missing closing line tells it from an edit.
        let cut = text.find("[devices.amt-b]").unwrap();
        fs::write(&path, &text[..cut]).unwrap();
        assert_lost(&path, &store, "ends early");
    }

    #[test]
    fn an_edit_that_deletes_a_device_table_is_taken_as_meant() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store, text) = two_learned(&dir);
        let (start, end) = (
            text.find("[devices.amt-b]").unwrap(),
            text.find(END).unwrap(),
        );
        fs::write(&path, format!("{}{}", &text[..start], &text[end..])).unwrap();
        store.reload().unwrap();
        assert!(store.get("amt-a").is_some());
        assert!(store.get("amt-b").is_none(), "forgotten on purpose");
    }

    #[test]
    fn an_empty_or_missing_store_is_no_pins_when_none_are_known() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        fs::write(&path, "\n").unwrap();
        let store = PinStore::open(&path).unwrap();
        assert!(store.snapshot().is_empty());
        assert_eq!(
            store.learn("amt", &fingerprints("a")).unwrap(),
            Learned::New
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(&dir);
        store.learn("amt", &fingerprints("a")).unwrap();
        fs::write(&path, "not toml [").unwrap();
        assert!(store.reload().is_err());
        assert!(store.get("amt").is_some());
        // And a write refuses to replace a file it cannot read, rather than dropping its pins.
        assert!(store.learn("other", &fingerprints("b")).is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "not toml [");
    }

    #[test]
    fn a_second_store_on_the_same_path_sees_the_first_ones_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (path, first) = store_in(&dir);
        let second = PinStore::open(&path).unwrap();
        first.learn("amt", &fingerprints("a")).unwrap();
        // Its snapshot is stale until it reloads...
        assert!(second.get("amt").is_none());
        second.reload().unwrap();
        assert_eq!(second.get("amt"), first.get("amt"));

        // ...but writes re-read the file under the lock, so nothing is lost or overwritten.
        first.replace("amt", &fingerprints("b")).unwrap();
        first.learn("one", &fingerprints("1")).unwrap();
        assert!(matches!(
            second.learn("amt", &fingerprints("a")).unwrap(),
            Learned::Mismatch { .. }
        ));
        second.learn("two", &fingerprints("2")).unwrap();
        first.reload().unwrap();
        for store in [&first, &second] {
            let names: Vec<_> = store.snapshot().keys().cloned().collect();
            assert_eq!(names, ["amt", "one", "two"]);
        }
    }

    #[test]
    fn concurrent_learners_agree_on_exactly_one_first_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(&dir);
        let store = Arc::new(store);
        let candidates = [fingerprints("even"), fingerprints("odd")];
        let barrier = Arc::new(Barrier::new(32));
        let results: Vec<(usize, Learned)> = (0..32)
            .map(|i| {
                let (store, barrier) = (store.clone(), barrier.clone());
                let presented = candidates[i % 2].clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    (i % 2, store.learn("amt", &presented).unwrap())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();

        let winners: Vec<usize> = results
            .iter()
            .filter(|(_, learned)| *learned == Learned::New)
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        let winner = winners[0];
        let stored = store.get("amt").unwrap();
        assert!(stored.matches(&candidates[winner]));
        assert!(!stored.matches(&candidates[1 - winner]));
        for (candidate, learned) in &results {
            if *candidate == winner {
                assert!(
                    matches!(learned, Learned::New | Learned::Matches),
                    "{learned:?}"
                );
            } else {
                assert_eq!(
                    *learned,
                    Learned::Mismatch {
                        stored: stored.clone()
                    }
                );
            }
        }
        assert_eq!(
            *PinStore::open(&path).unwrap().snapshot(),
            *store.snapshot()
        );
    }

    #[test]
    fn leftover_temporary_files_are_removed_on_open_and_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pins.toml");
        let leftover = dir.path().join(".pins.toml.tmp.4242.0");
        let unrelated = dir.path().join(".other.toml.tmp.1.0");
        fs::write(&leftover, "half a fi").unwrap();
        fs::write(&unrelated, "not ours").unwrap();
        let store = PinStore::open(&path).unwrap();
        assert!(!leftover.exists());
        assert!(unrelated.exists());

        fs::write(&leftover, "half a fi").unwrap();
        store.learn("amt", &fingerprints("a")).unwrap();
        assert!(!leftover.exists());
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".other.toml.tmp.1.0", "pins.toml", "pins.toml.lock"]
        );
    }

    #[cfg(unix)]
    #[test]
    fn rewrites_keep_the_files_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = store_in(&dir);
        store.learn("a", &fingerprints("a")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        store.learn("b", &fingerprints("b")).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
