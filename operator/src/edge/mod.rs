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

use crate::api::nodeposture::NodeFacts;
pub use host::Host;

/// Everything the agent reports about one host root.
pub fn scan(host: &Host) -> NodeFacts {
    let mut wifi = wpa_supplicant::read(host);
    wifi.extend(networkmanager::read(host));
    wifi.extend(hostapd::read(host));
    wifi.sort();
    NodeFacts {
        wifi,
        listening: sockets::read(host),
        sshd_ports: sshd::read(host),
        usb: usb::read(host),
        consoles: consoles::read(host),
        mounts: disks::read(host),
        unreadable: host.take_unreadable(),
    }
}
