//! Socket options shared by both legs.

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
