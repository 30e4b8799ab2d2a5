//! RFC 9162 Merkle tree hashing (Certificate Transparency v2, §2.1).
//!
//! Leaves and interior nodes are hashed with distinct prefixes (0x00, 0x01) so
//! that a leaf can never be passed off as a node. The tree over n leaves splits
//! at the largest power of two below n, which makes the tree over a prefix of
//! the leaves a set of complete subtrees of the bigger tree: that is what lets
//! [`Frontier`] append with O(log n) state and what consistency proofs prove.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::record::MerkleError;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// RFC 9162 leaf hash: SHA-256(0x00 || data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha256(&[&[0x00], data])
}

/// RFC 9162 interior node hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// Standard base64 (with padding), the encoding checkpoints use for roots.
pub fn encode_hash(hash: &Hash) -> String {
    STANDARD.encode(hash)
}

/// Decodes standard base64 into a hash; refuses any other length and any
/// non-canonical spelling, so one hash has exactly one text form.
pub fn decode_hash(text: &str) -> Option<Hash> {
    let bytes = STANDARD.decode(text).ok()?;
    let hash: Hash = bytes.try_into().ok()?;
    (STANDARD.encode(hash) == text).then_some(hash)
}

/// The largest power of two strictly below `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The Merkle Tree Hash (RFC 9162 §2.1.1) of the given leaf hashes.
pub fn root(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes {
        [] => empty_root(),
        [leaf] => *leaf,
        _ => {
            let k = split(leaf_hashes.len());
            node_hash(&root(&leaf_hashes[..k]), &root(&leaf_hashes[k..]))
        }
    }
}

/// Converts a tree size to an index into the leaves, refusing sizes beyond them.
fn prefix_len(size: u64, available: usize) -> Result<usize, MerkleError> {
    match usize::try_from(size) {
        Ok(n) if n <= available => Ok(n),
        _ => Err(MerkleError::TooFewLeaves {
            size,
            available: available as u64,
        }),
    }
}

/// The consistency proof (RFC 9162 §2.1.4.1) that the tree of `old_size`
/// leaves is a prefix of the tree of `new_size` leaves, from all leaf hashes
/// (at least `new_size` of them).
pub fn consistency_proof(
    leaf_hashes: &[Hash],
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::SizeOrder {
            old: old_size,
            new: new_size,
        });
    }
    let new = prefix_len(new_size, leaf_hashes.len())?;
    let old = prefix_len(old_size, new)?;
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(old, &leaf_hashes[..new], true, &mut proof);
    }
    Ok(proof)
}

/// `SUBPROOF(m, D[n], b)` of RFC 9162 §2.1.4.1; `complete` is b: whether the
/// subtree `D[0:m]` is itself the old tree, whose root the verifier knows.
fn subproof(m: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, proof);
        proof.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, proof);
        proof.push(root(&leaves[..k]));
    }
}

/// Verifies a consistency proof by the algorithm of RFC 9162 §2.1.4.2.
///
/// Sizes equal: the roots must be equal and the proof empty. Old size 0: the
/// proof must be empty and `old_root` the empty tree's root, since the empty
/// tree is a prefix of every tree.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    let fail = |reason| {
        Err(MerkleError::Inconsistent {
            old: old_size,
            new: new_size,
            reason,
        })
    };
    if old_size > new_size {
        return Err(MerkleError::SizeOrder {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return fail("a proof between equal sizes must be empty");
        }
        return if old_root == new_root {
            Ok(())
        } else {
            fail("equal sizes with different roots")
        };
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return fail("a proof from the empty tree must be empty");
        }
        return if *old_root == empty_root() {
            Ok(())
        } else {
            fail("the old root is not the empty tree's root")
        };
    }
    // Step 1.
    let Some((head, rest)) = proof.split_first() else {
        return fail("empty proof");
    };
    // Step 2: when the old tree is a complete subtree its root starts the path.
    let (first, path) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (head, rest)
    };
    // Steps 3 and 4.
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // Steps 5 and 6.
    let mut fr = *first;
    let mut sr = *first;
    for c in path {
        if snode == 0 {
            return fail("proof too long");
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 7.
    if snode != 0 {
        return fail("proof too short");
    }
    if fr != *old_root {
        return fail("old root does not match");
    }
    if sr != *new_root {
        return fail("new root does not match");
    }
    Ok(())
}

/// The right edge of a Merkle tree: the roots of its complete subtrees, one
/// per set bit of the size, largest (leftmost) first. It is all that is needed
/// to append and to compute the root, so the operator persists only this.
///
/// Serialized as `{"size": <u64>, "nodes": ["<base64 hash>", ...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "FrontierRepr", into = "FrontierRepr")]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrontierRepr {
    size: u64,
    nodes: Vec<String>,
}

impl From<Frontier> for FrontierRepr {
    fn from(f: Frontier) -> Self {
        FrontierRepr {
            size: f.size,
            nodes: f.nodes.iter().map(encode_hash).collect(),
        }
    }
}

impl TryFrom<FrontierRepr> for Frontier {
    type Error = MerkleError;

    fn try_from(repr: FrontierRepr) -> Result<Self, MerkleError> {
        let nodes = repr
            .nodes
            .iter()
            .enumerate()
            .map(|(position, text)| decode_hash(text).ok_or(MerkleError::FrontierHash { position }))
            .collect::<Result<Vec<_>, _>>()?;
        Frontier::from_parts(repr.size, nodes)
    }
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a frontier from its parts, checking they fit together.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, MerkleError> {
        if nodes.len() != size.count_ones() as usize {
            return Err(MerkleError::FrontierShape {
                size,
                expected: size.count_ones(),
                found: nodes.len(),
            });
        }
        Ok(Frontier { size, nodes })
    }

    /// The number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The complete subtree roots, largest first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// The Merkle Tree Hash of all leaves appended so far.
    pub fn root(&self) -> Hash {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }

    /// Appends a leaf's data; returns its index.
    pub fn append(&mut self, leaf_data: &[u8]) -> Result<u64, MerkleError> {
        self.append_hash(leaf_hash(leaf_data))
    }

    /// Appends a leaf by its leaf hash; returns its index.
    pub fn append_hash(&mut self, leaf: Hash) -> Result<u64, MerkleError> {
        let index = self.size;
        let size = index.checked_add(1).ok_or(MerkleError::Full)?;
        // Each trailing one bit of the old size is a complete subtree of the
        // same height as what we carry, so the two merge, as in binary addition.
        let mut carry = leaf;
        let mut bits = index;
        while bits & 1 == 1 {
            let Some(left) = self.nodes.pop() else {
                return Err(MerkleError::FrontierShape {
                    size: index,
                    expected: index.count_ones(),
                    found: self.nodes.len(),
                });
            };
            carry = node_hash(&left, &carry);
            bits >>= 1;
        }
        self.nodes.push(carry);
        self.size = size;
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn h(s: &str) -> Hash {
        unhex(s).try_into().unwrap()
    }

    // The leaves and roots of the Certificate Transparency reference
    // implementation's tests (RFC 6962 / RFC 9162 hashing).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    // (old size, new size, proof) from the same reference tests.
    const CONSISTENCY: [(u64, u64, &[&str]); 4] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    fn reference_leaves() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(&unhex(l))).collect()
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn reference_roots() {
        let leaves = reference_leaves();
        let mut frontier = Frontier::new();
        assert_eq!(hex(&frontier.root()), ROOTS[0]);
        for n in 0..=8 {
            assert_eq!(hex(&root(&leaves[..n])), ROOTS[n], "root of size {n}");
            if n > 0 {
                assert_eq!(
                    frontier.append(&unhex(LEAVES[n - 1])).unwrap(),
                    n as u64 - 1
                );
                assert_eq!(hex(&frontier.root()), ROOTS[n], "frontier root of size {n}");
            }
        }
    }

    #[test]
    fn reference_consistency_proofs() {
        let leaves = reference_leaves();
        for (old, new, want) in CONSISTENCY {
            let proof = consistency_proof(&leaves, old, new).unwrap();
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(proof, want, "proof {old} -> {new}");
            let (r1, r2) = (h(ROOTS[old as usize]), h(ROOTS[new as usize]));
            verify_consistency(old, new, &r1, &r2, &proof).unwrap();
        }
    }

    #[test]
    fn frontier_matches_recomputation() {
        let all = leaves(70);
        let mut frontier = Frontier::new();
        for n in 0..=70usize {
            assert_eq!(frontier.size(), n as u64);
            assert_eq!(frontier.root(), root(&all[..n]), "size {n}");
            assert_eq!(frontier.nodes().len(), n.count_ones() as usize);
            if n < 70 {
                assert_eq!(frontier.append_hash(all[n]).unwrap(), n as u64);
            }
        }
    }

    #[test]
    fn frontier_serde_round_trip_and_resume() {
        let all = leaves(45);
        let mut frontier = Frontier::new();
        for leaf in &all[..23] {
            frontier.append_hash(*leaf).unwrap();
        }
        let text = serde_json::to_string(&frontier).unwrap();
        let mut resumed: Frontier = serde_json::from_str(&text).unwrap();
        assert_eq!(resumed, frontier);
        for leaf in &all[23..] {
            resumed.append_hash(*leaf).unwrap();
        }
        assert_eq!(resumed.root(), root(&all));
    }

    #[test]
    fn frontier_refuses_bad_shapes() {
        let good =
            serde_json::json!({"size": 3, "nodes": [encode_hash(&[1; 32]), encode_hash(&[2; 32])]});
        assert!(serde_json::from_value::<Frontier>(good).is_ok());
        for bad in [
            serde_json::json!({"size": 3, "nodes": [encode_hash(&[1; 32])]}),
            serde_json::json!({"size": 1, "nodes": ["AAAA"]}),
            serde_json::json!({"size": 1, "nodes": [encode_hash(&[1; 32])], "extra": 1}),
        ] {
            assert!(serde_json::from_value::<Frontier>(bad).is_err());
        }
    }

    #[test]
    fn consistency_all_pairs_up_to_40() {
        let all = leaves(40);
        let roots: Vec<Hash> = (0..=40).map(|n| root(&all[..n])).collect();
        for new in 0..=40u64 {
            for old in 0..=new {
                let proof = consistency_proof(&all, old, new).unwrap();
                let (r1, r2) = (roots[old as usize], roots[new as usize]);
                verify_consistency(old, new, &r1, &r2, &proof)
                    .unwrap_or_else(|e| panic!("{old} -> {new}: {e}"));
                for i in 0..proof.len() {
                    for bit in [0, 7] {
                        let mut bad = proof.clone();
                        bad[i][i % 32] ^= 1 << bit;
                        assert!(
                            verify_consistency(old, new, &r1, &r2, &bad).is_err(),
                            "{old} -> {new}: flipped hash {i} accepted"
                        );
                    }
                }
                if !proof.is_empty() {
                    let short = &proof[..proof.len() - 1];
                    assert!(verify_consistency(old, new, &r1, &r2, short).is_err());
                    let mut long = proof.clone();
                    long.push(r1);
                    assert!(verify_consistency(old, new, &r1, &r2, &long).is_err());
                }
                if old > 0 && old < new {
                    let mut wrong = r1;
                    wrong[0] ^= 1;
                    assert!(verify_consistency(old, new, &wrong, &r2, &proof).is_err());
                    assert!(verify_consistency(old, new, &r1, &wrong, &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn consistency_edge_cases() {
        let e = empty_root();
        let r = [7u8; 32];
        assert!(verify_consistency(0, 0, &e, &e, &[]).is_ok());
        assert!(verify_consistency(0, 5, &e, &r, &[]).is_ok());
        assert!(verify_consistency(0, 5, &r, &r, &[]).is_err());
        assert!(verify_consistency(3, 3, &r, &r, &[]).is_ok());
        assert!(verify_consistency(3, 3, &r, &e, &[]).is_err());
        assert!(verify_consistency(3, 3, &r, &r, &[r]).is_err());
        assert!(verify_consistency(4, 3, &r, &r, &[]).is_err());
        assert!(verify_consistency(1, 2, &r, &r, &[]).is_err());
        let all = leaves(4);
        assert!(consistency_proof(&all, 3, 5).is_err());
        assert!(consistency_proof(&all, 4, 3).is_err());
    }

    #[test]
    fn hash_encoding_is_canonical() {
        let hash = [0xab; 32];
        assert_eq!(decode_hash(&encode_hash(&hash)), Some(hash));
        assert_eq!(
            decode_hash("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s"),
            None
        );
        assert_eq!(
            decode_hash("q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6t="),
            None
        );
        assert_eq!(decode_hash("AAAA"), None);
    }
}
