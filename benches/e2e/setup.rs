//! The stage every figure is measured on: the certificate, the upstreams (rustls, and OpenSSL
//! for amtgw-legacy) and the simulator serving it, the proxies checked to refuse another one and
//! started, and the bare forwarders.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::SupportedCipherSuite;
use rustls_pki_types::CertificateDer;
use tempfile::TempDir;

use crate::helpers::BareForwarder;
use crate::kinds::{Kind, Program};
use crate::machine::{HARNESS_CPU, PROXY_CPU, pinned_cpus};
use crate::measurements::{
    Target, direct_connector, direct_openssl_context, one_connection, timed,
};
use crate::proxies::Proxy;
use crate::upstream::{Handshakes, start_legacy_upstream, start_plain_upstream, start_upstream};
use crate::{
    CertStyle, KeyType, Pin, STEP_TIMEOUT, SimConfig, SimDevice, SimIdentity, generate_amt_identity,
};

/// Each requested proxy (column) with its program, or a note that it is not installed.
pub(crate) fn locate_proxies(kinds: &[Kind], notes: &mut Vec<String>) -> Vec<(Kind, PathBuf)> {
    let mut available = Vec::new();
    for kind in kinds {
        if kind.legacy() && !cfg!(feature = "legacy-tls") {
            let note = format!(
                "{}: amtgw is built without its legacy backend (the legacy-tls feature): skipped",
                kind.name()
            );
            println!("e2e: {note}");
            notes.push(note);
            continue;
        }
        match kind.program().locate() {
            Some(program) => {
                available.push((*kind, program));
                notes.extend(kind.variant_note());
            }
            None => {
                let note = format!(
                    "{}: {} is not installed (or, for nginx, its stream module): skipped; \
                     benches/install-peers.sh installs it",
                    kind.name(),
                    kind.program().name()
                );
                println!("e2e: {note}");
                notes.push(note);
            }
        }
    }
    available
}

/// Two upstreams of one kind serving the certificate.
pub(crate) struct Upstreams {
    /// The one that never resumes (a full handshake per connection).
    pub(crate) full_addr: SocketAddr,
    pub(crate) full_counts: Arc<Handshakes>,
    /// The one that resumes.
    pub(crate) resumed_addr: SocketAddr,
    pub(crate) resumed_counts: Arc<Handshakes>,
}

impl Upstreams {
    /// The full-handshake upstream, or the resuming one: its address and its counts.
    pub(crate) fn pick(&self, resumed: bool) -> (SocketAddr, &Handshakes) {
        if resumed {
            (self.resumed_addr, &self.resumed_counts)
        } else {
            (self.full_addr, &self.full_counts)
        }
    }
}

/// The certificate, what serves it, and the files the proxies are configured with.
pub(crate) struct Stage {
    /// The certificate of every upstream, pinned by every proxy (`leaf_pem`, `pin`).
    cert: CertificateDer<'static>,
    pin: String,
    /// Another certificate of the same shape, for the wrong-pin check (`other_pem`).
    other_pin: String,
    /// rustls, TLS 1.3 and 1.2; resumption by tickets. Every column but amtgw-legacy's, and
    /// the direct one.
    pub(crate) upstreams: Upstreams,
    /// OpenSSL, TLS 1.2 with RSA key exchange only; resumption by session ID. amtgw-legacy's.
    pub(crate) legacy_upstreams: Upstreams,
    /// The upstream's modes over plain TCP, behind the bare forwarders.
    pub(crate) plain_upstream: SocketAddr,
    pub(crate) sim: SimDevice,
    /// The proxies' configurations and logs, `leaf.pem` and `other.pem`.
    dir: TempDir,
    leaf_pem: PathBuf,
    other_pem: PathBuf,
}

impl Stage {
    pub(crate) async fn set_up() -> Stage {
        // The certificate: AMT's shape (RSA-2048, self-signed, every DN field "Unknown", no SAN),
        // served by every upstream and pinned by every proxy.
        let (cert, key) = generate_amt_identity(KeyType::Rsa2048, false, CertStyle::Unknown)
            .expect("certificate");
        let (other_cert, _) = generate_amt_identity(KeyType::Rsa2048, false, CertStyle::Unknown)
            .expect("certificate");
        let pin = Pin::of_certificate(&cert).to_string();
        let other_pin = Pin::of_certificate(&other_cert).to_string();
        let (full_addr, full_counts) = start_upstream(&cert, &key, false).await;
        let (resumed_addr, resumed_counts) = start_upstream(&cert, &key, true).await;
        let upstreams = Upstreams {
            full_addr,
            full_counts,
            resumed_addr,
            resumed_counts,
        };
        let (full_addr, full_counts) = start_legacy_upstream(&cert, &key, false).await;
        let (resumed_addr, resumed_counts) = start_legacy_upstream(&cert, &key, true).await;
        let legacy_upstreams = Upstreams {
            full_addr,
            full_counts,
            resumed_addr,
            resumed_counts,
        };
        let plain_upstream = start_plain_upstream().await;
        let sim = SimDevice::start(SimConfig {
            identity: SimIdentity::Provided {
                chain: vec![cert.clone()],
                key: key.clone_key(),
            },
            ..SimConfig::demo("amt-bench")
        })
        .await
        .expect("simulator");

        let dir = tempfile::tempdir().expect("temporary directory");
        let leaf_pem = dir.path().join("leaf.pem");
        let other_pem = dir.path().join("other.pem");
        std::fs::write(&leaf_pem, pem(&cert)).expect("write leaf.pem");
        std::fs::write(&other_pem, pem(&other_cert)).expect("write other.pem");
        Stage {
            cert,
            pin,
            other_pin,
            upstreams,
            legacy_upstreams,
            plain_upstream,
            sim,
            dir,
            leaf_pem,
            other_pem,
        }
    }

    /// The TLS client straight to the upstream at `addr` (the "direct" column), verifying as the
    /// gateway does; a new one, with a session cache of its own, per call.
    pub(crate) fn direct(&self, addr: SocketAddr) -> Target {
        Target::Direct {
            addr,
            connector: direct_connector(&self.cert),
        }
    }

    /// The upstreams `kind` forwards to.
    pub(crate) fn upstreams_of(&self, kind: Kind) -> &Upstreams {
        if kind.legacy() {
            &self.legacy_upstreams
        } else {
            &self.upstreams
        }
    }

    /// Where `kind`'s three listeners forward: full, resumed, simulator. amtgw-legacy's third
    /// goes to the simulator too, to keep its configuration the same shape, but is not measured
    /// (`Kind::runs_wsman_mix`).
    fn routes_of(&self, kind: Kind) -> [SocketAddr; 3] {
        let upstreams = self.upstreams_of(kind);
        [
            upstreams.full_addr,
            upstreams.resumed_addr,
            self.sim.wsman_addr(),
        ]
    }

    /// The direct client to the resuming upstream `kind` forwards to: what its added latency is
    /// measured against. For amtgw-legacy, OpenSSL over TLS 1.2 with RSA key exchange.
    pub(crate) fn direct_to_resumed(&self, kind: Kind) -> Target {
        if kind.legacy() {
            Target::DirectOpenSsl {
                addr: self.legacy_upstreams.resumed_addr,
                context: direct_openssl_context(&self.cert),
            }
        } else {
            self.direct(self.upstreams.resumed_addr)
        }
    }

    /// Start `kind` trusting exactly the upstreams' certificate, sized for `capacity` sessions.
    pub(crate) async fn proxy(
        &self,
        kind: Kind,
        program: &Path,
        label: &str,
        capacity: usize,
    ) -> Proxy {
        Proxy::start(
            kind,
            program,
            self.dir.path(),
            &self.leaf_pem,
            &self.pin,
            self.routes_of(kind),
            label,
            capacity,
        )
        .await
    }

    /// Every proxy, configured with another certificate, must refuse the upstream.
    pub(crate) async fn check_refusals(&self, available: &[(Kind, PathBuf)]) {
        for (kind, program) in available {
            let proxy = Proxy::start(
                *kind,
                program,
                self.dir.path(),
                &self.other_pem,
                &self.other_pin,
                self.routes_of(*kind),
                "wrong-pin",
                256,
            )
            .await;
            let full_counts = &self.upstreams_of(*kind).full_counts;
            let completed = check_refuses_wrong_pin(&proxy, full_counts).await;
            println!(
                "e2e: {} refuses a certificate it does not pin ({})",
                kind.name(),
                if completed {
                    "handshake completed, then closed before any data"
                } else {
                    "handshake aborted"
                }
            );
        }
    }

    /// The proxies measured for the whole run, each checked to pass an echo and noted with what
    /// it negotiated, then at rest; and the suite the first amtgw negotiated with rustls.
    pub(crate) async fn start_proxies(
        &self,
        available: &[(Kind, PathBuf)],
        max_idle: usize,
        notes: &mut Vec<String>,
    ) -> (Vec<Proxy>, Option<SupportedCipherSuite>) {
        let mut proxies = Vec::new();
        let mut amtgw_negotiated = None;
        for (kind, program) in available {
            let proxy = self.proxy(*kind, program, "bench", max_idle + 1024).await;
            let via = Target::Plain(proxy.routes.full.0);
            timed("first connection", one_connection(&via))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: no echo through the proxy: {e}\n{}",
                        kind.name(),
                        proxy.log_tail()
                    )
                });
            let negotiated = self
                .upstreams_of(*kind)
                .full_counts
                .last_negotiated()
                .expect("the upstream records every handshake");
            notes.push(format!(
                "{} negotiates {negotiated} with the upstream",
                kind.name()
            ));
            if kind.program() == Program::Amtgw
                && let Some(suite) = negotiated.rustls_suite()
            {
                amtgw_negotiated.get_or_insert(suite);
            }
            proxy.rest();
            proxies.push(proxy);
        }
        (proxies, amtgw_negotiated)
    }

    /// What the rustls in-memory rate uses: what amtgw negotiated with the rustls upstream;
    /// without amtgw (but amtgw-legacy) in the run, what the direct client does, which is
    /// amtgw's own client config. Noted.
    pub(crate) async fn in_memory_suite(
        &self,
        amtgw_negotiated: Option<SupportedCipherSuite>,
        bulk_mb: u64,
        notes: &mut Vec<String>,
    ) -> SupportedCipherSuite {
        let suite = match amtgw_negotiated {
            Some(suite) => suite,
            None => {
                timed(
                    "direct connection",
                    one_connection(&self.direct(self.upstreams.full_addr)),
                )
                .await
                .expect("direct connection to the upstream");
                self.upstreams
                    .full_counts
                    .last_negotiated()
                    .and_then(|negotiated| negotiated.rustls_suite())
                    .expect("the upstream records every handshake")
            }
        };
        notes.push(format!(
            "rustls in memory: {:?} over {:?} from amtgw's provider (aws-lc-rs), RSA-2048 \
             handshake, {} MiB in 16 KiB writes, one thread{}",
            suite.suite(),
            suite.version().version,
            bulk_mb,
            if pinned_cpus() {
                format!(" on CPU {PROXY_CPU}")
            } else {
                String::new()
            },
        ));
        suite
    }

    pub(crate) async fn shut_down(self) {
        self.sim.shutdown().await;
    }
}

/// Bare TCP forwarders in front of the plain echo: on the proxies' CPU, every hop crosses CPUs
/// as it does through a proxy; on the harness's CPU, none does.
pub(crate) async fn start_forwarders(plain_upstream: SocketAddr) -> Vec<BareForwarder> {
    let placements: &[(&'static str, &'static str)] = if pinned_cpus() {
        &[
            (PROXY_CPU, " on the proxies' CPU"),
            (HARNESS_CPU, " on the harness's CPU"),
        ]
    } else {
        &[(PROXY_CPU, ", unpinned")]
    };
    let mut forwarders = Vec::new();
    for &(cpu, placement) in placements {
        let forwarder = tokio::task::spawn_blocking(move || {
            BareForwarder::start(cpu, placement, plain_upstream)
        })
        .await
        .expect("forwarder start");
        forwarders.push(forwarder);
    }
    forwarders
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A proxy configured with another certificate's pin must refuse the upstream: no byte may
/// reach it. (nginx completes the handshake and checks the result afterwards, closing before
/// any data; the others abort the handshake.)
async fn check_refuses_wrong_pin(proxy: &Proxy, upstream: &Handshakes) -> bool {
    let before = upstream.snapshot().0;
    let target = Target::Plain(proxy.routes.full.0);
    let result = tokio::time::timeout(STEP_TIMEOUT, one_connection(&target)).await;
    match result {
        Ok(Ok(_)) => panic!(
            "{} forwarded to an upstream whose certificate is not pinned: verification is off",
            proxy.kind.name()
        ),
        Ok(Err(_)) => {}
        Err(_) => panic!("{}: wrong-pin check hung", proxy.kind.name()),
    }
    upstream.snapshot().0 != before
}
