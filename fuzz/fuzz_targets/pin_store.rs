//! The pin store file: parsing whatever is on disk, and rendering what was parsed. Whatever
//! parses must render to a file that parses back to the same pins and renders identically
//! (a rewrite never changes or loses a pin).
#![no_main]

use std::path::Path;

use amtgw::tls::store::{parse, render};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The store is read with `read_to_string`: anything else is an I/O error before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz-pins.toml");
    let Ok(pins) = parse(path, text) else {
        return;
    };
    let rendered = render(&pins);
    let again = parse(path, &rendered)
        .unwrap_or_else(|e| panic!("rendered store does not parse: {e}\n{rendered}"));
    assert_eq!(
        again, pins,
        "pins changed across render and parse:\n{rendered}"
    );
    assert_eq!(render(&again), rendered, "render is not stable");
});
