//! PROXY protocol v1 and v2 in (downstream): the header an L4 load balancer (HAProxy's
//! `send-proxy`/`send-proxy-v2`, AWS NLB, Envoy) writes before the console's first byte, naming
//! the console's address and the address it dialled.
//!
//! The parser is pure functions over bytes ([`header_len`], [`parse`]), fuzzed
//! (`fuzz/fuzz_targets/proxy_header.rs`); [`read_header`] reads exactly the header's bytes from
//! a socket and not one more, so whatever the console sends after it reaches the device
//! unchanged. Format: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// A v1 header is at most 107 bytes, CRLF included (the specification's own bound).
pub const V1_MAX_LEN: usize = 107;
/// v2: the fixed part (signature, version and command, family, length).
pub const V2_FIXED_LEN: usize = 16;
/// v2: the most address and TLV bytes accepted after the fixed part. The format allows 65535;
/// the TLVs load balancers send (AWS's VPC endpoint ID, HAProxy's SSL and unique-ID ones,
/// Azure's link ID) take a few hundred bytes at most, and a bound keeps one connection's
/// header from holding 64 KiB.
pub const V2_MAX_PAYLOAD: usize = 2048;
/// The v2 signature: it cannot start an HTTP request, a v1 header or a redirection message.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// Which header versions a listener accepts (`services.<svc>.proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    V1,
    V2,
    /// Either, told apart by their first bytes (HAProxy's `accept-proxy` does the same).
    Any,
}

impl Accept {
    pub fn as_str(self) -> &'static str {
        match self {
            Accept::V1 => "v1",
            Accept::V2 => "v2",
            Accept::Any => "any",
        }
    }

    fn allows(self, version: Version) -> bool {
        matches!(
            (self, version),
            (Accept::Any, _) | (Accept::V1, Version::V1) | (Accept::V2, Version::V2)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// A console's connection: where it came from and the address it dialled.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The load balancer's own connection (v2 `LOCAL`, v1 `UNKNOWN`, v2 `AF_UNSPEC`): its
    /// health checks. The specification says to use the socket's own addresses.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub addresses: Addresses,
}

/// What is wrong with a header. Every one refuses the connection (`proxy_header`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error(
        "no PROXY protocol header: the connection starts with neither `PROXY ` nor the v2 signature"
    )]
    Signature,
    #[error("a PROXY protocol {got} header, but this listener accepts {accepted} only")]
    VersionNotAccepted {
        got: &'static str,
        accepted: &'static str,
    },
    #[error("PROXY protocol v2 header of version {0} (only 2 exists)")]
    V2Version(u8),
    #[error("PROXY protocol v2 command {0:#x}: neither LOCAL (0) nor PROXY (1)")]
    Command(u8),
    #[error(
        "PROXY protocol v2 address family and transport {0:#04x}: amtgw relays TCP over IPv4 or IPv6 (0x11, 0x21), or takes no address (0x00)"
    )]
    Family(u8),
    #[error("PROXY protocol v1 header without CRLF within {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("PROXY protocol v1 header: {0}")]
    V1Syntax(&'static str),
    #[error(
        "PROXY protocol v2 header of {len} address and TLV bytes, more than the {V2_MAX_PAYLOAD} accepted"
    )]
    V2TooLong { len: usize },
    #[error(
        "PROXY protocol v2 header: {len} bytes cannot hold the addresses of its family ({need})"
    )]
    V2Truncated { len: usize, need: usize },
    #[error("PROXY protocol v2 header: a TLV runs past the header's end")]
    Tlv,
}

impl ProxyHeaderError {
    /// A stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyHeaderError::Signature => "signature",
            ProxyHeaderError::VersionNotAccepted { .. } => "version_not_accepted",
            ProxyHeaderError::V2Version(_) => "v2_version",
            ProxyHeaderError::Command(_) => "command",
            ProxyHeaderError::Family(_) => "family",
            ProxyHeaderError::V1TooLong => "v1_too_long",
            ProxyHeaderError::V1Syntax(_) => "v1_syntax",
            ProxyHeaderError::V2TooLong { .. } => "v2_too_long",
            ProxyHeaderError::V2Truncated { .. } => "v2_truncated",
            ProxyHeaderError::Tlv => "tlv",
        }
    }
}

/// How long the header starting `bytes` is, as far as `bytes` tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// The header is exactly this many bytes (`bytes` may hold more: what follows it).
    Complete(usize),
    /// Every byte of `bytes` belongs to the header, which goes on beyond them: reading them
    /// all takes nothing of the console's own.
    Incomplete,
}

/// The length of the header at the start of `bytes`, or why there is no acceptable one.
/// Checks only what decides the length (signature, version, v2 length); [`parse`] the rest.
pub fn header_len(bytes: &[u8], accept: Accept) -> Result<Length, ProxyHeaderError> {
    let version = if bytes.is_empty() {
        return Ok(Length::Incomplete);
    } else if is_prefix_either_way(bytes, V1_PREFIX) {
        Version::V1
    } else if is_prefix_either_way(bytes, &V2_SIGNATURE) {
        Version::V2
    } else {
        return Err(ProxyHeaderError::Signature);
    };
    if !accept.allows(version) {
        return Err(ProxyHeaderError::VersionNotAccepted {
            got: version.as_str(),
            accepted: accept.as_str(),
        });
    }
    match version {
        Version::V1 => match bytes.windows(2).position(|w| w == b"\r\n") {
            Some(at) if at + 2 <= V1_MAX_LEN => Ok(Length::Complete(at + 2)),
            Some(_) => Err(ProxyHeaderError::V1TooLong),
            // A CR as the last byte of the longest header could still be followed by LF.
            None if bytes.len() >= V1_MAX_LEN => Err(ProxyHeaderError::V1TooLong),
            None => Ok(Length::Incomplete),
        },
        Version::V2 => {
            let Some(fixed) = bytes.get(..V2_FIXED_LEN) else {
                return Ok(Length::Incomplete);
            };
            if fixed[12] >> 4 != 2 {
                return Err(ProxyHeaderError::V2Version(fixed[12] >> 4));
            }
            let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
            if len > V2_MAX_PAYLOAD {
                return Err(ProxyHeaderError::V2TooLong { len });
            }
            let total = V2_FIXED_LEN + len;
            Ok(if bytes.len() >= total {
                Length::Complete(total)
            } else {
                Length::Incomplete
            })
        }
    }
}

/// Whether the shorter of `bytes` and `prefix` starts the other.
fn is_prefix_either_way(bytes: &[u8], prefix: &[u8]) -> bool {
    let n = bytes.len().min(prefix.len());
    bytes[..n] == prefix[..n]
}

/// The complete header at the start of `bytes`, and its length.
pub fn parse(bytes: &[u8], accept: Accept) -> Result<(Header, usize), ProxyHeaderError> {
    let len = match header_len(bytes, accept)? {
        Length::Complete(len) => len,
        Length::Incomplete if bytes.starts_with(V1_PREFIX) || bytes.len() < V1_PREFIX.len() => {
            return Err(ProxyHeaderError::V1Syntax("incomplete: no CRLF"));
        }
        Length::Incomplete => {
            let need = bytes.get(14..16).map_or(V2_FIXED_LEN, |l| {
                V2_FIXED_LEN + usize::from(u16::from_be_bytes([l[0], l[1]]))
            });
            return Err(ProxyHeaderError::V2Truncated {
                len: bytes.len(),
                need,
            });
        }
    };
    let header = &bytes[..len];
    let parsed = if header.starts_with(V1_PREFIX) {
        parse_v1(&header[V1_PREFIX.len()..len - 2])?
    } else {
        parse_v2(header)?
    };
    Ok((parsed, len))
}

/// `line`: what follows `PROXY ` up to the CRLF.
fn parse_v1(line: &[u8]) -> Result<Header, ProxyHeaderError> {
    let header = |addresses| Header {
        version: Version::V1,
        addresses,
    };
    if line.contains(&b'\r') || line.contains(&b'\n') {
        return Err(ProxyHeaderError::V1Syntax("CR or LF before the final CRLF"));
    }
    // The specification: after UNKNOWN, the receiver ignores everything up to the CRLF.
    if line == b"UNKNOWN" || line.starts_with(b"UNKNOWN ") {
        return Ok(header(Addresses::Local));
    }
    let text = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::V1Syntax("not ASCII"))?;
    let fields: Vec<&str> = text.split(' ').collect();
    let [protocol, source, destination, source_port, destination_port] = fields[..] else {
        return Err(ProxyHeaderError::V1Syntax(
            "expected `TCP4|TCP6 <source> <destination> <source port> <destination port>`, single spaces",
        ));
    };
    let (source, destination): (IpAddr, IpAddr) = match protocol {
        "TCP4" => (ipv4(source)?.into(), ipv4(destination)?.into()),
        "TCP6" => (ipv6(source)?.into(), ipv6(destination)?.into()),
        _ => {
            return Err(ProxyHeaderError::V1Syntax(
                "protocol is neither TCP4, TCP6 nor UNKNOWN",
            ));
        }
    };
    Ok(header(Addresses::Proxied {
        source: SocketAddr::new(source, port(source_port)?),
        destination: SocketAddr::new(destination, port(destination_port)?),
    }))
}

fn ipv4(text: &str) -> Result<Ipv4Addr, ProxyHeaderError> {
    text.parse()
        .map_err(|_| ProxyHeaderError::V1Syntax("TCP4 with an address that is no IPv4 address"))
}

fn ipv6(text: &str) -> Result<Ipv6Addr, ProxyHeaderError> {
    text.parse()
        .map_err(|_| ProxyHeaderError::V1Syntax("TCP6 with an address that is no IPv6 address"))
}

/// Decimal, 0 to 65535, digits only (`u16::from_str` would take a `+`).
fn port(text: &str) -> Result<u16, ProxyHeaderError> {
    let bad = ProxyHeaderError::V1Syntax("a port that is not a number from 0 to 65535");
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    text.parse().map_err(|_| bad)
}

/// `header`: the whole v2 header, fixed part included, as long as its length field says.
fn parse_v2(header: &[u8]) -> Result<Header, ProxyHeaderError> {
    let result = |addresses| {
        Ok(Header {
            version: Version::V2,
            addresses,
        })
    };
    let (command, family) = (header[12] & 0x0f, header[13]);
    let payload = &header[V2_FIXED_LEN..];
    match command {
        // The load balancer's own connection: the address block, whatever it holds, is
        // ignored, as the specification says.
        0x0 => return result(Addresses::Local),
        0x1 => {}
        other => return Err(ProxyHeaderError::Command(other)),
    }
    let need = match family {
        0x00 => return result(Addresses::Local),
        0x11 => 12,
        0x21 => 36,
        other => return Err(ProxyHeaderError::Family(other)),
    };
    let (addresses, tlvs) =
        payload
            .split_at_checked(need)
            .ok_or(ProxyHeaderError::V2Truncated {
                len: payload.len(),
                need,
            })?;
    skip_tlvs(tlvs)?;
    let (source, destination): (IpAddr, IpAddr) = match family {
        0x11 => (
            Ipv4Addr::from(octets::<4>(&addresses[0..4])).into(),
            Ipv4Addr::from(octets::<4>(&addresses[4..8])).into(),
        ),
        _ => (
            Ipv6Addr::from(octets::<16>(&addresses[0..16])).into(),
            Ipv6Addr::from(octets::<16>(&addresses[16..32])).into(),
        ),
    };
    let ports = &addresses[need - 4..];
    result(Addresses::Proxied {
        source: SocketAddr::new(source, u16::from_be_bytes([ports[0], ports[1]])),
        destination: SocketAddr::new(destination, u16::from_be_bytes([ports[2], ports[3]])),
    })
}

fn octets<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// TLVs (type, 16-bit length, value) carry what amtgw has no use for (ALPN, authority, SSL
/// details, a CRC): each is skipped, but each must lie within the header.
fn skip_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyHeaderError> {
    while !tlvs.is_empty() {
        let [_kind, high, low, rest @ ..] = tlvs else {
            return Err(ProxyHeaderError::Tlv);
        };
        let len = usize::from(u16::from_be_bytes([*high, *low]));
        tlvs = rest.get(len..).ok_or(ProxyHeaderError::Tlv)?;
    }
    Ok(())
}

/// Why no header was read from a connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadHeaderError {
    #[error("invalid PROXY protocol header ({}): {}", .0.kind(), .0)]
    Header(#[from] ProxyHeaderError),
    #[error("no complete PROXY protocol header within {after:?} (gateway.proxy_header_timeout)")]
    Timeout { after: Duration },
    #[error("the connection closed before its PROXY protocol header was complete")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

impl ReadHeaderError {
    pub fn kind(&self) -> &'static str {
        match self {
            ReadHeaderError::Header(e) => e.kind(),
            ReadHeaderError::Timeout { .. } => "timeout",
            ReadHeaderError::Closed => "closed",
            ReadHeaderError::Io(_) => "io",
        }
    }
}

/// Reads the header at the start of `stream`, exactly its bytes: what the socket holds is
/// peeked, and only bytes known to belong to the header are taken, so the console's first
/// byte is the relay's first byte.
pub async fn read_header(
    stream: &mut TcpStream,
    accept: Accept,
    limit: Duration,
) -> Result<Header, ReadHeaderError> {
    tokio::time::timeout(limit, read_exactly_the_header(stream, accept))
        .await
        .unwrap_or(Err(ReadHeaderError::Timeout { after: limit }))
}

async fn read_exactly_the_header(
    stream: &mut TcpStream,
    accept: Accept,
) -> Result<Header, ReadHeaderError> {
    let most = match accept {
        Accept::V1 => V1_MAX_LEN,
        Accept::V2 | Accept::Any => V2_FIXED_LEN + V2_MAX_PAYLOAD,
    };
    let mut taken: Vec<u8> = Vec::with_capacity(V1_MAX_LEN);
    let mut peeked = vec![0u8; most];
    loop {
        let n = stream.peek(&mut peeked[..most - taken.len()]).await?;
        if n == 0 {
            return Err(ReadHeaderError::Closed);
        }
        let seen = taken.len();
        taken.extend_from_slice(&peeked[..n]);
        match header_len(&taken, accept)? {
            Length::Complete(len) => {
                taken.truncate(len);
                stream.read_exact(&mut taken[seen..]).await?;
                let (header, _) = parse(&taken, accept)?;
                return Ok(header);
            }
            // All of it is header: take it, and wait for the rest (peeking again at once
            // would only see the same bytes).
            Length::Incomplete => {
                stream.read_exact(&mut taken[seen..]).await?;
            }
        }
    }
}

/// Test helpers and the parser's tests, table-driven.
#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 header: `command` (0 LOCAL, 1 PROXY), `family`, then the address block and TLVs.
    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&(body.len() as u16).to_be_bytes());
        header.extend_from_slice(body);
        header
    }

    fn v4_block() -> Vec<u8> {
        let mut body = vec![192, 0, 2, 7, 10, 20, 0, 11];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&16992u16.to_be_bytes());
        body
    }

    fn v6_block() -> Vec<u8> {
        let source: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let destination: Ipv6Addr = "fd00:20::11".parse().unwrap();
        let mut body = source.octets().to_vec();
        body.extend_from_slice(&destination.octets());
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&16994u16.to_be_bytes());
        body
    }

    /// Two TLVs: an ALPN (0x01) and a NOOP (0x04) with an empty value.
    fn tlvs() -> Vec<u8> {
        vec![0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00]
    }

    fn proxied(source: &str, destination: &str) -> Addresses {
        Addresses::Proxied {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    #[test]
    fn valid_headers_parse_to_their_addresses_and_length() {
        let with_tlvs = [v4_block(), tlvs()].concat();
        let cases: Vec<(&str, Vec<u8>, Version, Addresses)> = vec![
            (
                "v1 TCP4",
                b"PROXY TCP4 192.0.2.7 10.20.0.11 40000 16992\r\n".to_vec(),
                Version::V1,
                proxied("192.0.2.7:40000", "10.20.0.11:16992"),
            ),
            (
                "v1 TCP6",
                b"PROXY TCP6 2001:db8::7 fd00:20::11 40000 16994\r\n".to_vec(),
                Version::V1,
                proxied("[2001:db8::7]:40000", "[fd00:20::11]:16994"),
            ),
            ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec(), Version::V1, Addresses::Local),
            (
                "v1 UNKNOWN with addresses, ignored",
                b"PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 65535 65535\r\n".to_vec(),
                Version::V1,
                Addresses::Local,
            ),
            (
                "v1 longest",
                b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n".to_vec(),
                Version::V1,
                proxied(
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                    "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
                ),
            ),
            (
                "v2 IPv4",
                v2(1, 0x11, &v4_block()),
                Version::V2,
                proxied("192.0.2.7:40000", "10.20.0.11:16992"),
            ),
            (
                "v2 IPv4 with TLVs",
                v2(1, 0x11, &with_tlvs),
                Version::V2,
                proxied("192.0.2.7:40000", "10.20.0.11:16992"),
            ),
            (
                "v2 IPv6 with TLVs",
                v2(1, 0x21, &[v6_block(), tlvs()].concat()),
                Version::V2,
                proxied("[2001:db8::7]:40000", "[fd00:20::11]:16994"),
            ),
            ("v2 LOCAL", v2(0, 0x00, &[]), Version::V2, Addresses::Local),
            (
                "v2 LOCAL with an address block, ignored",
                v2(0, 0x11, &with_tlvs),
                Version::V2,
                Addresses::Local,
            ),
            ("v2 PROXY AF_UNSPEC", v2(1, 0x00, &tlvs()), Version::V2, Addresses::Local),
        ];
        for (what, bytes, version, addresses) in cases {
            let mut with_more = bytes.clone();
            with_more.extend_from_slice(b"POST /wsman HTTP/1.1\r\n");
            for accept in [
                Accept::Any,
                if version == Version::V1 {
                    Accept::V1
                } else {
                    Accept::V2
                },
            ] {
                let parsed = parse(&with_more, accept).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(
                    parsed,
                    (Header { version, addresses }, bytes.len()),
                    "{what}"
                );
                assert_eq!(
                    header_len(&with_more, accept),
                    Ok(Length::Complete(bytes.len())),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn every_proper_prefix_of_a_header_is_incomplete() {
        for header in [
            b"PROXY TCP4 192.0.2.7 10.20.0.11 40000 16992\r\n".to_vec(),
            v2(1, 0x21, &[v6_block(), tlvs()].concat()),
        ] {
            for end in 0..header.len() {
                assert_eq!(
                    header_len(&header[..end], Accept::Any),
                    Ok(Length::Incomplete),
                    "{end} bytes of {header:?}"
                );
                assert!(parse(&header[..end], Accept::Any).is_err(), "{end} bytes");
            }
        }
    }

    #[test]
    fn invalid_headers_are_refused_with_their_kind() {
        let mut v1_too_long = b"PROXY TCP6 ".to_vec();
        v1_too_long.extend(std::iter::repeat_n(b'f', V1_MAX_LEN));
        let mut oversized_v2 = v2(1, 0x11, &[]);
        oversized_v2[14..16].copy_from_slice(&((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
        let mut version_3 = v2(1, 0x11, &v4_block());
        version_3[12] = 0x31;
        let cases: Vec<(&str, Vec<u8>, Accept, &str)> = vec![
            (
                "an HTTP request",
                b"POST /wsman HTTP/1.1\r\n\r\n".to_vec(),
                Accept::Any,
                "signature",
            ),
            (
                "lower-case v1",
                b"proxy TCP4 1.2.3.4 1.2.3.5 1 2\r\n".to_vec(),
                Accept::Any,
                "signature",
            ),
            (
                "a v2 signature off by one byte",
                {
                    let mut h = v2(1, 0x11, &v4_block());
                    h[11] = b'X';
                    h
                },
                Accept::Any,
                "signature",
            ),
            (
                "v2 on a v1 listener",
                v2(1, 0x11, &v4_block()),
                Accept::V1,
                "version_not_accepted",
            ),
            (
                "v1 on a v2 listener",
                b"PROXY UNKNOWN\r\n".to_vec(),
                Accept::V2,
                "version_not_accepted",
            ),
            (
                "v1 without CRLF in 107 bytes",
                v1_too_long,
                Accept::Any,
                "v1_too_long",
            ),
            (
                "v1 TCP4 with an IPv6 address",
                b"PROXY TCP4 ::1 10.0.0.1 1 2\r\n".to_vec(),
                Accept::Any,
                "v1_syntax",
            ),
            (
                "v1 TCP6 with an IPv4 address",
                b"PROXY TCP6 10.0.0.1 ::1 1 2\r\n".to_vec(),
                Accept::Any,
                "v1_syntax",
            ),
            (
                "v1 UDP4",
                b"PROXY UDP4 10.0.0.1 10.0.0.2 1 2\r\n".to_vec(),
                Accept::Any,
                "v1_syntax",
            ),
            (
                "v1 double space",
                b"PROXY TCP4 10.0.0.1  10.0.0.2 1 2\r\n".to_vec(),
                Accept::Any,
                "v1_syntax",
            ),
            (
                "v1 port +1",
                b"PROXY TCP4 10.0.0.1 10.0.0.2 +1 2\r\n".to_vec(),
                Accept::Any,
                "v1_syntax",
            ),
            (
                "v1 port 65536",
                b"PROXY TCP4 10.0.0.1 10.0.0.2 65536 2\r\n".to_vec(),
                Accept::Any,
                "v1_syntax",
            ),
            (
                "v1 missing port",
                b"PROXY TCP4 10.0.0.1 10.0.0.2 1\r\n".to_vec(),
                Accept::Any,
                "v1_syntax",
            ),
            (
                "v1 bare LF inside",
                b"PROXY TCP4 10.0.0.1\n10.0.0.2 1 2\r\n".to_vec(),
                Accept::Any,
                "v1_syntax",
            ),
            (
                "v1 non-ASCII",
                b"PROXY TCP4 10.0.0.\xff 10.0.0.2 1 2\r\n".to_vec(),
                Accept::Any,
                "v1_syntax",
            ),
            ("v2 version 3", version_3, Accept::Any, "v2_version"),
            (
                "v2 command 2",
                v2(2, 0x11, &v4_block()),
                Accept::Any,
                "command",
            ),
            (
                "v2 UDP over IPv4",
                v2(1, 0x12, &v4_block()),
                Accept::Any,
                "family",
            ),
            ("v2 AF_UNIX", v2(1, 0x31, &[0; 216]), Accept::Any, "family"),
            (
                "v2 family 0x41",
                v2(1, 0x41, &v4_block()),
                Accept::Any,
                "family",
            ),
            (
                "v2 length beyond the bound",
                oversized_v2,
                Accept::Any,
                "v2_too_long",
            ),
            (
                "v2 IPv4 in 11 bytes",
                v2(1, 0x11, &v4_block()[..11]),
                Accept::Any,
                "v2_truncated",
            ),
            (
                "v2 IPv6 in the IPv4 block's length",
                v2(1, 0x21, &v4_block()),
                Accept::Any,
                "v2_truncated",
            ),
            (
                "v2 TLV header cut",
                v2(1, 0x11, &[v4_block(), vec![0x01, 0x00]].concat()),
                Accept::Any,
                "tlv",
            ),
            (
                "v2 TLV value past the end",
                v2(
                    1,
                    0x11,
                    &[v4_block(), vec![0x01, 0x00, 0x05, b'h']].concat(),
                ),
                Accept::Any,
                "tlv",
            ),
        ];
        for (what, bytes, accept, kind) in cases {
            let error = parse(&bytes, accept)
                .err()
                .unwrap_or_else(|| panic!("{what}: parsed"));
            assert_eq!(error.kind(), kind, "{what}: {error}");
        }
    }
}
