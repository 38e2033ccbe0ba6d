//! The admin HTTP listener: the status page `/` (rendered by `status_page`), `/metrics`,
//! `/healthz`, `/readyz`, `/devices` and `POST /devices/NAME/repin`. Loopback by default; it
//! keeps serving through the drain so `/readyz` can say so. Bounded ([`AdminLimits`]): header
//! and connection timeouts, a connection cap, small bodies. With `admin.token_file`, `/`,
//! `/devices` and repin need the bearer token (the page shows what `/devices` does).
//!
//! One connection's handling is [`serve_connection`], over any byte stream: the listener hands
//! it TCP streams, tests and the `admin_request` fuzzer an in-memory duplex.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::HeaderMap;
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{
    ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fleet::Device;
use crate::listener::Acceptor;
use crate::metrics::Metrics;
use crate::recent_failures::RecentFailures;
use crate::shutdown::Lifecycle;
use crate::state::{Shared, Snapshot, SnapshotError};
use crate::status_page::{self, GatewayState, Overview};
use crate::tls::Trust;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin endpoints read: the metrics registry, the gateway's shared state, whether
/// it is draining, the listener's bounds, and for the status page the recent failures and
/// when the gateway started.
pub struct AdminState {
    pub(crate) registry: Registry,
    pub(crate) shared: Arc<Shared>,
    /// For `/readyz`: not ready once shutdown has begun.
    pub(crate) lifecycle: Lifecycle,
    pub(crate) limits: AdminLimits,
    pub(crate) recent_failures: Arc<RecentFailures>,
    /// When the gateway was bound: the status page's uptime.
    pub(crate) started: tokio::time::Instant,
}

impl AdminState {
    /// An admin state of its own for `config`, with fresh metrics and no gateway around it:
    /// for driving [`serve_connection`] in tests and fuzzers. Opens the pin store if a device
    /// trusts on first use, like the gateway does.
    pub async fn standalone(
        config: Config,
        limits: AdminLimits,
    ) -> Result<Arc<AdminState>, SnapshotError> {
        let snapshot = Snapshot::build(config, None, Arc::new(crate::tls::NoEvents)).await?;
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(
            &mut registry,
            snapshot.config.metrics.clone(),
        ));
        Ok(Arc::new(AdminState {
            registry,
            shared: Arc::new(Shared::new(snapshot, metrics)),
            lifecycle: Lifecycle::default(),
            limits,
            recent_failures: Arc::default(),
            started: tokio::time::Instant::now(),
        }))
    }
}

/// Bounds on the admin listener, so a flood of slow or half-sent requests costs a fixed amount
/// of memory. The defaults suit any deployment; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// A request head must arrive completely within this long of the first byte, and an idle
    /// keep-alive connection is closed after it (hyper's `header_read_timeout`).
    pub header_read_timeout: Duration,
    /// A connection is closed this long after it was accepted, whatever it is doing.
    pub connection_lifetime: Duration,
    /// Admin connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Largest request body accepted (413 beyond): admin requests carry no meaningful body.
    pub max_body: usize,
}

impl Default for AdminLimits {
    fn default() -> AdminLimits {
        AdminLimits {
            header_read_timeout: Duration::from_secs(10),
            connection_lifetime: Duration::from_secs(60),
            max_connections: 64,
            max_body: 1024,
        }
    }
}

pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    let limits = state.limits;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut acceptor = Acceptor::new(listener, "admin");
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = acceptor.accept() => accepted,
        };
        let Some((stream, peer)) = accepted else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max = limits.max_connections, "admin connection closed: too many open");
            drop(stream);
            continue;
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(serve_with_permit(stream, peer, state, stop, Some(permit)));
    }
}

/// Serve one admin connection until the peer closes it, it fails, it has been open for
/// `limits.connection_lifetime`, or `stop`. Whatever the bytes, it returns and does not panic;
/// the stream is dropped (closed) when it does.
pub async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    state: Arc<AdminState>,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_with_permit(stream, peer, state, stop, None).await;
}

async fn serve_with_permit<S>(
    stream: S,
    peer: SocketAddr,
    state: Arc<AdminState>,
    stop: CancellationToken,
    permit: Option<OwnedSemaphorePermit>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = state.limits;
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(respond(&state, request).await) }
    });
    let mut connection = Box::pin(
        http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service),
    );
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin connection failed");
            }
        }
        () = tokio::time::sleep(limits.connection_lifetime) => {
            tracing::debug!(%peer, "admin connection closed: open too long");
        }
        () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
    }
    // The slot is free before the peer sees the close.
    drop(permit);
    drop(connection);
}

async fn respond(state: &AdminState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let mutating = parts.method == Method::POST;
    // The status page shows what `/devices` does, so it is guarded the same way.
    let needs_token = mutating || matches!(parts.uri.path(), "/devices" | "/");
    if needs_token && let Some(refused) = authorize(state, &parts.headers) {
        return refused;
    }
    let body = match read_body(body, state.limits.max_body).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let request = Request::from_parts(parts, ());
    if mutating {
        return match repin_target(request.uri().path()) {
            Some(device) => match repin_body(&body) {
                None => repin(state, device).await,
                Some(refused) => refused,
            },
            None => text(
                StatusCode::NOT_FOUND,
                "POST only to /devices/<name>/repin\n",
            ),
        };
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET, and POST to /devices/<name>/repin\n",
        );
    }
    match request.uri().path() {
        "/" => status(state),
        "/metrics" => metrics(state, &request),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.lifecycle.is_draining() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: shutdown in progress\n",
        ),
        "/readyz" if state.lifecycle.is_withdrawn() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: shutdown in progress; still accepting until gateway.shutdown_delay ends\n",
        ),
        "/readyz" => text(StatusCode::OK, "ready\n"),
        "/devices" => {
            let snapshot = state.shared.snapshot.load();
            let mut all = snapshot.devices.clone();
            all.extend(snapshot.ranges.known());
            json(&devices(&all))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /, /metrics, /healthz, /readyz or /devices\n",
        ),
    }
}

/// The status page, for people: HTML, never cached (it is a live view), and allowed no script
/// (it has none) so that even a value that escaped escaping could not run.
fn status(state: &AdminState) -> Response<Full<Bytes>> {
    let snapshot = state.shared.snapshot.load();
    let mut devices = snapshot.devices.clone();
    devices.extend(snapshot.ranges.known());
    let failures = state.recent_failures.newest_first();
    let lifecycle = &state.lifecycle;
    let page = status_page::render(&Overview {
        now: crate::tls::unix_now(),
        uptime: state.started.elapsed(),
        state: if lifecycle.is_draining() {
            GatewayState::Draining
        } else if lifecycle.is_withdrawn() {
            GatewayState::Withdrawn
        } else {
            GatewayState::Ready
        },
        open_connections: state.shared.metrics.open_connections(),
        max_connections: snapshot.config.gateway.max_connections,
        expiry_warning: snapshot.config.gateway.expiry_warning,
        devices: &devices,
        ranges: snapshot.config.ranges.len(),
        failures: &failures,
    });
    let mut response = Response::new(Full::new(Bytes::from(page)));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// `None` when the request may proceed: no token is configured, or it presents the token.
fn authorize(state: &AdminState, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
    let snapshot = state.shared.snapshot.load();
    let token = snapshot.config.admin_token.as_ref()?;
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    if presented.is_some_and(|presented| token.matches(presented.trim_ascii())) {
        return None;
    }
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "this endpoint needs `Authorization: Bearer <token>`, the token in admin.token_file\n",
    );
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer"),
    );
    Some(response)
}

/// The request body, at most `max` bytes (413 beyond).
async fn read_body(body: Incoming, max: usize) -> Result<Bytes, Box<Response<Full<Bytes>>>> {
    let too_large = || {
        Box::new(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("admin requests take a body of {max} bytes at most\n"),
        ))
    };
    if body.size_hint().lower() > max as u64 {
        return Err(too_large());
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            &format!("reading the request body failed: {e}\n"),
        ))),
    }
}

/// The repin contract: an empty body, or exactly the JSON object `{}` (whitespace around it
/// allowed). Anything else is refused, so a client that meant to send options is not
/// misunderstood. `None` when the body is acceptable, else the refusal.
fn repin_body(body: &[u8]) -> Option<Response<Full<Bytes>>> {
    match body.trim_ascii() {
        b"" | b"{}" => None,
        _ => Some(text(
            StatusCode::BAD_REQUEST,
            "repin takes an empty body or `{}`; nothing was changed\n",
        )),
    }
}

fn metrics(state: &AdminState, request: &Request<()>) -> Response<Full<Bytes>> {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding failed: {e}\n"),
        );
    }
    let wants_openmetrics = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = if wants_openmetrics {
        (OPENMETRICS, body)
    } else {
        (PROMETHEUS_TEXT, openmetrics_to_prometheus_text(&body))
    };
    Response::builder()
        .header(CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response build failed\n"))
}

/// The classic Prometheus text format differs from OpenMetrics in what matters here: no
/// `# EOF`/`# UNIT` lines, counter families named with their `_total` suffix, no `info` type.
fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let mut suffixes = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.strip_suffix(" counter") {
                suffixes.insert(name.to_owned(), "_total");
            } else if let Some(name) = rest.strip_suffix(" info") {
                suffixes.insert(name.to_owned(), "_info");
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            let tail = if *prefix == "# TYPE " && tail == "info" {
                "gauge"
            } else {
                tail
            };
            let suffix = suffixes.get(name).copied().unwrap_or("");
            Some(format!("{prefix}{name}{suffix} {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn repin_target(path: &str) -> Option<&str> {
    path.strip_prefix("/devices/")?.strip_suffix("/repin")
}

/// Re-pin a `tofu` device (after it was unprovisioned and made a new key): forget its stored
/// pin, so the next successful handshake records the new one.
async fn repin(state: &AdminState, name: &str) -> Response<Full<Bytes>> {
    let snapshot = state.shared.snapshot.load_full();
    // A device of a range is named by its address, and need not be in memory to be re-pinned.
    let range_device = || {
        let ip: std::net::IpAddr = name.parse().ok()?;
        let range = snapshot.ranges.range_of(ip)?;
        Some((
            ip.to_canonical().to_string(),
            &range.tls.trust,
            snapshot.pin_store.clone(),
        ))
    };
    let found = match snapshot.device(name) {
        Some(device) => Some((
            name.to_owned(),
            &device.settings.tls.trust,
            device.pin_store.clone(),
        )),
        None => range_device(),
    };
    let Some((device_name, trust, store)) = found else {
        return text(
            StatusCode::NOT_FOUND,
            &format!("no device named `{name}`, and no range holds that address\n"),
        );
    };
    let store = match (trust, store) {
        (Trust::Tofu, Some(store)) => store,
        _ => {
            return text(
                StatusCode::CONFLICT,
                &format!(
                    "device `{name}` does not trust on first use (trust = \"{}\")\n",
                    trust.mode()
                ),
            );
        }
    };
    match store.remove(&device_name).await {
        Ok(had_pin) => {
            tracing::warn!(
                device = name,
                had_pin,
                "re-pin requested: the next handshake records the device's certificate"
            );
            text(
                StatusCode::OK,
                &format!(
                    "device `{name}`: stored pin forgotten; the next connection learns the new one\n"
                ),
            )
        }
        Err(e) => {
            tracing::error!(device = name, reason = e.kind(), error = %e, "re-pin failed; the stored pin is kept");
            text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"))
        }
    }
}

/// One JSON object per device: its configuration as used and what the gateway last saw.
fn devices(devices: &[Arc<Device>]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = devices
        .iter()
        .map(|device| {
            let settings = &device.settings;
            let (mode, pins) = match &settings.tls.trust {
                Trust::Pin(pins) => ("pin", pins.iter().map(ToString::to_string).collect()),
                Trust::Ca { .. } => ("ca", Vec::new()),
                Trust::Tofu => (
                    "tofu",
                    device
                        .pin_store
                        .as_ref()
                        .and_then(|store| store.get(&settings.name))
                        .map(|stored| {
                            vec![
                                stored.certificate.to_string(),
                                stored.public_key.to_string(),
                            ]
                        })
                        .unwrap_or_default(),
                ),
            };
            let client_certificate = settings.tls.client_identity.as_ref().map(|identity| {
                serde_json::json!({
                    "file": identity.cert_path.display().to_string(),
                    "not_after": identity.chain.first().and_then(crate::tls::not_after),
                })
            });
            serde_json::json!({
                "name": settings.name,
                "range": device.range.map(|cidr| cidr.to_string()),
                "host": settings.host.to_string(),
                "listen": settings.listen.map(|ip| ip.to_string()),
                "ports": {
                    "wsman": settings.port(crate::Service::Wsman),
                    "redirection": settings.port(crate::Service::Redirection),
                    "dash": settings.port(crate::Service::Dash),
                },
                "trust": mode,
                "pins": pins,
                "server_name": settings.server_name.to_str(),
                "client_certificate": client_certificate,
                "open_connections": device.status().open_connections(),
                "last_handshake": device.status().last_handshake(),
            })
        })
        .collect();
    serde_json::json!({ "devices": list })
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn state() -> Arc<AdminState> {
        let config = Config::from_toml_with_env(
            "admin test",
            std::path::Path::new("."),
            "[admin]\nlisten = \"127.0.0.1:0\"\n",
            &crate::config::Environment::empty(),
        )
        .unwrap();
        AdminState::standalone(config, AdminLimits::default())
            .await
            .unwrap()
    }

    /// Everything the server writes for `request` until it closes the connection; the client
    /// closes its own side after the request if `half_close`.
    async fn exchange(request: &[u8], half_close: bool) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let served = tokio::spawn(serve_connection(
            server,
            peer,
            state().await,
            CancellationToken::new(),
        ));
        client.write_all(request).await.unwrap();
        if half_close {
            client.shutdown().await.unwrap();
        }
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        served.await.unwrap();
        String::from_utf8_lossy(&response).into_owned()
    }

    #[tokio::test]
    async fn serve_connection_answers_pipelined_requests_over_any_stream() {
        // Not half-closed: hyper drops a pipelined request it has buffered once it reads EOF.
        let response = exchange(
            b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n\
              GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            false,
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("\r\n\r\nok\n"), "{response}");
        assert!(
            response.contains("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
    }

    #[tokio::test]
    async fn serve_connection_returns_on_a_half_sent_request() {
        let response = exchange(
            b"POST /devices/x/repin HTTP/1.1\r\nContent-Length: 10\r\n\r\n{",
            true,
        )
        .await;
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{response}"
        );
    }
}
