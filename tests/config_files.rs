//! The shipped configuration files stay honest: every `config/*.toml` is valid, every
//! `config/invalid/*.toml` fails on exactly the key and message its first line promises, the
//! reference config's values reach the typed `Config`, and `amtgw check` reports both through
//! its exit code and stderr, including `AMTGW_` environment overrides, and the variables a
//! Kubernetes Service injects under the same prefix are not taken for configuration.

// Tests may unwrap (the crate lints against it for gateway code): a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use amtgw::config::{Environment, Host};
use amtgw::tls::Trust;
use amtgw::{Config, Service};

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The `*.toml` files directly in `dir`, sorted so failures are reported in a stable order.
fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        // `Path::ends_with` compares whole components, so it would never match ".toml".
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// `amtgw COMMAND --config <path>` with the given environment overrides and no inherited
/// `AMTGW_` variables, so the developer's shell cannot change the outcome.
fn amtgw(command: &str, path: &Path, env: &[(String, String)]) -> Command {
    let mut amtgw = Command::new(env!("CARGO_BIN_EXE_amtgw"));
    amtgw.arg(command).arg("--config").arg(path);
    for (name, _) in std::env::vars_os() {
        // The prefix is matched case-insensitively, so clear `amtgw_*` too.
        if name
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with(amtgw::config::ENV_PREFIX)
        {
            amtgw.env_remove(name);
        }
    }
    amtgw.envs(env.iter().map(|(k, v)| (k, v)));
    amtgw
}

fn amtgw_check(path: &Path, env: &[(&str, &str)]) -> Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    amtgw("check", path, &env).output().unwrap()
}

/// In-process loads see no environment at all: the shell running the tests cannot change them.
fn load(path: &Path) -> Result<Config, amtgw::config::ConfigError> {
    Config::load_with_env(path, &Environment::empty())
}

/// Every variable Kubernetes injects into the pods of a namespace for a Service named
/// `service` with these TCP ports (number, name): the Docker-links-compatible set.
fn kubernetes_service_variables(service: &str, ports: &[(u16, &str)]) -> Vec<(String, String)> {
    let svc = service.to_ascii_uppercase().replace('-', "_");
    let addr = "10.96.0.17";
    let (first, _) = ports[0];
    let mut vars = vec![
        (format!("{svc}_SERVICE_HOST"), addr.to_owned()),
        (format!("{svc}_SERVICE_PORT"), first.to_string()),
        (format!("{svc}_PORT"), format!("tcp://{addr}:{first}")),
    ];
    for (port, name) in ports {
        let name = name.to_ascii_uppercase().replace('-', "_");
        let tcp = format!("{svc}_PORT_{port}_TCP");
        vars.push((format!("{svc}_SERVICE_PORT_{name}"), port.to_string()));
        vars.push((tcp.clone(), format!("tcp://{addr}:{port}")));
        vars.push((format!("{tcp}_PROTO"), "tcp".to_owned()));
        vars.push((format!("{tcp}_PORT"), port.to_string()));
        vars.push((format!("{tcp}_ADDR"), addr.to_owned()));
    }
    vars
}

/// What the Services in front of amtgw inject: one named `amtgw` for the consoles' ports and
/// one named `amtgw-gateway`, whose `AMTGW_GATEWAY_...` variables begin with a table's name.
fn kubernetes_variables() -> Vec<(String, String)> {
    let consoles = [(16992, "wsman"), (16994, "redirection"), (623, "dash")];
    let mut vars = kubernetes_service_variables("amtgw", &consoles);
    vars.extend(kubernetes_service_variables("amtgw-gateway", &consoles));
    vars.extend(kubernetes_service_variables(
        "amtgw-admin",
        &[(9716, "admin")],
    ));
    vars
}

/// The `# expect: <key> | <message substring>` first line of an invalid config.
fn expectation(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.lines().next().unwrap_or_default();
    let rest = first.strip_prefix("# expect:").unwrap_or_else(|| {
        panic!(
            "{}: first line must be `# expect: <key> | <substring>`",
            path.display()
        )
    });
    let (key, message) = rest.split_once('|').unwrap_or_else(|| {
        panic!(
            "{}: expect line needs `<key> | <substring>`",
            path.display()
        )
    });
    let (key, message) = (key.trim().to_owned(), message.trim().to_owned());
    assert!(
        !key.is_empty() && !message.is_empty(),
        "{}: empty expectation",
        path.display()
    );
    (key, message)
}

#[test]
fn every_shipped_config_is_valid() {
    let files = toml_files(&repo_path("config"));
    assert!(
        !files.is_empty(),
        "no config/*.toml found: nothing was checked"
    );
    for path in &files {
        if let Err(e) = load(path) {
            panic!("{} should be valid: {e}", path.display());
        }
    }
}

#[test]
fn every_invalid_config_fails_on_its_expected_key_and_message() {
    let files = toml_files(&repo_path("config/invalid"));
    assert!(
        files.len() > 20,
        "only {} invalid configs found",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let (key, message) = expectation(path);
        match load(path) {
            Ok(_) => failures.push(format!(
                "{}: loaded, expected `{key}` to fail",
                path.display()
            )),
            Err(e) => {
                let text = e.to_string();
                if e.key() != Some(key.as_str()) {
                    failures.push(format!(
                        "{}: key {:?}, expected `{key}`: {text}",
                        path.display(),
                        e.key()
                    ));
                }
                if !text.contains(&message) {
                    failures.push(format!(
                        "{}: message lacks {message:?}: {text}",
                        path.display()
                    ));
                }
                // An operator with several configs must be told which one is wrong.
                if !text.contains(&path.display().to_string()) {
                    failures.push(format!(
                        "{}: message does not name the file: {text}",
                        path.display()
                    ));
                }
                if e.kind() != "config_invalid" {
                    failures.push(format!(
                        "{}: kind {}, expected config_invalid",
                        path.display(),
                        e.kind()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn reference_config_values_reach_the_typed_config() {
    let config = load(&repo_path("config/amtgw.example.toml")).unwrap();

    assert_eq!(config.gateway.max_connections, 10_000);
    assert_eq!(config.gateway.connect_timeout, Duration::from_secs(10));
    assert_eq!(config.gateway.handshake_timeout, Duration::from_secs(10));
    assert_eq!(config.gateway.shutdown_delay, Duration::from_secs(5));
    assert_eq!(config.gateway.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(config.gateway.tcp_keepalive, Duration::from_secs(60));
    assert_eq!(config.gateway.session_cache_per_device, 8);
    assert_eq!(config.admin, Some("127.0.0.1:9716".parse().unwrap()));

    // DASH is shipped disabled: only the two services most consoles use are listed.
    let services: Vec<Service> = config.services.iter().map(|s| s.service).collect();
    assert_eq!(services, [Service::Wsman, Service::Redirection]);
    let wsman = &config.services[0];
    assert_eq!((wsman.listen_port, wsman.device_port), (16992, 16993));
    assert_eq!(wsman.idle_timeout, Duration::from_secs(10 * 60));
    assert_eq!(wsman.default_device.as_deref(), Some("lab-bench"));
    assert_eq!(
        wsman.bind,
        ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    let redirection = &config.services[1];
    assert_eq!(redirection.idle_timeout, Duration::from_secs(30 * 60));
    assert_eq!(redirection.default_device, None);

    assert_eq!(config.devices.len(), 4);

    let bench = config.device("lab-bench").unwrap();
    assert_eq!(bench.listen, Some("10.20.0.11".parse().unwrap()));
    // Two pins, as during a certificate rotation, inherited trust mode from [defaults].
    match &bench.tls.trust {
        Trust::Pin(pins) => assert_eq!(pins.len(), 2),
        other => panic!("lab-bench should trust by pin, got {other:?}"),
    }
    assert_eq!(bench.max_connections, 64, "inherited from [defaults]");
    assert!(
        bench.tls.client_identity.is_some(),
        "mutual TLS inherited from [defaults]"
    );
    assert_eq!(bench.tls.versions.len(), 2);

    let ward = config.device("ward-3-station").unwrap();
    assert_eq!(ward.host, Host::Dns("amt-ws042.corp.example".into()));
    assert_eq!(ward.port(Service::Wsman), 16993);
    assert_eq!(ward.port(Service::Redirection), 16995);
    match &ward.tls.trust {
        Trust::Ca { ca_file, roots } => {
            assert!(
                ca_file.ends_with("certs/example-ca.pem"),
                "{}",
                ca_file.display()
            );
            assert_eq!(roots.len(), 1);
        }
        other => panic!("ward-3-station should trust by CA, got {other:?}"),
    }

    let nat = config.device("branch-nat").unwrap();
    assert_eq!(nat.host, Host::Ip("192.0.2.42".parse().unwrap()));
    assert_eq!(nat.server_name.to_str(), "amt-br17.corp.example");
    assert_eq!(nat.port(Service::Wsman), 26993);
    assert_eq!(nat.port(Service::Redirection), 26995);
    assert_eq!(nat.max_connections, 16);
    assert_eq!(nat.tls.versions, [amtgw::tls::TlsVersion::Tls1_2]);
    let identity = nat.tls.client_identity.as_ref().unwrap();
    assert!(identity.key_path.ends_with("certs/example-client.key"));

    let museum = config.device("museum-amt7").unwrap();
    assert_eq!(museum.tls.backend, amtgw::tls::Backend::Legacy);
    assert_eq!(museum.tls.versions.len(), 3);
    assert_eq!(bench.tls.backend, amtgw::tls::Backend::Rustls);
}

#[test]
fn check_accepts_the_reference_config() {
    let path = repo_path("config/amtgw.example.toml");
    let out = amtgw_check(&path, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "{}: valid (4 device(s), services: wsman, redirection)",
            path.display()
        )),
        "{stdout}"
    );
}

#[test]
fn check_accepts_the_transparent_config_naming_its_ranges_and_routing() {
    let path = repo_path("config/transparent.toml");
    let out = amtgw_check(&path, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = format!(
        "{}: valid (1 device(s), 2 range(s), services: wsman (redirect), redirection (redirect), dash (redirect))",
        path.display()
    );
    assert!(stdout.contains(&expected), "{stdout}");
}

#[test]
fn check_rejects_an_invalid_config_naming_file_key_and_fix() {
    let path = repo_path("config/invalid/zero-max-connections.toml");
    let out = amtgw_check(&path, &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "error: {}: key `gateway.max_connections`: must be at least 1",
            path.display()
        )
    );
}

#[test]
fn environment_override_is_validated_like_the_file() {
    let path = repo_path("config/amtgw.example.toml");
    let out = amtgw_check(&path, &[("AMTGW_GATEWAY__MAX_CONNECTIONS", "0")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("key `gateway.max_connections`"), "{stderr}");
    assert!(stderr.contains("must be at least 1"), "{stderr}");
}

#[test]
fn environment_override_of_the_wrong_type_names_the_variable() {
    let path = repo_path("config/amtgw.example.toml");
    let out = amtgw_check(&path, &[("AMTGW_GATEWAY__MAX_CONNECTIONS", "plenty")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("key `gateway.max_connections`"), "{stderr}");
    assert!(
        stderr.contains("AMTGW_GATEWAY__MAX_CONNECTIONS"),
        "{stderr}"
    );
}

#[test]
fn environment_override_rejected_by_the_validator_names_the_variable() {
    // The file is fine; only the variable is wrong, so the message must point there.
    let path = repo_path("config/minimal.toml");
    let out = amtgw_check(
        &path,
        &[("AMTGW_SERVICES__WSMAN__BIND", r#"["localhost"]"#)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("key `services.wsman.bind[0]`"), "{stderr}");
    assert!(stderr.contains("AMTGW_SERVICES__WSMAN__BIND"), "{stderr}");
}

#[test]
fn device_can_be_pinned_under_a_fleet_wide_ca() {
    // [defaults] trusts the fleet CA; one device opts out into pinning. It must not inherit
    // the fleet's ca_file, which pin mode rejects and which the device cannot unset.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("amtgw.toml");
    let ca = repo_path("certs/example-ca.pem");
    let text = format!(
        r#"
[defaults]
trust = "ca"
ca_file = "{ca}"

[[devices]]
name = "by-ca"
host = "amt-01.corp.example"
listen = "10.20.0.11"

[[devices]]
name = "pinned"
host = "192.0.2.12"
listen = "10.20.0.12"
trust = "pin"
pins = ["cert-sha256:bd0829b6fd4ed46d16284cc20a4a7385d80a50936c9db64d09e0c1e4a217d272"]
"#,
        ca = ca.display()
    );
    std::fs::write(&path, text).unwrap();
    let config = load(&path).unwrap();
    assert_eq!(config.device("by-ca").unwrap().tls.trust.mode(), "ca");
    assert_eq!(config.device("pinned").unwrap().tls.trust.mode(), "pin");
}

#[test]
fn shutdown_delay_may_be_zero_and_defaults_to_five_seconds() {
    let minimal = std::fs::read_to_string(repo_path("config/minimal.toml")).unwrap();
    let with = |delay: &str| {
        Config::from_toml(
            "minimal",
            &repo_path("config"),
            &format!("[gateway]\n{delay}\n{minimal}"),
        )
        .unwrap()
        .gateway
        .shutdown_delay
    };
    assert_eq!(with(""), Duration::from_secs(5));
    assert_eq!(with("shutdown_delay = \"0s\""), Duration::ZERO);
    assert_eq!(with("shutdown_delay = \"0\""), Duration::ZERO);
    assert_eq!(
        with("shutdown_delay = \"250ms\""),
        Duration::from_millis(250)
    );
}

#[test]
fn environment_override_of_a_valid_value_is_applied() {
    // The counterpart of the two rejections above: a good override changes the loaded value.
    let path = repo_path("config/amtgw.example.toml");
    let out = amtgw_check(&path, &[("AMTGW_SERVICES__DASH__ENABLED", "true")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("services: wsman, redirection, dash"),
        "{stdout}"
    );
}

#[test]
fn kubernetes_service_variables_are_not_configuration() {
    let mut vars = kubernetes_variables();
    let injected = vars.len();
    vars.push(("AMTGW_GATEWAY__MAX_CONNECTIONS".to_owned(), "77".to_owned()));
    let env = Environment::from_pairs(vars);
    assert_eq!(env.ignored().len(), injected, "{:?}", env.ignored());
    assert!(env.warnings().is_empty(), "{:?}", env.warnings());
    let text = std::fs::read_to_string(repo_path("config/minimal.toml")).unwrap();
    let config = Config::from_toml_with_env("minimal", &repo_path("config"), &text, &env).unwrap();
    assert_eq!(
        config.gateway.max_connections, 77,
        "the real override applies"
    );
}

#[test]
fn run_starts_among_the_variables_kubernetes_services_inject() {
    // A rollout in a namespace with Services named amtgw and amtgw-gateway: it must start.
    let mut env = kubernetes_variables();
    for (name, value) in [
        ("AMTGW_SERVICES__WSMAN__LISTEN_PORT", "0"),
        ("AMTGW_SERVICES__REDIRECTION__LISTEN_PORT", "0"),
        ("AMTGW_SERVICES__DASH__ENABLED", "false"),
        ("AMTGW_ADMIN__LISTEN", "127.0.0.1:0"),
        ("AMTGW_GATEWAY__SHUTDOWN_DELAY", "0s"),
    ] {
        env.push((name.to_owned(), value.to_owned()));
    }
    let mut run = amtgw("run", &repo_path("config/minimal.toml"), &env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut logs = BufReader::new(run.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in logs.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("amtgw starting") || line.starts_with("error") {
            break;
        }
    }
    if !seen.contains("amtgw starting") {
        let _ = run.kill();
        panic!("amtgw did not start: {seen}");
    }
    std::thread::spawn(move || logs.for_each(drop));
    let killed = Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = run.wait().unwrap();
    assert!(
        seen.contains("ignoring AMTGW_ variables that are not configuration")
            && seen.contains("AMTGW_GATEWAY_SERVICE_HOST")
            && seen.contains("AMTGW_PORT_16992_TCP_ADDR"),
        "{seen}"
    );
    assert!(!seen.contains("WARN"), "{seen}");
    assert_eq!(status.code(), Some(0), "{seen}");
}

#[test]
fn near_miss_variable_is_ignored_with_a_warning_naming_the_intended_one() {
    // A table name one letter off: had it applied, 0 connections would be an error.
    let path = repo_path("config/minimal.toml");
    let out = amtgw_check(&path, &[("AMTGW_GATWAY__MAX_CONNECTIONS", "0")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "warning: environment variable AMTGW_GATWAY__MAX_CONNECTIONS is not configuration and \
         is ignored; did you mean AMTGW_GATEWAY__MAX_CONNECTIONS? (`__` separates keys)"
    );
}

#[test]
fn typo_inside_a_table_is_still_an_error_naming_the_variable_and_the_keys() {
    let path = repo_path("config/minimal.toml");
    let out = amtgw_check(&path, &[("AMTGW_GATEWAY__MAX_CONECTIONS", "5")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("key `gateway.max_conections`: unknown key `max_conections`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(from environment variable AMTGW_GATEWAY__MAX_CONECTIONS)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("expected one of:") && stderr.contains("max_connections"),
        "{stderr}"
    );
}

#[test]
fn empty_key_segment_in_a_variable_is_an_error() {
    let path = repo_path("config/minimal.toml");
    let out = amtgw_check(&path, &[("AMTGW_GATEWAY____WORKERS", "2")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(
            "key `gateway`: environment variable AMTGW_GATEWAY____WORKERS has an empty key"
        ),
        "{stderr}"
    );
}

#[test]
fn environment_value_with_a_backslash_after_a_non_ascii_character_is_read_not_a_panic() {
    // figment's own value parser panicked here (exit 101); the value is now unescaped right.
    let path = repo_path("config/minimal.toml");
    let out = amtgw_check(&path, &[("AMTGW_GATEWAY__LOG_FORMAT", "\"é\\tjson\"")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("key `gateway.log_format`: `é\tjson` is not a log format"),
        "{stderr}"
    );
}

#[test]
fn deeply_nested_environment_value_is_an_error_not_a_stack_overflow() {
    // figment's parser recursed once per bracket and aborted the process (exit 134).
    let path = repo_path("config/minimal.toml");
    let deep = "[".repeat(100_000);
    let out = amtgw_check(&path, &[("AMTGW_GATEWAY__WORKERS", &deep)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        &stderr[..stderr.len().min(300)]
    );
    assert!(
        stderr.contains("key `gateway.workers`"),
        "{}",
        &stderr[..stderr.len().min(300)]
    );
}

/// Writes the test-only PKI under `certs/` that the shipped configs reference. Run it by hand
/// (`cargo test --test config_files -- --ignored regenerate_example_certs`) and commit the
/// result; normal runs must not rewrite tracked files.
#[test]
#[ignore = "rewrites certs/; run by hand"]
fn regenerate_example_certs() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    let dir = repo_path("certs");
    std::fs::create_dir_all(&dir).unwrap();

    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(
        DnType::CommonName,
        "amtgw example CA (TEST ONLY, DO NOT DEPLOY)",
    );
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(vec!["amtgw-example-client".to_owned()]).unwrap();
    client.distinguished_name.push(
        DnType::CommonName,
        "amtgw example client (TEST ONLY, DO NOT DEPLOY)",
    );
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer).unwrap();

    // The CA's private key is deliberately not written: nothing needs to sign with it later,
    // and a key that does not exist cannot be misused.
    std::fs::write(dir.join("example-ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("example-client.pem"), client_cert.pem()).unwrap();
    std::fs::write(dir.join("example-client.key"), client_key.serialize_pem()).unwrap();
}
