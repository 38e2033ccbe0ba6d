//! Console bytes on a WS-Man connection routed by Host: `http_head::parse_head` over the whole
//! input, and `http_head::Requests` following it as a keep-alive stream, once whole and once
//! split in two reads at a point the first byte picks. Nothing panics; the bytes passed on are
//! exactly a prefix of the input (heads and bodies are never altered, only held or stopped);
//! without an error everything is passed on but at most one incomplete head, held; and how
//! the stream is split into reads changes nothing.
#![no_main]

use amtgw::http_head::{MAX_HEAD, Requests, follow, parse_head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let _ = parse_head(stream);

    let mut whole = Requests::new();
    let (passed, error) = follow(&mut whole, stream);
    assert_eq!(&stream[..passed.len()], &passed[..], "the bytes passed on were altered");
    if error.is_none() {
        let held = stream.len() - passed.len();
        assert!(held < MAX_HEAD, "{held} bytes held");
        assert_eq!(held > 0, whole.holds_partial_head());
    }

    let split = usize::from(pick) * stream.len() / 256;
    let mut parts = Requests::new();
    let (mut passed_split, mut error_split) = follow(&mut parts, &stream[..split]);
    if error_split.is_none() {
        let (rest, error) = follow(&mut parts, &stream[split..]);
        passed_split.extend(rest);
        error_split = error;
    }
    assert_eq!(passed_split, passed, "split at {split}");
    assert_eq!(error_split, error, "split at {split}");
    assert_eq!(parts.authority(), whole.authority());
});
