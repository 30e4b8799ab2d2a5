//! The `NodePosture` custom resource: what the node agent read on one edge
//! node's host, facts only. One object per node, named after it, in the
//! agent's namespace. It holds no timestamps and no verdicts, so an unchanged
//! node writes nothing, and the operator judges the facts against each
//! system's own expectations (`spec.edgeNodes`).
//!
//! Secrets never appear here: Wi-Fi passphrases and PSKs are not read into
//! these types at all.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// Printer columns share a type, which clippy mistakes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "iotposture.dev",
    version = "v1alpha1",
    kind = "NodePosture",
    plural = "nodepostures",
    namespaced,
    shortname = "nodepos",
    category = "iotposture",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "Reporter", type_ = "string", json_path = ".spec.reporter.pod"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodePostureSpec {
    /// The node these facts are about (also the object's name).
    pub node: String,
    /// The agent pod that read them: the operator trusts the facts only
    /// while that pod runs, ready, on this node.
    #[serde(default)]
    pub reporter: Reporter,
    pub facts: NodeFacts,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reporter {
    pub pod: String,
    pub uid: String,
}

/// Bounds of the report's lists, so that one odd host cannot push its
/// object past what etcd stores; the agent truncates to them (`edge::bound`).
pub const MAX_WIFI: usize = 64;
pub const MAX_LISTENING: usize = 512;
pub const MAX_ITEMS: usize = 32;
pub const MAX_WORDS: usize = 16;

/// Everything read from one host root.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFacts {
    /// Wi-Fi networks the node joins or serves, with their effective
    /// security (defaults applied as each daemon applies them).
    #[schemars(length(max = MAX_WIFI))]
    #[serde(default)]
    pub wifi: Vec<WifiNetwork>,
    /// Listening TCP sockets of the host network namespace; None where no
    /// live /proc was readable (an image audited offline).
    #[schemars(length(max = MAX_LISTENING))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listening: Option<Vec<ListeningSocket>>,
    /// The ports sshd is configured to listen on; None without an sshd_config.
    #[schemars(length(max = MAX_WORDS))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sshd_ports: Option<Vec<u16>>,
    pub usb: UsbFacts,
    /// Consoles that offer a login.
    #[schemars(length(max = MAX_ITEMS))]
    #[serde(default)]
    pub consoles: Vec<Console>,
    /// Block-device mounts that hold data, and whether dm-crypt protects them.
    #[schemars(length(max = MAX_ITEMS))]
    #[serde(default)]
    pub mounts: Vec<DataMount>,
    /// Sources that exist but could not be read or parsed; a fact they
    /// would decide is then not known.
    #[schemars(length(max = MAX_ITEMS))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<Unreadable>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum WifiMode {
    /// The node joins the network.
    Client,
    /// The node serves it.
    AccessPoint,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum Pmf {
    Disabled,
    Optional,
    Required,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum Wps {
    Disabled,
    /// Enabled, not yet configured: hands out credentials at first push.
    Unconfigured,
    Configured,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WifiNetwork {
    /// Where it is configured: `hostapd:/etc/hostapd/hostapd.conf`,
    /// `wpa_supplicant:/etc/wpa_supplicant/wpa_supplicant.conf#1` (the n-th
    /// network block), `networkmanager:/etc/NetworkManager/system-connections/x.nmconnection`.
    pub source: String,
    pub ssid: String,
    pub mode: WifiMode,
    /// Effective key management, in the daemons' own names (WPA-PSK, SAE,
    /// WPA-EAP, NONE…).
    #[schemars(length(max = MAX_WORDS))]
    pub key_mgmt: Vec<String>,
    /// Effective protocols: WPA (WPA1), RSN (WPA2/WPA3).
    #[schemars(length(max = MAX_WORDS))]
    pub protocols: Vec<String>,
    /// Effective pairwise ciphers, per protocol where the daemon keeps them
    /// apart (hostapd): `CCMP`, `TKIP`…
    #[schemars(length(max = MAX_WORDS))]
    pub pairwise: Vec<String>,
    /// Effective group ciphers.
    #[schemars(length(max = MAX_WORDS))]
    pub group: Vec<String>,
    /// Static WEP keys are configured.
    #[serde(default)]
    pub wep: bool,
    pub pmf: Pmf,
    /// WPS; None where the daemon has no standing WPS state (a client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wps: Option<Wps>,
    /// Not started at boot (a disabled network or connection).
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListeningSocket {
    /// The local address, `0.0.0.0`, `::`, `127.0.0.1`…
    pub address: String,
    pub port: u16,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsbFacts {
    /// Whether the node has a USB bus at all; None where /sys was not readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<bool>,
    /// USB interfaces of the mass-storage class now attached (sysfs names).
    #[schemars(length(max = MAX_ITEMS))]
    #[serde(default)]
    pub mass_storage_interfaces: Vec<String>,
    /// The usb-storage driver is loaded (or built in).
    #[serde(default)]
    pub driver_loaded: bool,
    /// modprobe configuration: `blacklist usb_storage` (no autoload).
    #[serde(default)]
    pub driver_blacklisted: bool,
    /// modprobe configuration: `install usb_storage /bin/false` (or true):
    /// the driver cannot be loaded at all.
    #[serde(default)]
    pub driver_install_disabled: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Console {
    /// The device: `ttyS0`, `ttyAMA0`, `hvc0`…
    pub device: String,
    /// What gives it a login: `getty unit serial-getty@ttyS0.service`,
    /// `inittab`, `kernel console= (systemd starts a getty there)`.
    pub login_by: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataMount {
    pub mount_point: String,
    pub device: String,
    /// dm-crypt (LUKS or plain) somewhere below the device.
    pub encrypted: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Unreadable {
    /// The host path, as seen from the host (`/etc/hostapd/hostapd.conf`).
    pub path: String,
    pub error: String,
}
