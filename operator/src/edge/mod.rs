//! Edge nodes: the node agent that reads a host's Wi-Fi, remote-access,
//! USB, console and disk-encryption facts (`scan`), judges them for IV-1…IV-4
//! and VI-1 (`judge`), prints them offline (`report`) and publishes them as
//! the node's `NodePosture` (`agent`).
//!
//! One module per source; each follows the daemon that reads that file, so
//! the facts say what the host will actually do, not what a file seems to say.

pub mod agent;
pub mod consoles;
pub mod disks;
pub mod host;
pub mod hostapd;
pub mod judge;
pub mod networkmanager;
pub mod report;
pub mod sockets;
pub mod sshd;
pub mod usb;
pub mod wpa_supplicant;

use crate::api::nodeposture::{MAX_ITEMS, MAX_LISTENING, MAX_WIFI, MAX_WORDS, NodeFacts};
pub use host::Host;

/// Everything the agent reports about one host root.
pub fn scan(host: &Host) -> NodeFacts {
    let mut wifi = wpa_supplicant::read(host);
    wifi.extend(networkmanager::read(host));
    wifi.extend(hostapd::read(host));
    wifi.sort();
    bound(NodeFacts {
        wifi,
        listening: sockets::read(host),
        sshd_ports: sshd::read(host),
        usb: usb::read(host),
        consoles: consoles::read(host),
        mounts: disks::read(host),
        unreadable: host.take_unreadable(),
    })
}

/// The report within the CRD's bounds. Remote-access ports are kept first,
/// so a cut never hides what IV-2 judges.
pub fn bound(mut facts: NodeFacts) -> NodeFacts {
    use crate::checklist::physical_access::REMOTE_ACCESS_PORTS;
    if let Some(sockets) = facts.listening.as_mut() {
        sockets.sort_by_key(|s| !REMOTE_ACCESS_PORTS.contains(&i32::from(s.port)));
        sockets.truncate(MAX_LISTENING);
        sockets.sort();
    }
    facts.wifi.truncate(MAX_WIFI);
    for n in &mut facts.wifi {
        for words in [
            &mut n.key_mgmt,
            &mut n.protocols,
            &mut n.pairwise,
            &mut n.group,
        ] {
            words.truncate(MAX_WORDS);
        }
    }
    if let Some(ports) = facts.sshd_ports.as_mut() {
        ports.truncate(MAX_WORDS);
    }
    facts.usb.mass_storage_interfaces.truncate(MAX_ITEMS);
    facts.consoles.truncate(MAX_ITEMS);
    facts.mounts.truncate(MAX_ITEMS);
    facts.unreadable.truncate(MAX_ITEMS);
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::nodeposture::ListeningSocket;

    #[test]
    fn a_cut_keeps_the_remote_access_ports() {
        let mut sockets: Vec<ListeningSocket> = (1000..2000)
            .map(|port| ListeningSocket {
                address: "0.0.0.0".into(),
                port,
            })
            .collect();
        sockets.push(ListeningSocket {
            address: "0.0.0.0".into(),
            port: 5900,
        });
        let facts = bound(NodeFacts {
            listening: Some(sockets),
            ..NodeFacts::default()
        });
        let kept = facts.listening.unwrap();
        assert_eq!(kept.len(), MAX_LISTENING);
        assert!(kept.iter().any(|s| s.port == 5900));
    }
}
