//! The simulated host behind the device's management engine: its power state, the one-time boot
//! configuration a console sets, and the redirection (SOL, IDE-R, KVM) settings. One per device,
//! shared by every connection, so what one console changes the next one reads, and the serial
//! console (redirection) sees the host boot and power down.
//!
//! Values are the CIM ones AMT uses: `PowerState` of CIM_AssociatedPowerManagementService and
//! `RequestPowerStateChange`, `EnabledState` of CIM_KVMRedirectionSAP and AMT_RedirectionService.

use std::collections::BTreeMap;
use std::fmt;

/// The host's power state as CIM_AssociatedPowerManagementService reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    /// 2, S0.
    On,
    /// 4, Sleep - Deep (S3).
    Sleep,
    /// 7, Hibernate (S4).
    Hibernate,
    /// 8, Off - Soft (S5).
    Off,
}

impl PowerState {
    pub fn cim_value(self) -> u16 {
        match self {
            Self::On => 2,
            Self::Sleep => 4,
            Self::Hibernate => 7,
            Self::Off => 8,
        }
    }

    /// What `RequestPowerStateChange` accepts in this state, in the order AMT lists them.
    pub(crate) fn available_requests(self) -> &'static [u16] {
        match self {
            Self::On => &[10, 8, 5, 11, 4, 7, 14, 12],
            Self::Sleep | Self::Hibernate => &[2, 8],
            Self::Off => &[2],
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::On => "on",
            Self::Sleep => "sleep",
            Self::Hibernate => "hibernate",
            Self::Off => "off",
        })
    }
}

/// Where the host boots from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootSource {
    /// The BIOS's own boot order (no one-time boot configured).
    Default,
    HardDrive,
    Pxe,
    CdDvd,
    /// IDE redirection of the console's CD image (AMT_BootSettingData UseIDER, IDERBootDevice 1).
    IderCd,
    /// IDE redirection of the console's floppy image (IDERBootDevice 0).
    IderFloppy,
}

/// The CIM_BootSourceSetting instances a console may name in ChangeBootOrder, with their
/// InstanceID and StructuredBootString.
pub(crate) const BOOT_SOURCES: [(BootSource, &str, &str); 3] = [
    (
        BootSource::HardDrive,
        "Intel(r) AMT: Force Hard-drive Boot",
        "CIM:Hard-Disk:1",
    ),
    (
        BootSource::Pxe,
        "Intel(r) AMT: Force PXE Boot",
        "CIM:Network:1",
    ),
    (
        BootSource::CdDvd,
        "Intel(r) AMT: Force CD/DVD Boot",
        "CIM:CD/DVD:1",
    ),
];

impl fmt::Display for BootSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Default => "the default boot order",
            Self::HardDrive => "hard drive",
            Self::Pxe => "network (PXE)",
            Self::CdDvd => "CD/DVD",
            Self::IderCd => "IDE-R CD",
            Self::IderFloppy => "IDE-R floppy",
        })
    }
}

/// What a power request did to the host, for the log and the serial console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PowerChange {
    /// Booted (power on, cycle, reset) from this source.
    Booted(BootSource),
    /// Went to this state without booting (off, sleep, hibernate, NMI).
    Now(PowerState),
}

/// CIM method return codes AMT uses.
pub(crate) mod return_value {
    pub(crate) const COMPLETED: u32 = 0;
    /// The request is not valid in the current state (e.g. power on while on).
    pub(crate) const UNSPECIFIED_ERROR: u32 = 2;
    pub(crate) const INVALID_REFERENCE: u32 = 4;
    pub(crate) const INVALID_PARAMETER: u32 = 5;
}

/// A setting a console writes with Put: its class, property, value at start, and whether Get
/// shows it (AMT never returns passwords).
pub(crate) struct Setting {
    pub(crate) class: &'static str,
    pub(crate) property: &'static str,
    pub(crate) initial: &'static str,
    pub(crate) readable: bool,
    /// Cleared back to `initial` once the host has booted with it (AMT's boot options are
    /// one-time).
    pub(crate) one_time: bool,
}

const fn setting(class: &'static str, property: &'static str, initial: &'static str) -> Setting {
    Setting {
        class,
        property,
        initial,
        readable: true,
        one_time: false,
    }
}

const fn boot_option(property: &'static str, initial: &'static str) -> Setting {
    Setting {
        class: BOOT_SETTING_DATA,
        property,
        initial,
        readable: true,
        one_time: true,
    }
}

pub(crate) const BOOT_SETTING_DATA: &str = "AMT_BootSettingData";
pub(crate) const KVM_SETTING_DATA: &str = "IPS_KVMRedirectionSettingData";
pub(crate) const REDIRECTION_SERVICE: &str = "AMT_RedirectionService";

/// Every writable property the simulator keeps.
pub(crate) const SETTINGS: &[Setting] = &[
    boot_option("BIOSPause", "false"),
    boot_option("BIOSSetup", "false"),
    boot_option("BootMediaIndex", "0"),
    boot_option("ConfigurationDataReset", "false"),
    boot_option("FirmwareVerbosity", "0"),
    boot_option("ForcedProgressEvents", "false"),
    boot_option("IDERBootDevice", "0"),
    boot_option("LockKeyboard", "false"),
    boot_option("LockPowerButton", "false"),
    boot_option("LockResetButton", "false"),
    boot_option("LockSleepButton", "false"),
    boot_option("ReflashBIOS", "false"),
    boot_option("UseIDER", "false"),
    boot_option("UseSOL", "false"),
    boot_option("UseSafeMode", "false"),
    boot_option("UserPasswordBypass", "false"),
    setting(KVM_SETTING_DATA, "DefaultScreen", "0"),
    setting(KVM_SETTING_DATA, "Is5900PortEnabled", "false"),
    setting(KVM_SETTING_DATA, "OptInPolicy", "true"),
    setting(KVM_SETTING_DATA, "OptInPolicyTimeout", "120"),
    setting(KVM_SETTING_DATA, "SessionTimeout", "10"),
    Setting {
        class: KVM_SETTING_DATA,
        property: "RFBPassword",
        initial: "",
        readable: false,
        one_time: false,
    },
    setting(REDIRECTION_SERVICE, "ListenerEnabled", "true"),
];

/// AMT_RedirectionService EnabledState: 32768 + (SOL enabled) * 2 + (IDE-R enabled).
pub(crate) const REDIRECTION_STATES: [u16; 4] = [32768, 32769, 32770, 32771];
/// CIM_KVMRedirectionSAP EnabledState while KVM is enabled and no session runs.
pub(crate) const KVM_ENABLED_OFFLINE: u16 = 6;
pub(crate) const KVM_DISABLED: u16 = 3;
const KVM_ENABLE_REQUEST: u16 = 2;

/// The host as the device sees it. [`crate::SimDevice::host`] returns a copy.
#[derive(Debug, Clone)]
pub struct HostStatus {
    pub power: PowerState,
    /// How many times the host has booted since the device started (it starts on, booted once).
    pub boots: u64,
    /// Where the last boot came from.
    pub last_boot: BootSource,
    /// ChangeBootOrder's choice for the next boot (`None`: the BIOS's order).
    pub boot_order: Option<BootSource>,
    /// SetBootConfigRole made the boot configuration the next boot's (Role 1, IsNext).
    pub boot_config_next: bool,
    /// CIM_KVMRedirectionSAP: KVM enabled (RequestStateChange 2) or disabled (3).
    pub kvm_enabled: bool,
    /// AMT_RedirectionService EnabledState (32771: SOL and IDE-R enabled).
    pub redirection_state: u16,
    settings: BTreeMap<(&'static str, &'static str), String>,
}

impl Default for HostStatus {
    fn default() -> Self {
        Self {
            power: PowerState::On,
            boots: 1,
            last_boot: BootSource::Default,
            boot_order: None,
            boot_config_next: false,
            kvm_enabled: true,
            redirection_state: 32771,
            settings: SETTINGS
                .iter()
                .map(|s| ((s.class, s.property), s.initial.to_owned()))
                .collect(),
        }
    }
}

impl HostStatus {
    /// A writable property's value (`Is5900PortEnabled` of `IPS_KVMRedirectionSettingData`...).
    pub fn setting(&self, class: &str, property: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|((c, p), _)| *c == class && *p == property)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `AMT_BootSettingData.UseIDER` asks for an IDE-R boot.
    fn ider_source(&self) -> Option<BootSource> {
        if self.setting(BOOT_SETTING_DATA, "UseIDER") != Some("true") {
            return None;
        }
        Some(match self.setting(BOOT_SETTING_DATA, "IDERBootDevice") {
            Some("1") => BootSource::IderCd,
            _ => BootSource::IderFloppy,
        })
    }

    /// Where the next boot comes from: IDE-R if asked for, else the boot order once its role is
    /// "is next", else the BIOS's order.
    pub fn next_boot(&self) -> BootSource {
        if let Some(ider) = self.ider_source() {
            return ider;
        }
        match (self.boot_config_next, self.boot_order) {
            (true, Some(source)) => source,
            _ => BootSource::Default,
        }
    }

    /// Whether SOL sessions are enabled (AMT_RedirectionService).
    pub fn sol_enabled(&self) -> bool {
        self.redirection_state & 2 != 0
    }

    /// CIM_KVMRedirectionSAP EnabledState.
    pub(crate) fn kvm_enabled_state(&self) -> u16 {
        if self.kvm_enabled {
            KVM_ENABLED_OFFLINE
        } else {
            KVM_DISABLED
        }
    }

    /// RequestPowerStateChange; `Err` is the method's non-zero ReturnValue.
    pub(crate) fn request_power(&mut self, requested: u16) -> Result<PowerChange, u32> {
        if !self.power.available_requests().contains(&requested) {
            return Err(return_value::UNSPECIFIED_ERROR);
        }
        Ok(match requested {
            // On, power cycle, master bus reset (and its graceful form): the host boots.
            2 | 5 | 10 | 14 => PowerChange::Booted(self.boot()),
            // Off - Soft and Off - Soft Graceful.
            8 | 12 => self.enter(PowerState::Off),
            4 => self.enter(PowerState::Sleep),
            7 => self.enter(PowerState::Hibernate),
            // Diagnostic interrupt (NMI): the host stays as it is.
            _ => PowerChange::Now(self.power),
        })
    }

    fn enter(&mut self, power: PowerState) -> PowerChange {
        self.power = power;
        PowerChange::Now(power)
    }

    /// Boots with the one-time configuration, then forgets it, as AMT does.
    fn boot(&mut self) -> BootSource {
        let source = self.next_boot();
        self.power = PowerState::On;
        self.boots += 1;
        self.last_boot = source;
        self.boot_order = None;
        self.boot_config_next = false;
        for s in SETTINGS.iter().filter(|s| s.one_time) {
            self.settings
                .insert((s.class, s.property), s.initial.to_owned());
        }
        source
    }

    /// ChangeBootOrder with the CIM_BootSourceSetting InstanceID given (`None`: an empty
    /// Source, which clears the order).
    pub(crate) fn change_boot_order(&mut self, instance_id: Option<&str>) -> Result<(), u32> {
        self.boot_order = match instance_id {
            None => None,
            Some(id) => Some(
                BOOT_SOURCES
                    .iter()
                    .find(|(_, instance, _)| *instance == id)
                    .map(|(source, _, _)| *source)
                    .ok_or(return_value::INVALID_REFERENCE)?,
            ),
        };
        Ok(())
    }

    /// SetBootConfigRole: 1 is "IsNext", 32768 "IsNotNext".
    pub(crate) fn set_boot_config_role(&mut self, role: u16) -> Result<(), u32> {
        self.boot_config_next = match role {
            1 => true,
            32768 => false,
            _ => return Err(return_value::INVALID_PARAMETER),
        };
        Ok(())
    }

    /// CIM_KVMRedirectionSAP RequestStateChange: 2 enables, 3 disables.
    pub(crate) fn request_kvm_state(&mut self, requested: u16) -> Result<(), u32> {
        self.kvm_enabled = match requested {
            KVM_ENABLE_REQUEST => true,
            KVM_DISABLED => false,
            _ => return Err(return_value::INVALID_PARAMETER),
        };
        Ok(())
    }

    /// AMT_RedirectionService RequestStateChange: 32768 to 32771.
    pub(crate) fn request_redirection_state(&mut self, requested: u16) -> Result<(), u32> {
        if !REDIRECTION_STATES.contains(&requested) {
            return Err(return_value::INVALID_PARAMETER);
        }
        self.redirection_state = requested;
        Ok(())
    }

    /// A Put's writable properties of `class` (name, value); returns the names changed.
    pub(crate) fn put(
        &mut self,
        class: &str,
        values: &[(&'static str, String)],
    ) -> Vec<&'static str> {
        let mut changed = Vec::new();
        for (property, value) in values {
            if let Some(s) = SETTINGS
                .iter()
                .find(|s| s.class == class && s.property == *property)
            {
                let slot = self.settings.entry((s.class, s.property)).or_default();
                if *slot != *value {
                    *slot = value.clone();
                    changed.push(s.property);
                }
            }
        }
        changed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (project rule)
mod tests {
    use super::*;

    #[test]
    fn power_requests_follow_the_state_machine() {
        let mut host = HostStatus::default();
        assert_eq!(host.request_power(2), Err(return_value::UNSPECIFIED_ERROR));
        assert_eq!(host.request_power(8), Ok(PowerChange::Now(PowerState::Off)));
        assert_eq!(host.request_power(5), Err(return_value::UNSPECIFIED_ERROR));
        assert_eq!(
            host.request_power(2),
            Ok(PowerChange::Booted(BootSource::Default))
        );
        assert_eq!(host.boots, 2);
        assert_eq!(
            host.request_power(10),
            Ok(PowerChange::Booted(BootSource::Default))
        );
        assert_eq!(
            host.request_power(4),
            Ok(PowerChange::Now(PowerState::Sleep))
        );
        assert_eq!(
            host.request_power(2),
            Ok(PowerChange::Booted(BootSource::Default))
        );
        assert_eq!(host.request_power(99), Err(return_value::UNSPECIFIED_ERROR));
    }

    #[test]
    fn one_time_boot_is_used_once() {
        let mut host = HostStatus::default();
        host.change_boot_order(Some("Intel(r) AMT: Force PXE Boot"))
            .unwrap();
        // The order alone is not the next boot's until its role says so.
        assert_eq!(host.next_boot(), BootSource::Default);
        host.set_boot_config_role(1).unwrap();
        assert_eq!(host.next_boot(), BootSource::Pxe);
        assert_eq!(
            host.request_power(5),
            Ok(PowerChange::Booted(BootSource::Pxe))
        );
        assert_eq!(host.next_boot(), BootSource::Default);
        assert_eq!(
            host.change_boot_order(Some("nonsense")),
            Err(return_value::INVALID_REFERENCE)
        );

        let changed = host.put(
            BOOT_SETTING_DATA,
            &[("UseIDER", "true".into()), ("IDERBootDevice", "1".into())],
        );
        assert_eq!(changed, ["UseIDER", "IDERBootDevice"]);
        assert_eq!(
            host.request_power(10),
            Ok(PowerChange::Booted(BootSource::IderCd))
        );
        assert_eq!(host.setting(BOOT_SETTING_DATA, "UseIDER"), Some("false"));
    }

    #[test]
    fn kvm_and_redirection_states() {
        let mut host = HostStatus::default();
        assert_eq!(host.kvm_enabled_state(), KVM_ENABLED_OFFLINE);
        host.request_kvm_state(3).unwrap();
        assert_eq!(host.kvm_enabled_state(), KVM_DISABLED);
        assert_eq!(
            host.request_kvm_state(7),
            Err(return_value::INVALID_PARAMETER)
        );
        host.request_redirection_state(32769).unwrap();
        assert!(!host.sol_enabled());
        assert_eq!(
            host.request_redirection_state(5),
            Err(return_value::INVALID_PARAMETER)
        );
    }
}
