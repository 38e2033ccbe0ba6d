//! `AMTGW_` environment variables over a valid file: which variables are configuration, the
//! near-miss warnings, our value parser, and validation of what they set. Input: lines of
//! `NAME=VALUE`, each NAME prefixed with `AMTGW_` (any bytes but NUL, as an environment holds).
//!
//! Also a differential check: where figment's own value parser is correct (ASCII, nesting
//! within our limit), ours must agree with it exactly.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use amtgw::config::env::parse_value;
use amtgw::config::{Config, Environment};
use amtgw_fuzz::{base, is_special_path, value_mentions_special_path};
use libfuzzer_sys::fuzz_target;

const TOML: &str = r#"
[admin]
listen = "127.0.0.1:0"

[[devices]]
name = "amt"
host = "192.0.2.10"
trust = "pin"
pins = ["cert-sha256:7732ca35d959c35dc893899e414d2ef6e476c9afca869aa0e5b1daed1c31c511"]

[services.wsman]
default_device = "amt"
"#;

fuzz_target!(|data: &[u8]| {
    let mut pairs = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        if line.contains(&0) {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b'=') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &[][..]),
        };
        let mut full = b"AMTGW_".to_vec();
        full.extend_from_slice(name);
        if let Ok(text) = std::str::from_utf8(value) {
            if is_special_path(text) || value_mentions_special_path(&parse_value(text)) {
                return;
            }
            agrees_with_figment(text);
        }
        pairs.push((OsString::from_vec(full), OsString::from_vec(value.to_vec())));
    }
    let env = Environment::from_pairs(pairs);
    let _ = env.warnings();
    let _ = env.problem();
    let _ = Config::from_toml_with_env("fuzz.toml", base(), TOML, &env);
});

/// figment's parser mis-slices non-ASCII strings and recurses without bound; elsewhere it is
/// the reference for what a value means.
fn agrees_with_figment(text: &str) {
    let nesting = text.bytes().filter(|b| matches!(b, b'[' | b'{')).count();
    if !text.is_ascii() || nesting > 32 {
        return;
    }
    let figment: figment::value::Value = text.parse().expect("infallible");
    assert_eq!(parse_value(text), figment, "value {text:?}");
}
