//! Socket options shared by both legs, and what the kernel tells of a console's socket.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// TCP_NODELAY (SOL sends single keystrokes; Nagle would hold them back) and keepalive (finds
/// dead peers on quiet sessions). Failures are ignored: the connection works without them.
pub(crate) fn tune(stream: &TcpStream, keepalive: Duration) {
    let _ = stream.set_nodelay(true);
    let probe_interval = (keepalive / 4).max(Duration::from_secs(1));
    let params = TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(probe_interval)
        .with_retries(4);
    let _ = SockRef::from(stream).set_tcp_keepalive(&params);
}

/// Make the coming close abortive: with a zero linger time the kernel answers the close with a
/// RST instead of a FIN, and drops whatever is still unsent. Used to pass a peer's reset on, so
/// the other peer cannot mistake a crash for a complete answer.
pub(crate) fn reset_on_close(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Where a console connection diverted by NAT `REDIRECT` was going: `SO_ORIGINAL_DST` for IPv4
/// (also on a dual-stack listener, whose IPv4 connections have a `::ffff:` local address) and
/// `IP6T_SO_ORIGINAL_DST` for IPv6, read from the connection's conntrack entry. A connection
/// no rule rewrote reports its own local address.
pub(crate) fn original_destination(
    stream: &TcpStream,
    local: SocketAddr,
) -> io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let ipv4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    let original = match ipv4 {
        true => socket.original_dst_v4()?,
        false => socket.original_dst_v6()?,
    };
    original.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the original destination is not an IP address",
        )
    })
}
