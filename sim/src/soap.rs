//! The SOAP layer of WS-Management as AMT speaks it: reading the few headers and body values a
//! request carries (a tolerant scanner, not an XML parser: consoles send flat, predictable
//! envelopes, and anything else must yield a fault, never a panic) and writing responses and
//! faults with AMT's namespace prefixes (`a` SOAP, `b` WS-Addressing, `c` WS-Management).

use super::DeviceState;

pub(crate) const SOAP_NS: &str = "http://www.w3.org/2003/05/soap-envelope";
pub(crate) const ADDRESSING_NS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
pub(crate) const WSMAN_NS: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
pub(crate) const ENUMERATION_NS: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";
pub(crate) const ANONYMOUS: &str =
    "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";
const FAULT_ACTION: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault";

/// The addressing of one request.
pub(crate) struct SoapRequest<'a> {
    pub(crate) message_id: &'a str,
    pub(crate) action: &'a str,
    pub(crate) resource: &'a str,
    /// The header's SelectorSet (name, value), unescaped.
    pub(crate) selectors: Vec<(String, String)>,
    /// The Body's content (empty for `<s:Body/>`).
    pub(crate) body: &'a str,
}

impl<'a> SoapRequest<'a> {
    /// Missing headers read as empty, which the dispatcher answers with a fault.
    pub(crate) fn parse(xml: &'a str) -> Self {
        let header = element_text(xml, "Header").unwrap_or_default();
        Self {
            message_id: element_text(header, "MessageID").unwrap_or_default(),
            action: element_text(header, "Action").unwrap_or_default(),
            resource: element_text(header, "ResourceURI").unwrap_or_default(),
            selectors: selectors(header),
            body: element_text(xml, "Body").unwrap_or_default(),
        }
    }
}

/// A start tag found by [`next_tag`]: its name (with prefix), attributes text, whether it is
/// self-closing, and the offset just past it.
struct Tag<'a> {
    name: &'a str,
    attributes: &'a str,
    empty: bool,
    end: usize,
}

/// The next start tag in `xml` from `pos`, skipping end tags, comments and declarations.
fn next_tag(xml: &str, mut pos: usize) -> Option<Tag<'_>> {
    loop {
        let start = pos + xml.get(pos..)?.find('<')? + 1;
        let end = start + xml[start..].find('>')?;
        let inner = &xml[start..end];
        pos = end + 1;
        if inner.starts_with(['/', '?', '!']) {
            continue;
        }
        let empty = inner.ends_with('/');
        let inner = inner.trim_end_matches('/');
        let (name, attributes) = inner
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((inner, ""));
        return Some(Tag {
            name,
            attributes,
            empty,
            end: pos,
        });
    }
}

fn local_name(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, l)| l)
}

/// Text of the first element whose local name is `local`, whatever its namespace prefix; `""`
/// for an empty element. Enough for the flat SOAP consoles send, not a general XML parser.
pub(crate) fn element_text<'a>(xml: &'a str, local: &str) -> Option<&'a str> {
    let mut pos = 0;
    while let Some(tag) = next_tag(xml, pos) {
        pos = tag.end;
        if local_name(tag.name) != local {
            continue;
        }
        if tag.empty {
            return Some("");
        }
        let close = format!("</{}>", tag.name);
        let text_end = xml[pos..].find(&close)?;
        return Some(xml[pos..pos + text_end].trim());
    }
    None
}

/// Every `Selector` element's `Name` attribute (any prefix on either) and unescaped text.
pub(crate) fn selectors(xml: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut pos = 0;
    while let Some(tag) = next_tag(xml, pos) {
        pos = tag.end;
        if local_name(tag.name) != "Selector" {
            continue;
        }
        let Some(name) = attribute(tag.attributes, "Name") else {
            continue;
        };
        let value = if tag.empty {
            ""
        } else {
            let close = format!("</{}>", tag.name);
            match xml[pos..].find(&close) {
                Some(len) => xml[pos..pos + len].trim(),
                None => break,
            }
        };
        found.push((xml_unescape(name), xml_unescape(value)));
    }
    found
}

/// The value of the attribute whose local name is `local` in a start tag's attribute text.
fn attribute<'a>(attributes: &'a str, local: &str) -> Option<&'a str> {
    let mut rest = attributes;
    loop {
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let quote = after.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let value_and_rest = &after[1..];
        let close = value_and_rest.find(quote)?;
        if local_name(name.trim()) == local {
            return Some(&value_and_rest[..close]);
        }
        rest = &value_and_rest[close + 1..];
    }
}

pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

pub(crate) fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// A response envelope: AMT's fixed namespaces, then `extra` (prefix, URI) for the body's
/// classes, the header naming `action` and (when not empty) `resource`, then `body`.
pub(crate) fn envelope(
    ctx: &DeviceState,
    relates_to: &str,
    action: &str,
    resource: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> String {
    let mut namespaces = format!(
        "xmlns:a=\"{SOAP_NS}\" xmlns:b=\"{ADDRESSING_NS}\" xmlns:c=\"{WSMAN_NS}\" \
         xmlns:d=\"http://schemas.xmlsoap.org/ws/2005/02/trust\" \
         xmlns:e=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\" \
         xmlns:f=\"http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd\""
    );
    for (prefix, uri) in extra {
        namespaces.push_str(&format!(" xmlns:{prefix}=\"{uri}\""));
    }
    let resource = if resource.is_empty() {
        String::new()
    } else {
        format!("<c:ResourceURI>{}</c:ResourceURI>", xml_escape(resource))
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<a:Envelope {namespaces} xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><a:Header>\
<b:To>{ANONYMOUS}</b:To>\
<b:RelatesTo>{relates}</b:RelatesTo>\
<b:Action a:mustUnderstand=\"true\">{action}</b:Action>\
<b:MessageID>{id}</b:MessageID>{resource}</a:Header><a:Body>{body}</a:Body></a:Envelope>",
        relates = xml_escape(relates_to),
        id = ctx.next_message_id(),
    )
}

/// The SOAP faults the simulator sends, all sender faults that AMT answers with HTTP 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// No such resource (or no ResourceURI at all).
    DestinationUnreachable,
    /// The resource exists, the action does not apply to it.
    ActionNotSupported,
    /// The selectors name no instance of the resource.
    InvalidSelectors,
    /// Pull or Release of a context that is not (or no longer) open.
    InvalidEnumerationContext,
}

impl Fault {
    /// Subcode (with the namespace prefix [`fault`] declares) and reason.
    fn subcode_and_reason(self) -> (&'static str, &'static str) {
        match self {
            // AMT's wording, "WSAddressing" without the hyphen included.
            Self::DestinationUnreachable => (
                "b:DestinationUnreachable",
                "No route can be determined to reach the destination role defined by the WSAddressing To.",
            ),
            Self::ActionNotSupported => (
                "b:ActionNotSupported",
                "The action is not supported by the service.",
            ),
            Self::InvalidSelectors => (
                "c:InvalidSelectors",
                "The Selectors for the resource were not valid.",
            ),
            Self::InvalidEnumerationContext => (
                "g:InvalidEnumerationContext",
                "The supplied enumeration context is invalid.",
            ),
        }
    }

    pub(crate) fn http_status(self) -> &'static str {
        "400 Bad Request"
    }
}

pub(crate) fn fault(ctx: &DeviceState, relates_to: &str, kind: Fault) -> String {
    let (subcode, reason) = kind.subcode_and_reason();
    envelope(
        ctx,
        relates_to,
        FAULT_ACTION,
        "",
        &[("g", ENUMERATION_NS)],
        &format!(
            "<a:Fault><a:Code><a:Value>a:Sender</a:Value><a:Subcode><a:Value>{subcode}</a:Value>\
</a:Subcode></a:Code><a:Reason><a:Text xml:lang=\"en-US\">{reason}</a:Text></a:Reason>\
<a:Detail></a:Detail></a:Fault>"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_text_ignores_prefixes_and_attributes() {
        let xml = r#"<a:H><b:Action a:mustUnderstand="true"> x </b:Action><Empty/><c:IdentifyResponse></c:IdentifyResponse></a:H>"#;
        assert_eq!(element_text(xml, "Action"), Some("x"));
        assert_eq!(element_text(xml, "Empty"), Some(""));
        assert_eq!(element_text(xml, "Identify"), None);
        assert_eq!(element_text(xml, "Missing"), None);
    }

    #[test]
    fn selectors_take_either_attribute_spelling_and_unescape() {
        let xml = r#"<w:SelectorSet><w:Selector Name="InstanceID">Intel(r) AMT: Boot Configuration 0</w:Selector>
<w:Selector wsman:Name='Name'>a &amp; b</w:Selector><w:Selector Name="Empty"/><w:Selector>no name</w:Selector></w:SelectorSet>"#;
        assert_eq!(
            selectors(xml),
            [
                (
                    "InstanceID".to_owned(),
                    "Intel(r) AMT: Boot Configuration 0".to_owned()
                ),
                ("Name".to_owned(), "a & b".to_owned()),
                ("Empty".to_owned(), String::new()),
            ]
        );
    }

    #[test]
    fn garbage_parses_to_empty_fields() {
        for garbage in [
            "",
            "<",
            "<<<>>>",
            "<a:Header><b:Action>",
            "\u{0}<x",
            "<a b='>",
        ] {
            let request = SoapRequest::parse(garbage);
            assert_eq!(request.action, "", "{garbage:?}");
            assert!(request.selectors.is_empty());
        }
    }
}
