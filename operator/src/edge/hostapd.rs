//! Access points in hostapd's configuration files, with hostapd's own
//! defaults and derivations: `wpa=2` without `rsn_pairwise` takes
//! `wpa_pairwise`, which defaults to TKIP; the group cipher is TKIP whenever
//! any enabled pairwise cipher is; WPS is forced off where hostapd forces it
//! off. Only a line's first `#` starts a comment: hostapd has no inline
//! comments, so `ssid=x # y` names the network `x # y`.

use super::host::Host;
use crate::api::nodeposture::{Pmf, WifiMode, WifiNetwork, Wps};

pub const DIR: &str = "/etc/hostapd";

pub fn read(host: &Host) -> Vec<WifiNetwork> {
    host.conf_files(DIR)
        .into_iter()
        .flat_map(|(path, text)| parse(&path, &text))
        .collect()
}

/// One BSS's settings as written, in order (the last assignment wins).
#[derive(Default)]
struct Bss {
    name: String,
    fields: Vec<(String, String)>,
}

impl Bss {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn number(&self, key: &str, default: i64) -> i64 {
        self.get(key).map_or(default, atoi)
    }
}

/// C's atoi: leading digits, 0 for none (hostapd reads numbers this way).
fn atoi(v: &str) -> i64 {
    let v = v.trim_start();
    let (sign, digits) = match v.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, v),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    sign * digits[..end].parse::<i64>().unwrap_or(0)
}

/// Every BSS of one file: the first, then one per `bss=` line.
pub fn parse(path: &str, text: &str) -> Vec<WifiNetwork> {
    let mut all = vec![Bss::default()];
    for raw in text.lines() {
        if raw.starts_with('#') {
            continue;
        }
        let Some((k, v)) = raw.split_once('=') else {
            continue;
        };
        if k == "bss" {
            all.push(Bss {
                name: v.to_string(),
                ..Bss::default()
            });
            continue;
        }
        if let Some(current) = all.last_mut() {
            current.fields.push((k.to_string(), v.to_string()));
        }
    }
    all.iter()
        .enumerate()
        .map(|(i, bss)| network(path, i, bss))
        .collect()
}

fn tokens(v: &str) -> Vec<String> {
    let mut t: Vec<String> = v.split_whitespace().map(str::to_string).collect();
    t.sort();
    t.dedup();
    t
}

const STRONG: [&str; 4] = ["CCMP", "GCMP", "CCMP-256", "GCMP-256"];

fn network(path: &str, index: usize, bss: &Bss) -> WifiNetwork {
    let wpa = bss.number("wpa", 0);
    let wep = (0..4).any(|i| bss.get(&format!("wep_key{i}")).is_some());
    let ieee8021x = bss.number("ieee8021x", 0) != 0;
    let wpa_pairwise = tokens(bss.get("wpa_pairwise").unwrap_or("TKIP"));
    let rsn_pairwise = bss
        .get("rsn_pairwise")
        .map(tokens)
        .unwrap_or_else(|| wpa_pairwise.clone());
    let mut protocols = Vec::new();
    let mut pairwise = Vec::new();
    if wpa & 1 != 0 {
        protocols.push("WPA".to_string());
        pairwise.extend(wpa_pairwise.iter().cloned());
    }
    if wpa & 2 != 0 {
        protocols.push("RSN".to_string());
        pairwise.extend(rsn_pairwise.iter().cloned());
    }
    pairwise.sort();
    pairwise.dedup();
    let key_mgmt = if wpa != 0 {
        tokens(bss.get("wpa_key_mgmt").unwrap_or("WPA-PSK"))
    } else if ieee8021x {
        vec!["IEEE8021X".to_string()]
    } else {
        vec!["NONE".to_string()]
    };
    let group = if wpa == 0 {
        Vec::new()
    } else {
        vec![group_cipher(&pairwise)]
    };
    let wps_configured = match bss.number("wps_state", 0) {
        1 => Wps::Unconfigured,
        2 => Wps::Configured,
        _ => Wps::Disabled,
    };
    // hostapd turns WPS off itself for these, and says so at start.
    let strong_rsn = wpa & 2 != 0 && rsn_pairwise.iter().any(|c| STRONG.contains(&c.as_str()));
    let wps = if bss.number("ignore_broadcast_ssid", 0) != 0
        || (wep && wpa == 0)
        || (wpa != 0 && !strong_rsn)
    {
        Wps::Disabled
    } else {
        wps_configured
    };
    WifiNetwork {
        source: if index == 0 {
            format!("hostapd:{path}")
        } else {
            format!("hostapd:{path}#bss={}", bss.name)
        },
        ssid: bss.get("ssid").unwrap_or_default().to_string(),
        mode: WifiMode::AccessPoint,
        key_mgmt,
        protocols,
        pairwise,
        group,
        wep: wep && wpa == 0,
        pmf: match bss.number("ieee80211w", 0) {
            1 => Pmf::Optional,
            2 => Pmf::Required,
            _ => Pmf::Disabled,
        },
        wps: Some(wps),
        disabled: false,
    }
}

/// hostapd's group cipher for the enabled pairwise ciphers.
fn group_cipher(pairwise: &[String]) -> String {
    let has = |c: &str| pairwise.iter().any(|p| p == c);
    if has("TKIP") {
        "TKIP"
    } else if has("GCMP") && !has("CCMP") {
        "GCMP"
    } else if has("GCMP-256") && !has("CCMP") && !has("GCMP") {
        "GCMP-256"
    } else if has("CCMP-256") && !has("CCMP") && !has("GCMP") {
        "CCMP-256"
    } else {
        "CCMP"
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wpa2_without_rsn_pairwise_means_tkip() {
        let n = parse(
            "f",
            "interface=wlan0\nssid=plant\nwpa=2\nwpa_passphrase=secret123\n",
        );
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].protocols, ["RSN"]);
        assert_eq!(n[0].pairwise, ["TKIP"]);
        assert_eq!(n[0].group, ["TKIP"]);
        assert_eq!(n[0].key_mgmt, ["WPA-PSK"]);
        assert!(!format!("{n:?}").contains("secret"));
    }

    #[test]
    fn wps_is_forced_off_without_wpa2_ccmp() {
        let tkip = parse("f", "ssid=a\nwpa=2\nwps_state=2\n");
        assert_eq!(tkip[0].wps, Some(Wps::Disabled));
        let ccmp = parse("f", "ssid=a\nwpa=2\nrsn_pairwise=CCMP\nwps_state=2\n");
        assert_eq!(ccmp[0].wps, Some(Wps::Configured));
        assert_eq!(ccmp[0].group, ["CCMP"]);
        let hidden = parse(
            "f",
            "ssid=a\nwpa=2\nrsn_pairwise=CCMP\nwps_state=1\nignore_broadcast_ssid=1\n",
        );
        assert_eq!(hidden[0].wps, Some(Wps::Disabled));
    }

    #[test]
    fn no_inline_comments_and_bss_sections_start_afresh() {
        let n = parse(
            "f",
            "ssid=plant # main\nwpa=2 # rsn\nrsn_pairwise=CCMP\n#wps_state=2\nbss=wlan0_1\nssid=guest\n",
        );
        assert_eq!(n[0].ssid, "plant # main");
        assert_eq!(n[0].protocols, ["RSN"], "atoi reads the leading 2");
        assert_eq!(n[0].wps, Some(Wps::Disabled));
        assert_eq!(n[1].source, "hostapd:f#bss=wlan0_1");
        assert_eq!(n[1].key_mgmt, ["NONE"], "a new BSS is open by default");
    }

    #[test]
    fn transition_mode_keeps_both_key_managements() {
        let n = parse(
            "f",
            "ssid=a\nwpa=2\nwpa_key_mgmt=WPA-PSK SAE\nrsn_pairwise=CCMP\nieee80211w=1\n",
        );
        assert_eq!(n[0].key_mgmt, ["SAE", "WPA-PSK"]);
        assert_eq!(n[0].pmf, Pmf::Optional);
    }
}
