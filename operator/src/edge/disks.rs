//! Which block-device mounts hold data, and whether dm-crypt sits below
//! them: the live mounts of PID 1 with sysfs' device-mapper tree (a LUKS or
//! plain dm-crypt target, directly or under LVM), or, for an image audited
//! offline, `/etc/fstab` against `/etc/crypttab`.

use std::collections::BTreeSet;

use super::host::Host;
use crate::api::nodeposture::DataMount;

pub fn read(host: &Host) -> Vec<DataMount> {
    match host.read("/proc/1/mounts") {
        Some(mounts) => live(host, &mounts),
        None => offline(host),
    }
}

/// A mount point that holds the system's data (not boot files).
fn holds_data(mount_point: &str) -> bool {
    !(mount_point == "/boot" || mount_point.starts_with("/boot/"))
}

fn data_device(device: &str) -> bool {
    device.starts_with("/dev/")
        && !device.starts_with("/dev/loop")
        && !device.starts_with("/dev/zram")
        && !device.starts_with("/dev/ram")
}

/// `\040` and friends, as /proc/mounts and fstab escape blanks.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let n = d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0'));
                out.push(n as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn live(host: &Host, mounts: &str) -> Vec<DataMount> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    // One entry per device, at its first (outermost) mount point: the
    // kubelet's bind mounts of the same disk say nothing new.
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let (device, mount_point) = (unescape(f[0]), unescape(f[1]));
        if !data_device(&device) || !holds_data(&mount_point) || !seen.insert(device.clone()) {
            continue;
        }
        out.push(DataMount {
            encrypted: dm_crypt_below(host, &device),
            mount_point,
            device,
        });
    }
    out
}

/// The sysfs block name of a device path: `/dev/mapper/x` → `dm-N`.
fn block_name(host: &Host, device: &str) -> Option<String> {
    if let Some(mapped) = device.strip_prefix("/dev/mapper/") {
        return host.list("/sys/class/block").into_iter().find(|b| {
            b.starts_with("dm-")
                && host
                    .read(&format!("/sys/class/block/{b}/dm/name"))
                    .is_some_and(|n| n.trim() == mapped)
        });
    }
    device.strip_prefix("/dev/").map(str::to_string)
}

fn dm_crypt_below(host: &Host, device: &str) -> bool {
    let Some(name) = block_name(host, device) else {
        return false;
    };
    let mut todo = vec![name];
    let mut seen = BTreeSet::new();
    while let Some(b) = todo.pop() {
        if !seen.insert(b.clone()) {
            continue;
        }
        // dm-crypt targets carry a uuid starting CRYPT- (CRYPT-LUKS2-…, CRYPT-PLAIN-…).
        if host
            .read(&format!("/sys/class/block/{b}/dm/uuid"))
            .is_some_and(|u| u.starts_with("CRYPT-"))
        {
            return true;
        }
        todo.extend(host.list(&format!("/sys/class/block/{b}/slaves")));
    }
    false
}

fn offline(host: &Host) -> Vec<DataMount> {
    let crypt: BTreeSet<String> = host
        .read("/etc/crypttab")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    let Some(fstab) = host.read("/etc/fstab") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in fstab.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3
            || matches!(
                f[2],
                "swap" | "tmpfs" | "proc" | "sysfs" | "devpts" | "none"
            )
        {
            continue;
        }
        let (device, mount_point) = (unescape(f[0]), unescape(f[1]));
        let block = device.starts_with("/dev/")
            || device.starts_with("UUID=")
            || device.starts_with("LABEL=")
            || device.starts_with("PARTUUID=");
        if !block || !holds_data(&mount_point) || device.starts_with("/dev/loop") {
            continue;
        }
        let encrypted = device
            .strip_prefix("/dev/mapper/")
            .is_some_and(|m| crypt.contains(m));
        out.push(DataMount {
            mount_point,
            device,
            encrypted,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_data_devices() {
        assert_eq!(unescape("/mnt/my\\040data"), "/mnt/my data");
        assert!(data_device("/dev/vda1") && !data_device("/dev/loop0") && !data_device("overlay"));
        assert!(!holds_data("/boot/efi") && holds_data("/"));
    }
}
