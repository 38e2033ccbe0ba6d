//! The device's HTTP/1.1 WS-Management endpoint (16993 and 664 twins): a small,
//! bounded, hand-written parser that answers WS-Identify without
//! authentication and hands digest-authenticated requests to [`crate::cim`].

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::DeviceState;
use super::digest::{self, DigestFields};
use super::soap::element_text;

/// What AMT puts in its `Server` header, with the firmware version; consoles fingerprint it.
fn server_header(ctx: &DeviceState) -> String {
    format!(
        "Intel(R) Active Management Technology {}",
        ctx.profile.firmware_version()
    )
}

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// Longest chunk-size line we accept (hex size plus extensions).
const MAX_CHUNK_LINE: usize = 1024;
/// How long a kept-alive connection may sit between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

const IDENTITY_NS: &str = "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd";
const WSMAN_PATH: &str = "/wsman";

#[derive(Debug, thiserror::Error)]
pub(crate) enum WsmanError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("no request within the idle timeout")]
    IdleTimeout,
    #[error("request head exceeds {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("request body exceeds {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("connection closed mid-request")]
    Truncated,
}

impl WsmanError {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Io(_) => "io",
            Self::IdleTimeout => "idle_timeout",
            Self::HeadTooLarge => "head_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::Malformed(_) => "malformed_request",
            Self::Truncated => "truncated_request",
        }
    }
}

/// Why a connection ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WsmanClose {
    /// The console closed between requests.
    ClientClosed,
    /// The device closed after a 401, as AMT does.
    Unauthorized,
    /// The console asked to close (`Connection: close` or HTTP/1.0).
    CloseRequested,
    /// Not `POST /wsman`; answered 404 and closed.
    NotFound,
}

impl WsmanClose {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::Unauthorized => "unauthorized",
            Self::CloseRequested => "close_requested",
            Self::NotFound => "not_found",
        }
    }
}

/// The path of an origin-form (`/wsman`) or absolute-form (`http://host[:port]/wsman`)
/// request target.
fn path_of(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let scheme = target.get(..7)?;
    if !scheme.eq_ignore_ascii_case("http://") {
        return None;
    }
    let rest = &target[7..];
    let path = &rest[rest.find('/')?..];
    (rest.find('/') != Some(0)).then_some(path)
}

struct Request {
    method: String,
    /// As sent: `/wsman`, or `http://host:16992/wsman` from a console whose HTTP proxy is
    /// the gateway (absolute-form, which RFC 9112 §3.2.2 says a server must accept).
    target: String,
    /// The target's path.
    path: String,
    authorization: Option<String>,
    keep_alive: bool,
    body: Vec<u8>,
}

/// How the request body is delimited.
enum Framing {
    Length(usize),
    Chunked,
}

struct HttpConn<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> HttpConn<S> {
    /// Reads more bytes into the buffer; `Ok(0)` is EOF.
    async fn fill(&mut self) -> Result<usize, WsmanError> {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(IDLE_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .map_err(|_| WsmanError::IdleTimeout)??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next request, or `None` when the console closed cleanly between
    /// requests.
    async fn read_request(&mut self) -> Result<Option<Request>, WsmanError> {
        let head_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                if pos + 4 > MAX_HEAD {
                    return Err(WsmanError::HeadTooLarge);
                }
                break pos + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(WsmanError::HeadTooLarge);
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(WsmanError::Truncated)
                };
            }
        };
        let head: Vec<u8> = self.buf.drain(..head_end).collect();
        let head =
            std::str::from_utf8(&head).map_err(|_| WsmanError::Malformed("non-utf8 head"))?;
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(WsmanError::Malformed("request line"));
        };
        let Some(path) = path_of(target) else {
            return Err(WsmanError::Malformed("request line"));
        };
        if method.is_empty() || !version.starts_with("HTTP/1.") {
            return Err(WsmanError::Malformed("request line"));
        }
        let mut keep_alive = version != "HTTP/1.0";
        let mut authorization = None;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or(WsmanError::Malformed("header line"))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let len = value
                    .parse::<usize>()
                    .map_err(|_| WsmanError::Malformed("content-length"))?;
                if content_length.is_some_and(|prev| prev != len) {
                    return Err(WsmanError::Malformed("conflicting content-length"));
                }
                content_length = Some(len);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                if !value.eq_ignore_ascii_case("chunked") {
                    return Err(WsmanError::Malformed("transfer-encoding"));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
        let framing = match (content_length, chunked) {
            // Both at once is the classic smuggling vector; AMT need not guess.
            (Some(_), true) => return Err(WsmanError::Malformed("length and chunked")),
            (_, true) => Framing::Chunked,
            (len, false) => Framing::Length(len.unwrap_or(0)),
        };
        let body = match framing {
            Framing::Length(len) => self.read_exact(len).await?,
            Framing::Chunked => self.read_chunked().await?,
        };
        Ok(Some(Request {
            method: method.to_owned(),
            target: target.to_owned(),
            path: path.to_owned(),
            authorization,
            keep_alive,
            body,
        }))
    }

    async fn read_exact(&mut self, len: usize) -> Result<Vec<u8>, WsmanError> {
        if len > MAX_BODY {
            return Err(WsmanError::BodyTooLarge);
        }
        while self.buf.len() < len {
            if self.fill().await? == 0 {
                return Err(WsmanError::Truncated);
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, WsmanError> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                line.truncate(pos);
                return Ok(line);
            }
            if self.buf.len() > MAX_CHUNK_LINE {
                return Err(WsmanError::Malformed("chunk line too long"));
            }
            if self.fill().await? == 0 {
                return Err(WsmanError::Truncated);
            }
        }
    }

    async fn read_chunked(&mut self) -> Result<Vec<u8>, WsmanError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let line =
                std::str::from_utf8(&line).map_err(|_| WsmanError::Malformed("chunk size"))?;
            let size_hex = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| WsmanError::Malformed("chunk size"))?;
            if size == 0 {
                // Trailer fields, if any, end with an empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Err(WsmanError::BodyTooLarge);
            }
            let chunk = self.read_exact(size + 2).await?;
            if !chunk.ends_with(b"\r\n") {
                return Err(WsmanError::Malformed("chunk terminator"));
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), WsmanError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Serves one console connection until it closes, a 401 is sent, or the
/// input is malformed.
pub(crate) async fn serve_wsman<S>(stream: S, ctx: &DeviceState) -> Result<WsmanClose, WsmanError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = HttpConn {
        stream,
        buf: Vec::new(),
    };
    loop {
        let Some(request) = conn.read_request().await? else {
            crate::answer_close(&mut conn.stream).await;
            return Ok(WsmanClose::ClientClosed);
        };
        if request.method != "POST" || request.path != WSMAN_PATH {
            conn.send(not_found(ctx).as_bytes()).await?;
            conn.stream.shutdown().await?;
            return Ok(WsmanClose::NotFound);
        }
        // A body that is not UTF-8 is no SOAP envelope: read lossily, it is answered with a
        // fault like any other garbage, and the connection stays usable.
        let body = String::from_utf8_lossy(&request.body);
        let body = body.as_ref();

        let (status, reply) = if is_identify(body) {
            ("200 OK", identify_response(ctx))
        } else if !authorized(&request, ctx) {
            conn.send(unauthorized(ctx).as_bytes()).await?;
            // AMT always closes after a 401; consoles retry on a new socket.
            conn.stream.shutdown().await?;
            return Ok(WsmanClose::Unauthorized);
        } else {
            crate::cim::answer(body, ctx)
        };
        conn.send(soap_response(ctx, status, &reply, request.keep_alive).as_bytes())
            .await?;
        if !request.keep_alive {
            conn.stream.shutdown().await?;
            return Ok(WsmanClose::CloseRequested);
        }
    }
}

fn authorized(request: &Request, ctx: &DeviceState) -> bool {
    let Some(header) = request.authorization.as_deref() else {
        return false;
    };
    match digest::parse_authorization(header) {
        // Digest's `uri` is the request target as sent; clients differ on whether an
        // absolute-form one goes in whole or as its path.
        Ok(fields) => {
            verify(&fields, &request.target, ctx)
                || (request.path != request.target && verify(&fields, &request.path, ctx))
        }
        Err(e) => {
            tracing::debug!(reason = e.kind(), "unusable Authorization header");
            false
        }
    }
}

fn verify(fields: &DigestFields, target: &str, ctx: &DeviceState) -> bool {
    ctx.verifier().verify(fields, "POST", target)
}

fn is_identify(body: &str) -> bool {
    body.contains(IDENTITY_NS) && element_text(body, "Identify").is_some()
}

fn soap_response(ctx: &DeviceState, status: &str, body: &str, keep_alive: bool) -> String {
    let connection = if keep_alive {
        ""
    } else {
        "Connection: close\r\n"
    };
    format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: application/soap+xml; charset=UTF-8\r\n\
         Transfer-Encoding: chunked\r\n\
         X-Frame-Options: DENY\r\n\
         Server: {server}\r\n\
         {connection}\r\n\
         {len:x}\r\n{body}\r\n0\r\n\r\n",
        len = body.len(),
        server = server_header(ctx),
    )
}

fn unauthorized(ctx: &DeviceState) -> String {
    format!(
        "HTTP/1.1 401 Unauthorized\r\n\
         WWW-Authenticate: Digest realm=\"{realm}\", nonce=\"{nonce}\",stale=\"false\",qop=\"auth\"\r\n\
         Content-Type: text/html\r\n\
         Server: {server}\r\n\
         Content-Length: 0\r\n\
         Connection: close\r\n\r\n",
        realm = ctx.realm,
        nonce = ctx.nonces.issue(),
        server = server_header(ctx),
    )
}

fn not_found(ctx: &DeviceState) -> String {
    format!(
        "HTTP/1.1 404 Not Found\r\n\
         Server: {}\r\n\
         Content-Length: 0\r\n\
         Connection: close\r\n\r\n",
        server_header(ctx)
    )
}

fn identify_response(ctx: &DeviceState) -> String {
    // "AMT 16.1": the major and minor of the firmware version.
    let version = ctx.profile.firmware_version();
    let product_version = version.rsplit_once('.').map_or(version, |(mm, _)| mm);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<a:Envelope xmlns:a=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:b=\"{IDENTITY_NS}\" xmlns:c=\"http://schemas.dmtf.org/wbem/dash/1/dash.xsd\">\
<a:Header></a:Header><a:Body><b:IdentifyResponse>\
<b:ProtocolVersion>http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd</b:ProtocolVersion>\
<b:ProductVendor>Intel Corporation</b:ProductVendor>\
<b:ProductVersion>AMT {product_version}</b:ProductVersion>\
<c:DASHVersion>1.0.0</c:DASHVersion>\
<b:SecurityProfiles>\
<b:SecurityProfileName>http://schemas.dmtf.org/wbem/wsman/1/wsman/secprofile/https/digest</b:SecurityProfileName>\
</b:SecurityProfiles></b:IdentifyResponse></a:Body></a:Envelope>"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (project rule)
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::DuplexStream;

    const IDENTIFY: &str = include_str!("../../scripts/wsman/identify.xml");
    const GET_SETTINGS: &str = include_str!("../../scripts/wsman/get-general-settings.xml");

    #[test]
    fn request_targets_in_origin_and_absolute_form_name_their_path() {
        for (target, path) in [
            ("/wsman", Some("/wsman")),
            ("http://amt-01:16992/wsman", Some("/wsman")),
            ("HTTP://[fd00::1]:16992/wsman", Some("/wsman")),
            ("http://amt-01", None),
            ("http:///wsman", None),
            ("https://amt-01/wsman", None),
            ("wsman", None),
            ("", None),
        ] {
            assert_eq!(path_of(target), path, "{target}");
        }
    }

    fn device() -> Arc<DeviceState> {
        Arc::new(DeviceState::new(
            "sim-host-1".into(),
            "admin".into(),
            "P@ssw0rd".into(),
            Duration::from_secs(5),
        ))
    }

    fn spawn_server(
        ctx: Arc<DeviceState>,
    ) -> (
        DuplexStream,
        tokio::task::JoinHandle<Result<WsmanClose, WsmanError>>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { serve_wsman(server, &ctx).await });
        (client, task)
    }

    fn post(body: &str, extra_headers: &str) -> String {
        format!(
            "POST /wsman HTTP/1.1\r\nHost: 127.0.0.1:16992\r\nContent-Type: application/soap+xml; charset=UTF-8\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// Reads one response: head plus body (chunked or Content-Length).
    async fn read_response(client: &mut DuplexStream) -> (String, String) {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "eof before response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let mut rest = buf[head_end..].to_vec();
        let body = if head.contains("Transfer-Encoding: chunked") {
            while !rest.ends_with(b"\r\n0\r\n\r\n") {
                let mut chunk = [0u8; 4096];
                let n = client.read(&mut chunk).await.unwrap();
                assert!(n > 0, "eof inside chunked body");
                rest.extend_from_slice(&chunk[..n]);
            }
            let text = String::from_utf8(rest).unwrap();
            let (size, after) = text.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            after[..size].to_owned()
        } else {
            String::new()
        };
        (head, body)
    }

    async fn assert_closed(client: &mut DuplexStream) {
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "unexpected bytes after close: {rest:?}");
    }

    fn challenge(head: &str) -> (String, String) {
        let line = head
            .lines()
            .find(|l| l.starts_with("WWW-Authenticate: "))
            .unwrap();
        let quoted = |key: &str| {
            let start = line.find(&format!("{key}=\"")).unwrap() + key.len() + 2;
            line[start..start + line[start..].find('"').unwrap()].to_owned()
        };
        (quoted("realm"), quoted("nonce"))
    }

    fn authorization(realm: &str, nonce: &str, user: &str, password: &str) -> String {
        let mut fields = DigestFields {
            username: user.into(),
            realm: realm.into(),
            nonce: nonce.into(),
            uri: "/wsman".into(),
            cnonce: "d2a1c5b7e9f0a3b4c6d8e0f1a2b3c4d5".into(),
            nc: "00000001".into(),
            qop: "auth".into(),
            response: String::new(),
        };
        fields.response = digest::expected_response(&fields, password, "POST");
        format!(
            "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"/wsman\", response=\"{}\", qop=auth, nc=00000001, cnonce=\"{}\"\r\n",
            fields.response, fields.cnonce
        )
    }

    #[tokio::test]
    async fn identify_needs_no_auth_and_keeps_alive() {
        let (mut client, task) = spawn_server(device());
        for _ in 0..2 {
            client
                .write_all(post(IDENTIFY, "").as_bytes())
                .await
                .unwrap();
            let (head, body) = read_response(&mut client).await;
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
            assert!(head.contains("Content-Type: application/soap+xml; charset=UTF-8\r\n"));
            assert!(head.contains("X-Frame-Options: DENY\r\n"));
            assert!(head.contains("Server: Intel(R) Active Management Technology 16.1.27\r\n"));
            assert!(!head.contains("Connection: close"));
            assert_eq!(
                element_text(&body, "ProductVendor"),
                Some("Intel Corporation")
            );
            assert_eq!(element_text(&body, "ProductVersion"), Some("AMT 16.1"));
            assert!(element_text(&body, "SecurityProfiles").is_some());
        }
        drop(client);
        assert_eq!(task.await.unwrap().unwrap(), WsmanClose::ClientClosed);
    }

    #[tokio::test]
    async fn chunked_request_body_is_accepted() {
        let (mut client, _task) = spawn_server(device());
        let (a, b) = IDENTIFY.split_at(40);
        let req = format!(
            "POST /wsman HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:X};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        client.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200 OK"));
        assert!(body.contains("IdentifyResponse"));
    }

    #[tokio::test]
    async fn missing_credentials_get_401_and_close() {
        let ctx = device();
        let (mut client, task) = spawn_server(ctx.clone());
        client
            .write_all(post(GET_SETTINGS, "").as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{head}");
        assert!(head.contains("Connection: close\r\n"));
        assert!(head.contains("Content-Length: 0\r\n"));
        assert!(head.contains(",stale=\"false\",qop=\"auth\"\r\n"));
        let (realm, nonce) = challenge(&head);
        assert_eq!(realm, ctx.realm);
        assert!(
            realm.starts_with("Digest:")
                && realm[7..]
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
        assert!(!nonce.is_empty());
        assert_closed(&mut client).await;
        assert_eq!(task.await.unwrap().unwrap(), WsmanClose::Unauthorized);
    }

    #[tokio::test]
    async fn wrong_password_gets_401_and_close() {
        let ctx = device();
        let (mut client, _) = spawn_server(ctx.clone());
        client
            .write_all(post(GET_SETTINGS, "").as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(&mut client).await;
        let (realm, nonce) = challenge(&head);

        let (mut client, task) = spawn_server(ctx);
        let auth = authorization(&realm, &nonce, "admin", "wrong");
        client
            .write_all(post(GET_SETTINGS, &auth).as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 401"));
        assert_closed(&mut client).await;
        assert_eq!(task.await.unwrap().unwrap(), WsmanClose::Unauthorized);
    }

    #[tokio::test]
    async fn authenticated_get_returns_general_settings() {
        let ctx = device();
        let (mut client, _) = spawn_server(ctx.clone());
        client
            .write_all(post(GET_SETTINGS, "").as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(&mut client).await;
        let (realm, nonce) = challenge(&head);

        let (mut client, _) = spawn_server(ctx);
        let auth = authorization(&realm, &nonce, "admin", "P@ssw0rd");
        client
            .write_all(post(GET_SETTINGS, &auth).as_bytes())
            .await
            .unwrap();
        let (head, body) = read_response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Transfer-Encoding: chunked\r\n"));
        assert!(
            body.contains("<g:HostName>sim-host-1</g:HostName>"),
            "{body}"
        );
        assert_eq!(
            element_text(&body, "RelatesTo"),
            element_text(GET_SETTINGS, "MessageID")
        );

        // Same socket, unknown resource: a fault, connection still usable.
        let other = GET_SETTINGS.replace("AMT_GeneralSettings", "AMT_Nonexistent");
        client
            .write_all(post(&other, &auth).as_bytes())
            .await
            .unwrap();
        let (head, body) = read_response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert!(body.contains("DestinationUnreachable"));

        let other = GET_SETTINGS.replace("transfer/Get<", "transfer/Delete<");
        client
            .write_all(post(&other, &auth).as_bytes())
            .await
            .unwrap();
        let (_, body) = read_response(&mut client).await;
        assert!(body.contains("ActionNotSupported"));

        // Garbage, not even UTF-8: a fault too, and the connection still serves.
        let garbage = b"\xff\xfe<\x00garbage";
        let head = post("", &auth).replace(
            "Content-Length: 0",
            &format!("Content-Length: {}", garbage.len()),
        );
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(garbage).await.unwrap();
        let (head, body) = read_response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert!(body.contains("DestinationUnreachable"), "{body}");
        client
            .write_all(post(GET_SETTINGS, &auth).as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    }

    #[tokio::test]
    async fn malformed_requests_close_only_their_connection() {
        let ctx = device();
        let cases: [&[u8]; 5] = [
            b"GARBAGE\r\n\r\n",
            b"POST /wsman HTTP/1.1\r\nNoColonHere\r\n\r\n",
            b"POST /wsman HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
            b"POST /wsman HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST /wsman HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for case in cases {
            let (mut client, task) = spawn_server(ctx.clone());
            client.write_all(case).await.unwrap();
            let err = task.await.unwrap().unwrap_err();
            assert!(
                matches!(err, WsmanError::Malformed(_) | WsmanError::BodyTooLarge),
                "{err}"
            );
            assert_closed(&mut client).await;
        }
        // An oversized head is refused without reading it all.
        let (mut client, task) = spawn_server(ctx.clone());
        let big = vec![b'a'; MAX_HEAD + 10];
        client.write_all(&big).await.unwrap();
        assert!(matches!(task.await.unwrap(), Err(WsmanError::HeadTooLarge)));
        drop(client);

        // The device still serves everyone else.
        let (mut client, _) = spawn_server(ctx);
        client
            .write_all(post(IDENTIFY, "").as_bytes())
            .await
            .unwrap();
        let (head, _) = read_response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200 OK"));
    }
}
