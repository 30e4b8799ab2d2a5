//! Entries (one JSON line per decision) and the [`Log`] that appends and
//! signs them.
//!
//! A line is the exact leaf data of the Merkle tree, so it is written once,
//! canonically (fixed field order, serde_json's escaping, no spaces, no
//! newline: the terminating `\n` of a shipped file is not part of it), and
//! never re-serialized: verification hashes the bytes as shipped.
//!
//! ```text
//! {"index":7,"time":"2025-01-02T03:04:05Z","system":"factory/line-1","kind":"Applied",
//!  "subject":"NetworkPolicy factory/sensor-default-deny","detail":"created",
//!  "prevRoot":"<base64 root of the tree over entries 0..7>"}
//! ```
//! (shown wrapped; a line is one line). `prevRoot` is what lets a verifier
//! name the altered entry rather than only the checkpoint that fails.

use serde::{Deserialize, Serialize};

use crate::record::checkpoint::Signer;
use crate::record::merkle::{Frontier, Hash, decode_hash, encode_hash};
use crate::record::{LogError, NoteError};

/// What kind of decision an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// An object was created or updated to enforce the checklist.
    Applied,
    /// An object the operator owned was deleted.
    Pruned,
    /// A checklist item's verdict changed.
    VerdictChanged,
    /// The validating webhook refused an object.
    AdmissionRefused,
    /// The validating webhook admitted an object with warnings (Audit mode).
    AdmissionWarned,
    /// The mutating webhook hardened a pod.
    PodHardened,
}

/// The fields of a decision, as the caller knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// RFC 3339 time, passed in so that this code reads no clock.
    pub time: String,
    /// The IoTSystem, `namespace/name`.
    pub system: String,
    pub kind: Kind,
    /// What the decision is about, e.g. the object or checklist item.
    pub subject: String,
    /// Free text: what changed and why.
    pub detail: String,
}

/// One entry of the record; serialized in this field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    /// Leaf index in the tree.
    pub index: u64,
    pub time: String,
    pub system: String,
    pub kind: Kind,
    pub subject: String,
    pub detail: String,
    /// The tree root over entries `0..index`, before this entry.
    #[serde(with = "base64_hash")]
    pub prev_root: Hash,
}

mod base64_hash {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use super::{Hash, decode_hash, encode_hash};

    pub fn serialize<S: Serializer>(hash: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode_hash(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(d)?;
        decode_hash(&text).ok_or_else(|| D::Error::custom("not a base64 SHA-256 hash"))
    }
}

impl Entry {
    pub fn new(index: u64, prev_root: Hash, decision: Decision) -> Self {
        let Decision {
            time,
            system,
            kind,
            subject,
            detail,
        } = decision;
        Entry {
            index,
            time,
            system,
            kind,
            subject,
            detail,
            prev_root,
        }
    }

    /// The canonical line: the leaf data.
    pub fn to_line(&self) -> Result<String, LogError> {
        serde_json::to_string(self).map_err(|source| LogError::Serialize {
            index: self.index,
            source,
        })
    }

    /// Parses a line written by [`Entry::to_line`] (strictly: no unknown
    /// fields), e.g. for display. Verification does not need it.
    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// The operator's side of the record: a frontier to append to and a key to
/// sign checkpoints with. Persist [`Log::frontier`] (and the lines) to resume.
#[derive(Debug)]
pub struct Log {
    origin: String,
    /// Shared: one operator key signs every system's log.
    signer: std::sync::Arc<Signer>,
    frontier: Frontier,
}

impl Log {
    /// An empty log. `origin` names the log in its checkpoints (C2SP
    /// suggests a schema-less URL, e.g. `iotposture.dev/<cluster>`).
    pub fn new(origin: &str, signer: impl Into<std::sync::Arc<Signer>>) -> Result<Self, LogError> {
        Self::resume(origin, signer, Frontier::new())
    }

    /// A log continuing from a persisted frontier.
    pub fn resume(
        origin: &str,
        signer: impl Into<std::sync::Arc<Signer>>,
        frontier: Frontier,
    ) -> Result<Self, LogError> {
        if origin.is_empty() || origin.chars().any(char::is_control) {
            return Err(NoteError::Origin(origin.to_string()).into());
        }
        Ok(Log {
            origin: origin.to_string(),
            signer: signer.into(),
            frontier,
        })
    }

    /// Appends a decision; returns its line (to ship, as is) and the new size.
    pub fn append(&mut self, decision: Decision) -> Result<(String, u64), LogError> {
        let entry = Entry::new(self.frontier.size(), self.frontier.root(), decision);
        let line = entry.to_line()?;
        let index = self.frontier.append(line.as_bytes())?;
        Ok((line, index + 1))
    }

    /// The signed checkpoint of the current tree.
    pub fn checkpoint(&self) -> Result<String, LogError> {
        let note = self
            .signer
            .sign(&self.origin, self.frontier.size(), &self.frontier.root())?;
        Ok(note)
    }

    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The verifier key to publish.
    pub fn vkey(&self) -> String {
        self.signer.vkey()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::checkpoint::open;
    use crate::record::merkle::{empty_root, leaf_hash, root};

    fn decision(i: u32) -> Decision {
        Decision {
            time: format!("2025-01-02T03:04:{:02}Z", i % 60),
            system: "factory/line-1".to_string(),
            kind: Kind::VerdictChanged,
            subject: format!("II-{i}"),
            detail: "Unknown -> Pass \"quoted\"\nnext line".to_string(),
        }
    }

    fn signer() -> Signer {
        Signer::from_pkcs8("iotposture.dev/test", &Signer::generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn line_format_is_canonical() {
        let e = Entry::new(3, [0; 32], decision(1));
        let line = e.to_line().unwrap();
        assert_eq!(
            line,
            "{\"index\":3,\"time\":\"2025-01-02T03:04:01Z\",\"system\":\"factory/line-1\",\
             \"kind\":\"VerdictChanged\",\"subject\":\"II-1\",\
             \"detail\":\"Unknown -> Pass \\\"quoted\\\"\\nnext line\",\
             \"prevRoot\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"}"
        );
        assert!(!line.contains('\n'));
        assert_eq!(Entry::parse(&line).unwrap(), e);
        assert_eq!(Entry::parse(&line).unwrap().to_line().unwrap(), line);
    }

    #[test]
    fn log_appends_chain_roots_and_resumes() {
        let mut log = Log::new("iotposture.dev/test", signer()).unwrap();
        let mut leaves = Vec::new();
        for i in 0..10 {
            let (line, size) = log.append(decision(i)).unwrap();
            let e = Entry::parse(&line).unwrap();
            assert_eq!(e.index, u64::from(i));
            assert_eq!(e.prev_root, root(&leaves));
            leaves.push(leaf_hash(line.as_bytes()));
            assert_eq!(size, u64::from(i) + 1);
        }
        assert_eq!(log.root(), root(&leaves));
        let note = log.checkpoint().unwrap();
        let cp = open(&note, &log.vkey()).unwrap();
        assert_eq!((cp.size, cp.root), (10, root(&leaves)));

        let saved = serde_json::to_string(log.frontier()).unwrap();
        let mut resumed = Log::resume(
            "iotposture.dev/test",
            signer(),
            serde_json::from_str(&saved).unwrap(),
        )
        .unwrap();
        let (line, size) = resumed.append(decision(10)).unwrap();
        leaves.push(leaf_hash(line.as_bytes()));
        assert_eq!((size, resumed.root()), (11, root(&leaves)));
    }

    #[test]
    fn empty_log_checkpoint() {
        let log = Log::new("o", signer()).unwrap();
        let cp = open(&log.checkpoint().unwrap(), &log.vkey()).unwrap();
        assert_eq!((cp.size, cp.root), (0, empty_root()));
        assert!(Log::new("a\nb", signer()).is_err());
    }
}
