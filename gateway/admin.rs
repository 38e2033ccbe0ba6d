//! The admin HTTP listener: `/metrics`, `/healthz`, `/readyz`. Loopback by default; it keeps
//! serving through the drain so `/readyz` can say so.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::fleet::Device;
use crate::shutdown::Lifecycle;
use crate::state::Shared;
use crate::tls::Trust;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(crate) struct AdminState {
    pub(crate) registry: Registry,
    pub(crate) shared: Arc<Shared>,
    /// For `/readyz`: not ready once draining.
    pub(crate) lifecycle: Lifecycle,
}

pub(crate) async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &request).await) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "admin connection failed");
                    }
                }
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}

async fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() == Method::POST {
        return match repin_target(request.uri().path()) {
            Some(device) => repin(state, device).await,
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
        "/metrics" => metrics(state, request),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.lifecycle.is_draining() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: shutdown in progress\n",
        ),
        "/readyz" => text(StatusCode::OK, "ready\n"),
        "/devices" => json(&devices(&state.shared.snapshot.load().devices)),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz, /readyz or /devices\n",
        ),
    }
}

fn metrics(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
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
/// pin, so the next successful handshake records the new one. Loopback admin only.
async fn repin(state: &AdminState, name: &str) -> Response<Full<Bytes>> {
    let snapshot = state.shared.snapshot.load_full();
    let Some(device) = snapshot.device(name) else {
        return text(
            StatusCode::NOT_FOUND,
            &format!("no device named `{name}`\n"),
        );
    };
    let Some(store) = device.pin_store.clone() else {
        return text(
            StatusCode::CONFLICT,
            &format!(
                "device `{name}` does not trust on first use (trust = \"{}\")\n",
                device.settings.tls.trust.mode()
            ),
        );
    };
    let device_name = name.to_owned();
    match tokio::task::spawn_blocking(move || store.remove(&device_name)).await {
        Ok(Ok(had_pin)) => {
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
        Ok(Err(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
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
