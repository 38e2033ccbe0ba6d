//! The library's modules form layers: a module uses only modules below it, so the import graph
//! has no cycle. Read from the sources (every `crate::module` path, test code included), so
//! the check needs no tool beyond the test itself.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Names re-exported at the crate root, and the module each comes from.
const ROOT_REEXPORTS: &[(&str, &str)] = &[
    ("Config", "config"),
    ("ConfigError", "config"),
    ("Gateway", "gateway"),
    ("GatewayError", "gateway"),
    ("DrainReport", "gateway"),
    ("BoundAddress", "listener"),
    ("Reason", "reason"),
    ("ReloadError", "reload"),
    ("ReloadHandle", "reload"),
    ("ReloadSummary", "reload"),
    ("Service", "service"),
];

/// Top-level module -> the top-level modules it names.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![root.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&root).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
        // The binary (main.rs and what it declares) and the crate root are not modules.
        if module == "lib" || module == "main" || module == "cli" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let used = graph.entry(module.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let name: String = text[at + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let target = ROOT_REEXPORTS
                .iter()
                .find(|(export, _)| *export == name)
                .map_or(name.clone(), |(_, module)| (*module).to_owned());
            if target != module && !target.is_empty() {
                used.insert(target);
            }
        }
        // `use crate::{a, b}` groups.
        for (at, _) in text.match_indices("use crate::{") {
            let group = &text[at + 12..];
            let group = &group[..group.find('}').unwrap_or(0)];
            for name in group
                .split(',')
                .map(|n| n.trim().split("::").next().unwrap_or(""))
            {
                if !name.is_empty() && name != module && name != "self" {
                    used.insert(name.to_owned());
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &BTreeMap<String, BTreeSet<String>>,
        start: &str,
        at: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(at).into_iter().flatten() {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, start, next, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = import_graph();
    assert!(graph.len() > 10, "modules not found: {graph:?}");
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_bottom_layers_use_only_what_the_issue_allows() {
    let graph = import_graph();
    let allowed: &[(&str, &[&str])] = &[
        // tls depends on nothing of ours.
        ("tls", &[]),
        // The request-head parser is pure: bytes in, facts out.
        ("http_head", &[]),
        // Signals and the drain state know nothing of reloads or the gateway.
        ("shutdown", &[]),
        ("service", &[]),
        // The PROXY protocol parser is pure bytes (and fuzzed alone).
        ("proxy_protocol", &[]),
        // The runtime state: config, fleet, router and metrics (and what those are built of).
        (
            "state",
            &["config", "fleet", "router", "metrics", "service", "tls"],
        ),
        // The connection pipeline never reaches up into the gateway, reload or admin.
        (
            "proxy",
            &[
                "config",
                "expiry",
                "fleet",
                "http_head",
                "limits",
                "metrics",
                "proxy_protocol",
                "reason",
                "recent_failures",
                "refusals",
                "relay",
                "router",
                "service",
                "shutdown",
                "socket",
                "state",
                "tls",
                "upstream",
                "vnc",
            ],
        ),
        // The VNC bridge's protocol ends are bytes over streams: they know the credentials'
        // config type and the reasons they end in, nothing of sockets, devices or the relay.
        ("vnc", &["config", "reason"]),
    ];
    for (module, may_use) in allowed {
        let used = graph
            .get(*module)
            .unwrap_or_else(|| panic!("no module {module}"));
        let extra: Vec<&String> = used
            .iter()
            .filter(|u| !may_use.contains(&u.as_str()))
            .collect();
        assert!(extra.is_empty(), "{module} uses {extra:?}");
    }
}
