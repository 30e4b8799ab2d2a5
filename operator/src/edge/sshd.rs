//! The ports sshd's configuration makes it listen on, as `sshd -T` reports
//! them: `Port` lines add up (22 when there are none), `ListenAddress host:port`
//! brings its own port, `Include` reads files (globs; relative to /etc/ssh)
//! in place, and a word starting with `#` ends the line.

use super::host::{Host, glob_last};

pub const CONFIG: &str = "/etc/ssh/sshd_config";

/// None where there is no sshd_config (no sshd installed).
pub fn read(host: &Host) -> Option<Vec<u16>> {
    let text = host.read(CONFIG)?;
    let mut settings = Settings::default();
    walk(host, CONFIG, &text, &mut settings, 0);
    Some(settings.ports())
}

#[derive(Default, Debug)]
struct Settings {
    ports: Vec<u16>,
    /// Ports given with ListenAddress; None for an address without a port.
    listen: Vec<Option<u16>>,
    in_match: bool,
}

impl Settings {
    fn ports(&self) -> Vec<u16> {
        let base = if self.ports.is_empty() {
            vec![22]
        } else {
            self.ports.clone()
        };
        let mut out: Vec<u16> = if self.listen.is_empty() {
            base
        } else {
            self.listen
                .iter()
                .flat_map(|l| match l {
                    Some(p) => vec![*p],
                    None => base.clone(),
                })
                .collect()
        };
        out.sort();
        out.dedup();
        out
    }
}

/// The words of a line, up to a word that starts with `#`; `key=value` too.
fn words(line: &str) -> Vec<&str> {
    let line = line.trim();
    let (first, rest) = match line.find([' ', '\t', '=']) {
        Some(i) => (
            &line[..i],
            line[i + 1..].trim_start_matches([' ', '\t', '=']),
        ),
        None => (line, ""),
    };
    std::iter::once(first)
        .chain(rest.split_whitespace())
        .take_while(|w| !w.starts_with('#'))
        .filter(|w| !w.is_empty())
        .collect()
}

fn walk(host: &Host, path: &str, text: &str, s: &mut Settings, depth: u8) {
    // sshd refuses deeper nesting; so do we.
    if depth > 16 {
        host.note(path, "Include nested too deep".into());
        return;
    }
    for line in text.lines() {
        let w = words(line);
        let Some(keyword) = w.first() else { continue };
        match keyword.to_ascii_lowercase().as_str() {
            "match" => s.in_match = true,
            "include" => {
                for pattern in &w[1..] {
                    let absolute = if pattern.starts_with('/') {
                        pattern.to_string()
                    } else {
                        format!("/etc/ssh/{pattern}")
                    };
                    for file in glob_last(host, &absolute) {
                        if let Some(t) = host.read(&file) {
                            walk(host, &file, &t, s, depth + 1);
                        }
                    }
                }
            }
            // Port and ListenAddress are not allowed inside Match.
            "port" if !s.in_match => match w.get(1).and_then(|p| p.parse::<u16>().ok()) {
                Some(p) => s.ports.push(p),
                None => host.note(path, format!("bad Port line: {}", line.trim())),
            },
            "listenaddress" if !s.in_match => {
                if let Some(addr) = w.get(1) {
                    s.listen.push(listen_port(addr));
                }
            }
            _ => {}
        }
    }
}

/// `host:port`, `[v6]:port` → the port; a bare address → None.
fn listen_port(addr: &str) -> Option<u16> {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once("]:").and_then(|(_, p)| p.parse().ok());
    }
    match addr.matches(':').count() {
        1 => addr.split_once(':').and_then(|(_, p)| p.parse().ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Vec<u16> {
        let host = Host::new("/nonexistent");
        let mut s = Settings::default();
        walk(&host, CONFIG, text, &mut s, 0);
        s.ports()
    }

    #[test]
    fn ports_add_up_and_default_to_22() {
        assert_eq!(settings("# nothing\n"), [22]);
        assert_eq!(settings("Port 2222\nport=8022 # alt\n"), [2222, 8022]);
        assert_eq!(
            settings("Port 2222\nListenAddress 10.0.0.1\nListenAddress [::1]:22\n"),
            [22, 2222]
        );
        assert_eq!(settings("Match User x\nPort 23\n"), [22]);
    }
}
