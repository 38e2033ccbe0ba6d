//! systemd's service notification protocol (`sd_notify(3)`): one datagram of `KEY=VALUE` lines
//! to the socket named by `NOTIFY_SOCKET`, written here over std's `UnixDatagram` rather than
//! through libsystemd, so the static build links nothing more.
//!
//! What amtgw says, and when (deploy/systemd/amtgw.service runs it as `Type=notify`):
//! `READY=1` once every listener is bound (connections queue in the kernel from then on),
//! `RELOADING=1` with `MONOTONIC_USEC` before a SIGHUP reload and `READY=1` after it, whatever
//! its result, `STOPPING=1` when the drain starts, and `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` while the runtime runs. Outside systemd (`NOTIFY_SOCKET` unset) every call
//! does nothing. This module uses no other amtgw module.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

/// The environment variable naming the socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={0:?} is neither a path nor an abstract name (@name)")]
    Address(String),
    #[error("cannot open a datagram socket for NOTIFY_SOCKET: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot notify systemd through NOTIFY_SOCKET={socket:?}: {source}")]
    Send {
        socket: String,
        #[source]
        source: io::Error,
    },
}

impl NotifyError {
    pub fn kind(&self) -> &'static str {
        match self {
            NotifyError::Address(_) => "notify_address",
            NotifyError::Socket(_) => "notify_socket",
            NotifyError::Send { .. } => "notify_send",
        }
    }
}

/// The service manager's notification socket, when there is one.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    name: String,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; `Ok(None)` when it is unset or empty (not run by systemd).
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        match std::env::var(NOTIFY_SOCKET) {
            Ok(name) if !name.is_empty() => Notifier::new(&name).map(Some),
            _ => Ok(None),
        }
    }

    /// `name` is a filesystem path or, starting with `@`, a Linux abstract socket name.
    pub fn new(name: &str) -> Result<Notifier, NotifyError> {
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(Path::new(name))
        } else {
            return Err(NotifyError::Address(name.to_owned()));
        }
        .map_err(|_| NotifyError::Address(name.to_owned()))?;
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        Ok(Notifier {
            socket,
            addr,
            name: name.to_owned(),
        })
    }

    /// Send one notification (lines of `KEY=VALUE`). A datagram is delivered whole or not at
    /// all, and the socket does not block for long: systemd reads it from its main loop.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.addr)
            .map(drop)
            .map_err(|source| NotifyError::Send {
                socket: self.name.clone(),
                source,
            })
    }

    /// Every listener is bound: the service is up.
    pub fn ready(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// A reload begins. `MONOTONIC_USEC` is what systemd 253 and later require with
    /// `Type=notify-reload`, to tell this reload from an earlier one; older versions ignore it.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        let now = monotonic_usec();
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={now}"))
    }

    /// The drain starts; `drain` is how long it may take, so that systemd extends its stop
    /// timeout to cover it (`EXTEND_TIMEOUT_USEC`, systemd 236 and later).
    pub fn stopping(&self, drain: Duration) -> Result<(), NotifyError> {
        self.notify(&format!(
            "STOPPING=1\nEXTEND_TIMEOUT_USEC={}",
            drain.as_micros()
        ))
    }

    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify("WATCHDOG=1")
    }

    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        self.notify(&format!("STATUS={}", one_line(status)))
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
/// advises, when the watchdog is on and meant for this process (`WATCHDOG_PID`, when set, is
/// ours). `None` otherwise, or when the value is not a positive number of microseconds.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_of(&usec, pid.as_deref(), std::process::id())
}

fn watchdog_interval_of(usec: &str, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok()? != own_pid
    {
        return None;
    }
    let usec: u64 = usec.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// `CLOCK_MONOTONIC` in microseconds: the clock systemd compares `MONOTONIC_USEC` with.
/// (std's `Instant` reads the same clock but does not expose its value.)
fn monotonic_usec() -> u128 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(now.tv_sec.unsigned_abs(), now.tv_nsec as u32).as_micros()
}

/// A status is one line of the datagram: a newline would start another assignment.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn watchdog_interval_is_half_and_only_for_this_process() {
        assert_eq!(
            watchdog_interval_of("20000000", None, 7),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            watchdog_interval_of("20000000", Some("7"), 7),
            Some(Duration::from_secs(10))
        );
        assert_eq!(watchdog_interval_of("20000000", Some("8"), 7), None);
        assert_eq!(watchdog_interval_of("0", None, 7), None);
        assert_eq!(watchdog_interval_of("soon", None, 7), None);
    }

    #[test]
    fn notifications_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.to_str().unwrap()).unwrap();
        notifier.ready("serving\n3 devices").unwrap();
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving 3 devices");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("amtgw-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let notifier = Notifier::new(&format!("@{name}")).unwrap();
        notifier.reloading().unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        let usec: u128 = text
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0 && usec <= monotonic_usec(), "{text}");
    }

    #[test]
    fn a_relative_name_is_refused() {
        assert_eq!(
            Notifier::new("notify").unwrap_err().kind(),
            "notify_address"
        );
    }
}
