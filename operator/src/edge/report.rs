//! `iotposture node-agent --once`: one host root's facts and node-side
//! verdicts, as a table for a person or JSON for a pipeline.

use serde::Serialize;

use super::judge::{Expectations, judge};
use crate::api::{Verdict, nodeposture::NodeFacts};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub host_root: String,
    pub facts: NodeFacts,
    pub items: Vec<ReportItem>,
}

#[derive(Serialize)]
pub struct ReportItem {
    pub id: &'static str,
    pub verdict: Verdict,
    pub evidence: String,
}

impl Report {
    pub fn new(host_root: &str, facts: NodeFacts, expect: &Expectations) -> Self {
        let items = judge(&facts, expect)
            .into_iter()
            .map(|(id, c)| ReportItem {
                id,
                verdict: c.verdict,
                evidence: c.evidence,
            })
            .collect();
        Report {
            host_root: host_root.to_string(),
            facts,
            items,
        }
    }

    /// 1 when an item fails, else 0 (2, unreadable input, is decided before).
    pub fn exit_code(&self) -> i32 {
        i32::from(self.items.iter().any(|i| i.verdict == Verdict::Fail))
    }

    pub fn table(&self) -> String {
        let mut out = format!("host root: {}\n", self.host_root);
        let f = &self.facts;
        for n in &f.wifi {
            out.push_str(&format!(
                "wifi      {:?} {:?} key_mgmt={} proto={} pairwise={} group={} pmf={:?}{}{} ({})\n",
                n.mode,
                n.ssid,
                n.key_mgmt.join(" "),
                n.protocols.join(" "),
                n.pairwise.join(" "),
                n.group.join(" "),
                n.pmf,
                n.wps.map(|w| format!(" wps={w:?}")).unwrap_or_default(),
                if n.disabled { " disabled" } else { "" },
                n.source
            ));
        }
        match &f.listening {
            Some(s) => out.push_str(&format!(
                "listening {}\n",
                s.iter()
                    .map(|s| format!("{}:{}", s.address, s.port))
                    .collect::<Vec<_>>()
                    .join(" ")
            )),
            None => out.push_str("listening (no live /proc under the host root)\n"),
        }
        if let Some(p) = &f.sshd_ports {
            out.push_str(&format!(
                "sshd      ports {}\n",
                p.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        out.push_str(&format!(
            "usb       bus={} mass-storage={} loaded={} blacklisted={} install-disabled={}\n",
            f.usb.bus.map_or("unknown".to_string(), |b| b.to_string()),
            f.usb.mass_storage_interfaces.len(),
            f.usb.driver_loaded,
            f.usb.driver_blacklisted,
            f.usb.driver_install_disabled
        ));
        for c in &f.consoles {
            out.push_str(&format!("console   {} ({})\n", c.device, c.login_by));
        }
        for m in &f.mounts {
            out.push_str(&format!(
                "mount     {} {} {}\n",
                m.mount_point,
                m.device,
                if m.encrypted { "dm-crypt" } else { "plaintext" }
            ));
        }
        for u in &f.unreadable {
            out.push_str(&format!("unreadable {}: {}\n", u.path, u.error));
        }
        out.push('\n');
        out.push_str(&format!("{:<6} {:<8} EVIDENCE\n", "ITEM", "VERDICT"));
        for i in &self.items {
            out.push_str(&format!(
                "{:<6} {:<8} {}\n",
                i.id,
                format!("{:?}", i.verdict),
                i.evidence
            ));
        }
        out
    }
}
