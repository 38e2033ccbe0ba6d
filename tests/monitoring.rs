//! deploy/prometheus/amtgw-rules.yml and deploy/grafana/amtgw-dashboard.json: the rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), the dashboard's queries
//! parse as PromQL, and every metric either names is one a running gateway exports after some
//! traffic, the standard process_* ones included.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use amtgw::Service;
use common::clients::{repo_path, require_program};
use common::*;
use tokio::net::TcpStream;

const RULES: &str = "deploy/prometheus/amtgw-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/amtgw-rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/amtgw-dashboard.json";

/// Exported only with a PostgreSQL pin store (README: "absent with a file store"), which this
/// test does not start; tests/shared_pin_store.rs scrapes it.
const POSTGRES_ONLY: &[&str] = &["amtgw_pin_store_connected"];

fn promtool(args: &[&str]) -> String {
    let promtool = require_program(&["promtool"]);
    let out = Command::new(promtool).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let text = promtool(&["check", "rules", repo_path(RULES).to_str().unwrap()]);
    assert!(text.contains("SUCCESS"), "{text}");
    let text = promtool(&["test", "rules", repo_path(RULE_TESTS).to_str().unwrap()]);
    assert!(text.contains("SUCCESS"), "{text}");
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(repo_path(DASHBOARD)).unwrap()).unwrap()
}

/// Every PromQL expression of the dashboard: panel targets, variables, annotations.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        queries.push(annotation["expr"].as_str().unwrap().to_owned());
    }
    queries
}

#[test]
fn the_dashboard_queries_are_promql_and_its_panels_well_formed() {
    let dashboard = dashboard();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate id");
        assert!(panel["gridPos"]["w"].as_u64().unwrap() <= 24, "{panel}");
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
            assert!(!panel["targets"].as_array().unwrap().is_empty(), "{panel}");
        }
    }
    // promtool parses rule expressions: the dashboard's queries, with Grafana's variables
    // replaced by what Grafana would put there, become recording rules for it to check.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in dashboard_queries(&dashboard).iter().enumerate() {
        let query = query
            .replace("$__rate_interval", "1m")
            .replace("$__range", "6h")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        assert!(!query.contains('$'), "an unknown variable in {query}");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&query).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, &rules).unwrap();
    promtool(&["check", "rules", path.to_str().unwrap()]);
}

/// `amtgw_…` and `process_…` names in a text (PromQL, YAML, JSON alike).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for prefix in ["amtgw_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            // Only where a name starts, not inside another word.
            if text[..at].chars().next_back().is_some_and(is_name) {
                continue;
            }
            let name: String = text[at..].chars().take_while(|c| is_name(*c)).collect();
            names.insert(name);
        }
    }
    names
}

/// The names of the series in a scrape (`_bucket`, `_count`, `_sum` included).
fn scraped_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

fn write_config(dir: &Path, device: std::net::SocketAddr, pin: &str, client: &str) -> String {
    format!(
        r#"
[gateway]
watch_interval = "50ms"
pin_store = "pins.toml"
shutdown_timeout = "5s"
[metrics]
per_device = true
[admin]
listen = "127.0.0.1:0"
[services.wsman]
listen_port = 0
bind = ["127.0.0.1"]
default_device = "dut"
[services.redirection]
enabled = false
[services.dash]
enabled = false

# Pinned, presenting a client certificate (which the echo device does not ask for).
[[devices]]
name = "dut"
host = "{ip}"
ports = {{ wsman = {port} }}
trust = "pin"
pins = ["{pin}"]
{client}

# The same device under pins it does not match.
[[devices]]
name = "impostor"
host = "{ip}"
listen = "127.0.0.2"
ports = {{ wsman = {port} }}
trust = "pin"
pins = ["cert-sha256:{zeros}"]

# Learned on first use, into {dir}/pins.toml.
[[devices]]
name = "learner"
host = "{ip}"
listen = "127.0.0.3"
ports = {{ wsman = {port} }}
trust = "tofu"
"#,
        ip = device.ip(),
        port = device.port(),
        zeros = "0".repeat(64),
        dir = dir.display(),
    )
}

#[tokio::test]
async fn every_metric_the_dashboard_and_rules_name_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let identity = amt_self_signed(false, false);
    let pin = identity.cert_pin();
    let device = echo_device(DeviceTls::new(identity)).await;
    let (cert, key) = TestCa::new("Fleet client CA")
        .client("gateway.fleet.test")
        .write_pem(dir.path(), "client");
    let client = format!("client_cert = \"{cert}\"\nclient_key = \"{key}\"");
    let config = dir.path().join("amtgw.toml");
    std::fs::write(&config, write_config(dir.path(), device, &pin, &client)).unwrap();
    let gateway = TestGateway::start_file(&config).await;

    // Traffic of every kind the panels and alerts look at: a relayed exchange, a pin
    // mismatch, a first use learned, a broken pin store re-read, a rejected reload.
    let relayed = exchange(gateway.connect(Service::Wsman).await, b"hello")
        .await
        .unwrap();
    assert_eq!(relayed, b"hello");
    let impostor = gateway.addr_on(Service::Wsman, "127.0.0.2");
    expect_refused(TcpStream::connect(impostor).await.unwrap()).await;
    let learner = gateway.addr_on(Service::Wsman, "127.0.0.3");
    let learned = exchange(TcpStream::connect(learner).await.unwrap(), b"first")
        .await
        .unwrap();
    assert_eq!(learned, b"first");
    std::fs::write(dir.path().join("pins.toml"), "not = [toml").unwrap();
    gateway
        .metrics_settled(|m| {
            m.sample("amtgw_pin_store_errors_total", &[]).is_some()
                && m.sample(
                    "amtgw_connections_failed_total",
                    &[("reason", "pin_mismatch")],
                )
                .is_some()
        })
        .await;
    // A reload is refused while the pin store is unreadable: counted as rejected.
    assert!(gateway.reload.reload().await.is_err());
    let scrape = gateway.metrics().await.0;
    let exported = scraped_names(&scrape);

    let rules = std::fs::read_to_string(repo_path(RULES)).unwrap();
    let dashboard = std::fs::read_to_string(repo_path(DASHBOARD)).unwrap();
    let readme = include_str!("../README.md");
    for (file, text) in [(RULES, &rules), (DASHBOARD, &dashboard)] {
        let names = metric_names(text);
        assert!(names.len() > 5, "{file}: {names:?}");
        for name in names {
            if POSTGRES_ONLY.contains(&name.as_str()) {
                assert!(readme.contains(&format!("| `{name}` |")), "{name}");
                continue;
            }
            assert!(
                exported.contains(&name),
                "{file} names {name}, which the gateway does not export:\n{scrape}"
            );
            // And the README documents it, under the name without a histogram's suffix.
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                readme.contains(&format!("| `{base}` |")),
                "{file} names {name}, which the README's Metrics table does not list"
            );
        }
    }
    gateway.stop().await;
}

#[test]
fn metric_names_are_found_whole() {
    assert_eq!(
        metric_names("rate(amtgw_a_total[5m]) / x_amtgw_b + process_open_fds{job=\"gw\"}"),
        ["amtgw_a_total", "process_open_fds"]
            .map(str::to_owned)
            .into()
    );
}
