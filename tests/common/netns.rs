//! Network namespaces a test makes for itself, for what only a network shows: consoles dialling
//! devices' own addresses, diverted to the gateway by the kernel (NAT REDIRECT, TPROXY).
//!
//! A [`Lab`] is three namespaces joined by veth pairs, addressed like the README's example
//! network (private to the namespaces, so fixed addresses and ports are safe):
//!
//! ```text
//!   console              gateway                        devices
//!   c0 10.10.0.2/24 ---- g0 10.10.0.1/24   g1 10.20.0.1/16 ---- d0 10.20.0.11/16, ...
//!      fd00:10::2/64        fd00:10::1/64     fd00:20::1/64        fd00:20::11/64, ...
//! ```
//!
//! The console's default route is the gateway; the gateway does not forward, so a console
//! reaches a device only through what runs on the gateway. Namespace names carry the test
//! process's id and a tag, so parallel tests and concurrent runs never meet; they are deleted
//! when the `Lab` drops.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use super::clients::{Spawned, command_in, curl_in, require_program};

/// One network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn add(tag: &str) -> Netns {
        let name = format!("amtgw-{}-{tag}", std::process::id());
        // A namespace left by a killed earlier run of the same pid would make `add` fail.
        let _ = Command::new(ip()).args(["netns", "del", &name]).output();
        run(Command::new(ip()).args(["netns", "add", &name]));
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new(ip()).args(["-n", &self.name]).args(args));
    }

    /// `PROGRAM ARGS...` inside the namespace, which must succeed.
    pub fn exec(&self, program: &str, args: &[&str]) {
        run(command_in(Some(&self.name), &require_program(&[program])).args(args));
    }

    /// A long-running `PROGRAM ARGS...` inside the namespace, killed when dropped.
    pub fn spawn(&self, program: &Path, args: &[&str]) -> Spawned {
        Spawned::start(command_in(Some(&self.name), program).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new(ip())
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn ip() -> std::path::PathBuf {
    require_program(&["ip"])
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether this process may make namespaces. CI and the test machines run as root; anywhere
/// else the caller skips its test, and says so loudly rather than passing in silence.
pub fn root_or_say_skipped(test: &str) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:	real	effective	saved	fs"
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if effective == "0" {
        return true;
    }
    eprintln!(
        "\n*** SKIPPED {test}: network namespace tests need root (ip netns, nft); they run in \
         CI. Run `sudo -E cargo test --test transparent` to run them here. ***\n"
    );
    false
}

/// The console, gateway and device namespaces, wired as the module doc shows.
pub struct Lab {
    pub console: Netns,
    pub gateway: Netns,
    pub devices: Netns,
}

/// The gateway's address towards the consoles.
pub const GATEWAY_V4: &str = "10.10.0.1";

impl Lab {
    /// Namespaces tagged `tag`; `devices` are the addresses the device namespace answers on.
    pub fn new(tag: &str, devices: &[IpAddr]) -> Lab {
        let lab = Lab {
            console: Netns::add(&format!("{tag}-c")),
            gateway: Netns::add(&format!("{tag}-g")),
            devices: Netns::add(&format!("{tag}-d")),
        };
        let (g, d) = (lab.gateway.name(), lab.devices.name());
        lab.console.ip(&[
            "link", "add", "c0", "type", "veth", "peer", "name", "g0", "netns", g,
        ]);
        lab.gateway.ip(&[
            "link", "add", "g1", "type", "veth", "peer", "name", "d0", "netns", d,
        ]);
        // nodad: an address still in duplicate detection cannot be bound yet.
        for (netns, link, addresses) in [
            (&lab.console, "c0", &["10.10.0.2/24", "fd00:10::2/64"][..]),
            (&lab.gateway, "g0", &["10.10.0.1/24", "fd00:10::1/64"][..]),
            (&lab.gateway, "g1", &["10.20.0.1/16", "fd00:20::1/64"][..]),
        ] {
            for address in addresses {
                netns.ip(&["addr", "add", address, "dev", link, "nodad"]);
            }
            netns.ip(&["link", "set", link, "up"]);
        }
        for device in devices {
            let prefix = if device.is_ipv4() { 16 } else { 64 };
            let address = format!("{device}/{prefix}");
            lab.devices
                .ip(&["addr", "add", &address, "dev", "d0", "nodad"]);
        }
        lab.devices.ip(&["link", "set", "d0", "up"]);
        lab.console
            .ip(&["route", "add", "default", "via", "10.10.0.1"]);
        lab.console
            .ip(&["-6", "route", "add", "default", "via", "fd00:10::1"]);
        lab
    }

    /// `/metrics` of the gateway running in the gateway namespace (default admin address).
    pub async fn metrics(&self) -> super::Metrics {
        let output = curl_in(
            Some(self.gateway.name()),
            vec!["--fail".into(), "http://127.0.0.1:9716/metrics".into()],
        )
        .await;
        assert!(
            output.status.success(),
            "scraping the gateway failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        super::Metrics(String::from_utf8(output.stdout).unwrap())
    }
}
