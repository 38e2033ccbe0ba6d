//! A loopback address of this process's own, for programs that bind their listening address
//! themselves (stunnel, HAProxy, nginx) and so cannot be handed a socket bound on port 0.
//!
//! A port found free by binding and dropping a listener can be taken before such a program
//! binds it (it was: "Address already in use"), and retrying would only hide that. An address
//! in 127.64.0.0/10 spelling this process's id is one nothing else binds: pids are below 2^22
//! and unique among live processes, so runs from other checkouts never meet, and the caller
//! picks fixed ports on it below Linux's ephemeral range, which no port-0 bind or outgoing
//! connection is ever given. Shared by the tests and the e2e bench (`#[path]`).

use std::net::Ipv4Addr;

pub(crate) fn private_loopback() -> Ipv4Addr {
    let [_, high, mid, low] = std::process::id().to_be_bytes();
    assert!(high < 64, "pid above 2^22");
    Ipv4Addr::new(127, 64 | high, mid, low)
}
