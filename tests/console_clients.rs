//! Console software nobody here wrote, managing the simulated device through amtgw: the PyPI
//! `amt` package (`amtctrl` and its `amt.client.Client`, derived from OpenStack Ironic's AMT
//! driver) powers the host off, on and through a cycle, sets a one-time PXE boot and reads
//! and enables KVM; curl enumerates over several pages; amtterm's serial console shows the
//! host power down and boot when curl asks for it. Each step is checked against what the
//! simulator's host now reports, not only against the client's output.
//!
//! The `amt` package comes from PyPI into a virtualenv (`scripts/install-amt-client.sh`, run by
//! `scripts/install-test-deps.sh`); curl from Debian. A missing program fails the test rather
//! than skipping it. The package runs unchanged: it dials port 16992 only (no port option), so
//! the gateway listens on 16992 of this process's private loopback address; it reads the
//! password from stdin with `-p` when stdin is not a terminal.

// Tests may unwrap (the crate lints against it for gateway code): a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::process::Command;

use amtgw::Service;
use amtgw_sim::{BootSource, DEMO_PASSWORD, DEMO_USERNAME, PowerState, SimDevice};
use common::clients::*;
use common::loopback::private_loopback;

/// The only port the `amt` package dials (plain HTTP; 16993 would be its TLS).
const AMT_PACKAGE_PORT: u16 = 16992;

fn amtctrl_program() -> std::path::PathBuf {
    venv_program("AMTCTRL", "amt", "amtctrl", "install-amt-client.sh")
}

/// A program of the `amt` venv, run against `address` with the demo password on stdin and no
/// HTTP proxy from the environment (requests would honour one); returns what it printed.
async fn run_amt(
    program: &std::path::Path,
    args: &[&str],
    config_home: &std::path::Path,
) -> String {
    let mut command = Command::new(program);
    command
        .args(args)
        // amtctrl opens its host database (~/.config/amtctrl) even with -p.
        .env("XDG_CONFIG_HOME", config_home);
    for proxy in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
        command.env_remove(proxy);
    }
    let mut run = Spawned::start(&mut command);
    run.send(format!("{DEMO_PASSWORD}\n").as_bytes());
    let status = run.wait_exit().await;
    let output = run.transcript();
    // amtctrl exits 0 even when it printed "Error: ..." for an HTTP error, so look.
    assert!(
        status.success() && !output.contains("Error") && !output.contains("Traceback"),
        "{} {args:?} ({status}):\n{output}",
        program.display()
    );
    output
}

struct Console {
    address: Ipv4Addr,
    config_home: tempfile::TempDir,
}

impl Console {
    async fn amtctrl(&self, command: &str) -> String {
        let address = self.address.to_string();
        run_amt(
            &amtctrl_program(),
            &["-p", &address, command],
            self.config_home.path(),
        )
        .await
    }

    /// `amt.client.Client(address, password).<method>()` through the package's API, for what
    /// amtctrl has no command of its own (the PXE next boot without the cycle `pxeboot` adds).
    async fn client(&self, method: &str) -> String {
        let python = amtctrl_program().with_file_name("python");
        let script = format!(
            "import sys, amt.client\n\
             client = amt.client.Client(sys.argv[1], sys.stdin.readline().rstrip('\\n'), username=sys.argv[2])\n\
             print(client.{method}())"
        );
        let address = self.address.to_string();
        run_amt(
            &python,
            &["-c", &script, &address, DEMO_USERNAME],
            self.config_home.path(),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amt_package_powers_boots_and_reads_kvm_through_the_gateway() {
    let sim = amtgw_sim::SimDevice::start(amtgw_sim::SimConfig::demo("console-amt"))
        .await
        .unwrap();
    let address = private_loopback();
    let pin = amtgw::tls::Pin::of_certificate(&sim.certificate()).to_string();
    let _gateway = gateway_listening(
        &sim,
        &format!("trust = \"pin\"\npins = [\"{pin}\"]"),
        "",
        &format!("listen_port = {AMT_PACKAGE_PORT}\nbind = [\"{address}\"]"),
    )
    .await;
    let console = Console {
        address,
        config_home: tempfile::tempdir().unwrap(),
    };

    // Power: status, off, status, on, cycle.
    assert_eq!(console.amtctrl("status").await.trim(), "on");
    // On success the power commands print nothing (a ReturnValue other than 0 is printed).
    assert_eq!(console.amtctrl("off").await, "");
    assert_eq!(sim.host().power, PowerState::Off);
    assert_eq!(console.amtctrl("status").await.trim(), "off");
    let boots = sim.host().boots;
    assert_eq!(console.amtctrl("on").await, "");
    assert_eq!(
        (sim.host().power, sim.host().boots),
        (PowerState::On, boots + 1)
    );
    assert_eq!(console.amtctrl("reboot").await, "");
    assert_eq!(sim.host().boots, boots + 2);
    assert_eq!(sim.host().last_boot, BootSource::Default);

    // PXE next boot: set, still pending; the next cycle boots from the network, once.
    console.client("pxe_next_boot").await;
    assert_eq!(sim.host().next_boot(), BootSource::Pxe);
    assert_eq!(
        sim.host().boots,
        boots + 2,
        "setting the boot does not boot"
    );
    assert_eq!(console.amtctrl("reboot").await, "");
    assert_eq!(sim.host().last_boot, BootSource::Pxe);
    assert_eq!(sim.host().next_boot(), BootSource::Default);
    // amtctrl's own pxeboot: the same, in one command.
    assert_eq!(console.amtctrl("pxeboot").await, "");
    assert_eq!(
        (sim.host().boots, sim.host().last_boot),
        (boots + 4, BootSource::Pxe)
    );

    // KVM: the settings as AMT returns them, then enabled on port 5900.
    let status = console.amtctrl("vncstatus").await;
    assert!(
        status.contains(":Is5900PortEnabled>false<") && !status.contains("RFBPassword"),
        "{status}"
    );
    assert!(
        console
            .amtctrl("vnc")
            .await
            .contains("VNC enabled on port 5900")
    );
    let host = sim.host();
    assert!(host.kvm_enabled);
    assert_eq!(
        host.setting("IPS_KVMRedirectionSettingData", "Is5900PortEnabled"),
        Some("true")
    );
    assert_eq!(
        host.setting("IPS_KVMRedirectionSettingData", "RFBPassword"),
        Some(DEMO_PASSWORD)
    );
    let status = console.amtctrl("vncstatus").await;
    assert!(status.contains(":Is5900PortEnabled>true<"), "{status}");
}

/// A WS-Man request of `action` on `resource` with `body`, digest-authenticated by curl;
/// returns the response body (curl fails the test on an HTTP error).
async fn curl_wsman(
    sim_gateway: std::net::SocketAddr,
    action: &str,
    resource: &str,
    body: &str,
) -> String {
    let envelope = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\" \
xmlns:n=\"http://schemas.xmlsoap.org/ws/2004/09/enumeration\"><s:Header>\
<a:Action>{action}</a:Action><a:To>/wsman</a:To><w:ResourceURI>{resource}</w:ResourceURI>\
<a:MessageID>uuid:6f0a3c52-1d4e-4b7a-9c1e-2f5d8a7b3e02</a:MessageID></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    );
    let credentials = format!("{DEMO_USERNAME}:{DEMO_PASSWORD}");
    let output = curl(vec![
        "--fail".into(),
        "--digest".into(),
        "-u".into(),
        credentials,
        "-H".into(),
        SOAP_CONTENT_TYPE.into(),
        "--data-binary".into(),
        envelope,
        wsman_url(sim_gateway),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl {action} failed ({}): {}{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The text of the first `<prefix:name>` element of a response.
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!(":{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find('<')?;
    Some(&xml[start..end])
}

#[tokio::test]
async fn curl_enumerates_and_pulls_software_identity_in_pages_through_the_gateway() {
    let sim: SimDevice = start_sim("console-enumerate").await;
    let gateway = gateway_for(&sim).await;
    let addr = gateway.addr(Service::Wsman);
    let enumeration = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";
    let resource = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_SoftwareIdentity";

    let response = curl_wsman(
        addr,
        &format!("{enumeration}/Enumerate"),
        resource,
        "<n:Enumerate/>",
    )
    .await;
    assert!(
        response.contains(&format!("{enumeration}/EnumerateResponse</b:Action>")),
        "{response}"
    );
    let mut context = element(&response, "EnumerationContext").unwrap().to_owned();
    let mut pages = Vec::new();
    let mut versions = Vec::new();
    loop {
        let response = curl_wsman(
            addr,
            &format!("{enumeration}/Pull"),
            resource,
            &format!("<n:Pull><n:EnumerationContext>{context}</n:EnumerationContext><n:MaxElements>4</n:MaxElements></n:Pull>"),
        )
        .await;
        pages.push(response.matches("<h:CIM_SoftwareIdentity>").count());
        if response.contains("<h:InstanceID>AMT</h:InstanceID>") {
            versions.push(
                element(
                    &response[response.find("<h:InstanceID>AMT</h:InstanceID>").unwrap()..],
                    "VersionString",
                )
                .unwrap()
                .to_owned(),
            );
        }
        match element(&response, "EnumerationContext") {
            Some(next) => context = next.to_owned(),
            None => {
                assert!(response.contains("<g:EndOfSequence>"), "{response}");
                break;
            }
        }
    }
    assert_eq!(pages, [4, 4, 3], "11 items, 4 per Pull");
    assert_eq!(
        versions,
        ["16.1.27"],
        "the amt16 profile's firmware version"
    );
}

/// RequestPowerStateChange `state` through the gateway with curl; returns its ReturnValue.
async fn curl_power(gateway: std::net::SocketAddr, state: u16) -> String {
    let service = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_PowerManagementService";
    let response = curl_wsman(
        gateway,
        &format!("{service}/RequestPowerStateChange"),
        service,
        &format!(
            "<p:RequestPowerStateChange_INPUT xmlns:p=\"{service}\"><p:PowerState>{state}</p:PowerState></p:RequestPowerStateChange_INPUT>"
        ),
    )
    .await;
    element(&response, "ReturnValue").unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_console_shows_power_down_and_boot_requested_over_wsman() {
    let sim = start_sim("console-sol").await;
    let gateway = gateway_for(&sim).await;
    let mut amtterm =
        amtterm_logged_in(None, gateway.addr(Service::Redirection), "console-sol").await;

    assert_eq!(curl_power(gateway.addr(Service::Wsman), 8).await, "0");
    amtterm.expect("console-sol: reboot: Power down").await;
    assert_eq!(curl_power(gateway.addr(Service::Wsman), 2).await, "0");
    amtterm
        .expect("console-sol: BIOS POST, booting from the default boot order")
        .await;
    amtterm.expect("console-sol login: ").await;
    // That the console answers nothing while off is the simulator's unit test: typed keys
    // and the power request travel on different connections, so their order is not the test's.
    amtterm_quit(amtterm).await;
}
