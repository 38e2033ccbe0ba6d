//! The heads of a console's HTTP/1.1 requests, for WS-Man routed by `Host`
//! (`services.wsman.routing = "host"`), and where each request ends so that the next head can
//! be found.
//!
//! Pure functions over bytes, no I/O. [`parse_head`] reads one complete request head (with
//! `httparse`, hyper's parser): its `Host` (or absolute-form authority) and how its body is
//! framed. [`Requests`] follows a whole console-to-device byte stream: it collects each head
//! (at most [`MAX_HEAD`] bytes), checks it, and then skips the body by its framing,
//! `Content-Length` or `chunked` (chunk sizes are read, chunk data never looked at), to the
//! next head. Nothing beyond the heads and the chunk-size lines is parsed. Whatever could be
//! read two ways is refused rather than guessed at: a head with a bare LF or CR, both
//! `Content-Length` and `Transfer-Encoding`, a repeated or unparsable length, any transfer
//! coding but `chunked` alone, two `Host` headers, a `Host` that disagrees with the request
//! target. A request smuggled past the gateway would reach the device under another
//! request's routing, so the gateway and the device must agree on where each request ends.
//!
//! Memory is bounded: a head in progress (at most [`MAX_HEAD`] bytes) is the only thing kept;
//! a body costs a counter.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The largest request head accepted, request line and headers with the final empty line.
/// WS-Man heads are a few hundred bytes; 16 KiB leaves room for a Kerberos `Authorization:
/// Negotiate` ticket with a large PAC (as IIS's default `MaxRequestBytes` does).
pub const MAX_HEAD: usize = 16 * 1024;

/// The most header fields in one head.
const MAX_HEADERS: usize = 100;

/// The longest chunk-size line (size, extensions, CRLF) and the longest trailer section.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a request head (or the framing after it) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the request head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("not an HTTP/1.x request head ({0})")]
    Malformed(&'static str),
    #[error("the request has no Host header")]
    NoHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("the request target names {target} but its Host header {host}")]
    ConflictingHost { target: Printable, host: Printable },
    #[error("Host {0} is not a host name or IP address with an optional port")]
    BadHost(Printable),
    #[error("CONNECT is not relayed: the gateway is no tunnel")]
    Connect,
    #[error("the request's body framing is ambiguous or invalid ({0})")]
    Framing(&'static str),
    #[error("a request for {got} on a connection that is for {first}")]
    HostMismatch { first: Authority, got: Authority },
}

impl HeadError {
    /// A stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            HeadError::TooLarge => "too_large",
            HeadError::Malformed(_) => "malformed",
            HeadError::NoHost => "no_host",
            HeadError::DuplicateHost => "duplicate_host",
            HeadError::ConflictingHost { .. } => "conflicting_host",
            HeadError::BadHost(_) => "bad_host",
            HeadError::Connect => "connect",
            HeadError::Framing(_) => "framing",
            HeadError::HostMismatch { .. } => "host_mismatch",
        }
    }

    /// The status a console is answered with when this refuses its first request (a later one
    /// cannot be answered: the device may still be sending the previous answer).
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::HostMismatch { .. } => 421,
            _ => 400,
        }
    }
}

/// Console-supplied text as it may be shown in a log line or an error response: escaped and
/// cut to 100 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Printable(String);

impl Printable {
    fn of(bytes: &[u8]) -> Printable {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(100)]);
        let mut escaped: String = text.escape_debug().collect();
        if bytes.len() > 100 {
            escaped.push('…');
        }
        Printable(escaped)
    }
}

impl fmt::Display for Printable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.0)
    }
}

/// The host a request names: a DNS name (lower case, without a trailing dot) or an address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostName {
    Name(String),
    Ip(IpAddr),
}

/// A `Host` header (or the authority of an absolute-form target): the host and the port, if
/// one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: HostName,
    pub port: Option<u16>,
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostName::Name(name) => f.write_str(name)?,
            HostName::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            HostName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl Authority {
    /// `host[:port]` as RFC 3986 writes it: a DNS name, a dotted IPv4 address or a bracketed
    /// IPv6 one (no zone), and a decimal port. What is neither (a numeric name that is no
    /// valid IPv4 address, say `010.0.0.1`) is refused, not interpreted.
    pub fn parse(text: &[u8]) -> Result<Authority, HeadError> {
        let bad = || HeadError::BadHost(Printable::of(text));
        let (host, port) = if let Some(rest) = text.strip_prefix(b"[") {
            let close = rest.iter().position(|&b| b == b']').ok_or_else(bad)?;
            let inside = std::str::from_utf8(&rest[..close]).map_err(|_| bad())?;
            let ip: Ipv6Addr = inside.parse().map_err(|_| bad())?;
            let port = match &rest[close + 1..] {
                [] => None,
                [b':', port @ ..] => Some(port),
                _ => return Err(bad()),
            };
            (HostName::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match text.iter().position(|&b| b == b':') {
                Some(colon) => (&text[..colon], Some(&text[colon + 1..])),
                None => (text, None),
            };
            (host_name(host).ok_or_else(bad)?, port)
        };
        let port = match port {
            None => None,
            Some(digits) => {
                if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
                    return Err(bad());
                }
                let text = std::str::from_utf8(digits).map_err(|_| bad())?;
                Some(text.parse::<u16>().map_err(|_| bad())?)
            }
        };
        Ok(Authority { host, port })
    }
}

/// A DNS name or a dotted IPv4 address.
fn host_name(text: &[u8]) -> Option<HostName> {
    let text = std::str::from_utf8(text).ok()?;
    let name = text.strip_suffix('.').unwrap_or(text);
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // All digits and dots: an IPv4 address, or nothing (never a name).
        return name
            .parse::<Ipv4Addr>()
            .ok()
            .filter(|_| !text.ends_with('.'))
            .map(|ip| HostName::Ip(IpAddr::V4(ip)));
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    labels_ok.then(|| HostName::Name(name.to_ascii_lowercase()))
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `Content-Length: n` (no header at all is a length of zero).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What a request head says that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub authority: Authority,
    pub body: Body,
}

/// Reads one complete request head: `head` is exactly the request line, the header fields and
/// the empty line that ends them.
pub fn parse_head(head: &[u8]) -> Result<Head, HeadError> {
    if head.len() > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    // Line ends are CRLF, nothing else: a parser that took a bare LF (or CR) for one would
    // see other header fields than one that did not.
    for (i, &b) in head.iter().enumerate() {
        let lone_lf = b == b'\n' && (i == 0 || head[i - 1] != b'\r');
        let lone_cr = b == b'\r' && head.get(i + 1) != Some(&b'\n');
        if lone_lf || lone_cr {
            return Err(HeadError::Malformed("a line ends without CRLF"));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        Ok(httparse::Status::Complete(_)) => {
            return Err(HeadError::Malformed("bytes after the head"));
        }
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("an incomplete head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(error) => return Err(HeadError::Malformed(parse_error(error))),
    }
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed("an incomplete request line"));
    };
    if method == "CONNECT" {
        return Err(HeadError::Connect);
    }

    let mut host: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("host") {
            if host.replace(value).is_some() {
                return Err(HeadError::DuplicateHost);
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(HeadError::Framing("more than one Content-Length"));
            }
            length = Some(content_length(value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked {
                return Err(HeadError::Framing("more than one Transfer-Encoding"));
            }
            if !trim(value).eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::Framing(
                    "a transfer coding other than chunked alone",
                ));
            }
            chunked = true;
        }
    }
    let body = match (length, chunked) {
        (Some(_), true) => {
            return Err(HeadError::Framing(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (_, true) if version == 0 => {
            return Err(HeadError::Framing(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (_, true) => Body::Chunked,
        (length, false) => Body::Length(length.unwrap_or(0)),
    };

    let from_host = match host.map(trim) {
        None | Some([]) => None,
        Some(value) => Some(Authority::parse(value)?),
    };
    let from_target = absolute_authority(target.as_bytes())?;
    let authority = match (from_target, from_host) {
        (Some(target_authority), Some(host_authority)) => {
            if target_authority != host_authority {
                return Err(HeadError::ConflictingHost {
                    target: Printable(target_authority.to_string()),
                    host: Printable(host_authority.to_string()),
                });
            }
            host_authority
        }
        (Some(authority), None) | (None, Some(authority)) => authority,
        (None, None) => return Err(HeadError::NoHost),
    };
    Ok(Head { authority, body })
}

fn parse_error(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "an invalid header name",
        httparse::Error::HeaderValue => "an invalid header value",
        httparse::Error::NewLine => "an invalid line end",
        httparse::Error::Status => "an invalid status",
        httparse::Error::Token => "an invalid method or target",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "an invalid HTTP version",
    }
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

/// `1*DIGIT`, nothing else (no sign, no list, no spaces inside).
fn content_length(value: &[u8]) -> Result<u64, HeadError> {
    let digits = trim(value);
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Framing("a Content-Length that is not a number"));
    }
    Ok(digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// The authority of an absolute-form target (`http://amt-01:16992/wsman`, what a console sends
/// to an HTTP proxy); `None` for origin-form (`/wsman`) and `*`.
fn absolute_authority(target: &[u8]) -> Result<Option<Authority>, HeadError> {
    if target.starts_with(b"/") || target == b"*" {
        return Ok(None);
    }
    let scheme_end = b"http://".len();
    if target.len() < scheme_end || !target[..scheme_end].eq_ignore_ascii_case(b"http://") {
        return Err(HeadError::Malformed(
            "a target that is neither /path nor http://",
        ));
    }
    let rest = &target[scheme_end..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains(&b'@') {
        return Err(HeadError::BadHost(Printable::of(authority)));
    }
    Authority::parse(authority).map(Some)
}

/// Where the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// This many body bytes left.
    Length(u64),
    /// In a chunk-size line: the size so far, how many line bytes seen, whether the size's
    /// digits have ended (extensions follow), whether a CR was just seen.
    ChunkSize {
        size: u64,
        digits: usize,
        line: usize,
        in_extension: bool,
        cr: bool,
    },
    /// This many chunk data bytes left, then CRLF.
    ChunkData(u64),
    /// The CRLF after a chunk's data: how many of its two bytes seen.
    ChunkEnd(u8),
    /// The trailer section after the last chunk: bytes seen, bytes in the current line,
    /// whether a CR was just seen.
    Trailers { total: usize, line: usize, cr: bool },
}

/// What [`Requests::step`] made of the front of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The first `n` bytes are body (or chunk framing): pass them on as they are.
    Body(usize),
    /// The first `n` bytes were taken into a request head that is not complete yet: hold them.
    Partial(usize),
    /// The first `n` bytes completed a request head, valid and for the connection's host:
    /// [`Requests::take_head`] hands it over whole.
    Head(usize),
}

/// Follows the requests of one console connection, head by head. The first head fixes the
/// connection's [`Authority`]; every later head must name the same one.
#[derive(Debug)]
pub struct Requests {
    state: State,
    head: Vec<u8>,
    /// How far `head` has been searched for its end.
    searched: usize,
    first: Option<Authority>,
    /// The last complete head was read (`take_head` not yet called).
    complete: bool,
}

impl Default for Requests {
    fn default() -> Requests {
        Requests::new()
    }
}

impl Requests {
    pub fn new() -> Requests {
        Requests {
            state: State::Head,
            head: Vec::new(),
            searched: 0,
            first: None,
            complete: false,
        }
    }

    /// The first request's authority, once its head is complete.
    pub fn authority(&self) -> Option<&Authority> {
        self.first.as_ref()
    }

    /// Whether bytes of a head not yet complete are held.
    pub fn holds_partial_head(&self) -> bool {
        !self.head.is_empty()
    }

    /// The head completed by the last [`Step::Head`]. Its memory goes with it.
    pub fn take_head(&mut self) -> Vec<u8> {
        self.complete = false;
        self.searched = 0;
        std::mem::take(&mut self.head)
    }

    /// Consumes the front of `input` (not empty). After an error the stream is beyond
    /// following: the connection must end (bytes before the error were fine).
    pub fn step(&mut self, input: &[u8]) -> Result<Step, HeadError> {
        debug_assert!(!self.complete, "take_head before stepping on");
        match self.state {
            State::Head => self.head_step(input),
            State::Length(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::Head
                } else {
                    State::Length(left)
                };
                Ok(Step::Body(n))
            }
            State::ChunkData(left) => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::ChunkEnd(0)
                } else {
                    State::ChunkData(left)
                };
                Ok(Step::Body(n))
            }
            State::ChunkSize { .. } | State::ChunkEnd(_) | State::Trailers { .. } => {
                let mut n = 0;
                for &b in input {
                    match self.framing_byte(b) {
                        Ok(()) => n += 1,
                        // The bytes before the bad one pass now, as they would have had the
                        // bad one come in a later read; the next step reports it.
                        Err(_) if n > 0 => break,
                        Err(error) => return Err(error),
                    }
                    if matches!(self.state, State::Head | State::ChunkData(_)) {
                        break;
                    }
                }
                Ok(Step::Body(n))
            }
        }
    }

    /// One byte of chunk framing: a size line, the CRLF after data, or the trailers.
    fn framing_byte(&mut self, b: u8) -> Result<(), HeadError> {
        self.state = match self.state {
            State::ChunkSize {
                size,
                digits,
                line,
                in_extension,
                cr,
            } => {
                let line = line + 1;
                if line > MAX_CHUNK_LINE {
                    return Err(HeadError::Framing("a chunk-size line too long"));
                }
                if cr {
                    if b != b'\n' {
                        return Err(HeadError::Framing("a chunk-size line without CRLF"));
                    }
                    if digits == 0 {
                        return Err(HeadError::Framing("a chunk without a size"));
                    }
                    if size == 0 {
                        State::Trailers {
                            total: 0,
                            line: 0,
                            cr: false,
                        }
                    } else {
                        State::ChunkData(size)
                    }
                } else if b == b'\r' {
                    State::ChunkSize {
                        size,
                        digits,
                        line,
                        in_extension,
                        cr: true,
                    }
                } else if b == b'\n' {
                    return Err(HeadError::Framing("a chunk-size line without CRLF"));
                } else if !in_extension && b.is_ascii_hexdigit() {
                    if digits >= 15 {
                        return Err(HeadError::Framing("a chunk size too large"));
                    }
                    let digit = (b as char).to_digit(16).map_or(0, u64::from);
                    State::ChunkSize {
                        size: size * 16 + digit,
                        digits: digits + 1,
                        line,
                        in_extension,
                        cr,
                    }
                } else if digits > 0 && (in_extension || matches!(b, b';' | b' ' | b'\t')) {
                    // Extensions (and the whitespace before them) are passed on unread.
                    if b.is_ascii_control() && b != b'\t' {
                        return Err(HeadError::Framing("a control byte in a chunk extension"));
                    }
                    State::ChunkSize {
                        size,
                        digits,
                        line,
                        in_extension: true,
                        cr,
                    }
                } else {
                    return Err(HeadError::Framing("an invalid chunk size"));
                }
            }
            State::ChunkEnd(seen) => match (seen, b) {
                (0, b'\r') => State::ChunkEnd(1),
                (1, b'\n') => State::ChunkSize {
                    size: 0,
                    digits: 0,
                    line: 0,
                    in_extension: false,
                    cr: false,
                },
                _ => return Err(HeadError::Framing("chunk data longer than its size")),
            },
            State::Trailers { total, line, cr } => {
                let total = total + 1;
                if total > MAX_CHUNK_LINE {
                    return Err(HeadError::Framing("trailers too long"));
                }
                match (cr, b) {
                    (true, b'\n') if line == 0 => State::Head,
                    (true, b'\n') => State::Trailers {
                        total,
                        line: 0,
                        cr: false,
                    },
                    (true, _) | (false, b'\n') => {
                        return Err(HeadError::Framing("a trailer line without CRLF"));
                    }
                    (false, b'\r') => State::Trailers {
                        total,
                        line,
                        cr: true,
                    },
                    (false, _) => State::Trailers {
                        total,
                        line: line + 1,
                        cr: false,
                    },
                }
            }
            State::Head | State::Length(_) | State::ChunkData(_) => self.state,
        };
        Ok(())
    }

    fn head_step(&mut self, input: &[u8]) -> Result<Step, HeadError> {
        // The end is searched from a little before the new bytes: "\r\n\r\n" may straddle.
        let start = self.searched.saturating_sub(3);
        let room = MAX_HEAD - self.head.len();
        let take = input.len().min(room);
        self.head.extend_from_slice(&input[..take]);
        let end = self.head[start..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|at| start + at + 4);
        let Some(end) = end else {
            if self.head.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            self.searched = self.head.len();
            return Ok(Step::Partial(take));
        };
        // Bytes after the end belong to the body or the next request: give them back.
        let used = take - (self.head.len() - end);
        self.head.truncate(end);
        let head = parse_head(&self.head)?;
        match &self.first {
            None => self.first = Some(head.authority.clone()),
            Some(first) if *first != head.authority => {
                return Err(HeadError::HostMismatch {
                    first: first.clone(),
                    got: head.authority,
                });
            }
            Some(_) => {}
        }
        self.state = match head.body {
            Body::Length(0) => State::Head,
            Body::Length(n) => State::Length(n),
            Body::Chunked => State::ChunkSize {
                size: 0,
                digits: 0,
                line: 0,
                in_extension: false,
                cr: false,
            },
        };
        self.complete = true;
        Ok(Step::Head(used))
    }
}

/// Runs `input` through `requests` in one go: the bytes it passes on, in order (heads and
/// bodies), and the error that stopped it, if any. For tests and the fuzz target; the data
/// path steps without copying bodies.
pub fn follow(requests: &mut Requests, mut input: &[u8]) -> (Vec<u8>, Option<HeadError>) {
    let mut passed = Vec::new();
    while !input.is_empty() {
        match requests.step(input) {
            Ok(Step::Body(n)) => {
                passed.extend_from_slice(&input[..n]);
                input = &input[n..];
            }
            Ok(Step::Partial(n)) => input = &input[n..],
            Ok(Step::Head(n)) => {
                passed.extend_from_slice(&requests.take_head());
                input = &input[n..];
            }
            Err(error) => return (passed, Some(error)),
        }
    }
    (passed, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str, port: Option<u16>) -> Authority {
        Authority {
            host: HostName::Name(n.to_owned()),
            port,
        }
    }

    #[test]
    fn heads_are_read_for_their_host_and_body_framing() {
        let cases: &[(&str, Result<Head, &str>)] = &[
            (
                "POST /wsman HTTP/1.1\r\nHost: AMT-01.Example.NET.:16992\r\nContent-Length: 12\r\n\r\n",
                Ok(Head {
                    authority: name("amt-01.example.net", Some(16992)),
                    body: Body::Length(12),
                }),
            ),
            (
                "GET / HTTP/1.1\r\nhost:amt\r\n\r\n",
                Ok(Head {
                    authority: name("amt", None),
                    body: Body::Length(0),
                }),
            ),
            (
                "POST /wsman HTTP/1.1\r\nHost: 10.20.0.11\r\nTransfer-Encoding: Chunked \r\n\r\n",
                Ok(Head {
                    authority: Authority {
                        host: HostName::Ip(IpAddr::from([10, 20, 0, 11])),
                        port: None,
                    },
                    body: Body::Chunked,
                }),
            ),
            (
                "POST /wsman HTTP/1.1\r\nHost: [fd00:20::11]:16992\r\nContent-Length: 0\r\n\r\n",
                Ok(Head {
                    authority: Authority {
                        host: HostName::Ip("fd00:20::11".parse().unwrap()),
                        port: Some(16992),
                    },
                    body: Body::Length(0),
                }),
            ),
            (
                "POST http://amt-01:16992/wsman HTTP/1.1\r\nHost: amt-01:16992\r\n\r\n",
                Ok(Head {
                    authority: name("amt-01", Some(16992)),
                    body: Body::Length(0),
                }),
            ),
            (
                "POST http://amt-01/wsman HTTP/1.0\r\n\r\n",
                Ok(Head {
                    authority: name("amt-01", None),
                    body: Body::Length(0),
                }),
            ),
            (
                "POST /wsman HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
                Err("no_host"),
            ),
            ("POST /wsman HTTP/1.1\r\nHost:\r\n\r\n", Err("no_host")),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                Err("duplicate_host"),
            ),
            (
                "GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n",
                Err("conflicting_host"),
            ),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Err("bad_host")),
            ("GET / HTTP/1.1\r\nHost: a:\r\n\r\n", Err("bad_host")),
            ("GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", Err("bad_host")),
            ("GET / HTTP/1.1\r\nHost: 010.0.0.1\r\n\r\n", Err("bad_host")),
            (
                "GET / HTTP/1.1\r\nHost: 10.0.0.256\r\n\r\n",
                Err("bad_host"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: [fe80::1%eth0]\r\n\r\n",
                Err("bad_host"),
            ),
            ("GET / HTTP/1.1\r\nHost: fe80::1\r\n\r\n", Err("bad_host")),
            ("GET / HTTP/1.1\r\nHost: a..b\r\n\r\n", Err("bad_host")),
            (
                "GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
                Err("bad_host"),
            ),
            (
                "CONNECT a:16992 HTTP/1.1\r\nHost: a\r\n\r\n",
                Err("connect"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err("framing"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                Err("framing"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                Err("framing"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
                Err("framing"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
                Err("framing"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Err("framing"),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err("framing"),
            ),
            (
                "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err("framing"),
            ),
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", Err("malformed")),
            ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", Err("malformed")),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", Err("malformed")),
            (
                "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
                Err("malformed"),
            ),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", Err("malformed")),
            (
                "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03\r\n\r\n",
                Err("malformed"),
            ),
            ("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", Err("malformed")),
        ];
        for (head, expected) in cases {
            let got = parse_head(head.as_bytes());
            match (expected, &got) {
                (Ok(expected), Ok(got)) => assert_eq!(got, expected, "{head:?}"),
                (Err(kind), Err(error)) => assert_eq!(error.kind(), *kind, "{head:?}: {error}"),
                _ => panic!("{head:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn too_many_fields_and_too_many_bytes_are_too_large() {
        let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..MAX_HEADERS {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse_head(many.as_bytes()), Err(HeadError::TooLarge));

        let mut requests = Requests::new();
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "y".repeat(MAX_HEAD)
        );
        let (passed, error) = follow(&mut requests, big.as_bytes());
        assert_eq!((passed.len(), error), (0, Some(HeadError::TooLarge)));
    }

    /// Every request on the connection, each split at every byte: the same bytes come out
    /// (heads whole, bodies as they were), whatever the reads.
    #[test]
    fn a_keep_alive_stream_passes_unchanged_however_it_is_split() {
        let stream = b"POST /wsman HTTP/1.1\r\nHost: amt\r\nContent-Length: 5\r\n\r\nhello\
POST /wsman HTTP/1.1\r\nHost: AMT\r\nTransfer-Encoding: chunked\r\n\r\n\
5;ext=\"x\"\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n\
GET /x HTTP/1.1\r\nHost: amt.\r\n\r\n";
        for split in 1..stream.len() {
            let mut requests = Requests::new();
            let (mut passed, error) = follow(&mut requests, &stream[..split]);
            assert_eq!(error, None, "split at {split}");
            let (rest, error) = follow(&mut requests, &stream[split..]);
            assert_eq!(error, None, "split at {split}");
            passed.extend(rest);
            assert_eq!(passed, stream, "split at {split}");
            assert_eq!(requests.authority(), Some(&name("amt", None)));
        }
    }

    /// What looks like a request inside a body is body: only framing says where a request
    /// ends.
    #[test]
    fn a_request_inside_a_body_is_not_a_request() {
        let inner = "GET / HTTP/1.1\r\nHost: other\r\n\r\n";
        let chunked = format!(
            "POST /wsman HTTP/1.1\r\nHost: amt\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
            inner.len()
        );
        let length = format!(
            "POST /wsman HTTP/1.1\r\nHost: amt\r\nContent-Length: {}\r\n\r\n{inner}",
            inner.len()
        );
        for stream in [chunked, length] {
            let mut requests = Requests::new();
            let (passed, error) = follow(&mut requests, stream.as_bytes());
            assert_eq!(error, None);
            assert_eq!(passed, stream.as_bytes());
        }
    }

    #[test]
    fn a_later_request_for_another_host_stops_before_its_head() {
        let first = "GET / HTTP/1.1\r\nHost: a:16992\r\n\r\n";
        let stream = format!("{first}GET / HTTP/1.1\r\nHost: b:16992\r\n\r\n");
        let mut requests = Requests::new();
        let (passed, error) = follow(&mut requests, stream.as_bytes());
        assert_eq!(passed, first.as_bytes());
        assert_eq!(error.map(|e| e.kind()), Some("host_mismatch"));
        // The same host with another port is another authority.
        let stream = format!("{first}GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let (_, error) = follow(&mut Requests::new(), stream.as_bytes());
        assert_eq!(error.map(|e| e.kind()), Some("host_mismatch"));
    }

    /// Found by the fuzz target: a bad byte in a chunk-size line must stop the stream at the
    /// same byte whether the line's good bytes came in the same read or an earlier one.
    #[test]
    fn an_error_stops_at_the_same_byte_however_the_stream_is_split() {
        let stream = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\x8a<!--";
        let whole = follow(&mut Requests::new(), stream);
        assert_eq!(whole.1.as_ref().map(HeadError::kind), Some("framing"));
        for split in 1..stream.len() {
            let mut requests = Requests::new();
            let (mut passed, mut error) = follow(&mut requests, &stream[..split]);
            if error.is_none() {
                let (rest, later) = follow(&mut requests, &stream[split..]);
                passed.extend(rest);
                error = later;
            }
            assert_eq!((passed, error), whole, "split at {split}");
        }
    }

    #[test]
    fn invalid_chunk_framing_is_refused() {
        let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let bodies = [
            "zz\r\n",
            "\r\n",
            ";x\r\n",
            "5\nhello\r\n",
            "5\r\nhello!\r\n",
            "5\r\nhelloXY",
            "1000000000000000\r\n",
            "-5\r\n",
            "5 x\x01\r\n",
            "0\r\nT: t\n\r\n",
        ];
        for body in bodies {
            let stream = format!("{head}{body}");
            let (passed, error) = follow(&mut Requests::new(), stream.as_bytes());
            assert_eq!(
                error.as_ref().map(HeadError::kind),
                Some("framing"),
                "{body:?}: {error:?}"
            );
            assert!(passed.starts_with(head.as_bytes()));
        }
        let long_line = format!("{head}1;{}\r\n", "x".repeat(MAX_CHUNK_LINE));
        let (_, error) = follow(&mut Requests::new(), long_line.as_bytes());
        assert_eq!(error.map(|e| e.kind()), Some("framing"));
    }

    #[test]
    fn errors_and_statuses() {
        assert_eq!(HeadError::TooLarge.status(), 431);
        assert_eq!(HeadError::NoHost.status(), 400);
        let shown = Printable::of(b"a\r\nb\x00").to_string();
        assert_eq!(shown, "`a\\r\\nb\\0`");
    }
}
