//! `amtgw pin`: the command around the [`amtgw::probe`] library. It turns arguments into
//! probes, prints what a device presents (ssh-keyscan-like) or one table row per device, and
//! chooses the exit code. Part of the binary only: declared by `main.rs`, never by `lib.rs`.
//!
//! ```text
//! pin_command ─┬─ HOST[:PORT] ──────────▶ probe ─▶ print the certificate
//!              ├─ --config FILE NAME ───▶ probe ─▶ print + judge (pins / pin store; --write learns)
//!              ├─ --config FILE --replace NAME ─▶ probe ─▶ replace
//!              └─ --config FILE --all ──▶ probe every device (JoinSet, bounded by a semaphore)
//!                                          ─▶ one table row per device, sorted by name
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use amtgw::config::{Config, DeviceSettings, Host};
use amtgw::probe::{
    self, Expected, ProbeError, ProbeReport, Target, Timeouts, Verdict, judge, open_store, probe,
    probe_device,
};
use amtgw::service::Service;
use amtgw::tls::{Backend, TofuStore, Trust, rfc3339, unix_now};

/// `--concurrency` when none is given: enough to sweep a fleet of thousands in minutes without
/// opening thousands of sockets at once.
pub(crate) const DEFAULT_CONCURRENCY: usize = 32;
/// Connect and handshake timeout of `amtgw pin HOST[:PORT]`, the gateway's own defaults.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit codes, as documented in `amtgw pin --help` (the scheme of every amtgw command; see
/// main.rs).
const EXIT_OK: u8 = 0;
const EXIT_FAILED: u8 = 1;
/// Arguments that parse but ask for something that is not there: clap's code for usage errors.
const EXIT_USAGE: u8 = 2;
/// The configuration file is invalid (sysexits' EX_CONFIG), as for `amtgw check`.
const EXIT_CONFIG: u8 = 78;

/// `amtgw pin`'s arguments as parsed by the CLI; clap enforces which combinations are allowed.
#[derive(Debug, Clone)]
pub(crate) struct PinArgs {
    /// `HOST[:PORT]`, or with `config`, a device name.
    pub(crate) target: Option<String>,
    pub(crate) config: Option<PathBuf>,
    pub(crate) all: bool,
    pub(crate) concurrency: usize,
    pub(crate) write: bool,
    pub(crate) replace: Option<String>,
    /// Overrides the config's connect and handshake timeouts (or [`DEFAULT_TIMEOUT`]).
    pub(crate) timeout: Option<Duration>,
}

/// Run `amtgw pin`: print to stdout, errors to stderr, and return the exit code.
pub(crate) async fn pin_command(args: PinArgs) -> u8 {
    let Some(path) = &args.config else {
        return match &args.target {
            Some(target) => pin_address(target, args.timeout).await,
            None => usage("give HOST[:PORT], or --config FILE with NAME, --all or --replace NAME"),
        };
    };
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_CONFIG;
        }
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
    // A device of a range is named by its address.
    let in_range = || config.range_device(name.parse().ok()?);
    let Some(device) = config.device(name).cloned().or_else(in_range) else {
        return usage(format!(
            "{}: no device named {name:?}, and no range holds that address",
            config.source
        ));
    };
    pin_device(&config, &device, timeouts, action).await
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
    let to = Target {
        host: &host,
        port,
        server_name: &server_name,
        timeouts,
        client_identity: None,
    };
    match probe(to, Backend::Rustls).await {
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
    let store = match store_if(is_tofu, config).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let report = match probe_device(device, timeouts).await {
        Ok(report) => report,
        Err(e) => return failed(&device.name, &e),
    };
    let verdict = match (action, store) {
        (StoreAction::Replace, Some(store)) => probe::replace(store, device, &report).await,
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
    let _ = writeln!(out, "{:<13} {}", "pin:", label(&verdict));
    if let Some(detail) = detail(&verdict, &device.name) {
        let _ = writeln!(out, "{:<13} {detail}", "");
    }
    let unreachable = unreachable_as_configured(device, &report);
    if let Some(advice) = &unreachable {
        let _ = writeln!(out, "{:<13} {advice}", "reach:");
    }
    print!("{out}");
    if verdict.is_ok() && unreachable.is_none() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// For a device the gateway cannot reach as configured, because only the legacy backend
/// could: the setting that reaches it.
fn unreachable_as_configured(device: &DeviceSettings, report: &ProbeReport) -> Option<String> {
    (report.tls_backend == Backend::Legacy && device.tls.backend != Backend::Legacy).then(|| {
        format!(
            "rustls cannot reach device {:?}: set tls_backend = \"legacy\" for it",
            device.name
        )
    })
}

/// The PIN column, and the `pin:` line.
fn label(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Match => "match",
        Verdict::Mismatch(_) => "MISMATCH",
        Verdict::NotPinned => "-",
        Verdict::New => "new",
        Verdict::Learned => "learned",
        Verdict::Replaced { .. } => "replaced",
    }
}

/// What was expected, or what was replaced, for the operator.
fn detail(verdict: &Verdict, device: &str) -> Option<String> {
    match verdict {
        Verdict::Mismatch(Expected::Configured(pins)) => Some(format!(
            "configured: {}",
            pins.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        )),
        Verdict::Mismatch(Expected::Stored(stored)) => Some(format!(
            "stored: {} {} (learned {}); if the device was unprovisioned, re-pin it with \
             --replace {device}",
            stored.certificate, stored.public_key, stored.learned_at
        )),
        Verdict::Replaced {
            previous: Some(old),
        } => Some(format!(
            "was: {} {} (learned {})",
            old.certificate, old.public_key, old.learned_at
        )),
        Verdict::Replaced { previous: None } => Some("was: no stored pin".to_owned()),
        Verdict::Match | Verdict::NotPinned | Verdict::New | Verdict::Learned => None,
    }
}

/// The pin store when `needed`; when it cannot be opened, the error is printed and the exit
/// code returned.
async fn store_if(needed: bool, config: &Config) -> Result<Option<TofuStore>, u8> {
    if !needed {
        return Ok(None);
    }
    open_store(config).await.map(Some).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_FAILED
    })
}

/// `amtgw pin --config FILE --all`: every device, at most `concurrency` at a time.
async fn pin_all(config: Config, timeouts: Timeouts, concurrency: usize, write: bool) -> u8 {
    let store = match store_if(config.uses_pin_store(), &config).await {
        Ok(store) => store,
        Err(code) => return code,
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
        if let Some(advice) = unreachable_as_configured(device, &report) {
            all_ok = false;
            row[2] = "legacy-only".to_owned();
            details.push(format!("{}: {advice}", device.name));
        }
        let pin = match judge(device, &report, store.as_ref(), write).await {
            Ok(verdict) => {
                all_ok &= verdict.is_ok();
                if let Some(detail) = detail(&verdict, &device.name) {
                    details.push(format!(
                        "{}: {}: presented {} {}; {detail}",
                        device.name,
                        label(&verdict),
                        report.fingerprints.certificate,
                        report.fingerprints.public_key
                    ));
                }
                label(&verdict).to_owned()
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
    line("tls-backend", &report.tls_backend.as_str());
    if let Some(survey) = &report.legacy {
        // What an operator needs when rustls could not reach the device: what it speaks, and
        // the setting that reaches it.
        line("speaks", &survey.versions.join(" "));
        line("suites", &survey.suites.join(" "));
        line(
            "needs",
            &"tls_backend = \"legacy\" (OpenSSL: TLS 1.0 to 1.2, RSA key exchange)",
        );
    }
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
}
