//! The node side of IV-1, IV-2, IV-3, IV-4 and VI-1: one node's facts
//! against what the system expects of its edge nodes. Pure; shared by the
//! offline `iotposture node-agent --once` and the controller's checks.

use crate::{
    api::nodeposture::{NodeFacts, WifiMode, WifiNetwork, Wps},
    checklist::{
        evidence::{Check, Offences},
        physical_access::REMOTE_ACCESS_PORTS,
    },
};

/// What varies per system (`spec.edgeNodes`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expectations {
    /// Remote-access default ports a node may listen on (a declared bastion).
    pub allowed_remote_access_ports: Vec<u16>,
    /// The nodes may serve Wi-Fi access points.
    pub access_point: bool,
}

/// The items a node agent's facts decide, in catalog order.
pub const NODE_ITEMS: [&str; 5] = ["IV-1", "IV-2", "IV-3", "IV-4", "VI-1"];

/// One check per item of `NODE_ITEMS`.
pub fn judge(facts: &NodeFacts, expect: &Expectations) -> Vec<(&'static str, Check)> {
    NODE_ITEMS
        .iter()
        .filter_map(|id| Some((*id, judge_item(id, facts, expect)?)))
        .collect()
}

/// The node-side check of one item; None for items nodes do not decide.
pub fn judge_item(item: &str, facts: &NodeFacts, expect: &Expectations) -> Option<Check> {
    Some(match item {
        "IV-1" => physical_access(facts),
        "IV-2" => remote_access(facts, expect),
        "IV-3" => wireless_encryption(facts, expect),
        "IV-4" => wps(facts),
        "VI-1" => data_at_rest(facts),
        _ => return None,
    })
}

/// A source under one of `prefixes` could not be read: the verdict would
/// rest on a guess.
fn unreadable(facts: &NodeFacts, prefixes: &[&str]) -> Option<Check> {
    let bad: Vec<String> = facts
        .unreadable
        .iter()
        .filter(|u| prefixes.iter().any(|p| u.path.starts_with(p)))
        .map(|u| format!("{}: {}", u.path, u.error))
        .collect();
    (!bad.is_empty()).then(|| Check::unknown(format!("could not read {}", bad.join("; "))))
}

/// IV-1: no USB storage usable, no login on a serial console.
pub fn physical_access(facts: &NodeFacts) -> Check {
    if let Some(u) = unreadable(
        facts,
        &[
            "/sys/bus/usb",
            "/etc/modprobe.d",
            "/run/modprobe.d",
            "/usr/lib/modprobe.d",
            "/lib/modprobe.d",
            "/etc/systemd",
            "/etc/inittab",
        ],
    ) {
        return u;
    }
    let usb = &facts.usb;
    let mut offences = Offences::default();
    for i in &usb.mass_storage_interfaces {
        offences.add(format!("USB mass storage attached ({i})"));
    }
    if usb.driver_loaded {
        offences.add("the usb-storage driver is loaded");
    }
    let blocked = usb.driver_install_disabled || usb.driver_blacklisted;
    if usb.bus != Some(false) && !blocked {
        offences.add(
            "usb-storage may load: modprobe.d has neither `install usb_storage /bin/false` nor `blacklist usb_storage`",
        );
    }
    for c in &facts.consoles {
        offences.add(format!(
            "serial console {} offers a login ({})",
            c.device, c.login_by
        ));
    }
    let usb_text = match (usb.bus, blocked) {
        (Some(false), _) => "no USB bus",
        (_, true) if usb.driver_install_disabled => "usb-storage cannot load (install /bin/false)",
        _ => "usb-storage blacklisted",
    };
    offences.verdict(format!("{usb_text}; no serial console offers a login"))
}

fn is_loopback(address: &str) -> bool {
    address
        .parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_loopback())
}

/// IV-2: no remote-access default port listening beyond loopback, except
/// those the system allows.
pub fn remote_access(facts: &NodeFacts, expect: &Expectations) -> Check {
    let banned = |port: u16| {
        REMOTE_ACCESS_PORTS.contains(&i32::from(port))
            && !expect.allowed_remote_access_ports.contains(&port)
    };
    match (&facts.listening, &facts.sshd_ports) {
        (Some(sockets), _) => {
            if let Some(u) = unreadable(facts, &["/proc/1/net"]) {
                return u;
            }
            let mut offences = Offences::default();
            for s in sockets {
                if banned(s.port) && !is_loopback(&s.address) {
                    offences.add(format!(
                        "listens on remote-access port {}",
                        endpoint(&s.address, s.port)
                    ));
                }
            }
            offences.verdict(format!(
                "none of {} listening TCP sockets is on a remote-access default port ({}) beyond loopback",
                sockets.len(),
                allowed_text(expect)
            ))
        }
        // An image has no sockets to read: its sshd configuration is what it will do.
        (None, Some(ports)) => {
            let bad: Vec<String> = ports
                .iter()
                .filter(|p| banned(**p))
                .map(|p| p.to_string())
                .collect();
            if bad.is_empty() {
                Check::unknown(format!(
                    "sshd is configured on port(s) {}; other listeners are seen only on a running node",
                    ports
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            } else {
                Check::fail(format!(
                    "sshd is configured to listen on remote-access default port {}",
                    bad.join(", ")
                ))
            }
        }
        (None, None) => Check::unknown(
            "no sshd is configured; listening sockets are seen only on a running node",
        ),
    }
}

fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

fn allowed_text(expect: &Expectations) -> String {
    if expect.allowed_remote_access_ports.is_empty() {
        "none allowed".into()
    } else {
        format!(
            "allowed: {}",
            expect
                .allowed_remote_access_ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

const LEGACY: [&str; 6] = [
    "WPA-PSK",
    "WPA-EAP",
    "WPA-PSK-SHA256",
    "WPA-EAP-SHA256",
    "FT-PSK",
    "FT-EAP",
];
const WPA3: [&str; 6] = [
    "SAE",
    "FT-SAE",
    "SAE-EXT-KEY",
    "WPA-EAP-SUITE-B",
    "WPA-EAP-SUITE-B-192",
    "FT-EAP-SHA384",
];
const STRONG_CIPHERS: [&str; 4] = ["CCMP", "GCMP", "CCMP-256", "GCMP-256"];

/// What a network's effective settings amount to: `Ok(name)` for WPA2-CCMP
/// or WPA3, `Err(why)` for anything weaker.
pub fn classify(n: &WifiNetwork) -> Result<&'static str, String> {
    if n.wep {
        return Err("WEP".into());
    }
    let has = |list: &[&str], k: &String| list.contains(&k.as_str());
    if n.key_mgmt.iter().any(|k| k == "NONE") {
        return Err("open (no encryption)".into());
    }
    if let Some(k) = n
        .key_mgmt
        .iter()
        .find(|k| !has(&LEGACY, k) && !has(&WPA3, k))
    {
        return Err(format!("using key management {k}"));
    }
    let legacy = n.key_mgmt.iter().any(|k| has(&LEGACY, k));
    let wpa3 = n.key_mgmt.iter().any(|k| has(&WPA3, k));
    let weak: Vec<&String> = n
        .pairwise
        .iter()
        .filter(|c| !STRONG_CIPHERS.contains(&c.as_str()))
        .collect();
    if legacy {
        if n.protocols.iter().any(|p| p == "WPA") {
            return Err(format!(
                "open to WPA1 (proto {}{})",
                n.protocols.join(" "),
                if weak.is_empty() { "" } else { ", TKIP" }
            ));
        }
        if !weak.is_empty() {
            return Err(format!(
                "open to pairwise {}",
                weak.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
    } else if !n
        .pairwise
        .iter()
        .any(|c| STRONG_CIPHERS.contains(&c.as_str()))
    {
        return Err(format!("limited to pairwise {}", n.pairwise.join(" ")));
    }
    Ok(match (legacy, wpa3) {
        (true, true) => "WPA2/WPA3 transition (CCMP)",
        (false, true) => "WPA3",
        _ => "WPA2 (CCMP)",
    })
}

fn describe(n: &WifiNetwork) -> String {
    format!(
        "{} {:?} at {}",
        match n.mode {
            WifiMode::AccessPoint => "access point",
            WifiMode::Client => "network",
        },
        n.ssid,
        n.source
    )
}

/// IV-3: every Wi-Fi network WPA2-CCMP or WPA3; access points only where allowed.
pub fn wireless_encryption(facts: &NodeFacts, expect: &Expectations) -> Check {
    if let Some(u) = unreadable(
        facts,
        &[
            "/etc/wpa_supplicant",
            "/etc/hostapd",
            "/etc/NetworkManager",
            "/run/NetworkManager",
        ],
    ) {
        return u;
    }
    if facts.wifi.is_empty() {
        return Check::pass("no Wi-Fi network is configured");
    }
    let mut offences = Offences::default();
    let mut good = Vec::new();
    for n in &facts.wifi {
        match classify(n) {
            Err(why) => offences.add(format!("{} is {why}", describe(n))),
            Ok(what) => good.push(format!("{:?} {what}", n.ssid)),
        }
        if n.mode == WifiMode::AccessPoint && !expect.access_point {
            offences.add(format!(
                "{} is served by the node, and spec.edgeNodes.accessPoint is not set",
                describe(n)
            ));
        }
    }
    offences.verdict(format!(
        "every Wi-Fi network is WPA2-CCMP or WPA3: {}",
        good.join(", ")
    ))
}

/// IV-4: no access point offers WPS.
pub fn wps(facts: &NodeFacts) -> Check {
    if let Some(u) = unreadable(facts, &["/etc/hostapd"]) {
        return u;
    }
    let mut offences = Offences::default();
    let mut aps = 0;
    for n in facts
        .wifi
        .iter()
        .filter(|n| n.mode == WifiMode::AccessPoint)
    {
        aps += 1;
        match n.wps {
            Some(Wps::Unconfigured) => {
                offences.add(format!("{} offers WPS (unconfigured)", describe(n)))
            }
            Some(Wps::Configured) => offences.add(format!("{} offers WPS", describe(n))),
            _ => {}
        }
    }
    offences.verdict(if aps == 0 {
        "the node serves no access point, so none offers WPS".to_string()
    } else {
        format!("WPS is off on all {aps} access point(s)")
    })
}

/// VI-1, node side: every data mount on dm-crypt.
pub fn data_at_rest(facts: &NodeFacts) -> Check {
    if let Some(u) = unreadable(
        facts,
        &[
            "/proc/1/mounts",
            "/etc/fstab",
            "/etc/crypttab",
            "/sys/class/block",
        ],
    ) {
        return u;
    }
    if facts.mounts.is_empty() {
        return Check::unknown("no data mounts seen (no live mounts, no /etc/fstab)");
    }
    let mut offences = Offences::default();
    for m in facts.mounts.iter().filter(|m| !m.encrypted) {
        offences.add(format!(
            "{} on {} is not on dm-crypt",
            m.mount_point, m.device
        ));
    }
    offences.verdict(format!(
        "all {} data mounts are on dm-crypt ({})",
        facts.mounts.len(),
        facts
            .mounts
            .iter()
            .map(|m| m.mount_point.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        Verdict,
        nodeposture::{Console, DataMount, ListeningSocket, Pmf, UsbFacts},
    };

    fn net(key_mgmt: &[&str], proto: &[&str], pairwise: &[&str]) -> WifiNetwork {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        WifiNetwork {
            source: "test".into(),
            ssid: "plant".into(),
            mode: WifiMode::Client,
            key_mgmt: v(key_mgmt),
            protocols: v(proto),
            pairwise: v(pairwise),
            group: v(&["CCMP"]),
            wep: false,
            pmf: Pmf::Disabled,
            wps: None,
            disabled: false,
        }
    }

    #[test]
    fn only_wpa2_ccmp_and_wpa3_are_strong() {
        assert_eq!(
            classify(&net(&["WPA-PSK"], &["RSN"], &["CCMP"])),
            Ok("WPA2 (CCMP)")
        );
        assert_eq!(
            classify(&net(&["SAE"], &["RSN", "WPA"], &["CCMP", "TKIP"])),
            Ok("WPA3")
        );
        assert_eq!(
            classify(&net(&["SAE", "WPA-PSK"], &["RSN"], &["CCMP"])),
            Ok("WPA2/WPA3 transition (CCMP)")
        );
        assert!(
            classify(&net(&["WPA-PSK"], &["RSN", "WPA"], &["CCMP", "TKIP"]))
                .unwrap_err()
                .contains("WPA1")
        );
        assert!(
            classify(&net(&["WPA-PSK"], &["RSN"], &["CCMP", "TKIP"]))
                .unwrap_err()
                .contains("TKIP")
        );
        assert!(
            classify(&net(&["NONE"], &["RSN"], &["CCMP"]))
                .unwrap_err()
                .contains("open")
        );
        assert!(classify(&net(&["OWE"], &["RSN"], &["CCMP"])).is_err());
        assert!(classify(&net(&["SAE"], &["RSN"], &["TKIP"])).is_err());
        let mut wep = net(&["NONE"], &["RSN"], &["CCMP"]);
        wep.wep = true;
        assert_eq!(classify(&wep), Err("WEP".into()));
    }

    #[test]
    fn access_points_need_the_systems_leave_and_wps_off() {
        let mut ap = net(&["SAE"], &["RSN"], &["CCMP"]);
        ap.mode = WifiMode::AccessPoint;
        ap.wps = Some(Wps::Configured);
        let facts = NodeFacts {
            wifi: vec![ap],
            ..NodeFacts::default()
        };
        let refused = wireless_encryption(&facts, &Expectations::default());
        assert_eq!(refused.verdict, Verdict::Fail);
        assert!(
            refused.evidence.contains("accessPoint"),
            "{}",
            refused.evidence
        );
        let allowed = Expectations {
            access_point: true,
            ..Expectations::default()
        };
        assert_eq!(wireless_encryption(&facts, &allowed).verdict, Verdict::Pass);
        assert_eq!(wps(&facts).verdict, Verdict::Fail);
        assert_eq!(wps(&NodeFacts::default()).verdict, Verdict::Pass);
    }

    #[test]
    fn remote_access_ports_beyond_loopback_fail_unless_allowed() {
        let sock = |a: &str, p| ListeningSocket {
            address: a.into(),
            port: p,
        };
        let facts = NodeFacts {
            listening: Some(vec![
                sock("0.0.0.0", 22),
                sock("127.0.0.1", 5900),
                sock("::", 443),
            ]),
            ..NodeFacts::default()
        };
        let c = remote_access(&facts, &Expectations::default());
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(
            c.evidence.contains("0.0.0.0:22") && !c.evidence.contains("5900"),
            "{}",
            c.evidence
        );
        let bastion = Expectations {
            allowed_remote_access_ports: vec![22],
            ..Expectations::default()
        };
        assert_eq!(remote_access(&facts, &bastion).verdict, Verdict::Pass);
        let image = NodeFacts {
            sshd_ports: Some(vec![22]),
            ..NodeFacts::default()
        };
        assert_eq!(
            remote_access(&image, &Expectations::default()).verdict,
            Verdict::Fail
        );
        let moved = NodeFacts {
            sshd_ports: Some(vec![2222]),
            ..NodeFacts::default()
        };
        assert_eq!(
            remote_access(&moved, &Expectations::default()).verdict,
            Verdict::Unknown
        );
    }

    #[test]
    fn usb_storage_and_serial_logins() {
        let blocked = NodeFacts {
            usb: UsbFacts {
                bus: Some(true),
                driver_install_disabled: true,
                ..UsbFacts::default()
            },
            ..NodeFacts::default()
        };
        assert_eq!(physical_access(&blocked).verdict, Verdict::Pass);
        let open = NodeFacts {
            usb: UsbFacts {
                bus: Some(true),
                ..UsbFacts::default()
            },
            ..NodeFacts::default()
        };
        assert_eq!(physical_access(&open).verdict, Verdict::Fail);
        let no_bus = NodeFacts {
            usb: UsbFacts {
                bus: Some(false),
                ..UsbFacts::default()
            },
            consoles: vec![Console {
                device: "ttyS0".into(),
                login_by: "inittab entry T0".into(),
            }],
            ..NodeFacts::default()
        };
        let c = physical_access(&no_bus);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.evidence.contains("ttyS0"), "{}", c.evidence);
    }

    #[test]
    fn an_unreadable_source_leaves_only_the_items_it_decides_unknown() {
        use crate::api::nodeposture::Unreadable;
        let facts = NodeFacts {
            unreadable: vec![Unreadable {
                path: "/etc/hostapd/hostapd.conf".into(),
                error: "Is a directory".into(),
            }],
            usb: UsbFacts {
                bus: Some(false),
                ..UsbFacts::default()
            },
            ..NodeFacts::default()
        };
        let judged = judge(&facts, &Expectations::default());
        let verdict = |id: &str| judged.iter().find(|(i, _)| *i == id).unwrap().1.clone();
        for id in ["IV-3", "IV-4"] {
            assert_eq!(verdict(id).verdict, Verdict::Unknown, "{id}");
            assert!(
                verdict(id)
                    .evidence
                    .contains("/etc/hostapd/hostapd.conf: Is a directory")
            );
        }
        assert_eq!(verdict("IV-1").verdict, Verdict::Pass);
    }

    #[test]
    fn data_mounts_must_be_on_dm_crypt() {
        let m = |p: &str, e| DataMount {
            mount_point: p.into(),
            device: "/dev/x".into(),
            encrypted: e,
        };
        let all = NodeFacts {
            mounts: vec![m("/", true), m("/var", true)],
            ..NodeFacts::default()
        };
        assert_eq!(data_at_rest(&all).verdict, Verdict::Pass);
        let one = NodeFacts {
            mounts: vec![m("/", true), m("/data", false)],
            ..NodeFacts::default()
        };
        let c = data_at_rest(&one);
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.evidence.contains("/data"));
        assert_eq!(
            data_at_rest(&NodeFacts::default()).verdict,
            Verdict::Unknown
        );
    }
}
