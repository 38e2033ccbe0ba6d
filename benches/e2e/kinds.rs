//! The columns of the table: the programs the harness runs as proxies, and the configurations
//! (kinds) it runs them in.

use std::path::{Path, PathBuf};

use crate::machine::{command_output, pinned_cpus};
use crate::proxies::nginx_stream;

/// A program the harness runs as a proxy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Program {
    Amtgw,
    Stunnel,
    Haproxy,
    Nginx,
}

impl Program {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Program::Amtgw => "amtgw",
            Program::Stunnel => "stunnel",
            Program::Haproxy => "haproxy",
            Program::Nginx => "nginx",
        }
    }

    pub(crate) fn locate(self) -> Option<PathBuf> {
        let names: &[&str] = match self {
            Program::Amtgw => {
                let path = std::env::var("E2E_AMTGW_BIN")
                    .unwrap_or_else(|_| env!("CARGO_BIN_EXE_amtgw").to_owned());
                return Some(PathBuf::from(path)).filter(|p| p.exists());
            }
            Program::Stunnel => &["stunnel4", "stunnel"],
            Program::Haproxy => &["haproxy"],
            Program::Nginx => &["nginx"],
        };
        let path = std::env::var("PATH").unwrap_or_default();
        let dirs = path
            .split(':')
            .map(PathBuf::from)
            .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
        let dirs: Vec<PathBuf> = dirs.collect();
        let found = names
            .iter()
            .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
            .find(|p| p.is_file());
        // An nginx without the stream module (built in, or Debian's libnginx-mod-stream) has
        // nothing to compare.
        found.filter(|p| self != Program::Nginx || nginx_stream(p).is_some())
    }

    fn version(self, program: &Path) -> String {
        let program = program.to_string_lossy();
        let text = match self {
            Program::Amtgw => command_output(&program, &["--version"]),
            Program::Stunnel => command_output(&program, &["-version"]).map(|t| {
                t.lines()
                    .find(|l| l.starts_with("stunnel"))
                    .unwrap_or_default()
                    .to_owned()
            }),
            Program::Haproxy => command_output(&program, &["-v"]),
            Program::Nginx => command_output(&program, &["-v"]),
        };
        text.and_then(|t| t.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown version".into())
    }
}

/// `busy_poll` of amtgw-busy-poll: E2E_BUSY_POLL, as amtgw's config spells a duration.
pub(crate) fn amtgw_busy_poll() -> String {
    std::env::var("E2E_BUSY_POLL").unwrap_or_else(|_| "200us".to_owned())
}

/// `nbthread` of haproxy-busy-polling: one per CPU it may run on, as threads that never sleep
/// must not share one (like amtgw's workers by default).
pub(crate) fn haproxy_busy_polling_threads() -> usize {
    if pinned_cpus() { 1 } else { 2 }
}

/// A column of the table: a program in one configuration. The busy-polling variants exist
/// because on a VM waking a sleeping vCPU is slow (see the README): what a proxy gains by not
/// sleeping, and what that costs in CPU, is a comparison of its own.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Amtgw,
    /// amtgw with `gateway.busy_poll`: polls on after a connection's last read, for a while.
    AmtgwBusyPoll,
    /// amtgw with `tls_backend = "legacy"` toward devices that speak only TLS 1.2 with RSA key
    /// exchange, as AMT 11 and 12 do: what reaching such a device through OpenSSL costs.
    AmtgwLegacy,
    Stunnel,
    Haproxy,
    /// HAProxy with `busy-polling`: never sleeps, connections or not.
    HaproxyBusyPolling,
    Nginx,
}

impl Kind {
    /// Also the column order.
    pub(crate) const ALL: [Kind; 7] = [
        Kind::Amtgw,
        Kind::AmtgwBusyPoll,
        Kind::AmtgwLegacy,
        Kind::Stunnel,
        Kind::Haproxy,
        Kind::HaproxyBusyPolling,
        Kind::Nginx,
    ];

    pub(crate) fn parse(name: &str) -> Kind {
        if name == "stunnel4" {
            return Kind::Stunnel;
        }
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                panic!("E2E_PROXIES: unknown proxy {name:?} ({})", names.join(", "))
            })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::AmtgwBusyPoll => "amtgw-busy-poll",
            Kind::AmtgwLegacy => "amtgw-legacy",
            Kind::HaproxyBusyPolling => "haproxy-busy-polling",
            other => other.program().name(),
        }
    }

    pub(crate) fn program(self) -> Program {
        match self {
            Kind::Amtgw | Kind::AmtgwBusyPoll | Kind::AmtgwLegacy => Program::Amtgw,
            Kind::Stunnel => Program::Stunnel,
            Kind::Haproxy | Kind::HaproxyBusyPolling => Program::Haproxy,
            Kind::Nginx => Program::Nginx,
        }
    }

    /// Polls instead of sleeping (some of the time): compared only with its like, see
    /// `Comparison`.
    pub(crate) fn busy_polls(self) -> bool {
        matches!(self, Kind::AmtgwBusyPoll | Kind::HaproxyBusyPolling)
    }

    /// Forwards to the legacy upstreams (OpenSSL, TLS 1.2 with RSA key exchange only) instead
    /// of the rustls ones, through amtgw's legacy backend.
    pub(crate) fn legacy(self) -> bool {
        self == Kind::AmtgwLegacy
    }

    /// Whether the WS-Man mix can be measured through this column. The mix runs against the
    /// simulator, which speaks only what rustls does: a legacy column measured against it would
    /// show a TLS 1.2 ECDHE handshake, not the RSA key exchange the column is about.
    pub(crate) fn runs_wsman_mix(self) -> bool {
        !self.legacy()
    }

    /// Burns its CPU even with no connection open. Left running, it would take the proxies'
    /// CPU from every other proxy and helper measured there, so it runs only during its own
    /// turns (`Proxy::turn`).
    pub(crate) fn spins_when_idle(self) -> bool {
        self == Kind::HaproxyBusyPolling
    }

    /// How a variant's configuration differs from its program's default one, for the header.
    pub(crate) fn variant_note(self) -> Option<String> {
        match self {
            Kind::AmtgwBusyPoll => Some(format!(
                "amtgw-busy-poll is amtgw with `busy_poll = \"{}\"` in [gateway] (E2E_BUSY_POLL): \
                 after a connection's last read it polls that long before sleeping",
                amtgw_busy_poll()
            )),
            Kind::AmtgwLegacy => Some(
                "amtgw-legacy is amtgw with `tls_backend = \"legacy\"` and `tls_versions = \
                 [\"1.2\"]` in [defaults] (its OpenSSL backend), forwarding to upstreams of its own \
                 that speak only TLS 1.2 with `AES128-GCM-SHA256` (TLS_RSA_WITH_AES_128_GCM_SHA256, \
                 RSA key exchange), as AMT 11 and 12 offer; its added latency is measured against a \
                 direct OpenSSL client to them (not in the direct column), its WS-Man rows are n/a \
                 (the simulator has no OpenSSL-served TLS 1.2 RSA key exchange profile yet), and \
                 `amtgw-legacy ÷ amtgw` is its cost relative to amtgw, not a verdict"
                    .to_owned(),
            ),
            Kind::HaproxyBusyPolling => Some(format!(
                "haproxy-busy-polling is haproxy with `busy-polling` in its global section and \
                 `nbthread {}` (one per CPU it may run on, as spinning threads must not share \
                 one): its threads never sleep, so it is paused (SIGSTOP) outside its own \
                 measurements",
                haproxy_busy_polling_threads()
            )),
            _ => None,
        }
    }
}

/// "amtgw and amtgw-busy-poll (amtgw 0.1.0)", …: each program asked for its version once,
/// named with every column it runs as.
pub(crate) fn program_versions(available: &[(Kind, PathBuf)]) -> Vec<String> {
    let mut programs: Vec<(Program, Vec<&str>, String)> = Vec::new();
    for (kind, path) in available {
        match programs.iter_mut().find(|(p, ..)| *p == kind.program()) {
            Some((_, names, _)) => names.push(kind.name()),
            None => programs.push((
                kind.program(),
                vec![kind.name()],
                kind.program().version(path),
            )),
        }
    }
    programs
        .into_iter()
        .map(|(_, names, version)| format!("{} ({version})", names.join(" and ")))
        .collect()
}
