//! Listening TCP sockets of the host's network namespace, from
//! `/proc/1/net/tcp` and `tcp6`: PID 1's view is the host's network even
//! from a pod without hostNetwork, as long as the host's /proc is mounted.

use super::host::Host;
use crate::api::nodeposture::ListeningSocket;

/// TCP_LISTEN in the kernel's state numbering.
const LISTEN: &str = "0A";

/// None where there is no live /proc (an image audited offline).
pub fn read(host: &Host) -> Option<Vec<ListeningSocket>> {
    let v4 = host.read("/proc/1/net/tcp");
    let v6 = host.read("/proc/1/net/tcp6");
    if v4.is_none() && v6.is_none() {
        return None;
    }
    let mut out = Vec::new();
    for (text, path) in [(v4, "/proc/1/net/tcp"), (v6, "/proc/1/net/tcp6")] {
        if let Some(text) = text {
            match parse(&text) {
                Ok(s) => out.extend(s),
                Err(e) => host.note(path, e),
            }
        }
    }
    out.sort();
    out.dedup();
    Some(out)
}

/// The LISTEN rows of one `/proc/net/tcp{,6}` table.
pub fn parse(text: &str) -> Result<Vec<ListeningSocket>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 {
            continue;
        }
        if fields[3] != LISTEN {
            continue;
        }
        let (addr, port) = fields[1]
            .split_once(':')
            .ok_or_else(|| format!("line {}: no port in {}", n + 1, fields[1]))?;
        let port = u16::from_str_radix(port, 16)
            .map_err(|_| format!("line {}: bad port {port}", n + 1))?;
        out.push(ListeningSocket {
            address: address(addr).ok_or_else(|| format!("line {}: bad address {addr}", n + 1))?,
            port,
        });
    }
    Ok(out)
}

/// The kernel prints each 32-bit word of the address in host (little-endian) order.
fn address(hex: &str) -> Option<String> {
    let words: Option<Vec<[u8; 4]>> = (0..hex.len() / 8)
        .map(|i| {
            let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
            Some(w.to_le_bytes())
        })
        .collect();
    let bytes: Vec<u8> = words?.concat();
    match bytes.len() {
        4 => Some(std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()),
        16 => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(b).to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_rows_with_their_addresses() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n   2: 0100007F:0017 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";
        let s = parse(v4).unwrap();
        assert_eq!(
            s,
            [
                ListeningSocket {
                    address: "0.0.0.0".into(),
                    port: 22
                },
                ListeningSocket {
                    address: "127.0.0.1".into(),
                    port: 23
                },
            ]
        );
        let v6 = "  sl  local_address                         remote_address                        st\n   0: 00000000000000000000000000000000:170C 00000000000000000000000000000000:0000 0A\n   1: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A\n";
        let s = parse(v6).unwrap();
        assert_eq!(
            s[0],
            ListeningSocket {
                address: "::".into(),
                port: 5900
            }
        );
        assert_eq!(
            s[1],
            ListeningSocket {
                address: "::1".into(),
                port: 22
            }
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("header\n 0: zz:0016 0:0 0A\n").is_err());
    }
}
