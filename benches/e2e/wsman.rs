//! The WS-Man mix: HTTP digest exchanges against the simulator, in the shape of a console
//! polling a fleet: power-state Gets and an enumeration of the firmware's software identity
//! (Enumerate, then Pull of the whole list) in turn.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use md5::{Digest as _, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::measurements::{Conn, Target, in_workers};
use crate::{DEMO_PASSWORD, DEMO_USERNAME};

/// One console round, request by request: power state twice, then an enumeration.
const ROUND: [Step; 4] = [
    Step::PowerState,
    Step::PowerState,
    Step::Enumerate,
    Step::Pull,
];

#[derive(Clone, Copy)]
enum Step {
    PowerState,
    Enumerate,
    Pull,
}

const POWER_STATE: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_AssociatedPowerManagementService";
const SOFTWARE_IDENTITY: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_SoftwareIdentity";
const ENUMERATION: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";

/// The request body of `step`; a Pull names the context its Enumerate returned.
fn soap_body(step: Step, context: &str) -> String {
    let (action, resource, body) = match step {
        Step::PowerState => (
            "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get".to_owned(),
            POWER_STATE,
            String::new(),
        ),
        Step::Enumerate => (
            format!("{ENUMERATION}/Enumerate"),
            SOFTWARE_IDENTITY,
            format!("<n:Enumerate xmlns:n=\"{ENUMERATION}\"/>"),
        ),
        Step::Pull => (
            format!("{ENUMERATION}/Pull"),
            SOFTWARE_IDENTITY,
            format!(
                "<n:Pull xmlns:n=\"{ENUMERATION}\"><n:EnumerationContext>{context}</n:EnumerationContext>\
                 <n:MaxElements>20</n:MaxElements></n:Pull>"
            ),
        ),
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
xmlns:a=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\"><s:Header>\
<a:Action>{action}</a:Action><a:To>/wsman</a:To><w:ResourceURI>{resource}</w:ResourceURI>\
<a:MessageID>uuid:6f0a3c52-1d4e-4b7a-9c1e-2f5d8a7b3e01</a:MessageID>\
<a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo>\
</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )
}

struct Challenge {
    realm: String,
    nonce: String,
}

fn header_param(header: &str, name: &str) -> Option<String> {
    let start = header.find(&format!("{name}=\""))? + name.len() + 2;
    let end = header[start..].find('"')? + start;
    Some(header[start..end].to_owned())
}

fn md5_hex(data: &str) -> String {
    format!("{:x}", Md5::digest(data.as_bytes()))
}

fn wsman_request(body: &str, auth: Option<(&Challenge, u64)>, keep_alive: bool) -> Vec<u8> {
    let mut request = format!(
        "POST /wsman HTTP/1.1\r\nHost: 127.0.0.1:16992\r\n\
         Content-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some((challenge, nc)) = auth {
        let (user, password) = (DEMO_USERNAME, DEMO_PASSWORD);
        let nc = format!("{nc:08x}");
        let cnonce = "0a4f113b";
        let ha1 = md5_hex(&format!("{user}:{}:{password}", challenge.realm));
        let ha2 = md5_hex("POST:/wsman");
        let response = md5_hex(&format!(
            "{ha1}:{}:{nc}:{cnonce}:auth:{ha2}",
            challenge.nonce
        ));
        let _ = write!(
            request,
            "Authorization: Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", \
             uri=\"/wsman\", qop=auth, nc={nc}, cnonce=\"{cnonce}\", response=\"{response}\"\r\n",
            challenge.realm, challenge.nonce
        );
    }
    if !keep_alive {
        request.push_str("Connection: close\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    request.into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Send one request and read one whole response; returns the status, the header block and the
/// body as sent (chunked framing included).
async fn http_exchange(c: &mut Conn, request: &[u8]) -> io::Result<(u16, String, String)> {
    c.write_all(request).await?;
    c.flush().await?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| io::Error::other("malformed status line"))?;
            let body = &buf[end + 4..];
            let lower = head.to_ascii_lowercase();
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = match length {
                Some(length) => body.len() >= length,
                None => body.ends_with(b"0\r\n\r\n"),
            };
            if complete {
                return Ok((status, head, String::from_utf8_lossy(body).into_owned()));
            }
        }
        let n = c.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn wsman_challenge(target: &Target) -> Challenge {
    let mut c = target.connect().await.expect("connect to the simulator");
    let body = soap_body(Step::PowerState, "");
    let (status, head, _) = http_exchange(&mut c, &wsman_request(&body, None, false))
        .await
        .expect("challenge");
    assert_eq!(status, 401, "expected a digest challenge");
    Challenge {
        realm: header_param(&head, "realm").expect("realm in the challenge"),
        nonce: header_param(&head, "nonce").expect("nonce in the challenge"),
    }
}

/// One step of a console round; returns the enumeration context an Enumerate opened (the
/// simulator answers in one chunk, so the element is whole in the body).
async fn console_step(
    c: &mut Conn,
    step: Step,
    context: &str,
    auth: (&Challenge, u64),
    keep_alive: bool,
) -> String {
    let request = wsman_request(&soap_body(step, context), Some(auth), keep_alive);
    let (status, _, body) = http_exchange(c, &request).await.expect("exchange");
    assert_eq!(status, 200, "authenticated request failed: {body}");
    match step {
        Step::Enumerate => {
            let start = body
                .find("EnumerationContext>")
                .expect("an enumeration context")
                + "EnumerationContext>".len();
            let len = body[start..].find('<').expect("a closed context");
            body[start..start + len].to_owned()
        }
        Step::PowerState | Step::Pull => String::new(),
    }
}

/// `total` authenticated requests, each worker going through console rounds ([`ROUND`]). With
/// keep-alive: per worker one challenge, then every request on one connection. Without: per
/// request an unauthenticated one (401, the device closes) and an authenticated one on a new
/// connection, as simple consoles do.
pub(crate) async fn wsman_mix(
    target: &Target,
    total: usize,
    concurrency: usize,
    keep_alive: bool,
) -> Duration {
    in_workers(
        "WS-Man worker",
        target,
        total,
        concurrency,
        |target, n| async move {
            if n == 0 {
                return;
            }
            let mut context = String::new();
            if keep_alive {
                let challenge = wsman_challenge(&target).await;
                let mut c = target.connect().await.expect("connect to the simulator");
                for (nc, step) in (1..=n as u64).zip(ROUND.iter().cycle()) {
                    let opened =
                        console_step(&mut c, *step, &context, (&challenge, nc), true).await;
                    if matches!(step, Step::Enumerate) {
                        context = opened;
                    }
                }
            } else {
                for step in ROUND.iter().cycle().take(n) {
                    let challenge = wsman_challenge(&target).await;
                    let mut c = target.connect().await.expect("connect to the simulator");
                    let opened =
                        console_step(&mut c, *step, &context, (&challenge, 1), false).await;
                    if matches!(step, Step::Enumerate) {
                        context = opened;
                    }
                }
            }
        },
    )
    .await
}
