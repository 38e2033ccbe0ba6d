//! `amtgw health`: asks a running gateway's admin listener whether it is alive (`/healthz`) or
//! ready (`/readyz`), for container health checks and scripts that have no HTTP client (the
//! image holds nothing but the binary).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use amtgw::Config;
use amtgw::config::Environment;

/// What `amtgw health` was asked.
pub(crate) struct HealthArgs {
    pub(crate) config: Option<PathBuf>,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) ready: bool,
    pub(crate) timeout: Duration,
}

/// The admin answer is one short status line and a word; anything longer is not amtgw.
const MAX_RESPONSE: u64 = 4096;

/// Why a check failed, phrased for the operator reading `podman healthcheck run` or a log.
#[derive(Debug, thiserror::Error)]
enum HealthError {
    #[error("cannot connect to the admin listener at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the admin listener at {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("reading the admin listener's answer from {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} answered something that is not HTTP: {line:?}")]
    NotHttp { addr: SocketAddr, line: String },
    #[error("{path} answered {status}")]
    Unhealthy { path: &'static str, status: String },
}

/// Exit code of `amtgw health`: 0 healthy (or ready), 1 not, 2 nothing to ask (no admin
/// listener configured), 78 the configuration cannot be loaded.
pub(crate) async fn health_command(args: HealthArgs) -> u8 {
    let addr = match args.admin {
        Some(addr) => addr,
        None => match admin_address(args.config) {
            Ok(addr) => addr,
            Err(code) => return code,
        },
    };
    let path = if args.ready { "/readyz" } else { "/healthz" };
    match tokio::time::timeout(args.timeout, ask(addr, path)).await {
        Ok(Ok(body)) => {
            println!("{path} at {addr}: {}", body.trim());
            0
        }
        Ok(Err(e)) => {
            eprintln!("unhealthy: {e}");
            1
        }
        Err(_) => {
            eprintln!(
                "unhealthy: {}",
                HealthError::Timeout {
                    addr,
                    timeout: args.timeout
                }
            );
            1
        }
    }
}

/// `admin.listen` from the configuration (file and `AMTGW_` variables, as `run` reads them),
/// turned into an address this host can dial: a wildcard bind is reached over loopback.
fn admin_address(config: Option<PathBuf>) -> Result<SocketAddr, u8> {
    let Some(path) = config else {
        eprintln!("error: name the gateway's configuration (--config, or AMTGW_CONFIG) or --admin");
        return Err(2);
    };
    let config = Config::load_with_env(&path, &Environment::from_process()).map_err(|e| {
        eprintln!("error: {e}");
        crate::EX_CONFIG
    })?;
    let Some(listen) = config.admin else {
        eprintln!(
            "error: {} has no admin listener (admin.listen) to ask",
            path.display()
        );
        return Err(2);
    };
    Ok(dialable(listen))
}

fn dialable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// One HTTP/1.1 request; the body of a 200 answer, or why there was none.
async fn ask(addr: SocketAddr, path: &'static str) -> Result<String, HealthError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HealthError::Connect { addr, source })?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let io = |source| HealthError::Io { addr, source };
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await
        .map_err(io)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let status = match status_line.split_once(' ') {
        Some((version, status)) if version.starts_with("HTTP/1.") => status.trim(),
        _ => {
            return Err(HealthError::NotHttp {
                addr,
                line: status_line.chars().take(80).collect(),
            });
        }
    };
    if status.starts_with("200") {
        Ok(body.to_owned())
    } else {
        Err(HealthError::Unhealthy {
            path,
            status: format!("{status}: {}", body.trim()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_wildcard_admin_listener_is_asked_over_loopback() {
        let dial = |s: &str| dialable(s.parse().unwrap()).to_string();
        assert_eq!(dial("0.0.0.0:9716"), "127.0.0.1:9716");
        assert_eq!(dial("[::]:9716"), "[::1]:9716");
        assert_eq!(dial("192.0.2.7:9716"), "192.0.2.7:9716");
    }

    /// A listener that reads the request and answers `answer`.
    async fn answering(answer: &'static [u8]) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 256];
            let _ = stream.read(&mut request).await.unwrap();
            stream.write_all(answer).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn something_that_is_not_an_http_answer_is_named_as_such() {
        let addr = answering(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        let error = ask(addr, "/healthz").await.unwrap_err();
        assert!(
            matches!(&error, HealthError::NotHttp { line, .. } if line == "SSH-2.0-OpenSSH_9.2"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_200_answer_is_healthy_and_its_body_returned() {
        let addr = answering(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await;
        assert_eq!(ask(addr, "/healthz").await.unwrap(), "ok\n");
    }
}
