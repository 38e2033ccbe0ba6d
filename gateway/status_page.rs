//! The status page for people (`GET /` on the admin listener): the fleet as one HTML page,
//! rendered on the server. No JavaScript: it reloads itself every [`REFRESH_SECONDS`] with
//! `<meta http-equiv="refresh">`, and its CSS is inline, so it works in any browser, a text
//! one included, and through any proxy.
//!
//! Every value that comes from the configuration or the network (device names, hosts, error
//! texts, certificate details) goes through [`Escaped`]; the admin listener also sends a
//! Content-Security-Policy that allows no script at all, so a missed escape could not run one.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::expiry::expires_within;
use crate::fleet::{Device, HandshakeRecord};
use crate::recent_failures::Failure;
use crate::tls::Trust;

/// How often the page reloads itself, in seconds. A page left open costs one request per
/// interval; the page is cheap to build (no lock held while writing it).
pub(crate) const REFRESH_SECONDS: u32 = 10;

/// What the page shows of the gateway as a whole, gathered by the admin listener.
pub(crate) struct Overview<'a> {
    /// Unix seconds, the page's "now".
    pub(crate) now: u64,
    pub(crate) uptime: Duration,
    pub(crate) state: GatewayState,
    pub(crate) open_connections: i64,
    pub(crate) max_connections: usize,
    /// `gateway.expiry_warning`: certificates expiring within it are highlighted.
    pub(crate) expiry_warning: Duration,
    /// The listed devices, then the devices of `[[ranges]]` met so far.
    pub(crate) devices: &'a [Arc<Device>],
    /// How many `[[ranges]]` are configured.
    pub(crate) ranges: usize,
    /// Newest first.
    pub(crate) failures: &'a [Failure],
}

/// Whether the gateway takes new connections, as `/readyz` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GatewayState {
    Ready,
    /// Shutdown began; still accepting until `gateway.shutdown_delay` ends.
    Withdrawn,
    Draining,
}

/// Writes a string with the five characters HTML gives meaning to replaced by references, so it
/// is text both between tags and inside a quoted attribute value.
pub(crate) struct Escaped<'a>(pub(crate) &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// The whole page.
pub(crate) fn render(overview: &Overview<'_>) -> String {
    let mut page = String::with_capacity(4096 + 1024 * overview.devices.len());
    // Writing into a String cannot fail.
    let _ = write_page(&mut page, overview);
    page
}

const STYLE: &str = "\
body{font:13px/1.4 system-ui,sans-serif;margin:1em;color:#1b1b1b;background:#fff}\
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.5em 0 .5em}\
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.2em 1em;margin:0}\
dt{color:#555}dd{margin:0}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.3em .45em;border-bottom:1px solid #ddd;vertical-align:top}\
th{background:#f3f3f3;font-weight:600}\
.ok{color:#116611;font-weight:600}.bad{color:#b00020;font-weight:600}\
.warn{background:#fff3cd}.muted,.detail{color:#666}.detail{font-size:.85em}\
code{font-size:.9em}.num{text-align:right}\
td.name,td.address,td.pin,td.handshake,td.tls,td.expiry,td.when,td.device{white-space:nowrap}\
.detail{overflow-wrap:anywhere}\
td.result .detail{max-width:15em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}\
";

fn write_page(out: &mut String, overview: &Overview<'_>) -> fmt::Result {
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>amtgw status</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
    )?;
    write_header(out, overview)?;
    write_devices(out, overview)?;
    write_failures(out, overview)?;
    out.write_str("</body>\n</html>\n")
}

fn write_header(out: &mut String, o: &Overview<'_>) -> fmt::Result {
    let (state_class, state) = match o.state {
        GatewayState::Ready => ("ok", "ready"),
        GatewayState::Withdrawn => (
            "bad",
            "draining: shutdown in progress, still accepting until gateway.shutdown_delay ends",
        ),
        GatewayState::Draining => ("bad", "draining: shutdown in progress"),
    };
    let uptime = humantime::format_duration(Duration::from_secs(o.uptime.as_secs()));
    let listed = o.devices.iter().filter(|d| d.range.is_none()).count();
    let met = o.devices.len() - listed;
    write!(
        out,
        "<header>\n<h1>amtgw</h1>\n<dl class=\"summary\" id=\"gateway\">\n\
         <dt>Version</dt><dd>{version}</dd>\n\
         <dt>Uptime</dt><dd>{uptime}</dd>\n\
         <dt>State</dt><dd id=\"state\" class=\"{state_class}\">{state}</dd>\n\
         <dt>Open connections</dt><dd id=\"open-connections\">{open} of {max} (gateway.max_connections)</dd>\n\
         <dt>Devices</dt><dd>{listed} listed; {met} met in {ranges} range(s)</dd>\n\
         </dl>\n<p class=\"muted\">As of {now}; this page reloads itself every {REFRESH_SECONDS} s.</p>\n\
         </header>\n",
        version = env!("CARGO_PKG_VERSION"),
        open = o.open_connections,
        max = o.max_connections,
        ranges = o.ranges,
        now = timestamp(o.now),
    )
}

fn write_devices(out: &mut String, o: &Overview<'_>) -> fmt::Result {
    out.write_str(
        "<h2>Devices</h2>\n<table id=\"devices\">\n<thead><tr><th>Device</th><th>Address</th>\
         <th>Trust</th><th>Pin</th><th>Last handshake</th><th>Result</th>\
         <th>TLS</th><th>Certificate expires</th><th>Open sessions</th></tr></thead>\n<tbody>\n",
    )?;
    if o.devices.is_empty() {
        out.write_str("<tr><td colspan=\"9\" class=\"muted\">No devices.</td></tr>\n")?;
    }
    for device in o.devices {
        write_device(out, o, device)?;
    }
    out.write_str("</tbody>\n</table>\n")
}

fn write_device(out: &mut String, o: &Overview<'_>, device: &Device) -> fmt::Result {
    let settings = &device.settings;
    let last = device.status().last_handshake();
    write!(
        out,
        "<tr data-device=\"{name}\"><td class=\"name\"><strong>{name}</strong></td>\
         <td class=\"address\">{host}<div class=\"detail\">ports {wsman}, {redirection}, {dash}</div>{range}</td>\
         <td class=\"trust\">{trust}</td><td class=\"pin\">",
        name = Escaped(&settings.name),
        host = Escaped(&settings.host.to_string()),
        wsman = settings.port(crate::Service::Wsman),
        redirection = settings.port(crate::Service::Redirection),
        dash = settings.port(crate::Service::Dash),
        // A device of `[[ranges]]` is named by its address; its range says where it came from.
        range = device
            .range
            .map(|cidr| format!(
                "<div class=\"detail range\">range {}</div>",
                Escaped(&cidr.to_string())
            ))
            .unwrap_or_default(),
        trust = settings.tls.trust.mode(),
    )?;
    write_pin(out, device)?;
    out.write_str("</td>")?;
    write_handshake(out, o, last.as_ref(), settings.tls.backend.as_str())?;
    write_expiry(out, o, last.as_ref(), &settings.tls.trust)?;
    writeln!(
        out,
        "<td class=\"open num\">{}</td></tr>",
        device.status().open_connections()
    )
}

/// What the device is trusted by: its configured pins, its learned pin, or a CA.
fn write_pin(out: &mut String, device: &Device) -> fmt::Result {
    match &device.settings.tls.trust {
        Trust::Pin(pins) => {
            out.write_str("pinned")?;
            for pin in pins {
                write_short_pin(out, &pin.to_string())?;
            }
            Ok(())
        }
        Trust::Tofu => match device
            .pin_store
            .as_ref()
            .and_then(|store| store.get(device.name()))
        {
            Some(stored) => {
                out.write_str("learned")?;
                write_short_pin(out, &stored.certificate.to_string())
            }
            None => out.write_str("<span class=\"muted\">not yet learned</span>"),
        },
        Trust::Ca { ca_file, .. } => write!(
            out,
            "<span class=\"muted\">none: CA</span><div class=\"detail\">{}</div>",
            Escaped(&ca_file.display().to_string())
        ),
    }
}

/// Digest characters of a pin shown: enough to tell pins apart at a glance.
const SHORT_PIN: usize = 10;

/// A pin as its kind and the first [`SHORT_PIN`] characters of its digest; the whole pin on
/// hover.
fn write_short_pin(out: &mut String, pin: &str) -> fmt::Result {
    let (kind, digest) = pin.split_once(':').unwrap_or(("", pin));
    let short: String = digest.chars().take(SHORT_PIN).collect();
    write!(
        out,
        "<div class=\"detail\"><code title=\"{full}\">{kind}:{short}…</code></div>",
        full = Escaped(pin),
        kind = Escaped(kind),
        short = Escaped(&short),
    )
}

fn write_handshake(
    out: &mut String,
    o: &Overview<'_>,
    last: Option<&HandshakeRecord>,
    configured_backend: &str,
) -> fmt::Result {
    let Some(last) = last else {
        return write!(
            out,
            "<td class=\"handshake muted\">never</td><td class=\"result muted\">—</td>\
             <td class=\"tls\"><span class=\"muted\">—</span><div class=\"detail\">{configured_backend}</div></td>"
        );
    };
    write!(
        out,
        "<td class=\"handshake\">{ago}<div class=\"detail\">{at}</div></td>",
        ago = ago(o.now.saturating_sub(last.at)),
        at = timestamp(last.at),
    )?;
    if last.result == "ok" {
        out.write_str("<td class=\"result ok\">ok</td>")?;
    } else {
        write!(
            out,
            "<td class=\"result bad\">{reason}<div class=\"detail\" title=\"{error}\">{error}</div></td>",
            reason = Escaped(last.result),
            error = Escaped(last.error.as_deref().unwrap_or_default()),
        )?;
    }
    write!(
        out,
        "<td class=\"tls\">{version}<div class=\"detail\">{backend}{resumed}{cipher}</div></td>",
        version = Escaped(last.tls_version.unwrap_or("—")),
        backend = Escaped(last.tls_backend),
        resumed = if last.resumed { ", resumed" } else { "" },
        cipher = last
            .cipher
            .map(|c| format!("<br>{}", Escaped(c)))
            .unwrap_or_default(),
    )
}

/// The device certificate's expiry, from its latest full handshake. Highlighted inside
/// `gateway.expiry_warning`; only CA-validated devices stop working then (pinned ones are
/// trusted whatever their dates), which the cell says.
fn write_expiry(
    out: &mut String,
    o: &Overview<'_>,
    last: Option<&HandshakeRecord>,
    trust: &Trust,
) -> fmt::Result {
    let Some(not_after) = last
        .and_then(|l| l.certificate.as_ref())
        .map(|c| c.not_after)
    else {
        return out.write_str("<td class=\"expiry muted\">—</td>");
    };
    let left = not_after - o.now as i64;
    let days = left.div_euclid(86_400);
    let near = expires_within(not_after, o.expiry_warning).is_some();
    let when = if left < 0 {
        format!("expired {} d ago", -days)
    } else {
        format!("in {days} d")
    };
    let consequence = match (near, trust) {
        (true, Trust::Ca { .. }) => "<div class=\"detail\">connections fail once it expires</div>",
        (true, _) => "<div class=\"detail\">pinned: still trusted after expiry</div>",
        (false, _) => "",
    };
    write!(
        out,
        "<td class=\"expiry{class}\">{when}<div class=\"detail\">{date}</div>{consequence}</td>",
        class = if near { " warn" } else { "" },
        date = date(not_after.max(0) as u64),
    )
}

fn write_failures(out: &mut String, o: &Overview<'_>) -> fmt::Result {
    write!(
        out,
        "<h2>Recent failures</h2>\n<p class=\"muted\">The last {} failed connections (reasons as \
         in the README's failure table); console resets and connections cancelled by shutdown are \
         not listed.</p>\n<table id=\"failures\">\n<thead><tr><th>Time</th><th>Device</th>\
         <th>Service</th><th>Reason</th><th>Error</th></tr></thead>\n<tbody>\n",
        crate::recent_failures::CAPACITY
    )?;
    if o.failures.is_empty() {
        out.write_str(
            "<tr><td colspan=\"5\" class=\"muted\">None since the gateway started.</td></tr>\n",
        )?;
    }
    for failure in o.failures {
        writeln!(
            out,
            "<tr><td class=\"when\">{ago}<div class=\"detail\">{at}</div></td><td class=\"device\">{device}</td><td>{service}</td>\
             <td class=\"reason bad\">{reason}</td><td class=\"detail\">{error}</td></tr>",
            ago = ago(o.now.saturating_sub(failure.at)),
            at = timestamp(failure.at),
            device = failure
                .device
                .as_deref()
                .map_or_else(|| "—".to_owned(), |d| Escaped(d).to_string()),
            service = failure.service.as_str(),
            reason = failure.reason.as_str(),
            error = Escaped(&failure.error),
        )?;
    }
    out.write_str("</tbody>\n</table>\n")
}

/// Unix seconds as RFC 3339 UTC, to the second.
fn timestamp(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// Unix seconds as the UTC date.
fn date(unix: u64) -> String {
    let mut stamp = timestamp(unix);
    stamp.truncate("YYYY-MM-DD".len());
    stamp
}

/// A short "how long ago" for people.
fn ago(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s ago"),
        60..3600 => format!("{} min ago", seconds / 60),
        3600..86_400 => format!("{} h ago", seconds / 3600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::Reason;
    use crate::service::Service;

    #[test]
    fn escaping_leaves_no_markup_and_no_way_out_of_an_attribute() {
        let hostile = r#"<script>alert("x")</script>&amp;' onmouseover='x' <img src=x onerror=y>"#;
        let escaped = Escaped(hostile).to_string();
        for forbidden in ['<', '>', '"', '\''] {
            assert!(!escaped.contains(forbidden), "{forbidden} in {escaped}");
        }
        // Every `&` starts one of the references written here, the input's own `&amp;` included.
        assert_eq!(
            escaped,
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;amp;&#39; onmouseover=&#39;x&#39; \
             &lt;img src=x onerror=y&gt;"
        );
        assert_eq!(Escaped("plain é ✓").to_string(), "plain é ✓");
        assert_eq!(Escaped("").to_string(), "");
    }

    fn overview<'a>(devices: &'a [Arc<Device>], failures: &'a [Failure]) -> Overview<'a> {
        Overview {
            now: 1_800_000_000,
            uptime: Duration::from_secs(3723),
            state: GatewayState::Ready,
            open_connections: 2,
            max_connections: 1000,
            expiry_warning: Duration::from_secs(30 * 86_400),
            devices,
            ranges: 0,
            failures,
        }
    }

    #[test]
    fn a_failure_from_the_network_is_shown_as_text_not_markup() {
        let failures = [Failure {
            at: 1_800_000_000 - 90,
            service: Service::Redirection,
            device: Some("dut\"><b>".to_owned()),
            reason: Reason::PinMismatch,
            error: "device sent <script>alert(1)</script>".to_owned(),
        }];
        let page = render(&overview(&[], &failures));
        assert!(!page.contains("<script>"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(
            page.contains("device sent &lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("pin_mismatch"), "{page}");
        assert!(page.contains("1 min ago"), "{page}");
        assert!(page.contains("redirection"), "{page}");
    }

    #[test]
    fn the_page_refreshes_itself_and_has_no_script() {
        let page = render(&overview(&[], &[]));
        assert!(
            page.contains("<meta http-equiv=\"refresh\" content=\"10\">"),
            "{page}"
        );
        assert!(!page.to_ascii_lowercase().contains("<script"), "{page}");
        assert!(page.contains("None since the gateway started."), "{page}");
        assert!(page.contains("No devices."), "{page}");
        assert!(page.contains("1h 2m 3s"), "{page}");
        assert!(page.contains("2 of 1000"), "{page}");
    }

    #[tokio::test]
    async fn a_device_never_dialled_shows_its_trust_and_no_handshake() {
        let config = crate::config::Config::from_toml_with_env(
            "status page test",
            std::path::Path::new("."),
            "[services.wsman]\nlisten_port = 0\ndefault_device = \"dut\"\n\
             [[devices]]\nname = \"dut\"\nhost = \"192.0.2.7\"\ntrust = \"pin\"\n\
             pins = [\"cert-sha256:43b2b82426b7e01b903dd8d907dcf19f78ea2c5f6d78b6ea6af980d015856fb8\"]\n",
            &crate::config::Environment::empty(),
        )
        .unwrap();
        let snapshot = crate::state::Snapshot::build(config, None, Arc::new(crate::tls::NoEvents))
            .await
            .unwrap();
        let page = render(&overview(&snapshot.devices, &[]));
        let row = page
            .split_once("<tr data-device=\"dut\">")
            .and_then(|(_, rest)| rest.split_once("</tr>"))
            .map(|(row, _)| row)
            .unwrap_or_else(|| panic!("no row for dut: {page}"));
        assert!(row.contains("192.0.2.7"), "{row}");
        assert!(row.contains("<td class=\"trust\">pin</td>"), "{row}");
        assert!(row.contains("cert-sha256:43b2b82426…"), "{row}");
        assert!(row.contains("never"), "{row}");
        assert!(row.contains("<td class=\"open num\">0</td>"), "{row}");
    }
}
