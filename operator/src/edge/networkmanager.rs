//! Wi-Fi connections in NetworkManager's keyfiles. NetworkManager hands
//! wpa_supplicant only the settings a connection sets, so an empty `proto`
//! or `pairwise` leaves wpa_supplicant's defaults (WPA1 and TKIP allowed).
//! Keyfiles are GLib key files: `#` comments whole lines only, lists end
//! with `;`, and groups have long aliases (`[802-11-wireless]` = `[wifi]`).

use std::collections::BTreeMap;

use super::{host::Host, wpa_supplicant};
use crate::api::nodeposture::{Pmf, WifiMode, WifiNetwork};

/// NetworkManager's keyfile folders: persistent, then runtime-only.
pub const DIRS: [&str; 2] = [
    "/etc/NetworkManager/system-connections",
    "/run/NetworkManager/system-connections",
];

pub fn read(host: &Host) -> Vec<WifiNetwork> {
    let mut out = Vec::new();
    for dir in DIRS {
        for name in host.list(dir) {
            // NetworkManager skips backups and editor files.
            if name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp") {
                continue;
            }
            let path = format!("{dir}/{name}");
            if let Some(text) = host.read(&path) {
                match parse(&path, &text) {
                    Ok(Some(n)) => out.push(n),
                    Ok(None) => {}
                    Err(e) => host.note(&path, e),
                }
            }
        }
    }
    out
}

type Groups = BTreeMap<String, BTreeMap<String, String>>;

/// GLib key file groups; group names by their short alias.
fn groups(text: &str) -> Result<Groups, String> {
    let mut out = Groups::new();
    let mut current: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.trim_end().strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: unterminated group name", n + 1))?;
            let short = match name {
                "802-11-wireless" => "wifi",
                "802-11-wireless-security" => "wifi-security",
                other => other,
            };
            out.entry(short.to_string()).or_default();
            current = Some(short.to_string());
            continue;
        }
        let (Some(group), Some((k, v))) = (&current, line.split_once('=')) else {
            return Err(format!("line {}: expected key=value in a group", n + 1));
        };
        out.entry(group.clone())
            .or_default()
            .insert(k.trim().to_string(), unescape(v.trim_start()));
    }
    Ok(out)
}

fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => out.push(' '),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

fn list(v: Option<&String>) -> Vec<String> {
    v.map(|s| {
        s.split(';')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_ascii_uppercase)
            .collect()
    })
    .unwrap_or_default()
}

/// The Wi-Fi network of one keyfile; None for other connection types.
pub fn parse(path: &str, text: &str) -> Result<Option<WifiNetwork>, String> {
    let groups = groups(text)?;
    let empty = BTreeMap::new();
    let connection = groups.get("connection").unwrap_or(&empty);
    let kind = connection.get("type").map(String::as_str);
    if !matches!(kind, Some("wifi" | "802-11-wireless")) {
        return Ok(None);
    }
    let wifi = groups.get("wifi").unwrap_or(&empty);
    let security = groups.get("wifi-security");
    let defaults = |v: Vec<String>, default: &str| -> Vec<String> {
        let mut v = if v.is_empty() {
            default.split_whitespace().map(str::to_string).collect()
        } else {
            v
        };
        v.sort();
        v.dedup();
        v
    };
    let (key_mgmt, wep, pmf) = match security {
        // No security group: an open network.
        None => (vec!["NONE".to_string()], false, Pmf::Disabled),
        Some(s) => {
            let km = s
                .get("key-mgmt")
                .map(|k| k.trim().to_ascii_lowercase())
                .unwrap_or_default();
            let names = match km.as_str() {
                "wpa-psk" => "WPA-PSK",
                "sae" => "SAE",
                "wpa-eap" => "WPA-EAP",
                "wpa-eap-suite-b-192" => "WPA-EAP-SUITE-B-192",
                "owe" => "OWE",
                "ieee8021x" => "IEEE8021X",
                "none" => "NONE",
                "" => return Err("wifi-security without key-mgmt".into()),
                other => return Err(format!("unknown key-mgmt {other}")),
            };
            let wep = km == "none" && (0..4).any(|i| s.contains_key(&format!("wep-key{i}")));
            // NetworkManager's default (0) is optional PMF.
            let pmf = match s.get("pmf").map(String::as_str) {
                Some("1") => Pmf::Disabled,
                Some("3") => Pmf::Required,
                _ => Pmf::Optional,
            };
            (vec![names.to_string()], wep, pmf)
        }
    };
    let get = |k: &str| security.and_then(|s| s.get(k));
    let ssid = wifi.get("ssid").cloned().unwrap_or_default();
    Ok(Some(WifiNetwork {
        source: format!("networkmanager:{path}"),
        ssid: ssid.trim_end_matches(';').to_string(),
        mode: match wifi.get("mode").map(String::as_str) {
            Some("ap") => WifiMode::AccessPoint,
            _ => WifiMode::Client,
        },
        key_mgmt,
        protocols: defaults(list(get("proto")), wpa_supplicant::DEFAULT_PROTO)
            .into_iter()
            .map(|p| if p == "WPA2" { "RSN".into() } else { p })
            .collect(),
        pairwise: defaults(list(get("pairwise")), wpa_supplicant::DEFAULT_PAIRWISE),
        group: defaults(list(get("group")), wpa_supplicant::DEFAULT_GROUP),
        wep,
        pmf,
        wps: None,
        disabled: connection.get("autoconnect").map(String::as_str) == Some("false"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_wpa_psk_connection_leaves_tkip_allowed() {
        let text = "[connection]\nid=plant\ntype=wifi\n\n[wifi]\nmode=infrastructure\nssid=plant\n\n[wifi-security]\nkey-mgmt=wpa-psk\npsk=secretpass\n";
        let n = parse("p", text).unwrap().unwrap();
        assert_eq!(n.key_mgmt, ["WPA-PSK"]);
        assert_eq!(n.protocols, ["RSN", "WPA"]);
        assert_eq!(n.pairwise, ["CCMP", "TKIP"]);
        assert_eq!(n.pmf, Pmf::Optional);
        assert!(!format!("{n:?}").contains("secretpass"));
    }

    #[test]
    fn long_group_names_lists_and_escapes() {
        let text = "[connection]\ntype=802-11-wireless\nautoconnect=false\n[802-11-wireless]\nssid=my\\splant\nmode=ap\n[802-11-wireless-security]\nkey-mgmt=sae\nproto=rsn;\npairwise=ccmp;\npmf=3\n";
        let n = parse("p", text).unwrap().unwrap();
        assert_eq!(n.ssid, "my plant");
        assert_eq!(n.mode, WifiMode::AccessPoint);
        assert_eq!(n.key_mgmt, ["SAE"]);
        assert_eq!(
            (n.protocols.clone(), n.pairwise.clone()),
            (vec!["RSN".to_string()], vec!["CCMP".to_string()])
        );
        assert_eq!(n.pmf, Pmf::Required);
        assert!(n.disabled);
    }

    #[test]
    fn open_wep_and_other_connection_types() {
        let open = parse("p", "[connection]\ntype=wifi\n[wifi]\nssid=cafe\n")
            .unwrap()
            .unwrap();
        assert_eq!(open.key_mgmt, ["NONE"]);
        let wep = parse("p", "[connection]\ntype=wifi\n[wifi]\nssid=old\n[wifi-security]\nkey-mgmt=none\nwep-key0=abcde\n").unwrap().unwrap();
        assert!(wep.wep);
        assert_eq!(parse("p", "[connection]\ntype=ethernet\n").unwrap(), None);
        assert!(
            parse(
                "p",
                "[connection]\ntype=wifi\n[wifi-security]\nkey-mgmt=bogus\n"
            )
            .is_err()
        );
    }
}
