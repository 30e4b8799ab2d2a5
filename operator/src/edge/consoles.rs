//! Serial consoles that offer a login: enabled `serial-getty@` units, getty
//! lines in `/etc/inittab`, and the kernel's `console=` on a serial device,
//! where systemd's getty generator starts a login by itself unless the
//! generator or the unit is masked (or `systemd.getty_auto=0`).

use super::host::Host;
use crate::api::nodeposture::Console;

const WANTS: [&str; 2] = [
    "/etc/systemd/system/getty.target.wants",
    "/etc/systemd/system/multi-user.target.wants",
];

pub fn read(host: &Host) -> Vec<Console> {
    let mut out = Vec::new();
    let masked = |unit: &str| {
        host.link_target(&format!("/etc/systemd/system/{unit}"))
            .is_some_and(|t| t == "/dev/null")
    };
    let template_masked = masked("serial-getty@.service");
    for dir in WANTS {
        for unit in host.list(dir) {
            if let Some(dev) = unit
                .strip_prefix("serial-getty@")
                .or_else(|| unit.strip_prefix("getty@"))
                .and_then(|u| u.strip_suffix(".service"))
                .filter(|d| is_serial(d))
                && !template_masked
                && !masked(&unit)
            {
                out.push(Console {
                    device: dev.to_string(),
                    login_by: format!("systemd unit {unit} (enabled in {dir})"),
                });
            }
        }
    }
    if let Some(inittab) = host.read("/etc/inittab") {
        for line in inittab.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.splitn(4, ':').collect();
            if fields.len() == 4
                && matches!(fields[2], "respawn" | "once")
                && fields[3].contains("getty")
                && let Some(dev) = fields[3].split_whitespace().find(|w| is_serial(w))
            {
                out.push(Console {
                    device: dev.to_string(),
                    login_by: format!("inittab entry {}", fields[0]),
                });
            }
        }
    }
    let systemd = host
        .read("/proc/1/comm")
        .map(|c| c.trim() == "systemd")
        .unwrap_or_else(|| {
            host.exists("/lib/systemd/systemd") || host.exists("/usr/lib/systemd/systemd")
        });
    let generator_masked = host
        .link_target("/etc/systemd/system-generators/systemd-getty-generator")
        .is_some_and(|t| t == "/dev/null");
    if let Some(cmdline) = host.read("/proc/cmdline")
        && systemd
        && !generator_masked
        && !template_masked
        && !cmdline
            .split_whitespace()
            .any(|w| w == "systemd.getty_auto=0")
    {
        for dev in kernel_consoles(&cmdline) {
            if is_serial(&dev) && !masked(&format!("serial-getty@{dev}.service")) {
                out.push(Console {
                    login_by: "kernel console= (systemd's getty generator starts a login there)"
                        .into(),
                    device: dev,
                });
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.device == b.device);
    out
}

/// The devices of `console=` arguments, without their options.
pub fn kernel_consoles(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("console="))
        .map(|c| c.split(',').next().unwrap_or_default().to_string())
        .filter(|d| !d.is_empty())
        .collect()
}

/// Serial lines (ttyS0, ttyAMA0, ttyUSB0, hvc0…), not virtual terminals (tty1).
fn is_serial(dev: &str) -> bool {
    let dev = dev.trim_start_matches("/dev/");
    dev.starts_with("tty") && !dev[3..].chars().all(|c| c.is_ascii_digit())
        || dev.starts_with("hvc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_devices_and_kernel_consoles() {
        assert!(
            is_serial("ttyS0")
                && is_serial("ttyAMA0")
                && is_serial("hvc0")
                && is_serial("/dev/ttyUSB1")
        );
        assert!(!is_serial("tty1") && !is_serial("tty") && !is_serial("console"));
        assert_eq!(
            kernel_consoles("ro console=tty0 console=ttyS0,115200n8 quiet"),
            ["tty0", "ttyS0"]
        );
    }
}
