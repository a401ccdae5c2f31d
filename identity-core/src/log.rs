//! Append-only Merkle log with RFC 6962 hashing.
//!
//! Every accepted binding operation is appended as one leaf. The tree hash,
//! audit paths and consistency proofs follow RFC 6962 §2.1 exactly (verification
//! follows the iterative algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2), so the
//! log can be checked with any Certificate Transparency tooling.
//!
//! Storage keeps the hash of every *complete* subtree (`2^level` leaves starting
//! at a multiple of `2^level`): about two hashes per leaf. Any historical root,
//! audit path or consistency proof is then assembled from `O(log² n)` stored
//! hashes without rehashing leaves, which keeps proof generation in the
//! microseconds at a million leaves and lets a database back the store.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{hash::sha256, Hash, StoreError};

/// RFC 6962 leaf hash: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// RFC 6962 interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty log: `SHA-256("")`.
pub fn empty_root() -> Hash {
    sha256(&[])
}

/// Largest power of two strictly smaller than `n` (`n >= 2`): RFC 6962's split point `k`.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Persistence of a log's complete subtrees.
///
/// The node at `(level, index)` is the hash of leaves
/// `[index * 2^level, (index + 1) * 2^level)`; level 0 holds the leaf hashes.
/// Appends are the only mutation, which is what makes the log append-only even
/// for a careless backend.
pub trait LogStore {
    /// Number of leaves stored.
    fn size(&self) -> Result<u64, StoreError>;

    /// The stored hash of a complete subtree, if present.
    fn node(&self, level: u32, index: u64) -> Result<Option<Hash>, StoreError>;

    /// Appends one leaf. `nodes[0]` is the leaf hash at index `size()`;
    /// `nodes[l]` for `l >= 1` is the subtree at level `l` that this leaf
    /// completes (index `(size() + 1) / 2^l - 1`). A backend must store them
    /// atomically, so that a crash never leaves a leaf without its parents.
    fn append(&mut self, nodes: &[Hash]) -> Result<(), StoreError>;
}

/// A [`LogStore`] in memory: one vector of hashes per level.
#[derive(Debug, Clone, Default)]
pub struct MemoryLogStore {
    levels: Vec<Vec<Hash>>,
}

impl MemoryLogStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl LogStore for MemoryLogStore {
    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.levels.first().map_or(0, |l| l.len() as u64))
    }

    fn node(&self, level: u32, index: u64) -> Result<Option<Hash>, StoreError> {
        Ok(self
            .levels
            .get(level as usize)
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied())
    }

    fn append(&mut self, nodes: &[Hash]) -> Result<(), StoreError> {
        for (level, hash) in nodes.iter().enumerate() {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(*hash);
        }
        Ok(())
    }
}

/// Errors from building proofs out of a log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The leaf index is not inside the requested tree.
    #[error("leaf index {index} is outside a tree of size {tree_size}")]
    IndexOutOfRange {
        /// Requested leaf index.
        index: u64,
        /// Size of the tree it was requested in.
        tree_size: u64,
    },
    /// The requested tree size is larger than the log.
    #[error("tree size {requested} exceeds the log size {log_size}")]
    SizeOutOfRange {
        /// Requested tree size.
        requested: u64,
        /// Current log size.
        log_size: u64,
    },
    /// A consistency proof was asked for a first size larger than the second.
    #[error("consistency proof needs first <= second, got {first} > {second}")]
    BadRange {
        /// Older tree size.
        first: u64,
        /// Newer tree size.
        second: u64,
    },
    /// The store lacks a subtree it should have: it is corrupt or was not written atomically.
    #[error("log store has no node at level {level}, index {index}")]
    MissingNode {
        /// Level of the missing node.
        level: u32,
        /// Index of the missing node within its level.
        index: u64,
    },
    /// The backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a log proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is outside a tree of size {tree_size}")]
    IndexOutOfRange {
        /// Claimed leaf index.
        index: u64,
        /// Claimed tree size.
        tree_size: u64,
    },
    /// The first size is larger than the second.
    #[error("consistency proof with first size {first} > second size {second}")]
    BadRange {
        /// Older tree size.
        first: u64,
        /// Newer tree size.
        second: u64,
    },
    /// The path has more or fewer hashes than the tree shape allows.
    #[error("proof has the wrong number of hashes")]
    WrongLength,
    /// The recomputed root differs from the expected one.
    #[error("recomputed root does not match")]
    RootMismatch,
}

/// An RFC 6962 audit path: proves that a leaf is at `leaf_index` in the tree of `tree_size` leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// Zero-based index of the leaf.
    pub leaf_index: u64,
    /// Size of the tree whose root the path leads to.
    pub tree_size: u64,
    /// Sibling hashes from the leaf up to the root (RFC 6962 `PATH` order).
    #[serde(with = "hex_hashes")]
    pub path: Vec<Hash>,
}

impl InclusionProof {
    /// Checks that `leaf_hash` (already hashed with [`leaf_hash`]) is in the tree with `root`.
    pub fn verify(&self, leaf_hash: &Hash, root: &Hash) -> Result<(), LogProofError> {
        let computed = root_from_inclusion(leaf_hash, self.leaf_index, self.tree_size, &self.path)?;
        if &computed == root {
            Ok(())
        } else {
            Err(LogProofError::RootMismatch)
        }
    }
}

/// Recomputes the root implied by an audit path (RFC 9162 §2.1.3.2).
pub fn root_from_inclusion(
    leaf_hash: &Hash,
    leaf_index: u64,
    tree_size: u64,
    path: &[Hash],
) -> Result<Hash, LogProofError> {
    if leaf_index >= tree_size {
        return Err(LogProofError::IndexOutOfRange {
            index: leaf_index,
            tree_size,
        });
    }
    let (mut fn_, mut sn) = (leaf_index, tree_size - 1);
    let mut r = *leaf_hash;
    for p in path {
        if sn == 0 {
            return Err(LogProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            // The node is the last one of its level: skip the levels where it has no right sibling.
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(LogProofError::WrongLength);
    }
    Ok(r)
}

/// Checks an RFC 6962 consistency proof that the tree of `second` leaves with
/// `second_root` extends the tree of `first` leaves with `first_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> Result<(), LogProofError> {
    if first > second {
        return Err(LogProofError::BadRange { first, second });
    }
    if first == second {
        if !proof.is_empty() {
            return Err(LogProofError::WrongLength);
        }
        return if first_root == second_root {
            Ok(())
        } else {
            Err(LogProofError::RootMismatch)
        };
    }
    if first == 0 {
        // Every tree extends the empty tree; only an empty proof is canonical.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(LogProofError::WrongLength)
        };
    }
    if proof.is_empty() {
        return Err(LogProofError::WrongLength);
    }
    // When the old tree is a complete subtree its root is the proof's implicit first element.
    let mut path = proof.iter();
    let seed = if first.is_power_of_two() {
        *first_root
    } else {
        *path.next().expect("checked non-empty")
    };
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in path {
        if sn == 0 {
            return Err(LogProofError::WrongLength);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(LogProofError::WrongLength);
    }
    if &fr != first_root || &sr != second_root {
        return Err(LogProofError::RootMismatch);
    }
    Ok(())
}

/// An append-only Merkle log over a [`LogStore`].
#[derive(Debug, Clone, Default)]
pub struct MerkleLog<S> {
    store: S,
}

impl<S: LogStore> MerkleLog<S> {
    /// A log over `store` (which may already hold leaves).
    pub fn new(store: S) -> Self {
        Self { store }
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Consumes the log, returning its store.
    pub fn into_store(self) -> S {
        self.store
    }

    /// Number of leaves.
    pub fn size(&self) -> Result<u64, LogError> {
        Ok(self.store.size()?)
    }

    /// Appends `data` as a new leaf and returns its index.
    pub fn append(&mut self, data: &[u8]) -> Result<u64, LogError> {
        self.append_leaf_hash(leaf_hash(data))
    }

    /// Appends an already computed leaf hash and returns its index.
    pub fn append_leaf_hash(&mut self, leaf: Hash) -> Result<u64, LogError> {
        let size = self.store.size()?;
        let mut nodes = vec![leaf];
        let (mut index, mut level, mut current) = (size, 0u32, leaf);
        // Each odd index closes a pair, so its parent becomes a complete subtree.
        while index & 1 == 1 {
            let left = self.stored(level, index - 1)?;
            current = node_hash(&left, &current);
            nodes.push(current);
            index >>= 1;
            level += 1;
        }
        self.store.append(&nodes)?;
        Ok(size)
    }

    /// The current root.
    pub fn root(&self) -> Result<Hash, LogError> {
        self.root_at(self.size()?)
    }

    /// The root the log had when it held `tree_size` leaves.
    pub fn root_at(&self, tree_size: u64) -> Result<Hash, LogError> {
        self.check_size(tree_size)?;
        self.subtree(0, tree_size)
    }

    /// Audit path for the leaf at `leaf_index` in the tree of `tree_size` leaves.
    pub fn inclusion_proof(
        &self,
        leaf_index: u64,
        tree_size: u64,
    ) -> Result<InclusionProof, LogError> {
        self.check_size(tree_size)?;
        if leaf_index >= tree_size {
            return Err(LogError::IndexOutOfRange {
                index: leaf_index,
                tree_size,
            });
        }
        let mut path = Vec::with_capacity(64 - tree_size.leading_zeros() as usize);
        self.path(leaf_index, 0, tree_size, &mut path)?;
        Ok(InclusionProof {
            leaf_index,
            tree_size,
            path,
        })
    }

    /// Consistency proof between the trees of `first` and `second` leaves (RFC 6962 `PROOF`).
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, LogError> {
        self.check_size(second)?;
        if first > second {
            return Err(LogError::BadRange { first, second });
        }
        let mut proof = Vec::new();
        if first > 0 && first < second {
            self.subproof(first, 0, second, true, &mut proof)?;
        }
        Ok(proof)
    }

    fn check_size(&self, tree_size: u64) -> Result<(), LogError> {
        let log_size = self.store.size()?;
        if tree_size > log_size {
            return Err(LogError::SizeOutOfRange {
                requested: tree_size,
                log_size,
            });
        }
        Ok(())
    }

    fn stored(&self, level: u32, index: u64) -> Result<Hash, LogError> {
        self.store
            .node(level, index)?
            .ok_or(LogError::MissingNode { level, index })
    }

    /// `MTH(D[start..start + len])`.
    fn subtree(&self, start: u64, len: u64) -> Result<Hash, LogError> {
        match len {
            0 => Ok(empty_root()),
            _ if len.is_power_of_two() && start % len == 0 => {
                let level = len.trailing_zeros();
                self.stored(level, start >> level)
            }
            1 => unreachable!("a single leaf is always an aligned complete subtree"),
            _ => {
                let k = split(len);
                Ok(node_hash(
                    &self.subtree(start, k)?,
                    &self.subtree(start + k, len - k)?,
                ))
            }
        }
    }

    /// RFC 6962 `PATH(m, D[start..start + n])`, appended to `out`.
    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) -> Result<(), LogError> {
        if n <= 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            self.path(m, start, k, out)?;
            out.push(self.subtree(start + k, n - k)?);
        } else {
            self.path(m - k, start + k, n - k, out)?;
            out.push(self.subtree(start, k)?);
        }
        Ok(())
    }

    /// RFC 6962 `SUBPROOF(m, D[start..start + n], b)`, appended to `out`.
    fn subproof(
        &self,
        m: u64,
        start: u64,
        n: u64,
        complete: bool,
        out: &mut Vec<Hash>,
    ) -> Result<(), LogError> {
        if m == n {
            if !complete {
                out.push(self.subtree(start, n)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, complete, out)?;
            out.push(self.subtree(start + k, n - k)?);
        } else {
            self.subproof(m - k, start + k, n - k, false, out)?;
            out.push(self.subtree(start, k)?);
        }
        Ok(())
    }
}

/// Serde helper: a list of hashes as lowercase hex strings.
pub(crate) mod hex_hashes {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use crate::Hash;

    pub fn serialize<S: Serializer>(hashes: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(hashes.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let strings = Vec::<String>::deserialize(d)?;
        strings
            .iter()
            .map(|s| {
                let mut h = [0u8; 32];
                if s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(D::Error::custom("hash hex must be lowercase"));
                }
                hex::decode_to_slice(s, &mut h).map_err(D::Error::custom)?;
                Ok(h)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// RFC 6962 `MTH` straight from the definition, to cross-check the store-backed version.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn build(n: u64) -> (MerkleLog<MemoryLogStore>, Vec<Hash>) {
        let mut log = MerkleLog::new(MemoryLogStore::new());
        let mut leaves = Vec::new();
        for i in 0..n {
            let data = i.to_le_bytes();
            leaves.push(leaf_hash(&data));
            assert_eq!(log.append(&data).unwrap(), i);
        }
        (log, leaves)
    }

    #[test]
    fn split_is_largest_power_of_two_below() {
        assert_eq!(split(2), 1);
        assert_eq!(split(3), 2);
        assert_eq!(split(4), 2);
        assert_eq!(split(5), 4);
        assert_eq!(split(1 << 40), 1 << 39);
        assert_eq!(split((1 << 40) + 1), 1 << 40);
    }

    #[test]
    fn out_of_range_requests_are_errors() {
        let (log, _) = build(5);
        assert!(matches!(
            log.inclusion_proof(5, 5),
            Err(LogError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            log.root_at(6),
            Err(LogError::SizeOutOfRange { .. })
        ));
        assert!(matches!(
            log.consistency_proof(4, 3),
            Err(LogError::BadRange { .. })
        ));
    }

    #[test]
    fn proof_with_extra_or_missing_hash_fails() {
        let (log, leaves) = build(13);
        let root = log.root().unwrap();
        let mut proof = log.inclusion_proof(6, 13).unwrap();
        proof.verify(&leaves[6], &root).unwrap();
        proof.path.push([0; 32]);
        assert_eq!(
            proof.verify(&leaves[6], &root),
            Err(LogProofError::WrongLength)
        );
        proof.path.truncate(proof.path.len() - 2);
        assert_eq!(
            proof.verify(&leaves[6], &root),
            Err(LogProofError::WrongLength)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_leaf_proves_against_every_later_root(n in 1u64..200, seed in any::<u64>()) {
            let (log, leaves) = build(n);
            // Pick one historical size so each case stays fast but all shapes get covered.
            let size = 1 + seed % n;
            let root = log.root_at(size).unwrap();
            prop_assert_eq!(root, reference_root(&leaves[..size as usize]));
            for i in 0..size {
                let proof = log.inclusion_proof(i, size).unwrap();
                prop_assert!(proof.verify(&leaves[i as usize], &root).is_ok());
            }
        }

        #[test]
        fn mutated_inclusion_proofs_fail(
            n in 2u64..200,
            pick in any::<u64>(),
            byte in any::<usize>(),
            bit in 0u8..8,
        ) {
            let (log, leaves) = build(n);
            let index = pick % n;
            let root = log.root().unwrap();
            let proof = log.inclusion_proof(index, n).unwrap();
            let leaf = leaves[index as usize];

            // A flipped bit anywhere in the path.
            let mut bad = proof.clone();
            let pos = byte % (bad.path.len() * 32);
            bad.path[pos / 32][pos % 32] ^= 1 << bit;
            prop_assert!(bad.verify(&leaf, &root).is_err());

            // The wrong leaf, index or size.
            let mut other = leaf;
            other[byte % 32] ^= 1 << bit;
            prop_assert!(proof.verify(&other, &root).is_err());
            let mut moved = proof.clone();
            moved.leaf_index = (index + 1 + pick % (n - 1)) % n;
            prop_assert!(moved.verify(&leaf, &root).is_err());
            // The tree size is deliberately not mutated: an audit path for a leaf in the left,
            // complete part of a tree fits every size sharing that shape (RFC 6962), which is why
            // the size must come from an authenticated place (the epoch header), never the proof.
        }

        #[test]
        fn consistency_between_any_two_sizes(n in 1u64..200, a in any::<u64>(), b in any::<u64>()) {
            let (log, _) = build(n);
            let (x, y) = (a % (n + 1), b % (n + 1));
            let (first, second) = (x.min(y), x.max(y));
            let (r1, r2) = (log.root_at(first).unwrap(), log.root_at(second).unwrap());
            let proof = log.consistency_proof(first, second).unwrap();
            prop_assert!(verify_consistency(first, second, &r1, &r2, &proof).is_ok());

            if first > 0 && first < second {
                // Any single flipped bit, or a wrong root on either side, must fail.
                let mut bad = proof.clone();
                let pos = (a as usize) % (bad.len() * 32);
                bad[pos / 32][pos % 32] ^= 1;
                prop_assert!(verify_consistency(first, second, &r1, &r2, &bad).is_err());
                let mut wrong = r1;
                wrong[0] ^= 1;
                prop_assert!(verify_consistency(first, second, &wrong, &r2, &proof).is_err());
                prop_assert!(verify_consistency(first, second, &r1, &wrong, &proof).is_err());
                // A proof for one pair of sizes does not prove another.
                if second < n {
                    let r3 = log.root_at(second + 1).unwrap();
                    prop_assert!(verify_consistency(first, second + 1, &r1, &r3, &proof).is_err());
                }
            }
        }
    }
}
