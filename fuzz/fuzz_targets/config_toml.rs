//! A configuration file: TOML parsing (figment, toml) and every validation rule, with no
//! environment. Must return an error or a config, never panic.
#![no_main]

use amtgw::config::{Config, Environment};
use amtgw_fuzz::{base, toml_mentions_special_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The file is read as UTF-8 before parsing; other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Only documents whose paths stay out of /dev, /proc and /sys (see the lib). One that does
    // not parse as TOML names no file at all, so it is fuzzed as it is.
    if let Ok(document) = text.parse::<toml::Value>()
        && toml_mentions_special_path(&document)
    {
        return;
    }
    let _ = Config::from_toml_with_env("fuzz.toml", base(), text, &Environment::empty());
});
