//! Verification of a shipped record: what `iotposture verify` runs.
//!
//! Input: the entry lines in log order, exactly as shipped (without their
//! terminating newline), the signed checkpoints in any order, and the
//! verifier key. Every entry line is a leaf; each entry carries its `index`
//! and its `prevRoot`, the root of the tree over the entries before it.
//!
//! 1. Every checkpoint must carry a valid signature by the key, all must be
//!    for one origin, and two checkpoints of one size must sign one root.
//! 2. Entry lines must parse, and line i must hold entry i: a removed,
//!    duplicated or reordered entry is named by the first line where the
//!    sequence breaks. A checkpoint larger than the entries names the first
//!    missing entry.
//! 3. The tree is rebuilt leaf by leaf. At every size k, the rebuilt root
//!    must equal the root signed by any checkpoint of size k, and the
//!    `prevRoot` of entry k. Since every checkpoint is no larger than the
//!    entries, matching them all against one rebuilt tree also proves each
//!    older checkpoint's tree a prefix of each newer one (consistency).
//!
//! Naming the altered entry: the first size k where a root disagrees means
//! entries 0..k-1 produce the recorded roots up to k-1. If the disagreeing
//! root is a checkpoint's, entry k-1 changed. If it is entry k's `prevRoot`,
//! either entry k-1 changed or entry k's own `prevRoot` did; to tell, entry
//! k's line is rebuilt with the recomputed root in place of its `prevRoot`
//! and checked against the next recorded root (checkpoint of size k+1, else
//! entry k+1's `prevRoot`): if it matches, only entry k's `prevRoot` had
//! changed. The running roots themselves are not signed: a forger who
//! rewrites all of them still fails at the next checkpoint, which then names
//! the entry before it; the change lies after the last checkpoint that held.
//! Entries after the last checkpoint are not covered by any signature and are
//! reported as [`Report::unverified`].

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::record::VerifyError;
use crate::record::checkpoint::{Checkpoint, Verifier};
use crate::record::merkle::{
    Frontier, Hash, decode_hash, empty_root, encode_hash, verify_consistency,
};

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Number of entry lines given.
    pub entries: u64,
    /// Distinct checkpoints (by tree size) verified.
    pub checkpoints: usize,
    /// The largest checkpoint, which covers entries `0..latest.size`.
    pub latest: Checkpoint,
    /// Entries after the latest checkpoint: consistent, but not yet signed.
    pub unverified: u64,
}

/// The fields verification needs; other fields are only hashed.
#[derive(Deserialize)]
struct Head {
    index: u64,
    #[serde(rename = "prevRoot")]
    prev_root: String,
}

struct Parsed {
    prev_root: Hash,
    prev_root_text: String,
}

/// Verifies a shipped record; see the module documentation.
pub fn verify(
    entries: &[String],
    checkpoints: &[String],
    vkey: &str,
) -> Result<Report, VerifyError> {
    let verifier = Verifier::parse(vkey).map_err(VerifyError::Key)?;
    let mut signed = open_checkpoints(&verifier, checkpoints)?;
    let heads = parse_entries(entries)?;
    let n = entries.len() as u64;

    let Some((&largest, _)) = signed.last_key_value() else {
        return Err(VerifyError::NoCheckpoint);
    };
    if largest > n {
        return Err(VerifyError::Truncated {
            index: n,
            size: largest,
        });
    }
    if signed.get(&0).is_some_and(|cp| cp.root != empty_root()) {
        return Err(VerifyError::EmptyRoot);
    }

    let mut frontier = Frontier::new();
    let mut covered = 0u64;
    for ((k, line), head) in (0u64..).zip(entries).zip(&heads) {
        let computed = frontier.root();
        let checkpoint = signed.get(&k);
        if let Some(cp) = checkpoint {
            check_checkpoint(cp, &computed, covered)?;
            covered = k;
        }
        if head.prev_root != computed {
            // At 0 nothing precedes; with a matching checkpoint at k the
            // entries before are vouched for: either way entry k's root is wrong.
            if k == 0 || checkpoint.is_some() {
                return Err(VerifyError::Altered {
                    index: k,
                    evidence: if k == 0 {
                        "its prevRoot is not the empty tree's root".to_string()
                    } else {
                        "its prevRoot is not the root of the signed entries before it".to_string()
                    },
                });
            }
            return Err(locate(k, line, head, &frontier, &signed, &heads));
        }
        frontier.append(line.as_bytes())?;
    }
    if let Some(cp) = signed.get(&n) {
        check_checkpoint(cp, &frontier.root(), covered)?;
    }

    let Some((_, latest)) = signed.pop_last() else {
        return Err(VerifyError::NoCheckpoint);
    };
    Ok(Report {
        entries: n,
        checkpoints: signed.len() + 1,
        unverified: n - latest.size,
        latest,
    })
}

/// Opens every note; keeps one checkpoint per size.
fn open_checkpoints(
    verifier: &Verifier,
    notes: &[String],
) -> Result<BTreeMap<u64, Checkpoint>, VerifyError> {
    let mut signed: BTreeMap<u64, Checkpoint> = BTreeMap::new();
    let mut origin: Option<String> = None;
    for (position, note) in notes.iter().enumerate() {
        let cp = verifier
            .open(note)
            .map_err(|source| VerifyError::Checkpoint { position, source })?;
        match &origin {
            None => origin = Some(cp.origin.clone()),
            Some(expected) if *expected != cp.origin => {
                return Err(VerifyError::OriginMismatch {
                    position,
                    expected: expected.clone(),
                    found: cp.origin,
                });
            }
            Some(_) => {}
        }
        if let Some(seen) = signed.get(&cp.size) {
            if seen.root != cp.root {
                return Err(VerifyError::Equivocation { size: cp.size });
            }
            continue;
        }
        signed.insert(cp.size, cp);
    }
    Ok(signed)
}

/// Parses every line and checks that line i holds entry i.
fn parse_entries(entries: &[String]) -> Result<Vec<Parsed>, VerifyError> {
    let mut heads = Vec::with_capacity(entries.len());
    for (index, line) in (0u64..).zip(entries.iter()) {
        let head: Head = serde_json::from_str(line).map_err(|e| VerifyError::Malformed {
            index,
            reason: e.to_string(),
        })?;
        let Some(prev_root) = decode_hash(&head.prev_root) else {
            return Err(VerifyError::Malformed {
                index,
                reason: "prevRoot is not a base64 SHA-256 hash".to_string(),
            });
        };
        if head.index != index {
            return Err(VerifyError::Sequence {
                index,
                found: head.index,
            });
        }
        heads.push(Parsed {
            prev_root,
            prev_root_text: head.prev_root,
        });
    }
    Ok(heads)
}

/// A checkpoint of size k against the root rebuilt from entries 0..k.
fn check_checkpoint(cp: &Checkpoint, computed: &Hash, covered: u64) -> Result<(), VerifyError> {
    if cp.root == *computed {
        return Ok(());
    }
    let last = cp.size.saturating_sub(1);
    Err(VerifyError::Altered {
        index: last,
        evidence: format!(
            "the root signed for size {} is not the root of entries 0..={last}, while the \
             running roots they record agree up to here (were those rewritten too, the change \
             still lies in entries {covered}..={last}, after the last checkpoint that holds)",
            cp.size
        ),
    })
}

/// Entry k's `prevRoot` disagrees with the tree over entries 0..k, and no
/// checkpoint of size k tells which side is wrong; see the module docs.
fn locate(
    k: u64,
    line: &str,
    head: &Parsed,
    before: &Frontier,
    signed: &BTreeMap<u64, Checkpoint>,
    heads: &[Parsed],
) -> VerifyError {
    let computed = before.root();
    let next = signed.get(&(k + 1)).map(|cp| cp.root).or_else(|| {
        usize::try_from(k + 1)
            .ok()
            .and_then(|i| heads.get(i))
            .map(|h| h.prev_root)
    });
    let Some(next) = next else {
        return VerifyError::Ambiguous { index: k };
    };
    let needle = format!("\"prevRoot\":\"{}\"", head.prev_root_text);
    let repaired_matches = line.matches(&needle).count() == 1 && {
        let original = format!("\"prevRoot\":\"{}\"", encode_hash(&computed));
        let repaired = line.replacen(&needle, &original, 1);
        let mut tree = before.clone();
        tree.append(repaired.as_bytes()).is_ok() && tree.root() == next
    };
    if repaired_matches {
        VerifyError::Altered {
            index: k,
            evidence: "its prevRoot was changed: with the root of the entries before it in \
                       its place, the record verifies on"
                .to_string(),
        }
    } else {
        VerifyError::Altered {
            index: k.saturating_sub(1),
            evidence: format!(
                "the entries up to it do not produce the tree root that entry {k} records, \
                 the roots recorded before agree with them"
            ),
        }
    }
}

/// Checks, from a consistency proof, that two opened checkpoints are of one
/// log and that the older one's tree is a prefix of the newer one's; for
/// auditors who hold checkpoints but not the entries between them.
pub fn verify_extension(
    older: &Checkpoint,
    newer: &Checkpoint,
    proof: &[Hash],
) -> Result<(), VerifyError> {
    if older.origin != newer.origin {
        return Err(VerifyError::Origins {
            older: older.origin.clone(),
            newer: newer.origin.clone(),
        });
    }
    verify_consistency(older.size, newer.size, &older.root, &newer.root, proof)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::checkpoint::Signer;
    use crate::record::log::{Decision, Entry, Kind, Log};
    use crate::record::merkle::{consistency_proof, leaf_hash};
    use proptest::prelude::*;

    const ORIGIN: &str = "iotposture.dev/test";
    const N: usize = 30;
    // Checkpoints at several sizes, the last covering every entry.
    const SIZES: [usize; 5] = [0, 1, 8, 17, N];

    struct Record {
        lines: Vec<String>,
        notes: Vec<String>,
        vkey: String,
    }

    fn signer() -> Signer {
        Signer::from_pkcs8("iotposture.dev/key", &Signer::generate_pkcs8().unwrap()).unwrap()
    }

    fn decision(i: usize) -> Decision {
        let kinds = [
            Kind::Applied,
            Kind::Pruned,
            Kind::VerdictChanged,
            Kind::AdmissionRefused,
            Kind::AdmissionWarned,
            Kind::PodHardened,
        ];
        Decision {
            time: format!("2025-06-01T12:{:02}:{:02}Z", i / 60, i % 60),
            system: "factory/line-1".to_string(),
            kind: kinds[i % kinds.len()],
            subject: format!("NetworkPolicy factory/component-{i}"),
            detail: format!("decision number {i}: \"ok\""),
        }
    }

    fn record(n: usize, sizes: &[usize]) -> Record {
        let mut log = Log::new(ORIGIN, signer()).unwrap();
        let mut lines = Vec::new();
        let mut notes = Vec::new();
        for i in 0..=n {
            if sizes.contains(&i) {
                notes.push(log.checkpoint().unwrap());
            }
            if i < n {
                lines.push(log.append(decision(i)).unwrap().0);
            }
        }
        // Any order will do.
        notes.reverse();
        Record {
            lines,
            notes,
            vkey: log.vkey(),
        }
    }

    fn run(r: &Record) -> Result<Report, VerifyError> {
        verify(&r.lines, &r.notes, &r.vkey)
    }

    fn named(e: &VerifyError) -> Option<u64> {
        match e {
            VerifyError::Malformed { index, .. }
            | VerifyError::Sequence { index, .. }
            | VerifyError::Truncated { index, .. }
            | VerifyError::Altered { index, .. } => Some(*index),
            _ => None,
        }
    }

    fn shared() -> &'static Record {
        static RECORD: std::sync::OnceLock<Record> = std::sync::OnceLock::new();
        RECORD.get_or_init(|| record(N, &SIZES))
    }

    #[test]
    fn intact_record_verifies() {
        let r = shared();
        let report = run(r).unwrap();
        assert_eq!(report.entries, N as u64);
        assert_eq!(report.checkpoints, SIZES.len());
        assert_eq!(report.latest.size, N as u64);
        assert_eq!(report.unverified, 0);
        let leaves: Vec<Hash> = r.lines.iter().map(|l| leaf_hash(l.as_bytes())).collect();
        assert_eq!(report.latest.root, crate::record::merkle::root(&leaves));
        assert_eq!(report.latest.origin, ORIGIN);
    }

    #[test]
    fn tail_after_last_checkpoint_is_unverified() {
        let r = record(12, &[5]);
        let report = run(&r).unwrap();
        assert_eq!(
            (report.entries, report.latest.size, report.unverified),
            (12, 5, 7)
        );
        // Duplicate notes are one checkpoint.
        let mut twice = record(4, &[4]);
        twice.notes.push(twice.notes[0].clone());
        assert_eq!(run(&twice).unwrap().checkpoints, 1);
    }

    #[test]
    fn tail_changes_cannot_be_placed() {
        // Entries 5..12 are signed by no checkpoint.
        let r = record(12, &[5]);
        let alter = |i: usize, from: &str, to: &str| {
            let mut lines = r.lines.clone();
            lines[i] = lines[i].replacen(from, to, 1);
            assert_ne!(lines[i], r.lines[i]);
            verify(&lines, &r.notes, &r.vkey)
        };
        // Entry 10 changed, or entry 11's prevRoot: nothing later tells which.
        assert_eq!(
            alter(10, "decision", "Decision"),
            Err(VerifyError::Ambiguous { index: 11 })
        );
        let root = Entry::parse(&r.lines[11]).unwrap().prev_root;
        let other = encode_hash(&[0; 32]);
        assert_eq!(
            alter(11, &encode_hash(&root), &other),
            Err(VerifyError::Ambiguous { index: 11 })
        );
        // With entry 12 present, the same changes are placed.
        let longer = record(13, &[5]);
        let mut lines = longer.lines.clone();
        lines[10] = lines[10].replacen("decision", "Decision", 1);
        let err = verify(&lines, &longer.notes, &longer.vkey).unwrap_err();
        assert_eq!(named(&err), Some(10), "{err}");
        // The last entry of an unsigned tail can change unseen: not covered.
        assert_eq!(alter(11, "decision", "Decision").unwrap().unverified, 7);
    }

    #[test]
    fn checkpoint_problems() {
        let r = shared();
        assert_eq!(
            verify(&r.lines, &[], &r.vkey),
            Err(VerifyError::NoCheckpoint)
        );
        let other = signer();
        assert!(matches!(
            verify(&r.lines, &r.notes, &other.vkey()),
            Err(VerifyError::Checkpoint { position: 0, .. })
        ));
        assert!(matches!(
            verify(&r.lines, &r.notes, "junk"),
            Err(VerifyError::Key(_))
        ));

        // The same key signing two trees of one size, or another origin.
        let s = signer();
        let good = s.sign(ORIGIN, 2, &[1; 32]).unwrap();
        let fork = s.sign(ORIGIN, 2, &[2; 32]).unwrap();
        let elsewhere = s.sign("elsewhere", 3, &[1; 32]).unwrap();
        let lines = r.lines[..3].to_vec();
        assert_eq!(
            verify(&lines, &[good.clone(), fork], &s.vkey()),
            Err(VerifyError::Equivocation { size: 2 })
        );
        assert!(matches!(
            verify(&lines, &[good, elsewhere], &s.vkey()),
            Err(VerifyError::OriginMismatch { position: 1, .. })
        ));
        let bad_empty = s.sign(ORIGIN, 0, &[1; 32]).unwrap();
        assert_eq!(
            verify(&lines, &[bad_empty], &s.vkey()),
            Err(VerifyError::EmptyRoot)
        );
    }

    #[test]
    fn rewritten_running_roots_fail_at_the_checkpoint() {
        // A forger changes entry 3 and recomputes every later prevRoot: the
        // entries are self-consistent, the signed checkpoint of size 8 is not.
        let r = shared();
        let mut forged: Vec<String> = Vec::new();
        let mut tree = Frontier::new();
        for (i, line) in r.lines.iter().enumerate() {
            let mut e = Entry::parse(line).unwrap();
            if i == 3 {
                e.detail.push_str(" (forged)");
            }
            e.prev_root = tree.root();
            let line = e.to_line().unwrap();
            tree.append(line.as_bytes()).unwrap();
            forged.push(line);
        }
        let err = verify(&forged, &r.notes, &r.vkey).unwrap_err();
        assert_eq!(named(&err), Some(7), "{err}");
        assert!(err.to_string().contains("entries 1..=7"), "{err}");
    }

    #[test]
    fn extension_proofs() {
        let r = shared();
        let leaves: Vec<Hash> = r.lines.iter().map(|l| leaf_hash(l.as_bytes())).collect();
        let v = Verifier::parse(&r.vkey).unwrap();
        let mut cps: Vec<Checkpoint> = r.notes.iter().map(|n| v.open(n).unwrap()).collect();
        cps.sort_by_key(|c| c.size);
        for pair in cps.windows(2) {
            let proof = consistency_proof(&leaves, pair[0].size, pair[1].size).unwrap();
            verify_extension(&pair[0], &pair[1], &proof).unwrap();
            // The empty tree is a prefix of any tree, whatever its root.
            if pair[0].size > 0 {
                let mut other = pair[1].clone();
                other.root[5] ^= 1;
                assert!(verify_extension(&pair[0], &other, &proof).is_err());
            }
            let mut older = pair[0].clone();
            older.root[5] ^= 1;
            assert!(verify_extension(&older, &pair[1], &proof).is_err());
            let mut other = pair[1].clone();
            other.origin = "elsewhere".to_string();
            assert!(matches!(
                verify_extension(&pair[0], &other, &proof),
                Err(VerifyError::Origins { .. })
            ));
        }
    }

    #[test]
    fn every_single_byte_change_names_its_entry() {
        // Exhaustive over byte positions for the entries next to checkpoints
        // and at the ends (the proptest below samples the others).
        let r = shared();
        for i in [0, 1, 2, 7, 8, 9, 16, 17, 18, N - 2, N - 1] {
            let line = &r.lines[i];
            for at in 0..line.len() {
                for with in [b'0', b'A', b'"', b' '] {
                    if line.as_bytes()[at] == with {
                        continue;
                    }
                    let mut lines = r.lines.clone();
                    let mut bytes = line.clone().into_bytes();
                    bytes[at] = with;
                    lines[i] = String::from_utf8(bytes).unwrap();
                    let err = verify(&lines, &r.notes, &r.vkey).unwrap_err();
                    assert_eq!(
                        named(&err),
                        Some(i as u64),
                        "byte {at} of {i} -> {with}: {err}"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn altered_entry_is_named(i in 0..N, at in any::<prop::sample::Index>(), with in 0x20u8..0x7f) {
            let r = shared();
            let line = &r.lines[i];
            let at = at.index(line.len());
            prop_assume!(line.as_bytes()[at] != with);
            let mut bytes = line.clone().into_bytes();
            bytes[at] = with;
            let mut lines = r.lines.clone();
            lines[i] = String::from_utf8(bytes).unwrap();
            let err = verify(&lines, &r.notes, &r.vkey).unwrap_err();
            prop_assert_eq!(named(&err), Some(i as u64), "{}", err);
        }

        #[test]
        fn removed_entry_is_named(i in 0..N) {
            let r = shared();
            let mut lines = r.lines.clone();
            lines.remove(i);
            let err = verify(&lines, &r.notes, &r.vkey).unwrap_err();
            prop_assert_eq!(named(&err), Some(i as u64), "{}", err);
        }

        #[test]
        fn swapped_entries_are_named(i in 0..N - 1) {
            let r = shared();
            let mut lines = r.lines.clone();
            lines.swap(i, i + 1);
            let err = verify(&lines, &r.notes, &r.vkey).unwrap_err();
            prop_assert_eq!(named(&err), Some(i as u64), "{}", err);
        }

        #[test]
        fn duplicated_entry_is_named(i in 0..N) {
            let r = shared();
            let mut lines = r.lines.clone();
            lines.insert(i + 1, r.lines[i].clone());
            let err = verify(&lines, &r.notes, &r.vkey).unwrap_err();
            prop_assert_eq!(named(&err), Some(i as u64 + 1), "{}", err);
        }
    }
}
