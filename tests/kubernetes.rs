//! The Kubernetes manifests of `deploy/kubernetes/`, checked offline: every one validated
//! strictly by kubernetes-validate (PyPI; scripts/install-kubernetes-validate.sh puts it in a
//! venv) against the Kubernetes versions the README states, the ConfigMap's config accepted
//! by `amtgw check` with the Secret's files beside it (as the pod's projected volume lays them
//! out), and the pieces agreeing with each other: ports, probes, grace period, security.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use amtgw::Config;
use amtgw::config::Environment;
use serde_json::Value;

/// The Kubernetes versions the manifests are validated against (README, "Kubernetes").
const KUBERNETES_VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// `$KUBERNETES_VALIDATE`, else where scripts/install-kubernetes-validate.sh puts it. Fails
/// the test (never skips it) when it is not there.
fn validator() -> PathBuf {
    common::clients::venv_program(
        "KUBERNETES_VALIDATE",
        "kubernetes-validate",
        "kubernetes-validate",
        "install-kubernetes-validate.sh",
    )
}

/// Every `.yaml` file under `deploy/kubernetes/`, relative to it, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![manifests_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                found.push(path.strip_prefix(manifests_dir()).unwrap().to_owned());
            }
        }
    }
    found.sort();
    found
}

/// The YAML documents of `file`, as JSON, read by PyYAML (a dependency of
/// kubernetes-validate, in the same venv).
fn documents(file: &Path) -> Vec<Value> {
    let python = validator().with_file_name("python");
    let out = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(manifests_dir().join(file))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(
        out.status.success(),
        "{}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one document of `file`.
fn document(file: &str) -> Value {
    let mut docs = documents(Path::new(file));
    assert_eq!(docs.len(), 1, "{file}: one object expected");
    docs.remove(0)
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value:#}"))
}

#[test]
fn every_manifest_validates_strictly_for_the_stated_kubernetes_versions() {
    let validator = validator();
    let files = manifest_files();
    let kubernetes: Vec<&PathBuf> = files
        .iter()
        .filter(|f| !f.ends_with("kustomization.yaml"))
        .collect();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(&kubernetes)
            .current_dir(manifests_dir())
            .output()
            .unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "Kubernetes {version}:\n{report}");
        assert!(!report.contains("ERROR"), "Kubernetes {version}:\n{report}");
        for file in &kubernetes {
            // The Prometheus Operator's CRDs are no part of Kubernetes: no schema to check.
            if file.starts_with("optional") {
                continue;
            }
            assert!(
                report.contains(&format!("{} passed", file.display())),
                "{} was not validated against Kubernetes {version}:\n{report}",
                file.display()
            );
        }
    }
}

#[test]
fn kustomization_applies_every_manifest_but_the_optional_ones() {
    let kustomization = document("kustomization.yaml");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let on_disk: BTreeSet<String> = manifest_files()
        .iter()
        .filter(|f| !f.starts_with("optional") && !f.ends_with("kustomization.yaml"))
        .map(|f| f.display().to_string())
        .collect();
    assert_eq!(listed, on_disk);
    assert_eq!(str_at(&kustomization, "/images/0/name"), "amtgw");
}

/// The ConfigMap's amtgw.toml and the Secret's files, written into `dir` as the pod's
/// projected volume lays them out; returns the config's path.
fn lay_out_config_volume(dir: &Path) -> PathBuf {
    let configmap = document("configmap.yaml");
    let secret = document("secret.yaml");
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for (source, section) in [(&configmap, "data"), (&secret, "stringData")] {
        for (name, value) in source[section].as_object().unwrap() {
            let clash = files.insert(name.clone(), value.as_str().unwrap().to_owned());
            assert!(
                clash.is_none(),
                "{name} is in both the ConfigMap and the Secret"
            );
        }
    }
    for (name, content) in &files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    dir.join("amtgw.toml")
}

#[test]
fn amtgw_check_accepts_the_configmap_config_with_the_secret_files_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = lay_out_config_volume(dir.path());
    let mut check = Command::new(env!("CARGO_BIN_EXE_amtgw"));
    check.arg("check").arg("--config").arg(&config);
    common::clients::without_amtgw_env(&mut check).env_remove("PGPASSWORD");
    // What Kubernetes injects into the pods for the Service named amtgw: ignored.
    check.env("AMTGW_SERVICE_HOST", "10.96.0.10");
    check.env("AMTGW_PORT_16992_TCP_PORT", "16992");
    let out = check.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        format!(
            "{}: valid (1 device(s), services: wsman, redirection, dash)",
            config.display()
        )
    );
}

/// What the ConfigMap's and the Secret's comments say to do for devices in mutual-TLS mode,
/// done: real PEM files in the Secret's two keys, the config's two lines uncommented.
#[test]
fn mutual_tls_as_the_comments_describe_it_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = lay_out_config_volume(dir.path());
    let placeholder = Config::load_with_env(&path, &Environment::empty()).unwrap();
    assert!(placeholder.devices[0].tls.client_identity.is_none());

    let text = std::fs::read_to_string(&path).unwrap();
    let enabled = text
        .replace(
            "# client_cert = \"client-cert.pem\"",
            "client_cert = \"client-cert.pem\"",
        )
        .replace(
            "# client_key = \"client-key.pem\"",
            "client_key = \"client-key.pem\"",
        );
    assert_ne!(
        enabled, text,
        "the config no longer has the commented client_cert lines"
    );
    std::fs::write(&path, enabled).unwrap();
    let generated = tempfile::tempdir().unwrap();
    let (cert, key) = common::TestCa::new("client CA")
        .client("amtgw")
        .write_pem(generated.path(), "client");
    std::fs::copy(cert, dir.path().join("client-cert.pem")).unwrap();
    std::fs::copy(key, dir.path().join("client-key.pem")).unwrap();
    let config = Config::load_with_env(&path, &Environment::empty()).unwrap();
    let identity = config.devices[0].tls.client_identity.as_ref().unwrap();
    assert!(identity.cert_path.ends_with("client-cert.pem"));
    assert!(identity.key_path.ends_with("client-key.pem"));
}

#[test]
fn deployment_service_and_config_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = lay_out_config_volume(dir.path());
    let config = Config::load_with_env(&path, &Environment::empty()).unwrap();
    let deployment = document("deployment.yaml");
    let service = document("service.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // The pin store is the shared database, not a file in the read-only container.
    assert!(matches!(
        config.gateway.pin_store,
        amtgw::tls::PinStoreSettings::Postgres(_)
    ));

    // Container ports by name: those the config listens on, all unprivileged.
    let ports: BTreeMap<&str, u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (str_at(p, "/name"), p["containerPort"].as_u64().unwrap()))
        .collect();
    let mut listening: BTreeMap<&str, u64> = config
        .services
        .iter()
        .map(|s| (s.service.as_str(), u64::from(s.listen_port)))
        .collect();
    listening.insert("admin", u64::from(config.admin.unwrap().port()));
    assert_eq!(ports, listening);
    assert!(ports.values().all(|&port| port >= 1024), "{ports:?}");
    for s in &config.services {
        assert_eq!(s.bind, ["0.0.0.0".parse::<std::net::IpAddr>().unwrap()]);
    }
    assert!(config.admin.unwrap().ip().is_unspecified());

    // The Service offers the legacy ports consoles dial, each onto its container port; not
    // the admin port.
    let offered: BTreeMap<u64, &str> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["port"].as_u64().unwrap(), str_at(p, "/targetPort")))
        .collect();
    assert_eq!(
        offered,
        BTreeMap::from([(623, "dash"), (16992, "wsman"), (16994, "redirection")])
    );
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // Probes on the admin port.
    assert_eq!(str_at(container, "/readinessProbe/httpGet/path"), "/readyz");
    assert_eq!(str_at(container, "/readinessProbe/httpGet/port"), "admin");
    assert_eq!(str_at(container, "/livenessProbe/httpGet/path"), "/healthz");
    assert_eq!(str_at(container, "/livenessProbe/httpGet/port"), "admin");

    // The kubelet's SIGKILL comes after the delay and the drain.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let needed = config.gateway.shutdown_delay + config.gateway.shutdown_timeout;
    assert!(
        grace > needed.as_secs(),
        "terminationGracePeriodSeconds {grace} <= {needed:?}"
    );
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let pdb = document("poddisruptionbudget.yaml");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // The config file is where the container's arguments say, in the projected volume that
    // holds the ConfigMap and the Secret.
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mount = str_at(container, "/volumeMounts/0/mountPath");
    assert_eq!(args, ["run", "--config", &format!("{mount}/amtgw.toml")]);
    let sources = &pod["volumes"][0]["projected"]["sources"];
    assert_eq!(str_at(sources, "/0/configMap/name"), "amtgw-config");
    assert_eq!(str_at(sources, "/1/secret/name"), "amtgw-secrets");

    // Restrictive security: non-root, read-only root, no capabilities, default seccomp.
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(security["capabilities"]["add"].is_null());
    assert_eq!(str_at(security, "/seccompProfile/type"), "RuntimeDefault");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_u64().unwrap() > 0);
    assert!(!container["resources"]["requests"].is_null());
    assert!(!container["resources"]["limits"]["memory"].is_null());

    // Prometheus finds /metrics on the admin port.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(str_at(annotations, "/prometheus.io~1scrape"), "true");
    assert_eq!(
        str_at(annotations, "/prometheus.io~1port"),
        ports["admin"].to_string()
    );
    assert_eq!(str_at(annotations, "/prometheus.io~1path"), "/metrics");
}

/// The README's Kubernetes section names every manifest and the versions validated against.
#[test]
fn readme_names_every_manifest_and_the_validated_kubernetes_versions() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = &readme[readme
        .find("\n### Kubernetes\n")
        .expect("no Kubernetes section")..];
    let section = &section[..section[1..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 1)];
    for file in manifest_files() {
        assert!(
            section.contains(&format!("| `{}` |", file.display())),
            "the README's Kubernetes section does not list {}",
            file.display()
        );
    }
    let minor = |v: &str| v.trim_end_matches(".0").to_owned();
    let versions = format!(
        "Kubernetes {} and {}",
        minor(KUBERNETES_VERSIONS[0]),
        minor(KUBERNETES_VERSIONS[1])
    );
    assert!(
        section.contains(&versions),
        "README does not say {versions}"
    );
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-kubernetes-validate.sh"),
    )
    .unwrap();
    assert!(
        script.contains(&versions),
        "scripts/install-kubernetes-validate.sh does not say {versions}"
    );
}
