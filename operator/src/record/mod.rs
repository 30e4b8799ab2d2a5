//! A tamper-evident record of the operator's decisions.
//!
//! The operator's verdicts and the objects it applies or prunes are claims
//! about a cluster; an auditor should not have to trust the operator's own log
//! shipping to believe them afterwards. So every decision becomes one JSON line
//! in an append-only Merkle log (RFC 9162 hashing, the Certificate
//! Transparency v2 tree), and the log's head is periodically signed with
//! Ed25519 as a C2SP `tlog-checkpoint` in a C2SP signed note, the format Go's
//! `sumdb/note`, Sigsum and the transparency-dev tooling read. Anyone holding
//! the shipped lines, the checkpoints and the verifier key can then show that
//! no line was altered, removed or reordered ([`verify::verify`]).
//!
//! * [`merkle`]: RFC 9162 tree hashes, the compact [`Frontier`] (the operator
//!   persists only O(log n) hashes to keep appending after a restart), and
//!   consistency proofs.
//! * [`checkpoint`]: the checkpoint body, the signed note, the verifier key.
//! * [`log`]: the entry line format and the [`Log`] that appends and signs.
//! * [`mod@verify`]: what `iotposture verify` runs.
//!
//! Everything here is pure: no clock (times are passed in), no I/O, except
//! [`Signer::generate_pkcs8`], which needs the system's randomness.

pub mod checkpoint;
pub mod cli;
pub mod log;
pub mod merkle;
pub mod verify;

pub use checkpoint::{Checkpoint, Signer, Verifier, open};
pub use log::{Decision, Entry, Kind, Log};
pub use merkle::{Frontier, Hash, consistency_proof, verify_consistency};
pub use verify::{Report, verify, verify_extension};

use thiserror::Error;

/// Errors of the Merkle tree computations.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MerkleError {
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizeOrder { old: u64, new: u64 },
    #[error("tree size {size} needs more leaves than the {available} given")]
    TooFewLeaves { size: u64, available: u64 },
    #[error("consistency proof from size {old} to size {new} does not verify: {reason}")]
    Inconsistent {
        old: u64,
        new: u64,
        reason: &'static str,
    },
    #[error("frontier of size {size} must hold {expected} subtree hashes, it holds {found}")]
    FrontierShape {
        size: u64,
        expected: u32,
        found: usize,
    },
    #[error("frontier hash {position} is not a base64 SHA-256 hash")]
    FrontierHash { position: usize },
    #[error("the tree is full (2^64 - 1 leaves)")]
    Full,
}

/// Errors of signed notes, checkpoints and keys.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoteError {
    #[error("invalid key name {0:?}: it must be non-empty, without spaces or '+'")]
    KeyName(String),
    #[error("invalid verifier key: {0}")]
    VerifierKey(&'static str),
    #[error("invalid Ed25519 PKCS#8 private key: {0}")]
    PrivateKey(String),
    #[error("could not generate a key: the system's randomness failed")]
    Random,
    #[error("invalid checkpoint origin {0:?}: it must be one non-empty line")]
    Origin(String),
    #[error("malformed signed note: {0}")]
    Malformed(String),
    #[error("malformed checkpoint body: {0}")]
    Body(String),
    #[error("the note has no signature by key {name} ({id:08x})")]
    Unsigned { name: String, id: u32 },
    #[error("the signature by key {name} ({id:08x}) does not verify")]
    BadSignature { name: String, id: u32 },
}

/// Errors of building and appending entries.
#[derive(Debug, Error)]
pub enum LogError {
    #[error("cannot serialize entry {index}: {source}")]
    Serialize {
        index: u64,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// Why a record does not verify. Every problem with an entry names the entry
/// index where the record goes wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("verifier key: {0}")]
    Key(NoteError),
    #[error("checkpoint {position} (in the order given): {source}")]
    Checkpoint { position: usize, source: NoteError },
    #[error("no checkpoint given: nothing in the record is signed")]
    NoCheckpoint,
    #[error("checkpoint {position} is for log {found:?}, the others for {expected:?}")]
    OriginMismatch {
        position: usize,
        expected: String,
        found: String,
    },
    #[error("two checkpoints sign different roots for tree size {size}: the log forked")]
    Equivocation { size: u64 },
    #[error("checkpoint signs tree size 0 with a root other than the empty tree's")]
    EmptyRoot,
    #[error("entry {index}: not a valid entry line: {reason}")]
    Malformed { index: u64, reason: String },
    #[error(
        "entry {index} is missing, duplicated or out of order: line {index} holds entry {found}"
    )]
    Sequence { index: u64, found: u64 },
    #[error("entry {index} is missing: a checkpoint signs {size} entries, only {index} are here")]
    Truncated { index: u64, size: u64 },
    #[error("entry {index} was altered: {evidence}")]
    Altered { index: u64, evidence: String },
    #[error(
        "entry {index} or entry {previous} was altered: entry {index} records a tree root that \
         the entries before it do not produce, and no later entry or checkpoint tells which",
        previous = index.saturating_sub(1)
    )]
    Ambiguous { index: u64 },
    #[error("checkpoints are for different logs: {older:?} and {newer:?}")]
    Origins { older: String, newer: String },
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}
