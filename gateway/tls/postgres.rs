//! The pin store in PostgreSQL (`gateway.pin_store = "postgres://…"`), shared by every replica
//! of the gateway: a device learned by one is enforced by all.
//!
//! # Consistency
//!
//! The database decides. Learning is one `INSERT … ON CONFLICT (device) DO NOTHING`: of two
//! replicas that first meet a device at once (or an impostor and the device), exactly one row
//! is written, and the loser reads it back, adopts it and refuses a different certificate.
//! Every change to the table (learned, replaced, forgotten, by amtgw or by hand in `psql`)
//! fires a trigger that sends `NOTIFY amtgw_pins, 'upsert:<device>'` (or `delete:`); each
//! replica `LISTEN`s and re-reads that device's row, and re-reads the whole table every `pin_store_reread_interval`
//! in case a notification was lost (they are not queued across a reconnect).
//!
//! # Memory, and the database going away
//!
//! Handshakes read pins from an in-memory snapshot (an `ArcSwap`, no lock and no I/O), as with
//! the file store. While the database is unreachable that snapshot stays in force, so devices
//! with a known pin keep working; learning needs the database, so a first use is refused
//! ([`PinStoreError::Unavailable`], reason `pin_store_failed`) rather than trusted without a
//! record. A background task reconnects with backoff (250 ms doubling to 10 s), and after each
//! connection re-runs the schema check, `LISTEN`s again and re-reads the whole table.
//!
//! A full re-read that finds the table empty while pins are known is damage (a database
//! restored from the wrong backup, a `TRUNCATE`), as an emptied file is for the file store: the
//! pins in memory stay in force and nothing is learned until the table has rows again (a
//! restore, or `amtgw pin --replace NAME`). Rows deleted one by one are re-pins, taken as meant.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls_pki_types::CertificateDer;
use tokio::sync::{Notify, mpsc};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Socket};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::store::{Learned, PinStoreError, StoredPin};
use super::{Fingerprints, Pin, PinKind};

/// The schema version this amtgw creates and reads. A database at a newer version was
/// migrated by a newer amtgw: refused rather than misread.
pub const SCHEMA_VERSION: i32 = 1;

/// The `LISTEN`/`NOTIFY` channel. The payload is `upsert:<device>` (a row written),
/// `delete:<device>` (a row deleted), or empty (a `TRUNCATE`: re-read everything).
pub const CHANNEL: &str = "amtgw_pins";

/// Serialises schema migrations of replicas that start at once (an arbitrary constant:
/// "amtgpins" in ASCII).
const MIGRATION_LOCK: i64 = 0x616d_7467_7069_6e73;

/// Each migration, in order; `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
/// Never edit one that has shipped: add the next.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [r#"
CREATE TABLE amtgw_pins (
    device      text PRIMARY KEY CHECK (octet_length(device) BETWEEN 1 AND 1000),
    certificate text NOT NULL CHECK (certificate ~ '^cert-sha256:[0-9a-f]{64}$'),
    public_key  text NOT NULL CHECK (public_key ~ '^spki-sha256:[A-Za-z0-9+/]{43}=$'),
    learned_at  timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION amtgw_pins_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('amtgw_pins', '');
    ELSE
        IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.device <> NEW.device) THEN
            PERFORM pg_notify('amtgw_pins', 'delete:' || OLD.device);
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            PERFORM pg_notify('amtgw_pins', 'upsert:' || NEW.device);
        END IF;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER amtgw_pins_changed AFTER INSERT OR UPDATE OR DELETE ON amtgw_pins
    FOR EACH ROW EXECUTE FUNCTION amtgw_pins_notify();
CREATE TRIGGER amtgw_pins_truncated AFTER TRUNCATE ON amtgw_pins
    FOR EACH STATEMENT EXECUTE FUNCTION amtgw_pins_notify();
"#];

/// The columns of a pin, `learned_at` as RFC 3339 UTC like the file store's.
const COLUMNS: &str = "device, certificate, public_key, \
     to_char(learned_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";

const MIN_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the store reports as it goes, for metrics: implemented by the gateway's metrics, a
/// no-op for `amtgw pin`.
pub trait StoreEvents: Send + Sync {
    /// The database connection came up or went down.
    fn connected(&self, up: bool);
    /// A background operation failed (connecting, re-reading), by [`PinStoreError::kind`].
    fn error(&self, kind: &'static str);
}

/// Reports nothing.
#[derive(Debug, Default)]
pub struct NoEvents;

impl StoreEvents for NoEvents {
    fn connected(&self, _up: bool) {}
    fn error(&self, _kind: &'static str) {}
}

/// How to reach the database, validated from the config. `Debug` and [`PostgresSettings::name`]
/// never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresSettings {
    config: tokio_postgres::Config,
    /// The URL as configured, password replaced by `***`: what logs and errors name.
    name: String,
    /// `gateway.pin_store_password_file`, watched: a new password reconnects with it.
    pub password_file: Option<PathBuf>,
    /// CA certificates the server's certificate must chain to; `Some` makes TLS required.
    ca: Option<(PathBuf, Vec<CertificateDer<'static>>)>,
    /// Full re-read of the table, the backstop for lost notifications.
    pub reread_interval: Duration,
    /// Connecting (with the schema check and first read), and each query.
    pub timeout: Duration,
}

impl fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &self.name)
            .field("ca_file", &self.ca.as_ref().map(|(path, _)| path))
            .field("reread_interval", &self.reread_interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Where the password comes from when the URL has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `gateway.pin_store_password_file`.
    File(PathBuf),
    /// `PGPASSWORD`, libpq's variable.
    Environment,
}

impl PostgresSettings {
    /// Whether `text` names a PostgreSQL store rather than a file.
    pub fn is_url(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }

    /// Parse a `postgres://` URL. `password` is the content of `pin_store_password_file` or
    /// `PGPASSWORD`, if any; `ca` the parsed `pin_store_ca_file`. The error says what is wrong
    /// without repeating the URL's password.
    pub fn parse(
        url: &str,
        password: Option<(PasswordSource, String)>,
        ca: Option<(PathBuf, Vec<CertificateDer<'static>>)>,
        reread_interval: Duration,
        timeout: Duration,
    ) -> Result<PostgresSettings, String> {
        let name = redact(url);
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| format!("`{name}` is not a usable PostgreSQL URL: {e}"))?;
        if config.get_user().is_none_or(str::is_empty) {
            return Err(format!(
                "`{name}` names no user; write it as postgres://USER@HOST/DATABASE"
            ));
        }
        if config.get_hosts().is_empty() {
            return Err(format!(
                "`{name}` names no host; write it as postgres://USER@HOST/DATABASE, or \
                 postgres://USER@%2Frun%2Fpostgresql/DATABASE for a Unix socket directory"
            ));
        }
        let password_file = match &password {
            Some((PasswordSource::File(path), _)) => Some(path.clone()),
            _ => None,
        };
        match (config.get_password().is_some(), password) {
            (true, Some((PasswordSource::File(_), _))) => {
                return Err(format!(
                    "`{name}` has a password and gateway.pin_store_password_file gives another; \
                     keep the password out of the URL"
                ));
            }
            // The URL's own password wins over the environment's, as with libpq.
            (true, _) | (false, None) => {}
            (false, Some((_, password))) => {
                config.password(password);
            }
        }
        match (&ca, config.get_ssl_mode()) {
            (None, SslMode::Require) => {
                return Err(format!(
                    "`{name}` asks for sslmode=require; set gateway.pin_store_ca_file to the CA \
                     bundle that signed the server's certificate (it is verified, with the host name)"
                ));
            }
            (Some(_), SslMode::Disable) => {
                return Err(format!(
                    "`{name}` asks for sslmode=disable while gateway.pin_store_ca_file is set; \
                     remove one of them"
                ));
            }
            (Some((path, _)), _) if only_unix_sockets(&config) => {
                return Err(format!(
                    "`{name}` reaches the server over a Unix socket, where TLS does not apply; \
                     remove gateway.pin_store_ca_file ({}) or connect over TCP",
                    path.display()
                ));
            }
            // With a CA, TLS is required: a server that declines it is refused, not used in clear.
            (Some(_), _) => {
                config.ssl_mode(SslMode::Require);
            }
            // Without one, never TLS: `prefer` would not verify anything anyway.
            (None, _) => {
                config.ssl_mode(SslMode::Disable);
            }
        }
        if config.get_application_name().is_none() {
            config.application_name("amtgw");
        }
        config.connect_timeout(timeout);
        // libpq's default waits two hours before probing a silent peer; a database host that
        // vanished should be noticed (and reconnected to) within a minute. Kept if the URL says.
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(30));
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(Duration::from_secs(10));
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(3);
        }
        Ok(PostgresSettings {
            config,
            name,
            password_file,
            ca,
            reread_interval,
            timeout,
        })
    }

    /// The URL with its password replaced by `***`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ca_file(&self) -> Option<&PathBuf> {
        self.ca.as_ref().map(|(path, _)| path)
    }

    fn tls(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, PinStoreError> {
        let Some((path, certs)) = &self.ca else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots.add(cert.clone()).map_err(|e| {
                self.error(
                    "use gateway.pin_store_ca_file",
                    format!("{}: {e}", path.display()),
                )
            })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.error("set up TLS", e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }

    fn error(&self, action: &'static str, message: String) -> PinStoreError {
        PinStoreError::Database {
            store: self.name.clone(),
            action,
            message,
        }
    }
}

/// The URL with the password of its user-info, and a `password=` query parameter, replaced by
/// `***`. Used for every log line, error and `Debug` that names the store.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

type Pins = BTreeMap<String, StoredPin>;

/// What the connection task passes on.
enum Event {
    /// A `NOTIFY` on [`CHANNEL`]: its payload.
    Changed(String),
    /// The connection ended, and why.
    Closed(String),
}

/// One live connection: the client every query goes through, and its events.
struct Session {
    client: Arc<Client>,
    events: mpsc::UnboundedReceiver<Event>,
}

struct Inner {
    settings: PostgresSettings,
    snapshot: ArcSwap<Pins>,
    /// The live connection's client; `None` while the database is unreachable.
    client: ArcSwapOption<Client>,
    /// Why the last connection attempt failed or the last connection ended.
    down_because: ArcSwap<String>,
    /// A full re-read found the table empty while pins were known.
    lost: AtomicBool,
    /// Ask the background task for a full re-read (a reload of the gateway's config).
    reread: Notify,
    events: Arc<dyn StoreEvents>,
}

/// The PostgreSQL pin store. `Send + Sync`; share it in an `Arc`. Dropping it stops its
/// background task and closes the connection.
pub struct PostgresPinStore {
    inner: Arc<Inner>,
    _stop: DropGuard,
}

impl fmt::Debug for PostgresPinStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresPinStore")
            .field("url", &self.inner.settings.name)
            .field("devices", &self.inner.snapshot.load().len())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl PostgresPinStore {
    /// Connect, create or migrate the schema, read every pin and start the background task
    /// that keeps them current. Fails (naming the store, never its password) when the first
    /// connection does not succeed within the settings' timeout: a wrong URL or password
    /// shows at start, not at the first device's handshake. Must run inside a tokio runtime.
    pub async fn open(
        settings: PostgresSettings,
        events: Arc<dyn StoreEvents>,
    ) -> Result<PostgresPinStore, PinStoreError> {
        let inner = Arc::new(Inner {
            settings,
            snapshot: ArcSwap::from_pointee(Pins::new()),
            client: ArcSwapOption::empty(),
            down_because: ArcSwap::from_pointee("not connected yet".to_owned()),
            lost: AtomicBool::new(false),
            reread: Notify::new(),
            events,
        });
        let session = inner.connect().await?;
        let stop = CancellationToken::new();
        tokio::spawn(supervise(inner.clone(), session, stop.clone()));
        Ok(PostgresPinStore {
            inner,
            _stop: stop.drop_guard(),
        })
    }

    pub fn settings(&self) -> &PostgresSettings {
        &self.inner.settings
    }

    pub fn is_connected(&self) -> bool {
        self.inner.client.load().is_some()
    }

    /// The device's pin from memory: no lock, no I/O.
    pub fn get(&self, device: &str) -> Option<StoredPin> {
        self.inner.snapshot.load().get(device).cloned()
    }

    pub fn snapshot(&self) -> Arc<Pins> {
        self.inner.snapshot.load_full()
    }

    /// Ask the background task to re-read the whole table soon.
    pub fn request_reread(&self) {
        self.inner.reread.notify_one();
    }

    /// Trust on first use, decided by the database: the first replica to insert the device's
    /// row wins; any other gets [`Learned::Matches`] or [`Learned::Mismatch`] with the stored
    /// pin, which it adopts at once.
    pub async fn learn(
        &self,
        device: &str,
        presented: &Fingerprints,
    ) -> Result<Learned, PinStoreError> {
        let inner = &self.inner;
        if inner.lost.load(Ordering::Acquire) {
            return Err(PinStoreError::Emptied {
                store: inner.settings.name.clone(),
                known: inner.snapshot.load().len(),
            });
        }
        let client = inner.client()?;
        let (certificate, public_key) = (
            presented.certificate.to_string(),
            presented.public_key.to_string(),
        );
        inner
            .timed("record a pin", async {
                // A row deleted between the insert and the read (a re-pin at that moment)
                // means trying again; twice more is plenty for a human-triggered race.
                for _ in 0..3 {
                    let inserted = client
                        .query_opt(
                            &format!(
                                "INSERT INTO amtgw_pins (device, certificate, public_key) \
                                 VALUES ($1, $2, $3) ON CONFLICT (device) DO NOTHING \
                                 RETURNING {COLUMNS}"
                            ),
                            &[&device, &certificate, &public_key],
                        )
                        .await
                        .map_err(|e| inner.db_error("record a pin", e))?;
                    if let Some(row) = inserted {
                        let (_, pin) = inner.row(&row)?;
                        inner.publish(device, Some(pin));
                        return Ok(Learned::New);
                    }
                    // Another replica's row: read in a statement of its own, whose snapshot
                    // includes it (the insert's may not have, if it waited for that commit).
                    if let Some(stored) = inner.read_one(&client, device).await? {
                        inner.publish(device, Some(stored.clone()));
                        return Ok(if stored.matches(presented) {
                            Learned::Matches
                        } else {
                            Learned::Mismatch { stored }
                        });
                    }
                }
                Err(inner.settings.error(
                    "record a pin",
                    "the device's row changed three times while it was being learned".to_owned(),
                ))
            })
            .await
    }

    /// Re-pin a device, whether or not it had a pin.
    pub async fn replace(
        &self,
        device: &str,
        presented: &Fingerprints,
    ) -> Result<(), PinStoreError> {
        let inner = &self.inner;
        let client = inner.client()?;
        let (certificate, public_key) = (
            presented.certificate.to_string(),
            presented.public_key.to_string(),
        );
        inner
            .timed("replace a pin", async {
                let row = client
                    .query_one(
                        &format!(
                            "INSERT INTO amtgw_pins (device, certificate, public_key) \
                             VALUES ($1, $2, $3) ON CONFLICT (device) DO UPDATE SET \
                             certificate = EXCLUDED.certificate, \
                             public_key = EXCLUDED.public_key, learned_at = now() \
                             RETURNING {COLUMNS}"
                        ),
                        &[&device, &certificate, &public_key],
                    )
                    .await
                    .map_err(|e| inner.db_error("replace a pin", e))?;
                let (_, pin) = inner.row(&row)?;
                inner.publish(device, Some(pin));
                Ok(())
            })
            .await
    }

    /// Forget a device's pin, so its next handshake learns one. Whether it had one.
    pub async fn remove(&self, device: &str) -> Result<bool, PinStoreError> {
        let inner = &self.inner;
        let client = inner.client()?;
        inner
            .timed("forget a pin", async {
                let removed = client
                    .execute("DELETE FROM amtgw_pins WHERE device = $1", &[&device])
                    .await
                    .map_err(|e| inner.db_error("forget a pin", e))?;
                inner.publish(device, None);
                Ok(removed > 0)
            })
            .await
    }
}

impl Inner {
    fn client(&self) -> Result<Arc<Client>, PinStoreError> {
        self.client
            .load_full()
            .ok_or_else(|| PinStoreError::Unavailable {
                store: self.settings.name.clone(),
                why: self.down_because.load().to_string(),
            })
    }

    async fn timed<T>(
        &self,
        action: &'static str,
        work: impl Future<Output = Result<T, PinStoreError>>,
    ) -> Result<T, PinStoreError> {
        tokio::time::timeout(self.settings.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(PinStoreError::Timeout {
                    store: self.settings.name.clone(),
                    action,
                    after: self.settings.timeout,
                })
            })
    }

    fn db_error(&self, action: &'static str, error: tokio_postgres::Error) -> PinStoreError {
        self.settings.error(action, describe(&error))
    }

    /// Change one device in the in-memory snapshot (`None`: forget it).
    fn publish(&self, device: &str, pin: Option<StoredPin>) {
        self.snapshot.rcu(|pins| {
            let mut pins = Pins::clone(pins);
            match &pin {
                Some(pin) => pins.insert(device.to_owned(), pin.clone()),
                None => pins.remove(device),
            };
            pins
        });
    }

    fn row(&self, row: &Row) -> Result<(String, StoredPin), PinStoreError> {
        let text = |i: usize| -> Result<String, PinStoreError> {
            row.try_get::<_, String>(i)
                .map_err(|e| self.db_error("read a pin", e))
        };
        let device = text(0)?;
        let pin = |field: &'static str, value: String, kind: PinKind| {
            let invalid = |reason: String| PinStoreError::InvalidRow {
                store: self.settings.name.clone(),
                device: device.clone(),
                field,
                reason,
            };
            let pin = Pin::parse(&value).map_err(|e| invalid(e.to_string()))?;
            match pin.kind() == kind {
                true => Ok(pin),
                false => Err(invalid("a pin of the other kind".to_owned())),
            }
        };
        let certificate = pin("certificate", text(1)?, PinKind::Certificate)?;
        let public_key = pin("public_key", text(2)?, PinKind::PublicKey)?;
        Ok((
            device.clone(),
            StoredPin {
                certificate,
                public_key,
                learned_at: text(3)?,
            },
        ))
    }

    async fn read_one(
        &self,
        client: &Client,
        device: &str,
    ) -> Result<Option<StoredPin>, PinStoreError> {
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM amtgw_pins WHERE device = $1"),
                &[&device],
            )
            .await
            .map_err(|e| self.db_error("read a pin", e))?;
        row.map(|row| self.row(&row).map(|(_, pin)| pin))
            .transpose()
    }

    /// Re-read the whole table into the snapshot, unless it is empty while pins are known
    /// (then the snapshot is kept and learning stops until rows are back).
    async fn read_all(&self, client: &Client) -> Result<(), PinStoreError> {
        let work = async {
            let rows = client
                .query(&format!("SELECT {COLUMNS} FROM amtgw_pins"), &[])
                .await
                .map_err(|e| self.db_error("read the pins", e))?;
            rows.iter()
                .map(|row| self.row(row))
                .collect::<Result<Pins, _>>()
        };
        let pins = self.timed("read the pins", work).await?;
        let known = self.snapshot.load().len();
        if pins.is_empty() && known > 0 {
            self.lost.store(true, Ordering::Release);
            return Err(PinStoreError::Emptied {
                store: self.settings.name.clone(),
                known,
            });
        }
        if self.lost.swap(false, Ordering::AcqRel) {
            tracing::warn!(store = %self.settings.name, devices = pins.len(), "pin store has rows again; learning resumes");
        }
        self.snapshot.store(Arc::new(pins));
        Ok(())
    }

    /// Re-read what a notification names: one device's row, or everything.
    async fn refresh(&self, client: &Client, payload: &str) -> Result<(), PinStoreError> {
        if self.lost.load(Ordering::Acquire) {
            return self.read_all(client).await;
        }
        match payload.split_once(':') {
            Some(("upsert", device)) => {
                // A row written and gone again by now was deleted or truncated since: that
                // change's own notification follows, and decides (a truncate must hit the
                // emptied-table guard, not empty the snapshot device by device).
                if let Some(pin) = self
                    .timed("read a pin", self.read_one(client, device))
                    .await?
                {
                    self.publish(device, Some(pin));
                }
                Ok(())
            }
            Some(("delete", device)) => {
                let pin = self
                    .timed("read a pin", self.read_one(client, device))
                    .await?;
                self.publish(device, pin);
                Ok(())
            }
            // A truncate, or a payload this amtgw does not know: everything.
            _ => self.read_all(client).await,
        }
    }

    /// One connection attempt, all of it within the timeout: connect, check or migrate the
    /// schema, `LISTEN`, read every pin. On success the client is live for queries.
    async fn connect(&self) -> Result<Session, PinStoreError> {
        let settings = &self.settings;
        let work = async {
            let (client, events) = match settings.tls()? {
                None => start(settings, NoTls).await?,
                Some(tls) => start(settings, tls).await?,
            };
            let client = self.migrate(client).await?;
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(|e| self.db_error("listen for changes", e))?;
            Ok::<_, PinStoreError>((Arc::new(client), events))
        };
        let (client, events) = self.timed("connect", work).await?;
        match self.read_all(&client).await {
            Ok(()) => {}
            // Connected all the same: known pins stay, learning waits for rows (`lost`).
            Err(e @ PinStoreError::Emptied { .. }) => {
                self.events.error(e.kind());
                tracing::error!(store = %settings.name, reason = e.kind(), error = %e, "pin store emptied");
            }
            Err(e) => return Err(e),
        }
        self.client.store(Some(client.clone()));
        self.events.connected(true);
        Ok(Session { client, events })
    }

    /// Bring the schema to [`SCHEMA_VERSION`] in one transaction, under an advisory lock so
    /// that replicas starting together migrate once. Creates nothing when it is current, so a
    /// role with only row privileges works once the schema exists.
    async fn migrate(&self, mut client: Client) -> Result<Client, PinStoreError> {
        let failed = |e| self.db_error("check the schema", e);
        let tx = client.transaction().await.map_err(failed)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(failed)?;
        let exists: bool = tx
            .query_one(
                "SELECT to_regclass('amtgw_schema_version') IS NOT NULL",
                &[],
            )
            .await
            .map_err(failed)?
            .get(0);
        if !exists {
            tx.batch_execute(
                "CREATE TABLE amtgw_schema_version (
                     version    integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await
            .map_err(failed)?;
        }
        let found: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM amtgw_schema_version",
                &[],
            )
            .await
            .map_err(failed)?
            .get(0);
        if found > SCHEMA_VERSION {
            return Err(PinStoreError::Schema {
                store: self.settings.name.clone(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        for (from, migration) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
            let to = from as i32 + 1;
            tx.batch_execute(migration).await.map_err(failed)?;
            tx.execute(
                "INSERT INTO amtgw_schema_version (version) VALUES ($1)",
                &[&to],
            )
            .await
            .map_err(failed)?;
            tracing::info!(store = %self.settings.name, version = to, "pin store schema migrated");
        }
        tx.commit().await.map_err(failed)?;
        Ok(client)
    }

    fn went_down(&self, why: String) {
        let was_up = self.client.swap(None).is_some();
        self.down_because.store(Arc::new(why));
        if was_up {
            self.events.connected(false);
        }
    }
}

/// Connect and hand the connection to a task that drives it and passes notifications on.
async fn start<T>(
    settings: &PostgresSettings,
    tls: T,
) -> Result<(Client, mpsc::UnboundedReceiver<Event>), PinStoreError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = settings
        .config
        .connect(tls)
        .await
        .map_err(|e| settings.error("connect", describe(&e)))?;
    let (sender, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let why = loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                    if sender.send(Event::Changed(n.payload().to_owned())).is_err() {
                        return;
                    }
                }
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    tracing::debug!(notice = %notice, "pin store database notice");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break describe(&e),
                None => break "the server closed the connection".to_owned(),
            }
        };
        let _ = sender.send(Event::Closed(why));
    });
    Ok((client, events))
}

/// Keep the store connected and current until `stop`: apply notifications, re-read
/// everything on a timer, reconnect with backoff when the connection ends.
async fn supervise(inner: Arc<Inner>, first: Session, stop: CancellationToken) {
    let name = inner.settings.name.clone();
    let mut session = Some(first);
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut live = match session.take() {
            Some(live) => live,
            None => {
                let attempt = tokio::select! {
                    () = stop.cancelled() => return,
                    attempt = inner.connect() => attempt,
                };
                match attempt {
                    Ok(live) => {
                        tracing::info!(store = %name, devices = inner.snapshot.load().len(), "pin store reconnected; pins re-read");
                        backoff = MIN_BACKOFF;
                        live
                    }
                    Err(e) => {
                        // A connection that came up but failed its first read is down again.
                        inner.went_down(match &e {
                            PinStoreError::Database {
                                action, message, ..
                            } => {
                                format!("cannot {action}: {message}")
                            }
                            other => other.to_string(),
                        });
                        inner.events.error(e.kind());
                        tracing::warn!(store = %name, reason = e.kind(), error = %e, retry_in_ms = backoff.as_millis() as u64, "pin store unreachable; known pins stay in force, first uses are refused");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        let mut reread = tokio::time::interval(inner.settings.reread_interval);
        reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        reread.reset();
        let why = loop {
            let result = tokio::select! {
                () = stop.cancelled() => return,
                event = live.events.recv() => match event {
                    Some(Event::Changed(device)) => inner.refresh(&live.client, &device).await,
                    Some(Event::Closed(why)) => break why,
                    None => break "the connection task ended".to_owned(),
                },
                _ = reread.tick() => inner.read_all(&live.client).await,
                () = inner.reread.notified() => inner.read_all(&live.client).await,
            };
            if let Err(e) = result {
                inner.events.error(e.kind());
                tracing::error!(store = %name, reason = e.kind(), error = %e, "pin store re-read failed; keeping the pins in memory");
                // A server that stopped answering may never close the connection: start over.
                if let PinStoreError::Timeout { .. } = e {
                    break e.to_string();
                }
            }
        };
        inner.went_down(why.clone());
        tracing::warn!(store = %name, error = %why, "pin store connection lost; known pins stay in force, first uses are refused until it is back");
    }
}

/// A tokio-postgres error with its causes: its `Display` alone is often just "db error" or
/// "error connecting to server".
fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// Whether every host is a Unix socket directory (where TLS does not apply).
fn only_unix_sockets(config: &tokio_postgres::Config) -> bool {
    config
        .get_hosts()
        .iter()
        .all(|host| matches!(host, Host::Unix(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_every_form_of_password() {
        for (url, shown) in [
            (
                "postgres://amtgw:s3cret@db.example:5432/fleet",
                "postgres://amtgw:***@db.example:5432/fleet",
            ),
            (
                "postgresql://amtgw:p@ss:w@rd@db/fleet?sslmode=require",
                "postgresql://amtgw:***@db/fleet?sslmode=require",
            ),
            (
                "postgres://amtgw@db/fleet?password=s3cret&application_name=x",
                "postgres://amtgw@db/fleet?password=***&application_name=x",
            ),
            (
                "postgres://amtgw@%2Frun%2Fpostgresql/fleet",
                "postgres://amtgw@%2Frun%2Fpostgresql/fleet",
            ),
            ("postgres://a:b@h", "postgres://a:***@h"),
        ] {
            assert_eq!(redact(url), shown);
        }
    }

    fn parse(
        url: &str,
        password: Option<(PasswordSource, String)>,
    ) -> Result<PostgresSettings, String> {
        PostgresSettings::parse(
            url,
            password,
            None,
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
    }

    #[test]
    fn debug_and_errors_never_show_the_password() {
        let settings = parse("postgres://amtgw:s3cret@db/fleet", None).unwrap();
        let debug = format!("{settings:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("amtgw:***@db"), "{debug}");
        let file = parse(
            "postgres://amtgw@db/fleet",
            Some((
                PasswordSource::File(PathBuf::from("pw")),
                "fromfile".to_owned(),
            )),
        )
        .unwrap();
        assert!(!format!("{file:?}").contains("fromfile"));
        assert_eq!(file.config.get_password(), Some(&b"fromfile"[..]));

        let err = parse("postgres://:s3cret@db/fleet", None).unwrap_err();
        assert!(!err.contains("s3cret") && err.contains("no user"), "{err}");
        let err = parse(
            "postgres://amtgw:s3cret@db/fleet",
            Some((PasswordSource::File(PathBuf::from("pw")), "x".to_owned())),
        )
        .unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
        let err = parse("postgres://amtgw:s3cret@db/fleet?sslmode=bogus", None).unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn the_environment_password_yields_to_the_urls() {
        let url = parse(
            "postgres://amtgw:inurl@db/fleet",
            Some((PasswordSource::Environment, "env".to_owned())),
        )
        .unwrap();
        assert_eq!(url.config.get_password(), Some(&b"inurl"[..]));
        let env = parse(
            "postgres://amtgw@db/fleet",
            Some((PasswordSource::Environment, "env".to_owned())),
        )
        .unwrap();
        assert_eq!(env.config.get_password(), Some(&b"env"[..]));
    }

    #[test]
    fn tls_needs_a_ca_and_a_ca_means_tls() {
        let err = parse("postgres://amtgw@db/fleet?sslmode=require", None).unwrap_err();
        assert!(err.contains("pin_store_ca_file"), "{err}");
        let plain = parse("postgres://amtgw@db/fleet", None).unwrap();
        assert_eq!(plain.config.get_ssl_mode(), SslMode::Disable);
        let with_ca = PostgresSettings::parse(
            "postgres://amtgw@db/fleet",
            None,
            Some((PathBuf::from("ca.pem"), Vec::new())),
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(with_ca.config.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn a_unix_socket_directory_is_a_host() {
        let settings = parse("postgres://amtgw@%2Ftmp%2Fpg/fleet", None).unwrap();
        assert!(only_unix_sockets(&settings.config));
        let settings = parse(
            "postgresql:///fleet?user=amtgw&host=/tmp/pg&port=5433",
            None,
        )
        .unwrap();
        assert!(only_unix_sockets(&settings.config));
        assert_eq!(settings.config.get_ports(), [5433]);
    }
}
