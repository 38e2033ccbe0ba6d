//! What the fuzz targets share: the sandbox a config is loaded in.
//!
//! A configuration names files that validation reads (CA bundles, client keys, the admin
//! token). Relative names resolve against a temporary `config/` directory laid out like the
//! repository's (the test-only PKI in `../certs/`, an `admin.token`), so the shipped example
//! config validates completely and mutations of it reach every rule; a name that reaches into
//! `/dev`, `/proc` or `/sys` is skipped, because reading `/dev/zero` or a pipe never ends
//! and tells nothing about the parser (an operator who configures that gets what they asked).

use std::path::{Component, Path};
use std::sync::LazyLock;

/// The base of every relative path in a fuzzed config (see above).
pub fn base() -> &'static Path {
    static BASE: LazyLock<(tempfile::TempDir, std::path::PathBuf)> = LazyLock::new(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let certs = dir.path().join("certs");
        let config = dir.path().join("config");
        for made in [&certs, &config] {
            std::fs::create_dir(made).expect("a directory");
        }
        for (name, content) in [
            (
                "example-ca.pem",
                &include_bytes!("../../certs/example-ca.pem")[..],
            ),
            (
                "example-client.pem",
                include_bytes!("../../certs/example-client.pem"),
            ),
            (
                "example-client.key",
                include_bytes!("../../certs/example-client.key"),
            ),
        ] {
            std::fs::write(certs.join(name), content).expect("a certificate file");
        }
        std::fs::write(config.join("admin.token"), "fuzz-admin-token\n").expect("a token file");
        (dir, config)
    });
    &BASE.1
}

/// Whether `text`, taken as a path, reaches a special filesystem.
pub fn is_special_path(text: &str) -> bool {
    Path::new(text).components().any(|c| {
        matches!(c, Component::Normal(name)
            if name == "dev" || name == "proc" || name == "sys")
    })
}

/// Whether any string in a parsed TOML document is such a path.
pub fn toml_mentions_special_path(value: &toml::Value) -> bool {
    match value {
        toml::Value::String(s) => is_special_path(s),
        toml::Value::Array(items) => items.iter().any(toml_mentions_special_path),
        toml::Value::Table(table) => table
            .iter()
            .any(|(k, v)| is_special_path(k) || toml_mentions_special_path(v)),
        _ => false,
    }
}

/// Whether any string in a figment value is such a path.
pub fn value_mentions_special_path(value: &figment::value::Value) -> bool {
    use figment::value::Value;
    match value {
        Value::String(_, s) => is_special_path(s),
        Value::Array(_, items) => items.iter().any(value_mentions_special_path),
        Value::Dict(_, dict) => dict
            .iter()
            .any(|(k, v)| is_special_path(k) || value_mentions_special_path(v)),
        _ => false,
    }
}
