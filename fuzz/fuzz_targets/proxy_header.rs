//! PROXY protocol headers (v1 and v2) a load balancer writes before the console's bytes:
//! `proxy_protocol::header_len` and `parse` over any bytes and every listener setting. Neither
//! may panic; they must agree (a complete length is what `parse` consumes, an incomplete one
//! never parses); a header is never longer than its version allows; and every proper prefix of
//! a parsed header is incomplete, so reading it byte by byte takes nothing of what follows.
#![no_main]

use amtgw::proxy_protocol::{
    Accept, Length, V1_MAX_LEN, V2_FIXED_LEN, V2_MAX_PAYLOAD, Version, header_len, parse,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for accept in [Accept::V1, Accept::V2, Accept::Any] {
        let length = header_len(data, accept);
        let parsed = parse(data, accept);
        match (&length, &parsed) {
            (Ok(Length::Complete(len)), Ok((header, consumed))) => {
                assert_eq!(len, consumed);
                let most = match header.version {
                    Version::V1 => V1_MAX_LEN,
                    Version::V2 => V2_FIXED_LEN + V2_MAX_PAYLOAD,
                };
                assert!(*consumed <= most && *consumed <= data.len());
                for end in 0..*consumed {
                    assert_eq!(
                        header_len(&data[..end], accept),
                        Ok(Length::Incomplete),
                        "a prefix of {end} bytes"
                    );
                }
            }
            (Ok(Length::Complete(_)), Err(_)) => {}
            (Ok(Length::Incomplete), Ok(_)) => panic!("an incomplete header parsed"),
            (Ok(Length::Incomplete), Err(_)) => {}
            (Err(e), Ok(_)) => panic!("header_len refused ({e}) what parse accepted"),
            (Err(a), Err(b)) => assert_eq!(a, b, "the same refusal"),
        }
    }
});
