//! A host's files seen through a root folder (`--host-root`): the node's own
//! `/` mounted read-only in the agent's pod, or an edge device image on disk.
//! A missing file is a fact ("not configured"); a file that exists but cannot
//! be read is recorded as unreadable, so what it would decide stays unknown.

use std::{
    cell::RefCell,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use crate::api::nodeposture::Unreadable;

pub struct Host {
    root: PathBuf,
    unreadable: RefCell<Vec<Unreadable>>,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Host {
            root: root.into(),
            unreadable: RefCell::new(Vec::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `host_path` (absolute, as the host sees it) under the root.
    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root.join(host_path.trim_start_matches('/'))
    }

    /// The file's text; None when it does not exist or cannot be read (the
    /// latter recorded).
    pub fn read(&self, host_path: &str) -> Option<String> {
        match std::fs::read(self.path(host_path)) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if is_absent(&e) => None,
            Err(e) => {
                self.note(host_path, e.to_string());
                None
            }
        }
    }

    pub fn exists(&self, host_path: &str) -> bool {
        // symlink_metadata: a dangling link (a masked unit) exists too.
        std::fs::symlink_metadata(self.path(host_path)).is_ok()
    }

    /// Where a symlink points, as written (e.g. `/dev/null` for a masked unit).
    pub fn link_target(&self, host_path: &str) -> Option<String> {
        std::fs::read_link(self.path(host_path))
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    }

    /// Entry names of a folder, sorted; empty when it does not exist.
    pub fn list(&self, host_dir: &str) -> Vec<String> {
        match std::fs::read_dir(self.path(host_dir)) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names
            }
            Err(e) if is_absent(&e) => Vec::new(),
            Err(e) => {
                self.note(host_dir, e.to_string());
                Vec::new()
            }
        }
    }

    /// The `*.conf` files of a folder with their text, sorted by name (how
    /// wpa_supplicant's and hostapd's per-interface units find them).
    pub fn conf_files(&self, host_dir: &str) -> Vec<(String, String)> {
        self.list(host_dir)
            .into_iter()
            .filter(|name| name.ends_with(".conf"))
            .filter_map(|name| {
                let path = format!("{}/{name}", host_dir.trim_end_matches('/'));
                self.read(&path).map(|text| (path, text))
            })
            .collect()
    }

    /// Records that a file exists but says nothing we can use.
    pub fn note(&self, host_path: &str, error: String) {
        self.unreadable.borrow_mut().push(Unreadable {
            path: host_path.to_string(),
            error,
        });
    }

    pub fn take_unreadable(&self) -> Vec<Unreadable> {
        let mut out = self.unreadable.take();
        out.sort();
        out.dedup();
        out
    }
}

fn is_absent(e: &std::io::Error) -> bool {
    // NotADirectory: a path through a file (an image without that folder).
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// Expands a glob of the last path component only (`/etc/ssh/sshd_config.d/*.conf`),
/// as sshd's Include does for the common case; sorted like glob(3).
pub fn glob_last(host: &Host, pattern: &str) -> Vec<String> {
    let (dir, name) = match pattern.rsplit_once('/') {
        Some((d, n)) => (if d.is_empty() { "/" } else { d }, n),
        None => return Vec::new(),
    };
    if !name.contains(['*', '?']) {
        return vec![pattern.to_string()];
    }
    host.list(dir)
        .into_iter()
        .filter(|entry| wildcard(name, entry))
        .map(|entry| format!("{}/{entry}", dir.trim_end_matches('/')))
        .collect()
}

/// `*` and `?` matching; a leading dot must be matched literally, as in glob(3).
fn wildcard(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_glob() {
        assert!(wildcard("*.conf", "a.conf"));
        assert!(!wildcard("*.conf", "a.conf.bak"));
        assert!(!wildcard("*.conf", ".hidden.conf"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "ac"));
    }

    #[test]
    fn a_missing_file_is_absent_and_an_unreadable_one_is_noted() {
        let dir = std::env::temp_dir().join(format!("iotposture-host-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc/x")).unwrap();
        let host = Host::new(&dir);
        assert_eq!(host.read("/etc/none"), None);
        // A folder read as a file cannot be read: noted, not absent.
        assert_eq!(host.read("/etc/x"), None);
        let noted = host.take_unreadable();
        assert_eq!(noted.len(), 1, "{noted:?}");
        assert_eq!(noted[0].path, "/etc/x");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
