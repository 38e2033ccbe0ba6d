//! The WS-Man mix: HTTP digest exchanges against the simulator.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use md5::{Digest as _, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::measurements::{Conn, Target, in_workers};
use crate::{DEMO_PASSWORD, DEMO_USERNAME};

const WSMAN_BODY: &str = include_str!("../../scripts/wsman/get-general-settings.xml");

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

fn wsman_request(auth: Option<(&Challenge, u64)>, keep_alive: bool) -> Vec<u8> {
    let mut request = format!(
        "POST /wsman HTTP/1.1\r\nHost: 127.0.0.1:16992\r\n\
         Content-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\n",
        WSMAN_BODY.len()
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
    request.push_str(WSMAN_BODY);
    request.into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Send one request and read one whole response; returns the status and the header block.
async fn http_exchange(c: &mut Conn, request: &[u8]) -> io::Result<(u16, String)> {
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
                return Ok((status, head));
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
    let (status, head) = http_exchange(&mut c, &wsman_request(None, false))
        .await
        .expect("challenge");
    assert_eq!(status, 401, "expected a digest challenge");
    Challenge {
        realm: header_param(&head, "realm").expect("realm in the challenge"),
        nonce: header_param(&head, "nonce").expect("nonce in the challenge"),
    }
}

/// `total` authenticated Gets. With keep-alive: per worker one challenge, then every Get on
/// one connection. Without: per Get an unauthenticated request (401, the device closes) and an
/// authenticated one on a new connection, as simple consoles do.
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
            if keep_alive {
                let challenge = wsman_challenge(&target).await;
                let mut c = target.connect().await.expect("connect to the simulator");
                for nc in 1..=n as u64 {
                    let (status, _) =
                        http_exchange(&mut c, &wsman_request(Some((&challenge, nc)), true))
                            .await
                            .expect("keep-alive exchange");
                    assert_eq!(status, 200, "authenticated Get failed");
                }
            } else {
                for _ in 0..n {
                    let challenge = wsman_challenge(&target).await;
                    let mut c = target.connect().await.expect("connect to the simulator");
                    let (status, _) =
                        http_exchange(&mut c, &wsman_request(Some((&challenge, 1)), false))
                            .await
                            .expect("exchange");
                    assert_eq!(status, 200, "authenticated Get failed");
                }
            }
        },
    )
    .await
}
