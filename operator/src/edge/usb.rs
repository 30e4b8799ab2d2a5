//! USB storage on the host: mass-storage interfaces attached now (sysfs),
//! whether the usb-storage driver is loaded, and whether modprobe's
//! configuration keeps it from loading. modprobe reads `*.conf` from four
//! folders; a file name in an earlier folder hides the same name in later
//! ones; module names treat `-` and `_` alike; `\` continues a line.

use std::collections::BTreeMap;

use super::host::Host;
use crate::api::nodeposture::UsbFacts;

/// In modprobe's order of precedence.
pub const MODPROBE_DIRS: [&str; 4] = [
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
];

/// bInterfaceClass of USB mass storage.
const MASS_STORAGE: &str = "08";

pub fn read(host: &Host) -> UsbFacts {
    let sys_readable = host.exists("/sys/bus");
    let bus = sys_readable.then(|| host.exists("/sys/bus/usb"));
    let mass_storage_interfaces = host
        .list("/sys/bus/usb/devices")
        .into_iter()
        // Interfaces are named bus-port:config.interface.
        .filter(|name| name.contains(':'))
        .filter(|name| {
            host.read(&format!("/sys/bus/usb/devices/{name}/bInterfaceClass"))
                .is_some_and(|c| c.trim() == MASS_STORAGE)
        })
        .collect();
    let rules = modprobe_rules(host);
    UsbFacts {
        bus,
        mass_storage_interfaces,
        driver_loaded: host.exists("/sys/module/usb_storage"),
        driver_blacklisted: rules.blacklisted("usb_storage"),
        driver_install_disabled: rules.install_disabled("usb_storage"),
    }
}

/// The `blacklist` and `install` rules of modprobe's configuration.
#[derive(Default, Debug, PartialEq)]
pub struct ModprobeRules {
    pub blacklist: Vec<String>,
    /// module → its install command (the first one wins, as in modprobe).
    pub install: BTreeMap<String, String>,
}

impl ModprobeRules {
    pub fn blacklisted(&self, module: &str) -> bool {
        self.blacklist.iter().any(|m| m == module)
    }

    /// An install command that runs `true` or `false` instead of loading.
    pub fn install_disabled(&self, module: &str) -> bool {
        self.install.get(module).is_some_and(|cmd| {
            let first = cmd.split_whitespace().next().unwrap_or_default();
            matches!(first.rsplit('/').next(), Some("true" | "false"))
        })
    }
}

pub fn modprobe_rules(host: &Host) -> ModprobeRules {
    // The first folder holding a file name wins; files are read sorted by name.
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for dir in MODPROBE_DIRS {
        for name in host.list(dir) {
            if name.ends_with(".conf") && !files.contains_key(&name) {
                files.insert(name.clone(), format!("{dir}/{name}"));
            }
        }
    }
    let mut rules = ModprobeRules::default();
    for path in files.values() {
        if let Some(text) = host.read(path) {
            parse_modprobe(&text, &mut rules);
        }
    }
    rules
}

pub fn module_name(m: &str) -> String {
    m.replace('-', "_")
}

pub fn parse_modprobe(text: &str, rules: &mut ModprobeRules) {
    let joined = text.replace("\\\n", " ");
    for line in joined.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("blacklist"), Some(m)) => rules.blacklist.push(module_name(m)),
            (Some("install"), Some(m)) => {
                let cmd = words.collect::<Vec<_>>().join(" ");
                rules.install.entry(module_name(m)).or_insert(cmd);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashes_continuations_and_comments() {
        let mut r = ModprobeRules::default();
        parse_modprobe(
            "# blacklist usb_storage\nblacklist usb-storage\ninstall usb-storage \\\n /bin/false\ninstall usb_storage /sbin/modprobe --ignore-install usb_storage\n",
            &mut r,
        );
        assert!(r.blacklisted("usb_storage"));
        assert!(
            r.install_disabled("usb_storage"),
            "the first install wins: {r:?}"
        );
        let mut loads = ModprobeRules::default();
        parse_modprobe(
            "install usb_storage /sbin/modprobe --ignore-install usb_storage\n",
            &mut loads,
        );
        assert!(!loads.install_disabled("usb_storage"));
        assert!(!loads.blacklisted("usb_storage"));
    }
}
