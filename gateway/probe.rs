//! `amtgw pin`: connect to a device the way ssh-keyscan connects to a host, and report what it
//! presents (subject, issuer, validity, both pin forms, TLS version and cipher), whether that
//! matches the device's configured or stored pin, and, with `--write`/`--replace`, record it in
//! the trust-on-first-use pin store.
//!
//! ```text
//! pin_command ─┬─ HOST[:PORT] ──────────▶ probe ─▶ print the certificate
//!              ├─ --config FILE NAME ───▶ probe ─▶ print + compare (pins / pin store; --write learns)
//!              ├─ --config FILE --replace NAME ─▶ probe ─▶ PinStore::replace
//!              └─ --config FILE --all ──▶ probe every device (JoinSet, bounded by a semaphore)
//!                                          ─▶ one table row per device, sorted by name
//! ```
//!
//! The probe completes a real handshake (so the device's signature proves it holds the key it
//! presents) but relays nothing: see [`ReportOnlyVerifier`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::config::{ClientIdentity, Config, DeviceSettings, Host, Trust};
use crate::fleet::unix_now;
use crate::service::Service;
use crate::tls::rfc3339;
use crate::tls::{self, CertificateSummary, Fingerprints, Learned, PinStore, StoredPin, TlsError};
use crate::tls::{LeafCheck, LeafVerifier};
use crate::upstream::{Dial, UpstreamError, UpstreamTimings};

/// Probes are short: keepalive never fires, but the socket options are the gateway's own.
const PROBE_KEEPALIVE: Duration = Duration::from_secs(60);

/// `--concurrency` when none is given: enough to sweep a fleet of thousands in minutes without
/// opening thousands of sockets at once.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Connect and handshake timeout of `amtgw pin HOST[:PORT]`, the gateway's own defaults.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit codes, as documented in `amtgw pin --help`.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 64;

/// What a device presented in one handshake.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// The address actually connected to (after DNS).
    pub addr: SocketAddr,
    /// The leaf certificate.
    pub certificate: CertificateSummary,
    /// The leaf's pins, for comparison with configured or stored ones.
    pub fingerprints: Fingerprints,
    /// Certificates the device sent, leaf included.
    pub chain_len: usize,
    /// `TLSv1_3` or `TLSv1_2`, as in the gateway's access log.
    pub tls_version: &'static str,
    pub cipher: &'static str,
}

/// Why a probe failed. Connection and handshake failures are [`UpstreamError`]s, so a probe
/// names the same reasons (`connect_refused`, `client_cert_rejected`, …) as the gateway's logs
/// and metrics.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{addr} completed the handshake without a certificate")]
    NoCertificate { addr: SocketAddr },
    #[error("{addr} presented a certificate that does not parse as X.509")]
    BadCertificate { addr: SocketAddr },
}

impl ProbeError {
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::Upstream(e) => e.kind(),
            ProbeError::Tls(e) => e.kind(),
            ProbeError::NoCertificate { .. } | ProbeError::BadCertificate { .. } => "cert_invalid",
        }
    }
}

/// How long each phase of a probe may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// DNS and TCP connect together, as in the gateway.
    pub connect: Duration,
    pub handshake: Duration,
}

impl Timeouts {
    fn of(config: &Config) -> Timeouts {
        Timeouts {
            connect: config.gateway.connect_timeout,
            handshake: config.gateway.handshake_timeout,
        }
    }
}

/// Connect to `host:port`, complete a TLS 1.3 or 1.2 handshake (presenting `client_identity`
/// if given: mutual-TLS devices refuse handshakes without one), report what the device
/// presented, and close with close_notify. No application data is sent.
///
/// A TLS 1.3 device that refuses the client certificate says so only after the client's side
/// of the handshake is done; a probe reads nothing, so it reports the certificate and does not
/// notice that refusal (under TLS 1.2 it is a `client_cert_rejected` error).
pub async fn probe(
    host: &Host,
    port: u16,
    server_name: ServerName<'static>,
    timeouts: Timeouts,
    client_identity: Option<&ClientIdentity>,
) -> Result<ProbeReport, ProbeError> {
    let connector = TlsConnector::from(client_config(client_identity)?);
    let mut timings = UpstreamTimings::default();
    let mut stream = crate::upstream::dial(
        Dial {
            host,
            port,
            server_name,
            connector: &connector,
            connect_timeout: timeouts.connect,
            handshake_timeout: timeouts.handshake,
            keepalive: PROBE_KEEPALIVE,
        },
        &mut timings,
    )
    .await?;
    let addr = timings
        .addr
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], port)));
    let (_, session) = stream.get_ref();
    let chain = session.peer_certificates().unwrap_or_default();
    let leaf = chain.first().ok_or(ProbeError::NoCertificate { addr })?;
    let (Some(certificate), Some(fingerprints)) =
        (CertificateSummary::of(leaf), Fingerprints::of(leaf))
    else {
        return Err(ProbeError::BadCertificate { addr });
    };
    let report = ProbeReport {
        addr,
        certificate,
        fingerprints,
        chain_len: chain.len(),
        tls_version: session
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("unknown"),
        cipher: session
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown"),
    };
    // AMT firmware serves few TLS sessions at once: say goodbye properly instead of leaving it
    // to time the connection out. Failing to is harmless; the report is complete.
    let _ = timeout(timeouts.handshake, stream.shutdown()).await;
    Ok(report)
}

/// A client config for one probe: TLS 1.3 and 1.2, the report-only verifier, the device's
/// client certificate if it has one, and no resumption (a resumed handshake shows no
/// certificate).
fn client_config(client_identity: Option<&ClientIdentity>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LeafVerifier::new(
            ReportOnly,
            provider.signature_verification_algorithms,
        )));
    let mut config = tls::with_identity(builder, client_identity)?;
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Accepts whatever certificate the device presents; `LeafVerifier` still verifies the
/// handshake signature against it, so the report is of a peer that holds the presented key.
///
/// This is not a trust bypass: it is only ever used by [`probe`], which sends no application
/// data, relays no bytes and closes right after the handshake. Its output is a report for an
/// operator (and, with `--write`, a first-use pin, which is what trust on first use means).
/// The gateway's data path builds its configs in [`tls::client_config`] and never sees this.
#[derive(Debug)]
struct ReportOnly;

impl LeafCheck for ReportOnly {
    fn check(&self, _presented: Fingerprints) -> Result<(), rustls::Error> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The `amtgw pin` command.

/// `amtgw pin`'s arguments as parsed by the CLI; clap enforces which combinations are allowed.
#[derive(Debug, Clone)]
pub struct PinArgs {
    /// `HOST[:PORT]`, or with `config`, a device name.
    pub target: Option<String>,
    pub config: Option<PathBuf>,
    pub all: bool,
    pub concurrency: usize,
    pub write: bool,
    pub replace: Option<String>,
    /// Overrides the config's connect and handshake timeouts (or [`DEFAULT_TIMEOUT`]).
    pub timeout: Option<Duration>,
}

/// Run `amtgw pin`: print to stdout, errors to stderr, and return the exit code.
pub async fn pin_command(args: PinArgs) -> u8 {
    let Some(path) = &args.config else {
        return match &args.target {
            Some(target) => pin_address(target, args.timeout).await,
            None => usage("give HOST[:PORT], or --config FILE with NAME, --all or --replace NAME"),
        };
    };
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => return usage(e),
    };
    let mut timeouts = Timeouts::of(&config);
    if let Some(limit) = args.timeout {
        timeouts = Timeouts {
            connect: limit,
            handshake: limit,
        };
    }
    if args.all {
        // A semaphore of 0 would wait forever; the CLI already refuses 0.
        return pin_all(config, timeouts, args.concurrency.max(1), args.write).await;
    }
    let (name, action) = match (&args.replace, &args.target) {
        (Some(name), _) => (name, StoreAction::Replace),
        (None, Some(name)) if args.write => (name, StoreAction::Learn),
        (None, Some(name)) => (name, StoreAction::Compare),
        (None, None) => return usage("give a device NAME, --all or --replace NAME with --config"),
    };
    let Some(device) = config.device(name) else {
        return usage(format!("{}: no device named {name:?}", config.source));
    };
    pin_device(&config, device, timeouts, action).await
}

fn usage(message: impl std::fmt::Display) -> u8 {
    eprintln!("error: {message}");
    EXIT_USAGE
}

/// `amtgw pin HOST[:PORT]`.
async fn pin_address(target: &str, limit: Option<Duration>) -> u8 {
    let (host, port) = match parse_target(target) {
        Ok(parsed) => parsed,
        Err(message) => return usage(message),
    };
    let server_name = match server_name_of(&host) {
        Ok(name) => name,
        Err(message) => return usage(message),
    };
    let limit = limit.unwrap_or(DEFAULT_TIMEOUT);
    let timeouts = Timeouts {
        connect: limit,
        handshake: limit,
    };
    match probe(&host, port, server_name, timeouts, None).await {
        Ok(report) => {
            print!("{}", describe(&address_of(&host, port), &report));
            EXIT_OK
        }
        Err(e) => failed(target, &e),
    }
}

fn failed(target: &str, error: &ProbeError) -> u8 {
    eprintln!("error: {target}: {error} ({})", error.kind());
    EXIT_FAILED
}

/// What `--config FILE NAME` does with the pin store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreAction {
    /// Only compare with the configured or stored pin.
    Compare,
    /// `--write`: trust on first use; never overwrites.
    Learn,
    /// `--replace NAME`: re-pin.
    Replace,
}

/// `amtgw pin --config FILE [--write | --replace] NAME`.
async fn pin_device(
    config: &Config,
    device: &DeviceSettings,
    timeouts: Timeouts,
    action: StoreAction,
) -> u8 {
    let is_tofu = matches!(device.tls.trust, Trust::Tofu);
    if action != StoreAction::Compare && !is_tofu {
        return usage(format!(
            "device {:?} has trust = \"{}\"; --write and --replace record pins for trust = \"tofu\" \
             devices only (edit its pins in {} instead)",
            device.name,
            device.tls.trust.mode(),
            config.source
        ));
    }
    let store = if is_tofu {
        match open_store(config).await {
            Ok(store) => Some(store),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILED;
            }
        }
    } else {
        None
    };
    let report = match probe_device(device, timeouts).await {
        Ok(report) => report,
        Err(e) => return failed(&device.name, &e),
    };
    let verdict = match (action, store) {
        (StoreAction::Replace, Some(store)) => replace(store, device, &report).await,
        (action, store) => {
            judge(
                device,
                &report,
                store.as_ref(),
                action == StoreAction::Learn,
            )
            .await
        }
    };
    let verdict = match verdict {
        Ok(verdict) => verdict,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let mut out = describe(&device_address(device), &report);
    let _ = writeln!(out, "{:<13} {}", "device:", device.name);
    let _ = writeln!(out, "{:<13} {}", "trust:", device.tls.trust.mode());
    let _ = writeln!(out, "{:<13} {}", "pin:", verdict.status.label());
    if let Some(detail) = &verdict.detail {
        let _ = writeln!(out, "{:<13} {detail}", "");
    }
    print!("{out}");
    if verdict.status.is_ok() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// Probe a configured device: its host, its WS-Man TLS port, its server name and its client
/// certificate.
async fn probe_device(
    device: &DeviceSettings,
    timeouts: Timeouts,
) -> Result<ProbeReport, ProbeError> {
    probe(
        &device.host,
        device.port(Service::Wsman),
        device.server_name.clone(),
        timeouts,
        device.tls.client_identity.as_deref(),
    )
    .await
}

/// How a presented certificate compares with what the device is trusted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinStatus {
    /// It matches a configured pin, or the stored one.
    Match,
    /// It matches none.
    Mismatch,
    /// `trust = "ca"`: pins do not apply.
    NotPinned,
    /// `trust = "tofu"` with no stored pin: the gateway will learn it on first use.
    New,
    /// `--write` stored it just now.
    Learned,
    /// `--replace` stored it just now.
    Replaced,
}

impl PinStatus {
    fn label(self) -> &'static str {
        match self {
            PinStatus::Match => "match",
            PinStatus::Mismatch => "MISMATCH",
            PinStatus::NotPinned => "-",
            PinStatus::New => "new",
            PinStatus::Learned => "learned",
            PinStatus::Replaced => "replaced",
        }
    }

    fn is_ok(self) -> bool {
        self != PinStatus::Mismatch
    }
}

struct Verdict {
    status: PinStatus,
    /// What was expected, or what was replaced, for the operator.
    detail: Option<String>,
}

impl Verdict {
    fn plain(status: PinStatus) -> Verdict {
        Verdict {
            status,
            detail: None,
        }
    }
}

/// Compare a report with the device's trust: configured pins, the stored pin (learning it
/// first when `learn`), or nothing for a CA-trusted device.
async fn judge(
    device: &DeviceSettings,
    report: &ProbeReport,
    store: Option<&Arc<PinStore>>,
    learn: bool,
) -> Result<Verdict, tls::PinStoreError> {
    Ok(match (&device.tls.trust, store) {
        (Trust::Pin(pins), _) if report.fingerprints.match_any(pins) => {
            Verdict::plain(PinStatus::Match)
        }
        (Trust::Pin(pins), _) => Verdict {
            status: PinStatus::Mismatch,
            detail: Some(format!(
                "configured: {}",
                pins.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
        },
        (Trust::Ca { .. }, _) => Verdict::plain(PinStatus::NotPinned),
        (Trust::Tofu, Some(store)) if learn => {
            let (store, name) = (store.clone(), device.name.clone());
            let presented = report.fingerprints.clone();
            match blocking(store.path().to_owned(), move || {
                store.learn(&name, &presented)
            })
            .await?
            {
                Learned::New => Verdict::plain(PinStatus::Learned),
                Learned::Matches => Verdict::plain(PinStatus::Match),
                Learned::Mismatch { stored } => mismatch_with_stored(device, &stored),
            }
        }
        (Trust::Tofu, Some(store)) => match store.get(&device.name) {
            None => Verdict::plain(PinStatus::New),
            Some(stored) if stored.matches(&report.fingerprints) => {
                Verdict::plain(PinStatus::Match)
            }
            Some(stored) => mismatch_with_stored(device, &stored),
        },
        // Callers open the store for every tofu device; without one there is nothing to say.
        (Trust::Tofu, None) => Verdict::plain(PinStatus::New),
    })
}

fn mismatch_with_stored(device: &DeviceSettings, stored: &StoredPin) -> Verdict {
    Verdict {
        status: PinStatus::Mismatch,
        detail: Some(format!(
            "stored: {} {} (learned {}); if the device was unprovisioned, re-pin it with \
             --replace {}",
            stored.certificate, stored.public_key, stored.learned_at, device.name
        )),
    }
}

async fn replace(
    store: Arc<PinStore>,
    device: &DeviceSettings,
    report: &ProbeReport,
) -> Result<Verdict, tls::PinStoreError> {
    let previous = store.get(&device.name);
    let name = device.name.clone();
    let presented = report.fingerprints.clone();
    blocking(store.path().to_owned(), move || {
        store.replace(&name, &presented)
    })
    .await?;
    Ok(Verdict {
        status: PinStatus::Replaced,
        detail: Some(match previous {
            Some(old) => format!(
                "was: {} {} (learned {})",
                old.certificate, old.public_key, old.learned_at
            ),
            None => "was: no stored pin".to_owned(),
        }),
    })
}

async fn open_store(config: &Config) -> Result<Arc<PinStore>, tls::PinStoreError> {
    let path = config.gateway.pin_store.clone();
    blocking(path.clone(), move || PinStore::open(&path).map(Arc::new)).await
}

/// The pin store blocks on file I/O and fsync; keep that off the runtime's workers, as its
/// documentation asks.
async fn blocking<T: Send + 'static>(
    path: PathBuf,
    work: impl FnOnce() -> Result<T, tls::PinStoreError> + Send + 'static,
) -> Result<T, tls::PinStoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|joined| {
            // A panic in the store (a bug) or a runtime shutting down: report, don't unwind.
            Err(tls::PinStoreError::Io {
                path,
                action: "finish the update",
                source: io::Error::other(joined.to_string()),
            })
        })
}

/// `amtgw pin --config FILE --all`: every device, at most `concurrency` at a time.
async fn pin_all(config: Config, timeouts: Timeouts, concurrency: usize, write: bool) -> u8 {
    let store = if config.uses_pin_store() {
        match open_store(&config).await {
            Ok(store) => Some(store),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILED;
            }
        }
    } else {
        None
    };
    let config = Arc::new(config);
    let semaphore = Arc::new(Semaphore::new(concurrency));
    let mut probes = JoinSet::new();
    let mut index_of = HashMap::new();
    for index in 0..config.devices.len() {
        // Acquired before spawning, so at most `concurrency` probes (and sockets) exist at
        // once, however large the fleet. The semaphore is never closed.
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        let config = config.clone();
        let task = probes.spawn(async move {
            let result = probe_device(&config.devices[index], timeouts).await;
            drop(permit);
            result
        });
        index_of.insert(task.id(), index);
    }
    // `None` stays for a probe task that panicked (a bug), reported as `task_failed`.
    let mut outcomes: Vec<Option<Result<ProbeReport, ProbeError>>> =
        (0..config.devices.len()).map(|_| None).collect();
    let mut details = Vec::new();
    while let Some(joined) = probes.join_next_with_id().await {
        match joined {
            Ok((id, outcome)) => {
                if let Some(&index) = index_of.get(&id) {
                    outcomes[index] = Some(outcome);
                }
            }
            Err(e) => details.push(format!("probe task failed: {e}")),
        }
    }

    // Judged one after another once every probe is done: the pin store serialises writes
    // anyway, and this keeps rows and the store in device order.
    let now = unix_now_secs();
    let mut rows = Vec::with_capacity(config.devices.len());
    let mut all_ok = true;
    for (device, outcome) in config.devices.iter().zip(outcomes) {
        let mut row = vec![
            device.name.clone(),
            device_address(device),
            "yes".to_owned(),
            device.tls.trust.mode().to_owned(),
        ];
        let report = match outcome {
            Some(Ok(report)) => report,
            failed => {
                all_ok = false;
                // One token, so the table stays easy to cut and awk; the message is below it.
                row[2] = match failed {
                    Some(Err(e)) => {
                        details.push(format!("{}: {} ({e})", device.name, e.kind()));
                        format!("no:{}", e.kind())
                    }
                    _ => "no:task_failed".to_owned(),
                };
                row.extend(["-", "-", "-", "-"].map(str::to_owned));
                rows.push(row);
                continue;
            }
        };
        let pin = match judge(device, &report, store.as_ref(), write).await {
            Ok(verdict) => {
                all_ok &= verdict.status.is_ok();
                if let Some(detail) = verdict.detail {
                    details.push(format!(
                        "{}: {}: presented {} {}; {detail}",
                        device.name,
                        verdict.status.label(),
                        report.fingerprints.certificate,
                        report.fingerprints.public_key
                    ));
                }
                verdict.status.label().to_owned()
            }
            Err(e) => {
                all_ok = false;
                details.push(format!("{}: {e}", device.name));
                format!("error: {}", e.kind())
            }
        };
        row.extend([
            pin,
            rfc3339(report.certificate.not_after),
            days_left(report.certificate.not_after, now).to_string(),
            report.tls_version.to_owned(),
        ]);
        rows.push(row);
    }
    rows.sort_by(|a, b| a[0].cmp(&b[0]));
    print!("{}", table(&TABLE_HEADER, &rows));
    // Details after the table, on stderr, so stdout stays a table a script can parse.
    for detail in details {
        eprintln!("{detail}");
    }
    if all_ok { EXIT_OK } else { EXIT_FAILED }
}

const TABLE_HEADER: [&str; 8] = [
    "DEVICE",
    "ADDRESS",
    "REACHABLE",
    "TRUST",
    "PIN",
    "NOT_AFTER",
    "DAYS_LEFT",
    "TLS",
];

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The ssh-keyscan-like block for one probed certificate. The pin lines are bare, ready to be
/// pasted into a device's `pins`.
fn describe(address: &str, report: &ProbeReport) -> String {
    let cert = &report.certificate;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut out = String::new();
    let mut line = |label: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{:<13} {value}", format!("{label}:"));
    };
    if address == report.addr.to_string() {
        line("address", &address);
    } else {
        line("address", &format_args!("{address} ({})", report.addr));
    }
    line("subject", &cert.subject);
    line("issuer", &cert.issuer);
    line("not-before", &rfc3339(cert.not_before));
    line("not-after", &rfc3339(cert.not_after));
    line("days-left", &days_left(cert.not_after, unix_now_secs()));
    line("self-signed", &yes_no(cert.self_signed));
    line("ca", &yes_no(cert.ca));
    line("chain", &report.chain_len);
    line("tls-version", &report.tls_version);
    line("cipher", &report.cipher);
    let _ = writeln!(out, "{}", cert.certificate_pin);
    let _ = writeln!(out, "{}", cert.public_key_pin);
    out
}

fn unix_now_secs() -> i64 {
    i64::try_from(unix_now()).unwrap_or(i64::MAX)
}

/// Whole days from `now` until `not_after` (negative once expired), rounded down.
fn days_left(not_after: i64, now: i64) -> i64 {
    not_after.saturating_sub(now).div_euclid(86_400)
}

/// `HOST[:PORT]` with the WS-Man TLS port (16993) by default. IPv6 addresses with a port are
/// written `[::1]:16993`; a bare IPv6 address has no port.
fn parse_target(text: &str) -> Result<(Host, u16), String> {
    let default_port = Service::Wsman.device_port();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((Host::Ip(addr.ip()), addr.port()));
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok((Host::Ip(ip), default_port));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{text:?}: `{port}` is not a port number"))?;
            (host, port)
        }
        None => (text, default_port),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((Host::Ip(ip), port));
    }
    match ServerName::try_from(host) {
        Ok(ServerName::DnsName(_)) => Ok((Host::Dns(host.to_owned()), port)),
        _ => Err(format!(
            "{text:?} is not HOST[:PORT] (HOST: an IP address or a DNS name)"
        )),
    }
}

fn server_name_of(host: &Host) -> Result<ServerName<'static>, String> {
    match host {
        Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
        Host::Dns(name) => {
            ServerName::try_from(name.clone()).map_err(|_| format!("`{name}` is not a DNS name"))
        }
    }
}

fn device_address(device: &DeviceSettings) -> String {
    address_of(&device.host, device.port(Service::Wsman))
}

fn address_of(host: &Host, port: u16) -> String {
    match host {
        Host::Ip(ip) => SocketAddr::new(*ip, port).to_string(),
        Host::Dns(name) => format!("{name}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_host_and_port_forms() {
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        for (text, host, port) in [
            ("10.0.0.5", ip("10.0.0.5"), 16993),
            ("10.0.0.5:1234", ip("10.0.0.5"), 1234),
            ("::1", ip("::1"), 16993),
            ("[::1]", ip("::1"), 16993),
            ("[::1]:1234", ip("::1"), 1234),
            (
                "amt.example.com",
                Host::Dns("amt.example.com".into()),
                16993,
            ),
            (
                "amt.example.com:16995",
                Host::Dns("amt.example.com".into()),
                16995,
            ),
        ] {
            assert_eq!(parse_target(text).unwrap(), (host, port), "{text}");
        }
        for bad in ["amt:http", "amt:70000", "", "bad host:1", "a:b:c"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_whole_days_left() {
        assert_eq!(days_left(86_400 * 3, 0), 3);
        assert_eq!(days_left(86_400 * 3 - 1, 0), 2);
        assert_eq!(days_left(0, 1), -1);
    }

    #[test]
    fn table_aligns_columns_and_trims_line_ends() {
        let rows = vec![
            vec!["amt-long-name".to_owned(), "x".to_owned()],
            vec!["a".to_owned(), "".to_owned()],
        ];
        assert_eq!(
            table(&["DEVICE", "PIN"], &rows),
            "DEVICE         PIN\namt-long-name  x\na\n"
        );
    }

    #[tokio::test]
    async fn refused_connection_has_the_gateways_reason() {
        // Bind then drop: nothing listens on the port afterwards.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(5),
        };
        let host = Host::Ip(addr.ip());
        let err = probe(
            &host,
            addr.port(),
            server_name_of(&host).unwrap(),
            timeouts,
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), "connect_refused", "{err}");
    }

    #[tokio::test]
    async fn reports_a_simulated_devices_certificate() {
        let device = amtgw_sim::SimDevice::start(amtgw_sim::SimConfig::demo("probe-unit"))
            .await
            .unwrap();
        let addr = device.wsman_addr();
        let host = Host::Ip(addr.ip());
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(5),
        };
        let report = probe(
            &host,
            addr.port(),
            server_name_of(&host).unwrap(),
            timeouts,
            None,
        )
        .await
        .unwrap();
        let cert = device.certificate();
        assert_eq!(Some(report.certificate), CertificateSummary::of(&cert));
        assert_eq!(Some(report.fingerprints), Fingerprints::of(&cert));
        assert_eq!(report.chain_len, 1);
        assert_eq!(report.tls_version, "TLSv1_3");
        device.shutdown().await;
    }
}
