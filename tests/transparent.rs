//! Transparent routing, end to end, in network namespaces the tests make (`common::netns`):
//! consoles in one namespace dial the devices' own addresses on the plain ports; the gateway
//! namespace diverts those connections to amtgw with exactly the nftables rules (and, for
//! TPROXY, the policy routes) in `deploy/transparent/`, and runs `amtgw run` on exactly
//! `config/transparent.toml`, the files the README shows; simulated devices (`amtgw sim`) in a
//! third namespace answer on the TLS ports. The consoles are `curl --digest` and `amtterm`.
//!
//! These need root (CI runs them as root); elsewhere each test says loudly that it skipped.

// Tests may unwrap (the crate lints against it for gateway code): a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use common::Metrics;
use common::clients::*;
use common::netns::{GATEWAY_V4, Lab, root_or_say_skipped};

/// The simulated devices: the host names they report, and their addresses. With
/// `config/transparent.toml`, 10.20.0.12 is a listed device (named `amt-12`); the others are
/// devices of its ranges, named by their address.
const DEVICES: [(&str, &str); 3] = [
    ("amt-11", "10.20.0.11"),
    ("amt-12", "10.20.0.12"),
    ("amt-v6", "fd00:20::11"),
];

/// The gateway's address on the devices' network: inside the range 10.20.0.0/16.
const GATEWAY_IN_RANGE: &str = "10.20.0.1";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Redirect,
    Tproxy,
}

/// A lab with its programs running. Fields drop in order: the programs are killed before the
/// namespaces go.
struct Transparent {
    gateway: Spawned,
    _devices: Vec<Spawned>,
    lab: Lab,
    dir: tempfile::TempDir,
}

fn amtgw() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_amtgw"))
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// The lab, the devices, the network rules of `mode` and the gateway on the shipped config.
async fn start(tag: &str, mode: Mode) -> Transparent {
    let config = std::fs::read_to_string(repo_path("config/transparent.toml")).unwrap();
    start_with(tag, mode, config, |_| Vec::new()).await
}

/// [`start`] with another configuration (a file of its own in the gateway's directory may be
/// written by `device_args`), each device started with the extra `amtgw sim` arguments
/// `device_args` gives for its address (given the directory).
async fn start_with(
    tag: &str,
    mode: Mode,
    mut config: String,
    device_args: impl Fn(&Path) -> Vec<(&'static str, Vec<String>)>,
) -> Transparent {
    let addresses: Vec<IpAddr> = DEVICES.iter().map(|(_, ip)| ip.parse().unwrap()).collect();
    let lab = Lab::new(tag, &addresses);
    let dir = tempfile::tempdir().unwrap();
    let extra = device_args(dir.path());

    let mut devices = Vec::new();
    for (name, ip) in DEVICES {
        // The TLS ports, 16993, 16995 and 664, on the device's own address.
        let mut args: Vec<String> = ["sim", "--name", name, "--bind", ip]
            .map(str::to_owned)
            .to_vec();
        if let Some((_, more)) = extra.iter().find(|(at, _)| *at == ip) {
            args.extend(more.iter().cloned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut sim = lab.devices.spawn(amtgw(), &args);
        sim.expect(&format!("simulated AMT device {name}")).await;
        devices.push(sim);
    }

    let deploy = |file: &str| {
        repo_path(&format!("deploy/transparent/{file}"))
            .display()
            .to_string()
    };
    match mode {
        Mode::Redirect => lab.gateway.exec("nft", &["-f", &deploy("redirect.nft")]),
        Mode::Tproxy => {
            lab.gateway.exec("nft", &["-f", &deploy("tproxy.nft")]);
            lab.gateway.exec("sh", &[&deploy("tproxy-routes.sh")]);
            // What the config's own comment tells a TPROXY user to do, and nothing else.
            assert_eq!(config.matches("routing = \"redirect\"").count(), 3);
            config = config.replace("routing = \"redirect\"", "routing = \"tproxy\"");
        }
    }
    let path = dir.path().join("amtgw.toml");
    std::fs::write(&path, config).unwrap();

    let mut gateway = lab
        .gateway
        .spawn(amtgw(), &["run", "--config", path.to_str().unwrap()]);
    // Logged once every listener is bound.
    gateway.expect("admin listening").await;
    Transparent {
        gateway,
        _devices: devices,
        lab,
        dir,
    }
}

impl Transparent {
    fn console(&self) -> Option<&str> {
        Some(self.lab.console.name())
    }

    /// A WS-Man Get to `to` from the console namespace, which the gateway must refuse.
    async fn refused(&self, to: SocketAddr) {
        let output = curl_in(self.console(), vec![wsman_url(to)]).await;
        assert!(
            !output.status.success(),
            "the gateway answered a connection to {to}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
}

/// Every failure the gateway counted, as `service/reason=count`.
fn failures(metrics: &Metrics) -> Vec<String> {
    metrics
        .0
        .lines()
        .filter_map(|line| line.strip_prefix("amtgw_connections_failed_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
            };
            Some(format!(
                "{}/{}={value}",
                label("service")?,
                label("reason")?
            ))
        })
        .collect()
}

/// WS-Man over IPv4 and IPv6 with digest authentication, a whole SOL session and a DASH
/// request, each to a device's own address, each reaching that very device: range devices
/// named by their address, the listed device by its name, and every one's certificate learnt
/// under that name.
async fn consoles_reach_every_device_at_its_own_address(lab: &mut Transparent) {
    let console_netns = lab.lab.console.name().to_owned();
    let console = Some(console_netns.as_str());
    let body = curl_get_settings_in(console, addr("10.20.0.11", 16992)).await;
    assert_general_settings(&body, "amt-11", "WS-Man to 10.20.0.11");
    lab.gateway.expect(r#"device="10.20.0.11""#).await;
    lab.gateway.expect("destination=10.20.0.11:16992").await;
    let body = curl_get_settings_in(console, addr("fd00:20::11", 16992)).await;
    assert_general_settings(&body, "amt-v6", "WS-Man to fd00:20::11");
    let body = curl_soap_in(console, addr("10.20.0.12", 623), identify_xml(), &[]).await;
    assert_identify_response(&body, "DASH to 10.20.0.12");
    amtterm_session_in(console, addr("10.20.0.12", 16994), "amt-12").await;
    lab.gateway.expect(r#"device="amt-12""#).await;
    lab.gateway.expect("destination=10.20.0.12:16994").await;

    let store = amtgw::tls::PinStore::open(&lab.dir.path().join("amtgw-pins.toml")).unwrap();
    for name in ["10.20.0.11", "fd00:20::11", "amt-12"] {
        assert!(store.get(name).is_some(), "no pin learnt for {name}");
    }

    let metrics = lab.lab.metrics().await;
    assert_eq!(failures(&metrics), Vec::<String>::new(), "{}", metrics.0);
    // curl --digest may open a second connection after the 401, as AMT closes after it.
    for service in ["wsman", "redirection", "dash"] {
        let established = metrics.value(
            "amtgw_connections_established_total",
            &[("service", service)],
        );
        assert!(established >= 1.0, "{service}: {}", metrics.0);
    }
}

// ---------------------------------------------------------------------------------------------
// NAT REDIRECT

#[tokio::test]
async fn consoles_reach_devices_at_their_own_addresses_through_nat_redirect() {
    if !root_or_say_skipped("consoles_reach_devices_at_their_own_addresses_through_nat_redirect") {
        return;
    }
    let mut lab = start("rr", Mode::Redirect).await;
    consoles_reach_every_device_at_its_own_address(&mut lab).await;
}

#[tokio::test]
async fn redirect_refuses_an_address_of_no_device_as_no_route() {
    if !root_or_say_skipped("redirect_refuses_an_address_of_no_device_as_no_route") {
        return;
    }
    let lab = start("rn", Mode::Redirect).await;
    // Diverted like any console connection to 16992, but outside every range and no listed
    // device's.
    lab.refused(addr("192.0.2.7", 16992)).await;
    let metrics = lab.lab.metrics().await;
    assert_eq!(failures(&metrics), ["wsman/no_route=1"], "{}", metrics.0);
}

#[tokio::test]
async fn redirect_refuses_the_gateways_own_address_as_a_loop() {
    if !root_or_say_skipped("redirect_refuses_the_gateways_own_address_as_a_loop") {
        return;
    }
    let lab = start("rl", Mode::Redirect).await;
    // An address of the gateway inside a range: a device there would be the gateway itself.
    lab.refused(addr(GATEWAY_IN_RANGE, 16992)).await;
    let metrics = lab.lab.metrics().await;
    assert_eq!(failures(&metrics), ["wsman/loop=1"], "{}", metrics.0);
}

/// A reload (SIGHUP) applies changed ranges to new connections: a removed range's devices are
/// no route any more, a range's new settings hold for its devices' next connections.
#[tokio::test]
async fn a_reload_applies_changed_ranges_to_new_connections() {
    if !root_or_say_skipped("a_reload_applies_changed_ranges_to_new_connections") {
        return;
    }
    let mut lab = start("rc", Mode::Redirect).await;
    let console_netns = lab.lab.console.name().to_owned();
    let console = Some(console_netns.as_str());
    curl_get_settings_in(console, addr("fd00:20::11", 16992)).await;
    curl_get_settings_in(console, addr("10.20.0.11", 16992)).await;

    let path = lab.dir.path().join("amtgw.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let without_v6 = "[[ranges]]\ncidr = \"fd00:20::/64\"\ntrust = \"tofu\"\n";
    assert!(config.contains(without_v6));
    let config = config.replace(without_v6, "").replace(
        "cidr = \"10.20.0.0/16\"\ntrust = \"tofu\"\n",
        "cidr = \"10.20.0.0/16\"\ntrust = \"tofu\"\nports = { wsman = 16995 }\n",
    );
    std::fs::write(&path, config).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &lab.gateway.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    lab.gateway.expect("configuration reloaded").await;

    lab.refused(addr("fd00:20::11", 16992)).await;
    // WS-Man now goes to the device's redirection port, which answers TLS but not HTTP: the
    // new setting is in force for the device already made under the old one.
    lab.refused(addr("10.20.0.11", 16992)).await;
    lab.gateway.expect("device_addr=10.20.0.11:16995").await;
    let metrics = lab.lab.metrics().await;
    let failed = failures(&metrics);
    assert!(
        failed.contains(&"wsman/no_route=1".to_owned()),
        "{failed:?}"
    );
}

/// A range trusting by CA: a device whose certificate, from that CA, names its own address is
/// reached; one whose certificate names another address is refused as `name_mismatch`.
#[tokio::test]
async fn a_ca_range_checks_each_device_certificate_against_the_dialled_address() {
    if !root_or_say_skipped("a_ca_range_checks_each_device_certificate_against_the_dialled_address")
    {
        return;
    }
    let ca = common::TestCa::new("amtgw test fleet CA");
    let config = r#"
[services.wsman]
routing = "redirect"
bind = ["::"]

[services.redirection]
routing = "redirect"
bind = ["::"]

[services.dash]
routing = "redirect"
bind = ["::"]

[[ranges]]
cidr = "10.20.0.0/16"
trust = "ca"
ca_file = "ca.pem"
"#;
    let certificates = |dir: &Path| {
        ca.write_pem(dir, "ca");
        let own = ca.server(&["10.20.0.11"]).write_pem(dir, "own");
        let other = ca.server(&["10.20.0.11"]).write_pem(dir, "other");
        let args = |(cert, key): (String, String)| vec!["--cert".into(), cert, "--key".into(), key];
        vec![("10.20.0.11", args(own)), ("10.20.0.12", args(other))]
    };
    let lab = start_with("ca", Mode::Redirect, config.to_owned(), certificates).await;
    let console = lab.console();
    let body = curl_get_settings_in(console, addr("10.20.0.11", 16992)).await;
    assert_general_settings(&body, "amt-11", "WS-Man to 10.20.0.11");
    let metrics = lab.lab.metrics().await;
    assert_eq!(failures(&metrics), Vec::<String>::new(), "{}", metrics.0);

    // The certificate 10.20.0.12 presents is the CA's, but for 10.20.0.11.
    lab.refused(addr("10.20.0.12", 16992)).await;
    let metrics = lab.lab.metrics().await;
    assert_eq!(
        failures(&metrics),
        ["wsman/name_mismatch=1"],
        "{}",
        metrics.0
    );
}

// ---------------------------------------------------------------------------------------------
// TPROXY

#[tokio::test]
async fn consoles_reach_devices_at_their_own_addresses_through_tproxy() {
    if !root_or_say_skipped("consoles_reach_devices_at_their_own_addresses_through_tproxy") {
        return;
    }
    let mut lab = start("tr", Mode::Tproxy).await;
    consoles_reach_every_device_at_its_own_address(&mut lab).await;
}

#[tokio::test]
async fn tproxy_refuses_an_address_of_no_device_as_no_route() {
    if !root_or_say_skipped("tproxy_refuses_an_address_of_no_device_as_no_route") {
        return;
    }
    let lab = start("tn", Mode::Tproxy).await;
    lab.refused(addr("192.0.2.7", 16992)).await;
    let metrics = lab.lab.metrics().await;
    assert_eq!(failures(&metrics), ["wsman/no_route=1"], "{}", metrics.0);
}

#[tokio::test]
async fn tproxy_refuses_the_gateways_own_address_as_a_loop() {
    if !root_or_say_skipped("tproxy_refuses_the_gateways_own_address_as_a_loop") {
        return;
    }
    let lab = start("tl", Mode::Tproxy).await;
    // The gateway's address towards the consoles, outside every range: a loop all the same.
    lab.refused(addr(GATEWAY_V4, 16992)).await;
    let metrics = lab.lab.metrics().await;
    assert_eq!(failures(&metrics), ["wsman/loop=1"], "{}", metrics.0);
}

// ---------------------------------------------------------------------------------------------
// The README shows what the tests run

/// The README's transparent-routing section shows each file these tests use, verbatim.
#[test]
fn the_readme_shows_the_transparent_deploy_files_verbatim() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    for file in [
        "config/transparent.toml",
        "deploy/transparent/redirect.nft",
        "deploy/transparent/tproxy.nft",
        "deploy/transparent/tproxy-routes.sh",
    ] {
        let text = std::fs::read_to_string(repo_path(file)).unwrap();
        assert!(
            readme.contains(&format!("\n{text}```\n")),
            "README.md does not show {file} verbatim in a code block"
        );
    }
}
