//! The resources the simulated device serves over WS-Management: a table of CIM, AMT and IPS
//! classes whose instances are built from the device's state ([`crate::host`], its certificate,
//! its firmware profile) and rendered generically, and the operations consoles use on them:
//! Get, Put, Enumerate/Pull/Release (optimized enumeration and MaxElements included) and the
//! methods that power the host, choose its next boot and switch KVM and redirection.
//!
//! Shapes follow what AMT sends (alphabetical properties, `g` for a Get's class, `h` for
//! enumerated items, `b:ReferenceParameters` for references); values are what an AMT 16 host
//! reports, apart from those the state or profile decides.

use std::collections::VecDeque;
use std::sync::Mutex;

use base64::Engine as _;
use tracing::info;

use super::DeviceState;
use super::host::{
    BOOT_SETTING_DATA, BOOT_SOURCES, HostStatus, KVM_SETTING_DATA, PowerChange,
    REDIRECTION_SERVICE, SETTINGS, return_value,
};
use super::soap::{
    ANONYMOUS, ENUMERATION_NS, Fault, SoapRequest, element_text, envelope, fault, selectors,
    xml_escape, xml_unescape,
};

const TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/";
const ENUMERATION: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/";

/// How many enumerations may be open at once; opening one more forgets the oldest (AMT, too,
/// keeps only a few and times them out).
const MAX_OPEN_ENUMERATIONS: usize = 16;
/// Items per Pull when the console names no MaxElements (WS-Enumeration's default).
const DEFAULT_MAX_ELEMENTS: usize = 1;
/// Bounds a console's MaxElements, so one Pull never renders more than this.
const MAX_ELEMENTS_LIMIT: usize = 1000;

/// What a class supports beyond Get and Enumerate.
struct Class {
    name: &'static str,
    /// Extrinsic methods (`{ResourceURI}/{method}` actions).
    methods: &'static [&'static str],
}

const fn class(name: &'static str, methods: &'static [&'static str]) -> Class {
    Class { name, methods }
}

/// Every resource the device answers; anything else is DestinationUnreachable.
const CLASSES: &[Class] = &[
    class("AMT_GeneralSettings", &[]),
    class("CIM_AssociatedPowerManagementService", &[]),
    // Enumerated by consoles (Intel's DMT) for the power state: its items are the association
    // above.
    class("CIM_ServiceAvailableToElement", &[]),
    class("CIM_PowerManagementService", &["RequestPowerStateChange"]),
    class("CIM_BootConfigSetting", &["ChangeBootOrder"]),
    class("CIM_BootSourceSetting", &[]),
    class("CIM_BootService", &["SetBootConfigRole"]),
    class(BOOT_SETTING_DATA, &[]),
    class("CIM_SoftwareIdentity", &[]),
    class("AMT_PublicKeyCertificate", &[]),
    class("AMT_TLSSettingData", &[]),
    class(REDIRECTION_SERVICE, &["RequestStateChange"]),
    class(KVM_SETTING_DATA, &[]),
    class("CIM_KVMRedirectionSAP", &["RequestStateChange"]),
];

/// The resource URI (and XML namespace) of a class, by its schema prefix.
pub(crate) fn class_uri(class: &str) -> String {
    let schema = if class.starts_with("CIM_") {
        "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
    } else if class.starts_with("IPS_") {
        "http://intel.com/wbem/wscim/1/ips-schema/1/"
    } else {
        "http://intel.com/wbem/wscim/1/amt-schema/1/"
    };
    format!("{schema}{class}")
}

fn class_of(resource: &str) -> Option<&'static Class> {
    CLASSES.iter().find(|c| class_uri(c.name) == resource)
}

/// A property value.
enum Value {
    Text(String),
    /// An endpoint reference: the class referred to and its selectors.
    Reference(&'static str, Vec<(&'static str, String)>),
}

/// One instance, properties in any order (rendered sorted by name, as AMT does).
struct Instance {
    class: &'static str,
    properties: Vec<(&'static str, Value)>,
}

impl Instance {
    fn new(class: &'static str) -> Self {
        Self {
            class,
            properties: Vec::new(),
        }
    }

    fn text(mut self, name: &'static str, value: impl ToString) -> Self {
        self.properties.push((name, Value::Text(value.to_string())));
        self
    }

    /// A multi-valued property: the element repeated.
    fn list<T: ToString>(mut self, name: &'static str, values: &[T]) -> Self {
        for value in values {
            self = self.text(name, value.to_string());
        }
        self
    }

    fn reference(
        mut self,
        name: &'static str,
        class: &'static str,
        selectors: &[(&'static str, &str)],
    ) -> Self {
        let selectors = selectors
            .iter()
            .map(|(n, v)| (*n, (*v).to_owned()))
            .collect();
        self.properties
            .push((name, Value::Reference(class, selectors)));
        self
    }

    /// The readable settings of this instance's class from the host.
    fn settings(mut self, host: &HostStatus) -> Self {
        let class = self.class;
        for s in SETTINGS.iter().filter(|s| s.class == class && s.readable) {
            let value = host.setting(s.class, s.property).unwrap_or(s.initial);
            self = self.text(s.property, value);
        }
        self
    }

    /// Whether every selector naming a property of this instance matches it. Selectors for
    /// keys the simulator does not model are not held against the instance.
    fn matches(&self, selectors: &[(String, String)]) -> bool {
        selectors.iter().all(|(name, value)| {
            let mut values = self.properties.iter().filter(|(n, _)| n == name).peekable();
            values.peek().is_none()
                || values.any(|(_, v)| matches!(v, Value::Text(t) if t == value))
        })
    }

    fn render(&self, prefix: &str) -> String {
        let mut properties: Vec<&(&str, Value)> = self.properties.iter().collect();
        properties.sort_by_key(|(name, _)| *name);
        let mut out = format!("<{prefix}:{}>", self.class);
        for (name, value) in properties {
            let value = match value {
                Value::Text(text) => xml_escape(text),
                Value::Reference(class, selectors) => reference_xml(class, selectors),
            };
            out.push_str(&format!("<{prefix}:{name}>{value}</{prefix}:{name}>"));
        }
        out.push_str(&format!("</{prefix}:{}>", self.class));
        out
    }
}

fn reference_xml(class: &str, selectors: &[(&str, String)]) -> String {
    let selectors: String = selectors
        .iter()
        .map(|(name, value)| {
            format!(
                "<c:Selector Name=\"{name}\">{}</c:Selector>",
                xml_escape(value)
            )
        })
        .collect();
    format!(
        "<b:Address>{ANONYMOUS}</b:Address><b:ReferenceParameters><c:ResourceURI>{uri}</c:ResourceURI>\
<c:SelectorSet>{selectors}</c:SelectorSet></b:ReferenceParameters>",
        uri = class_uri(class)
    )
}

const AMT_SYSTEM: &str = "Intel(r) AMT";
const MANAGED_SYSTEM: &str = "ManagedSystem";
const POWER_SERVICE_NAME: &str = "Intel(r) AMT Power Management Service";
const BOOT_SERVICE_NAME: &str = "Intel(r) AMT Boot Service";
const BOOT_CONFIGURATION: &str = "Intel(r) AMT: Boot Configuration 0";
const KVM_SETTINGS_NAME: &str = "Intel(r) KVM Redirection Settings";

/// A service of the management engine: the four keys AMT gives its services.
fn service(class: &'static str, name: &str) -> Instance {
    Instance::new(class)
        .text("CreationClassName", class)
        .text("ElementName", name)
        .text("Name", name)
        .text("SystemCreationClassName", "CIM_ComputerSystem")
        .text("SystemName", AMT_SYSTEM)
}

/// The instances of `class` now. Every class of [`CLASSES`] has an arm.
fn instances(class: &'static str, ctx: &DeviceState) -> Vec<Instance> {
    let host = ctx.host.borrow();
    match class {
        "AMT_GeneralSettings" => vec![general_settings(ctx)],
        "CIM_AssociatedPowerManagementService" | "CIM_ServiceAvailableToElement" => {
            vec![
                Instance::new("CIM_AssociatedPowerManagementService")
                    .list(
                        "AvailableRequestedPowerStates",
                        host.power.available_requests(),
                    )
                    .text("PowerState", host.power.cim_value())
                    .reference(
                        "ServiceProvided",
                        "CIM_PowerManagementService",
                        &[
                            ("CreationClassName", "CIM_PowerManagementService"),
                            ("Name", POWER_SERVICE_NAME),
                            ("SystemCreationClassName", "CIM_ComputerSystem"),
                            ("SystemName", AMT_SYSTEM),
                        ],
                    )
                    .reference(
                        "UserOfService",
                        "CIM_ComputerSystem",
                        &[
                            ("CreationClassName", "CIM_ComputerSystem"),
                            ("Name", MANAGED_SYSTEM),
                        ],
                    ),
            ]
        }
        "CIM_PowerManagementService" => {
            vec![service("CIM_PowerManagementService", POWER_SERVICE_NAME).text("EnabledState", 5)]
        }
        "CIM_BootConfigSetting" => vec![
            Instance::new("CIM_BootConfigSetting")
                .text("ElementName", "Intel(r) AMT: Boot Configuration")
                .text("InstanceID", BOOT_CONFIGURATION),
        ],
        "CIM_BootSourceSetting" => BOOT_SOURCES
            .iter()
            .map(|(_, instance_id, structured)| {
                Instance::new("CIM_BootSourceSetting")
                    .text("ElementName", "Intel(r) AMT: Boot Source")
                    .text("FailThroughSupported", 2)
                    .text("InstanceID", instance_id)
                    .text("StructuredBootString", structured)
            })
            .collect(),
        "CIM_BootService" => {
            vec![service("CIM_BootService", BOOT_SERVICE_NAME).text("EnabledState", 2)]
        }
        BOOT_SETTING_DATA => vec![
            Instance::new(BOOT_SETTING_DATA)
                .text("ElementName", "Intel(r) AMT Boot Configuration Settings")
                .text("EnforceSecureBoot", "false")
                .text("InstanceID", "Intel(r) AMT:BootSettingData 0")
                .text("OwningEntity", AMT_SYSTEM)
                .settings(&host),
        ],
        "CIM_SoftwareIdentity" => software_identity(ctx),
        "AMT_PublicKeyCertificate" => own_certificate(ctx).into_iter().collect(),
        "AMT_TLSSettingData" => [
            ("Intel(r) AMT 802.3 TLS Settings", true, ctx.mutual_tls),
            ("Intel(r) AMT LMS TLS Settings", false, false),
        ]
        .iter()
        .map(|(name, enabled, mutual)| {
            Instance::new("AMT_TLSSettingData")
                .text("AcceptNonSecureConnections", !enabled)
                .text("ElementName", name)
                .text("Enabled", enabled)
                .text("InstanceID", name)
                .text("MutualAuthentication", mutual)
                // CSME 16.1 and later: TLS only on the network.
                .text("NonSecureConnectionsSupported", "false")
        })
        .collect(),
        REDIRECTION_SERVICE => vec![
            service(REDIRECTION_SERVICE, "Intel(r) AMT Redirection Service")
                .text("EnabledState", host.redirection_state)
                .settings(&host),
        ],
        KVM_SETTING_DATA => vec![
            Instance::new(KVM_SETTING_DATA)
                .text("ElementName", KVM_SETTINGS_NAME)
                .text("EnabledByMEBx", "true")
                .text("InstanceID", KVM_SETTINGS_NAME)
                .settings(&host),
        ],
        "CIM_KVMRedirectionSAP" => vec![
            Instance::new("CIM_KVMRedirectionSAP")
                .text("CreationClassName", "CIM_KVMRedirectionSAP")
                .text("ElementName", "KVM Redirection Service Access Point")
                .text("EnabledState", host.kvm_enabled_state())
                .text("KVMProtocol", 4)
                .text("Name", "KVM Redirection Service Access Point")
                .text("RequestedState", if host.kvm_enabled { 2 } else { 3 })
                .text("SystemCreationClassName", "CIM_ComputerSystem")
                .text("SystemName", MANAGED_SYSTEM),
        ],
        _ => Vec::new(),
    }
}

fn general_settings(ctx: &DeviceState) -> Instance {
    Instance::new("AMT_GeneralSettings")
        .text("AMTNetworkEnabled", 1)
        .text("DDNSPeriodicUpdateInterval", 1440)
        .text("DDNSTTL", 900)
        .text("DDNSUpdateByDHCPServerEnabled", "true")
        .text("DDNSUpdateEnabled", "false")
        .text("DigestRealm", &ctx.realm)
        .text("DomainName", "localdomain")
        .text("ElementName", "Intel(r) AMT: General Settings")
        .text("HostName", &ctx.name)
        .text("IdleWakeTimeout", 65535)
        .text("InstanceID", "Intel(r) AMT: General Settings")
        .text("NetworkInterfaceEnabled", "true")
        .text("PingResponseEnabled", "true")
        .text("PowerSource", 0)
        .text("PreferredAddressFamily", 0)
        .text("PresenceNotificationInterval", 0)
        .text("PrivacyLevel", 0)
        .text("RmcpPingResponseEnabled", "true")
        .text("SharedFQDN", "true")
        .text("WsmanOnlyMode", "false")
}

/// The firmware's components, each at the profile's version, as CIM_SoftwareIdentity lists them.
fn software_identity(ctx: &DeviceState) -> Vec<Instance> {
    let version = ctx.profile.firmware_version();
    let build = ctx.profile.firmware_build();
    [
        ("Flash", version),
        ("Netstack", version),
        ("AMTApps", version),
        ("AMT", version),
        ("Sku", "16392"),
        ("VendorID", "8086"),
        ("Build Number", build),
        ("Recovery Version", version),
        ("Recovery Build Num", build),
        ("Legacy Mode", "False"),
        ("AMT FW Core Version", version),
    ]
    .iter()
    .map(|(id, value)| {
        Instance::new("CIM_SoftwareIdentity")
            .text("InstanceID", id)
            .text("IsEntity", "true")
            .text("VersionString", value)
    })
    .collect()
}

/// The certificate the device serves, as AMT_PublicKeyCertificate: consoles read it to pin.
fn own_certificate(ctx: &DeviceState) -> Option<Instance> {
    let der = ctx.certificate.load_full();
    let der: &[u8] = &der;
    let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
    // AMT writes distinguished names without spaces after the commas.
    let dn = |name: &x509_parser::x509::X509Name<'_>| name.to_string().replace(", ", ",");
    Some(
        Instance::new("AMT_PublicKeyCertificate")
            .text("ElementName", "Intel(r) AMT Certificate")
            .text("InstanceID", "Intel(r) AMT Certificate: Handle: 0")
            .text("Issuer", dn(parsed.issuer()))
            .text("ReadOnlyCertificate", "true")
            .text("Subject", dn(parsed.subject()))
            // Sic: AMT's schema spells the property so.
            .text("TrustedRootCertficate", "false")
            .text(
                "X509Certificate",
                base64::engine::general_purpose::STANDARD.encode(der),
            ),
    )
}

/// Open enumerations: what is left to pull of each.
#[derive(Default)]
pub(crate) struct Enumerations {
    counter: u32,
    open: VecDeque<OpenEnumeration>,
}

struct OpenEnumeration {
    context: String,
    /// The items' class namespace, for the `h` prefix.
    namespace: String,
    resource: String,
    items: VecDeque<String>,
}

impl Enumerations {
    /// A new context name. AMT's are a little-endian counter in an otherwise zero UUID.
    fn next_context(&mut self) -> String {
        self.counter = self.counter.wrapping_add(1);
        format!(
            "{:08X}-0000-0000-0000-000000000000",
            self.counter.swap_bytes()
        )
    }

    fn open(&mut self, resource: String, namespace: String, items: VecDeque<String>) -> String {
        let context = self.next_context();
        if self.open.len() >= MAX_OPEN_ENUMERATIONS {
            self.open.pop_front();
        }
        self.open.push_back(OpenEnumeration {
            context: context.clone(),
            namespace,
            resource,
            items,
        });
        context
    }

    fn position(&self, context: &str) -> Option<usize> {
        self.open.iter().position(|e| e.context == context)
    }
}

const GET: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get";
const PUT: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Put";
const ENUMERATE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate";
const PULL: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull";
const RELEASE: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Release";

/// An authenticated request's answer: HTTP status and SOAP envelope.
pub(crate) fn answer(xml: &str, ctx: &DeviceState) -> (&'static str, String) {
    let request = SoapRequest::parse(xml);
    match dispatch(&request, ctx) {
        Ok(reply) => ("200 OK", reply),
        Err(kind) => (kind.http_status(), fault(ctx, request.message_id, kind)),
    }
}

fn dispatch(request: &SoapRequest<'_>, ctx: &DeviceState) -> Result<String, Fault> {
    // Pull and Release name their enumeration; the ResourceURI is optional there.
    match request.action {
        PULL => return pull(request, ctx),
        RELEASE => return release(request, ctx),
        _ => {}
    }
    let class = class_of(request.resource).ok_or(Fault::DestinationUnreachable)?;
    match request.action {
        GET => {
            let instance = select(class, request, ctx)?;
            Ok(transfer_response(
                ctx,
                request,
                class,
                "GetResponse",
                &instance,
            ))
        }
        PUT if SETTINGS.iter().any(|s| s.class == class.name) => put(class, request, ctx),
        ENUMERATE => enumerate(class, request, ctx),
        action => {
            let method = action
                .strip_prefix(request.resource)
                .and_then(|m| m.strip_prefix('/'))
                .filter(|m| class.methods.contains(m))
                .ok_or(Fault::ActionNotSupported)?;
            invoke(class, method, request, ctx)
        }
    }
}

/// The instance the request's selectors name (the first, without selectors).
fn select(class: &Class, request: &SoapRequest<'_>, ctx: &DeviceState) -> Result<Instance, Fault> {
    instances(class.name, ctx)
        .into_iter()
        .find(|i| i.matches(&request.selectors))
        .ok_or(Fault::InvalidSelectors)
}

fn transfer_response(
    ctx: &DeviceState,
    request: &SoapRequest<'_>,
    class: &Class,
    response: &str,
    instance: &Instance,
) -> String {
    let uri = class_uri(class.name);
    envelope(
        ctx,
        request.message_id,
        &format!("{TRANSFER}{response}"),
        &uri,
        &[("g", class_uri(instance.class).as_str())],
        &instance.render("g"),
    )
}

fn put(class: &Class, request: &SoapRequest<'_>, ctx: &DeviceState) -> Result<String, Fault> {
    select(class, request, ctx)?;
    let values: Vec<(&'static str, String)> = SETTINGS
        .iter()
        .filter(|s| s.class == class.name)
        .filter_map(|s| {
            element_text(request.body, s.property).map(|v| (s.property, xml_unescape(v)))
        })
        .collect();
    let mut changed = Vec::new();
    ctx.host.send_if_modified(|host| {
        changed = host.put(class.name, &values);
        !changed.is_empty()
    });
    if !changed.is_empty() {
        info!(
            device = %ctx.name,
            class = class.name,
            changed = %changed.join(","),
            "sim console changed settings"
        );
    }
    let instance = select(class, request, ctx)?;
    Ok(transfer_response(
        ctx,
        request,
        class,
        "PutResponse",
        &instance,
    ))
}

/// A method's input parameter as a number; `None` when absent or not one.
fn number_input(request: &SoapRequest<'_>, name: &str) -> Option<u16> {
    element_text(request.body, name)?.parse().ok()
}

fn invoke(
    class: &Class,
    method: &str,
    request: &SoapRequest<'_>,
    ctx: &DeviceState,
) -> Result<String, Fault> {
    select(class, request, ctx)?;
    let mut outcome: Result<String, u32> = Err(return_value::INVALID_PARAMETER);
    ctx.host.send_if_modified(|host| {
        outcome = apply(class.name, method, request, host);
        outcome.is_ok()
    });
    let return_value = match outcome {
        Ok(done) => {
            let host = ctx.host.borrow();
            info!(
                device = %ctx.name,
                method,
                %done,
                power = %host.power,
                next_boot = %host.next_boot(),
                kvm_enabled = host.kvm_enabled,
                "sim console action"
            );
            return_value::COMPLETED
        }
        Err(code) => {
            info!(device = %ctx.name, method, return_value = code, "sim console action refused");
            code
        }
    };
    let uri = class_uri(class.name);
    Ok(envelope(
        ctx,
        request.message_id,
        &format!("{}Response", request.action),
        &uri,
        &[("g", uri.as_str())],
        &format!(
            "<g:{method}_OUTPUT><g:ReturnValue>{return_value}</g:ReturnValue></g:{method}_OUTPUT>"
        ),
    ))
}

/// Runs a method on the host; `Ok` says what was done, `Err` is the non-zero ReturnValue.
fn apply(
    class: &str,
    method: &str,
    request: &SoapRequest<'_>,
    host: &mut HostStatus,
) -> Result<String, u32> {
    let invalid = return_value::INVALID_PARAMETER;
    match (class, method) {
        (_, "RequestPowerStateChange") => {
            let requested = number_input(request, "PowerState").ok_or(invalid)?;
            Ok(match host.request_power(requested)? {
                PowerChange::Booted(source) => {
                    format!("power state {requested}: booted from {source}")
                }
                PowerChange::Now(state) => format!("power state {requested}: host {state}"),
            })
        }
        (_, "ChangeBootOrder") => {
            let source = element_text(request.body, "Source").map(selectors);
            let instance_id = source
                .as_deref()
                .and_then(|s| s.iter().find(|(n, _)| n == "InstanceID"))
                .map(|(_, v)| v.as_str());
            host.change_boot_order(instance_id)?;
            Ok(format!("boot order: {}", instance_id.unwrap_or("cleared")))
        }
        (_, "SetBootConfigRole") => {
            let role = number_input(request, "Role").ok_or(invalid)?;
            host.set_boot_config_role(role)?;
            Ok(format!("boot configuration role {role}"))
        }
        ("CIM_KVMRedirectionSAP", "RequestStateChange") => {
            let requested = number_input(request, "RequestedState").ok_or(invalid)?;
            host.request_kvm_state(requested)?;
            Ok(format!("KVM state {requested}"))
        }
        (_, "RequestStateChange") => {
            let requested = number_input(request, "RequestedState").ok_or(invalid)?;
            host.request_redirection_state(requested)?;
            Ok(format!("redirection state {requested}"))
        }
        _ => Err(return_value::UNSPECIFIED_ERROR),
    }
}

/// The request's MaxElements (WS-Enumeration's default when absent or not a number), bounded
/// to what one response may carry.
fn max_elements(request: &SoapRequest<'_>) -> usize {
    element_text(request.body, "MaxElements")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(DEFAULT_MAX_ELEMENTS)
        .clamp(1, MAX_ELEMENTS_LIMIT)
}

fn enumerate(class: &Class, request: &SoapRequest<'_>, ctx: &DeviceState) -> Result<String, Fault> {
    let instances = instances(class.name, ctx);
    let namespace = class_uri(instances.first().map_or(class.name, |i| i.class));
    let mut items: VecDeque<String> = instances.iter().map(|i| i.render("h")).collect();
    let uri = class_uri(class.name);
    // Optimized enumeration (WS-Management): the first items come with the response.
    let optimized = element_text(request.body, "OptimizeEnumeration").is_some();
    let mut first = String::new();
    if optimized {
        let page: String = items
            .drain(..max_elements(request).min(items.len()))
            .collect();
        let end = if items.is_empty() {
            "<c:EndOfSequence></c:EndOfSequence>"
        } else {
            ""
        };
        first = format!("<c:Items>{page}</c:Items>{end}");
    }
    let context = {
        let mut open = lock(&ctx.enumerations);
        if optimized && items.is_empty() {
            // Nothing left to pull: nothing to keep open.
            open.next_context()
        } else {
            open.open(uri.clone(), namespace.clone(), items)
        }
    };
    Ok(envelope(
        ctx,
        request.message_id,
        &format!("{ENUMERATION}EnumerateResponse"),
        &uri,
        &[("g", ENUMERATION_NS), ("h", namespace.as_str())],
        &format!(
            "<g:EnumerateResponse><g:EnumerationContext>{context}</g:EnumerationContext>{first}</g:EnumerateResponse>"
        ),
    ))
}

fn lock(enumerations: &Mutex<Enumerations>) -> std::sync::MutexGuard<'_, Enumerations> {
    // A panic elsewhere while holding the lock leaves the list consistent (every change is a
    // single VecDeque operation), so a poisoned lock is still usable.
    enumerations
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn enumeration_context<'a>(request: &SoapRequest<'a>) -> &'a str {
    element_text(request.body, "EnumerationContext").unwrap_or_default()
}

fn pull(request: &SoapRequest<'_>, ctx: &DeviceState) -> Result<String, Fault> {
    let context = enumeration_context(request);
    let max = max_elements(request);
    let (page, resource, namespace, done) = {
        let mut open = lock(&ctx.enumerations);
        let index = open
            .position(context)
            .ok_or(Fault::InvalidEnumerationContext)?;
        let Some(enumeration) = open.open.get_mut(index) else {
            return Err(Fault::InvalidEnumerationContext);
        };
        let page: String = enumeration
            .items
            .drain(..max.min(enumeration.items.len()))
            .collect();
        let done = enumeration.items.is_empty();
        let resource = enumeration.resource.clone();
        let namespace = enumeration.namespace.clone();
        if done {
            open.open.remove(index);
        }
        (page, resource, namespace, done)
    };
    let body = if done {
        format!(
            "<g:PullResponse><g:Items>{page}</g:Items><g:EndOfSequence></g:EndOfSequence></g:PullResponse>"
        )
    } else {
        format!(
            "<g:PullResponse><g:EnumerationContext>{}</g:EnumerationContext><g:Items>{page}</g:Items></g:PullResponse>",
            xml_escape(context)
        )
    };
    Ok(envelope(
        ctx,
        request.message_id,
        &format!("{ENUMERATION}PullResponse"),
        &resource,
        &[("g", ENUMERATION_NS), ("h", namespace.as_str())],
        &body,
    ))
}

fn release(request: &SoapRequest<'_>, ctx: &DeviceState) -> Result<String, Fault> {
    let resource = {
        let mut open = lock(&ctx.enumerations);
        let index = open
            .position(enumeration_context(request))
            .ok_or(Fault::InvalidEnumerationContext)?;
        open.open
            .remove(index)
            .map(|e| e.resource)
            .unwrap_or_default()
    };
    Ok(envelope(
        ctx,
        request.message_id,
        &format!("{ENUMERATION}ReleaseResponse"),
        &resource,
        &[],
        "",
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (project rule)
mod tests {
    use super::*;
    use crate::host::{BootSource, PowerState};
    use std::time::Duration;

    fn device() -> DeviceState {
        DeviceState::new(
            "sim-host-1".into(),
            "admin".into(),
            "P@ssw0rd".into(),
            Duration::from_secs(5),
        )
    }

    /// A request as consoles write it (`w` for WS-Management, `wsa` for addressing).
    fn request(action: &str, class: &str, header_extra: &str, body: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" \
             xmlns:wsa=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" \
             xmlns:w=\"http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd\"><s:Header>\
             <wsa:Action s:mustUnderstand=\"true\">{action}</wsa:Action>\
             <wsa:To>/wsman</wsa:To><w:ResourceURI>{uri}</w:ResourceURI>\
             <wsa:MessageID>uuid:1</wsa:MessageID>{header_extra}</s:Header><s:Body>{body}</s:Body></s:Envelope>",
            uri = class_uri(class)
        )
    }

    fn ok(ctx: &DeviceState, xml: &str) -> String {
        let (status, reply) = answer(xml, ctx);
        assert_eq!(status, "200 OK", "{reply}");
        reply
    }

    fn fault_of(ctx: &DeviceState, xml: &str) -> String {
        let (status, reply) = answer(xml, ctx);
        assert_eq!(status, "400 Bad Request", "{reply}");
        element_text(element_text(&reply, "Subcode").unwrap(), "Value")
            .unwrap()
            .to_owned()
    }

    fn power_state(ctx: &DeviceState) -> String {
        let reply = ok(
            ctx,
            &request(GET, "CIM_AssociatedPowerManagementService", "", ""),
        );
        element_text(&reply, "PowerState").unwrap().to_owned()
    }

    fn request_power(ctx: &DeviceState, state: u16) -> String {
        let uri = class_uri("CIM_PowerManagementService");
        let reply = ok(
            ctx,
            &request(
                &format!("{uri}/RequestPowerStateChange"),
                "CIM_PowerManagementService",
                "<w:SelectorSet><w:Selector Name=\"Name\">Intel(r) AMT Power Management Service</w:Selector></w:SelectorSet>",
                &format!(
                    "<p:RequestPowerStateChange_INPUT xmlns:p=\"{uri}\"><p:PowerState>{state}</p:PowerState></p:RequestPowerStateChange_INPUT>"
                ),
            ),
        );
        assert!(reply.contains(&format!(
            "<b:Action a:mustUnderstand=\"true\">{uri}/RequestPowerStateChangeResponse</b:Action>"
        )));
        element_text(&reply, "ReturnValue").unwrap().to_owned()
    }

    #[test]
    fn power_requests_change_what_get_reports() {
        let ctx = device();
        assert_eq!(power_state(&ctx), "2");
        assert_eq!(request_power(&ctx, 8), "0");
        assert_eq!(power_state(&ctx), "8");
        assert_eq!(request_power(&ctx, 8), "2", "off while off is refused");
        assert_eq!(request_power(&ctx, 2), "0");
        assert_eq!(request_power(&ctx, 5), "0");
        let host = ctx.host.borrow().clone();
        assert_eq!((host.power, host.boots), (PowerState::On, 3));
    }

    #[test]
    fn get_renders_the_class_in_its_namespace_with_a_reference() {
        let ctx = device();
        let reply = ok(
            &ctx,
            &request(GET, "CIM_AssociatedPowerManagementService", "", ""),
        );
        let ns = class_uri("CIM_AssociatedPowerManagementService");
        assert!(reply.contains(&format!("xmlns:g=\"{ns}\"")), "{reply}");
        assert!(reply.contains("<c:ResourceURI>http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_AssociatedPowerManagementService</c:ResourceURI>"));
        assert!(reply.contains("<g:AvailableRequestedPowerStates>10</g:AvailableRequestedPowerStates><g:AvailableRequestedPowerStates>8</g:AvailableRequestedPowerStates>"));
        assert!(reply.contains("<g:ServiceProvided><b:Address>"), "{reply}");
        assert!(reply.contains(
            "<c:Selector Name=\"Name\">Intel(r) AMT Power Management Service</c:Selector>"
        ));
        assert_eq!(element_text(&reply, "RelatesTo"), Some("uuid:1"));
    }

    #[test]
    fn one_time_pxe_boot_as_the_amt_package_sets_it() {
        let ctx = device();
        let boot_config = class_uri("CIM_BootConfigSetting");
        let reply = ok(
            &ctx,
            &request(
                &format!("{boot_config}/ChangeBootOrder"),
                "CIM_BootConfigSetting",
                "<w:SelectorSet><w:Selector Name=\"InstanceID\">Intel(r) AMT: Boot Configuration 0</w:Selector></w:SelectorSet>",
                "<n1:ChangeBootOrder_INPUT><n1:Source><wsa:Address>x</wsa:Address><wsa:ReferenceParameters>\
                 <w:ResourceURI>http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_BootSourceSetting</w:ResourceURI>\
                 <w:SelectorSet><w:Selector w:Name=\"InstanceID\">Intel(r) AMT: Force PXE Boot</w:Selector></w:SelectorSet>\
                 </wsa:ReferenceParameters></n1:Source></n1:ChangeBootOrder_INPUT>",
            ),
        );
        assert_eq!(element_text(&reply, "ReturnValue"), Some("0"));
        let boot_service = class_uri("CIM_BootService");
        let reply = ok(
            &ctx,
            &request(
                &format!("{boot_service}/SetBootConfigRole"),
                "CIM_BootService",
                "<w:SelectorSet><w:Selector Name=\"Name\">Intel(r) AMT Boot Service</w:Selector></w:SelectorSet>",
                "<n1:SetBootConfigRole_INPUT><n1:BootConfigSetting><wsa:Address>x</wsa:Address></n1:BootConfigSetting><n1:Role>1</n1:Role></n1:SetBootConfigRole_INPUT>",
            ),
        );
        assert_eq!(element_text(&reply, "ReturnValue"), Some("0"));
        assert_eq!(ctx.host.borrow().next_boot(), BootSource::Pxe);
        assert_eq!(request_power(&ctx, 10), "0");
        let host = ctx.host.borrow().clone();
        assert_eq!(host.last_boot, BootSource::Pxe);
        assert_eq!(host.next_boot(), BootSource::Default, "one time only");
    }

    #[test]
    fn put_changes_settings_and_never_returns_the_rfb_password() {
        let ctx = device();
        let reply = ok(
            &ctx,
            &request(
                PUT,
                KVM_SETTING_DATA,
                "",
                "<g:IPS_KVMRedirectionSettingData><g:Is5900PortEnabled>true</g:Is5900PortEnabled>\
                 <g:RFBPassword>Secr3t!x</g:RFBPassword><g:ElementName>ignored</g:ElementName></g:IPS_KVMRedirectionSettingData>",
            ),
        );
        assert!(reply.contains("/transfer/PutResponse</b:Action>"));
        assert_eq!(element_text(&reply, "Is5900PortEnabled"), Some("true"));
        assert_eq!(element_text(&reply, "RFBPassword"), None);
        assert_eq!(
            element_text(&reply, "ElementName"),
            Some("Intel(r) KVM Redirection Settings")
        );
        let host = ctx.host.borrow().clone();
        assert_eq!(
            host.setting(KVM_SETTING_DATA, "RFBPassword"),
            Some("Secr3t!x")
        );
        // Put on a class without writable properties is not an action it supports.
        assert_eq!(
            fault_of(&ctx, &request(PUT, "CIM_SoftwareIdentity", "", "")),
            "b:ActionNotSupported"
        );
    }

    #[test]
    fn kvm_state_change() {
        let ctx = device();
        let sap = class_uri("CIM_KVMRedirectionSAP");
        let get = request(GET, "CIM_KVMRedirectionSAP", "", "");
        assert_eq!(element_text(&ok(&ctx, &get), "EnabledState"), Some("6"));
        let disable = request(
            &format!("{sap}/RequestStateChange"),
            "CIM_KVMRedirectionSAP",
            "",
            "<p:RequestStateChange_INPUT><p:RequestedState>3</p:RequestedState></p:RequestStateChange_INPUT>",
        );
        assert_eq!(element_text(&ok(&ctx, &disable), "ReturnValue"), Some("0"));
        assert_eq!(element_text(&ok(&ctx, &get), "EnabledState"), Some("3"));
        assert!(!ctx.host.borrow().kvm_enabled);
    }

    /// Enumerate, then Pull `max` at a time until the end; returns the pages' item counts.
    fn pages(ctx: &DeviceState, class: &str, max: usize) -> Vec<usize> {
        let reply = ok(ctx, &request(ENUMERATE, class, "", "<n:Enumerate/>"));
        assert!(reply.contains("/enumeration/EnumerateResponse</b:Action>"));
        let mut context = element_text(&reply, "EnumerationContext")
            .unwrap()
            .to_owned();
        let mut counts = Vec::new();
        loop {
            let pull = request(
                PULL,
                class,
                "",
                &format!(
                    "<n:Pull><n:EnumerationContext>{context}</n:EnumerationContext><n:MaxElements>{max}</n:MaxElements></n:Pull>"
                ),
            );
            let reply = ok(ctx, &pull);
            let items = element_text(&reply, "Items").unwrap();
            counts.push(items.matches(&format!("<h:{class}>")).count());
            if reply.contains("<g:EndOfSequence>") {
                assert_eq!(element_text(&reply, "EnumerationContext"), None);
                // The context is gone once exhausted.
                assert_eq!(fault_of(ctx, &pull), "g:InvalidEnumerationContext");
                return counts;
            }
            context = element_text(&reply, "EnumerationContext")
                .unwrap()
                .to_owned();
        }
    }

    #[test]
    fn enumerate_and_pull_in_pages() {
        let ctx = device();
        assert_eq!(pages(&ctx, "CIM_SoftwareIdentity", 4), [4, 4, 3]);
        assert_eq!(pages(&ctx, "CIM_BootSourceSetting", 100), [3]);
        assert_eq!(pages(&ctx, "CIM_PowerManagementService", 1), [1]);
    }

    #[test]
    fn optimized_enumeration_and_release() {
        let ctx = device();
        let optimized = |max: usize| {
            request(
                ENUMERATE,
                "CIM_SoftwareIdentity",
                "",
                &format!(
                    "<n:Enumerate><w:OptimizeEnumeration/><w:MaxElements>{max}</w:MaxElements></n:Enumerate>"
                ),
            )
        };
        let all = ok(&ctx, &optimized(50));
        assert_eq!(all.matches("<h:CIM_SoftwareIdentity>").count(), 11);
        assert!(all.contains("<h:VersionString>16.1.27</h:VersionString>"));
        assert!(all.contains("<c:EndOfSequence>"));

        let some = ok(&ctx, &optimized(2));
        assert_eq!(some.matches("<h:CIM_SoftwareIdentity>").count(), 2);
        assert!(!some.contains("EndOfSequence"));
        let context = element_text(&some, "EnumerationContext").unwrap();
        let release = request(
            RELEASE,
            "CIM_SoftwareIdentity",
            "",
            &format!(
                "<n:Release><n:EnumerationContext>{context}</n:EnumerationContext></n:Release>"
            ),
        );
        assert!(ok(&ctx, &release).contains("/enumeration/ReleaseResponse</b:Action>"));
        assert_eq!(fault_of(&ctx, &release), "g:InvalidEnumerationContext");
    }

    #[test]
    fn enumerations_open_at_once_are_bounded() {
        let ctx = device();
        let enumerate = request(ENUMERATE, "AMT_GeneralSettings", "", "");
        let first = ok(&ctx, &enumerate);
        let first = element_text(&first, "EnumerationContext").unwrap();
        for _ in 0..MAX_OPEN_ENUMERATIONS {
            ok(&ctx, &enumerate);
        }
        assert_eq!(lock(&ctx.enumerations).open.len(), MAX_OPEN_ENUMERATIONS);
        assert!(lock(&ctx.enumerations).position(first).is_none());
    }

    #[test]
    fn own_certificate_and_tls_settings() {
        let ctx = device();
        let (cert, _) =
            crate::generate_amt_identity(crate::KeyType::P256, false, crate::CertStyle::Unknown)
                .unwrap();
        ctx.certificate.store(std::sync::Arc::new(cert.clone()));
        let reply = ok(
            &ctx,
            &request(
                ENUMERATE,
                "AMT_PublicKeyCertificate",
                "",
                "<n:Enumerate><w:OptimizeEnumeration/><w:MaxElements>10</w:MaxElements></n:Enumerate>",
            ),
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        assert_eq!(
            element_text(&reply, "X509Certificate"),
            Some(encoded.as_str())
        );
        assert_eq!(
            element_text(&reply, "Subject"),
            Some("CN=Unknown,C=Unknown,O=Unknown,OU=Unknown,ST=Unknown,L=Unknown")
        );
        let tls = ok(&ctx, &request(GET, "AMT_TLSSettingData", "", ""));
        assert_eq!(element_text(&tls, "Enabled"), Some("true"));
    }

    #[test]
    fn unknown_resources_actions_selectors_and_garbage_get_faults() {
        let ctx = device();
        assert_eq!(
            fault_of(&ctx, &request(GET, "AMT_Nonexistent", "", "")),
            "b:DestinationUnreachable"
        );
        let uri = class_uri("CIM_PowerManagementService");
        assert_eq!(
            fault_of(
                &ctx,
                &request(
                    &format!("{uri}/Explode"),
                    "CIM_PowerManagementService",
                    "",
                    ""
                )
            ),
            "b:ActionNotSupported"
        );
        assert_eq!(
            fault_of(
                &ctx,
                &request(
                    GET,
                    "CIM_SoftwareIdentity",
                    "<w:SelectorSet><w:Selector Name=\"InstanceID\">Nope</w:Selector></w:SelectorSet>",
                    ""
                )
            ),
            "c:InvalidSelectors"
        );
        let amt = ok(
            &ctx,
            &request(
                GET,
                "CIM_SoftwareIdentity",
                "<w:SelectorSet><w:Selector Name=\"InstanceID\">AMT</w:Selector></w:SelectorSet>",
                "",
            ),
        );
        assert_eq!(element_text(&amt, "VersionString"), Some("16.1.27"));
        for garbage in [
            "",
            "garbage",
            "<<<",
            "<s:Envelope><s:Header>",
            "\u{fffd}<x y='",
        ] {
            assert_eq!(
                fault_of(&ctx, garbage),
                "b:DestinationUnreachable",
                "{garbage:?}"
            );
        }
        // A method with a missing or non-numeric parameter answers, with Invalid Parameter.
        let bad = request(
            &format!("{uri}/RequestPowerStateChange"),
            "CIM_PowerManagementService",
            "",
            "<p:PowerState>on</p:PowerState>",
        );
        assert_eq!(element_text(&ok(&ctx, &bad), "ReturnValue"), Some("5"));
    }
}
