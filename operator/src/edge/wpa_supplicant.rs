//! Networks in wpa_supplicant's configuration files, with the values
//! wpa_supplicant itself uses where a field is left out: a bare `psk=`
//! network takes `proto=WPA RSN` and `pairwise=CCMP TKIP`, so it still
//! accepts WPA1 and TKIP. `#` starts a comment anywhere outside double
//! quotes. Passphrases are skipped, never kept.

use super::host::Host;
use crate::api::nodeposture::{Pmf, WifiMode, WifiNetwork};

/// Where Debian's units read them: `wpa_supplicant.conf` and the
/// per-interface `wpa_supplicant-<iface>.conf`.
pub const DIR: &str = "/etc/wpa_supplicant";

pub const DEFAULT_KEY_MGMT: &str = "WPA-PSK WPA-EAP";
pub const DEFAULT_PROTO: &str = "WPA RSN";
pub const DEFAULT_PAIRWISE: &str = "CCMP TKIP";
pub const DEFAULT_GROUP: &str = "CCMP TKIP";

pub fn read(host: &Host) -> Vec<WifiNetwork> {
    let mut out = Vec::new();
    for (path, text) in host.conf_files(DIR) {
        match parse(&path, &text) {
            Ok(networks) => out.extend(networks),
            Err(e) => host.note(&path, e),
        }
    }
    out
}

/// One line without its comment and surrounding blanks, as wpa_supplicant
/// reads it.
fn strip(line: &str) -> &str {
    let mut quoted = false;
    let mut end = line.len();
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    line[..end].trim()
}

/// The networks of one file; an error names the line that wpa_supplicant
/// would refuse too (an unterminated block, a line without `=`).
pub fn parse(path: &str, text: &str) -> Result<Vec<WifiNetwork>, String> {
    let mut blocks: Vec<Vec<(String, String)>> = Vec::new();
    // The global pmf= may come after the blocks; it applies to all of them.
    let mut global_pmf = 0u8;
    let mut block: Option<Vec<(String, String)>> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = strip(raw);
        if line.is_empty() {
            continue;
        }
        match &mut block {
            None if line.replace(' ', "") == "network={" => block = Some(Vec::new()),
            None => {
                if let Some(v) = line.strip_prefix("pmf=") {
                    global_pmf = v.trim().parse().unwrap_or(0);
                }
            }
            Some(_) if line == "}" => blocks.extend(block.take()),
            Some(fields) => {
                let Some((k, v)) = line.split_once('=') else {
                    return Err(format!("line {}: expected name=value", n + 1));
                };
                fields.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    if block.is_some() {
        return Err("a network block is not closed with }".into());
    }
    Ok(blocks
        .iter()
        .enumerate()
        .map(|(i, fields)| network(path, i, fields, global_pmf))
        .collect())
}

fn network(path: &str, index: usize, fields: &[(String, String)], global_pmf: u8) -> WifiNetwork {
    // The last assignment of a field wins, as wpa_supplicant overwrites.
    let get = |key: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let words = |key: &str, default: &str| -> Vec<String> {
        let mut v: Vec<String> = get(key)
            .unwrap_or(default)
            .split_whitespace()
            .map(|w| match w.to_ascii_uppercase().as_str() {
                // wpa_supplicant's alias.
                "WPA2" => "RSN".to_string(),
                other => other.to_string(),
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let pmf_value = match get("ieee80211w").and_then(|v| v.parse::<u8>().ok()) {
        Some(v @ 0..=2) => pmf(v),
        // 3 or absent: the global pmf= decides.
        _ => pmf(global_pmf),
    };
    WifiNetwork {
        source: format!("wpa_supplicant:{path}#{index}"),
        ssid: ssid(get("ssid").unwrap_or_default()),
        mode: if get("mode") == Some("2") {
            WifiMode::AccessPoint
        } else {
            WifiMode::Client
        },
        key_mgmt: words("key_mgmt", DEFAULT_KEY_MGMT),
        protocols: words("proto", DEFAULT_PROTO),
        pairwise: words("pairwise", DEFAULT_PAIRWISE),
        group: words("group", DEFAULT_GROUP),
        wep: (0..4).any(|i| get(&format!("wep_key{i}")).is_some_and(|v| !v.is_empty())),
        pmf: pmf_value,
        wps: None,
        disabled: get("disabled") == Some("1"),
    }
}

fn pmf(v: u8) -> Pmf {
    match v {
        1 => Pmf::Optional,
        2 => Pmf::Required,
        _ => Pmf::Disabled,
    }
}

/// `"name"` → name; hex (`6e616d65`) → the bytes as text.
fn ssid(raw: &str) -> String {
    if let Some(q) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return q.to_string();
    }
    if let Some(p) = raw.strip_prefix("P\"").and_then(|r| r.strip_suffix('"')) {
        return p.to_string();
    }
    let bytes: Option<Vec<u8>> = (0..raw.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(raw.get(i..i + 2)?, 16).ok())
        .collect();
    match bytes {
        Some(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_psk_network_takes_the_daemons_defaults() {
        let n = parse("f", "network={\n ssid=\"plant\"\n psk=\"secret pass\"\n}\n").unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].key_mgmt, ["WPA-EAP", "WPA-PSK"]);
        assert_eq!(n[0].protocols, ["RSN", "WPA"]);
        assert_eq!(n[0].pairwise, ["CCMP", "TKIP"]);
        assert_eq!(n[0].pmf, Pmf::Disabled);
        assert_eq!(n[0].source, "wpa_supplicant:f#0");
        assert!(!format!("{n:?}").contains("secret"));
    }

    #[test]
    fn comments_end_lines_outside_quotes_only() {
        let text = "network={\n ssid=\"a#b\" # the plant\n key_mgmt=SAE # WPA3\n ieee80211w=2\n}\n";
        let n = parse("f", text).unwrap();
        assert_eq!(n[0].ssid, "a#b");
        assert_eq!(n[0].key_mgmt, ["SAE"]);
        assert_eq!(n[0].pmf, Pmf::Required);
    }

    #[test]
    fn global_pmf_applies_where_a_network_leaves_it_to_the_default() {
        let text = "network={\n ssid=\"a\"\n}\nnetwork={\n ssid=\"b\"\n ieee80211w=0\n}\npmf=2\n";
        let n = parse("f", text).unwrap();
        assert_eq!((n[0].pmf, n[1].pmf), (Pmf::Required, Pmf::Disabled));
        assert_eq!(n[0].source, "wpa_supplicant:f#0");
    }

    #[test]
    fn hex_ssids_wep_keys_and_aliases() {
        let text = "network={\nssid=706c616e74\nkey_mgmt=NONE\nwep_key0=\"abcde\"\nproto=WPA2\ndisabled=1\n}\n";
        let n = parse("f", text).unwrap();
        assert_eq!(n[0].ssid, "plant");
        assert!(n[0].wep && n[0].disabled);
        assert_eq!(n[0].protocols, ["RSN"]);
    }

    #[test]
    fn broken_files_are_refused() {
        assert!(parse("f", "network={\nssid=\"a\"\n").is_err());
        assert!(parse("f", "network={\nnonsense\n}\n").is_err());
    }
}
