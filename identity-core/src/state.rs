//! Sparse Merkle tree of current bindings, keyed by `x_uid`.
//!
//! The log proves that an operation happened; the state tree proves what is
//! *current* — including that an `x_uid` has no binding at all, which a log
//! cannot show without replaying it. Keys are 256-bit ([`state_key`]), values
//! are the hash of the current binding record.
//!
//! The tree is the canonical compressed form of a 256-level sparse Merkle tree:
//! an empty subtree hashes to [`empty_hash`], a subtree holding exactly one entry
//! hashes to that entry's [`leaf_hash`] (which commits to the full key, so its
//! position is still bound), and only subtrees with two or more entries become
//! inner nodes. With `n` random keys the depth is about `log2 n`, so a proof at a
//! million entries carries ~20 siblings instead of 256. Leaves, inner nodes and
//! empty subtrees use distinct tagged hashes, so none can pose as another.
//!
//! Nodes are stored content-addressed (hash → node) behind [`StateStore`]: an
//! update writes new nodes and never rewrites old ones, so every past root — the
//! one an epoch header committed to — can still produce proofs.

use std::collections::HashMap;

use crate::{hash::Tag, Hash, StoreError};

static KEY_TAG: Tag = Tag::new("cairn/state/key");
static LEAF_TAG: Tag = Tag::new("cairn/state/leaf");
static NODE_TAG: Tag = Tag::new("cairn/state/node");
static EMPTY_TAG: Tag = Tag::new("cairn/state/empty");

/// Number of key bits, and so the maximum depth of the tree.
pub const KEY_BITS: usize = 256;

/// The tree key for an X numeric user id: `TH("cairn/state/key", u64_be(x_uid))`.
///
/// Hashing spreads ids (which are sequential-ish snowflakes) evenly over the key
/// space, which keeps the tree balanced and proofs short.
pub fn state_key(x_uid: u64) -> Hash {
    KEY_TAG.hash(&[&x_uid.to_be_bytes()])
}

/// Hash of a subtree holding the single entry `key → value`.
pub fn leaf_hash(key: &Hash, value: &Hash) -> Hash {
    LEAF_TAG.hash(&[key, value])
}

/// Hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    NODE_TAG.hash(&[left, right])
}

/// Hash of an empty subtree (at any height): `TH("cairn/state/empty", "")`.
pub fn empty_hash() -> Hash {
    EMPTY_TAG.hash(&[])
}

/// Bit `i` of `key`, most significant bit first: 0 goes left, 1 goes right.
fn bit(key: &Hash, i: usize) -> bool {
    key[i / 8] & (0x80 >> (i % 8)) != 0
}

fn common_prefix_bits(a: &Hash, b: &Hash) -> usize {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = x ^ y;
        if d != 0 {
            return i * 8 + d.leading_zeros() as usize;
        }
    }
    KEY_BITS
}

/// A stored node, addressed by its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateNode {
    /// A subtree with exactly one entry.
    Leaf {
        /// The entry's key.
        key: Hash,
        /// The entry's value (hash of the binding record).
        value: Hash,
    },
    /// A subtree with two or more entries.
    Inner {
        /// Hash of the left (bit 0) child.
        left: Hash,
        /// Hash of the right (bit 1) child.
        right: Hash,
    },
}

/// Content-addressed persistence for state tree nodes.
pub trait StateStore {
    /// The node whose hash is `hash`, if stored. The empty subtree is never stored.
    fn get(&self, hash: &Hash) -> Result<Option<StateNode>, StoreError>;

    /// Stores the nodes created by one update. A backend must store them
    /// atomically; duplicates of already stored nodes may occur and are harmless.
    fn put_batch(&mut self, nodes: Vec<(Hash, StateNode)>) -> Result<(), StoreError>;
}

/// A [`StateStore`] in a hash map. It keeps every version; nothing is pruned.
#[derive(Debug, Clone, Default)]
pub struct MemoryStateStore {
    nodes: HashMap<Hash, StateNode>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored nodes (all versions).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl StateStore for MemoryStateStore {
    fn get(&self, hash: &Hash) -> Result<Option<StateNode>, StoreError> {
        Ok(self.nodes.get(hash).copied())
    }

    fn put_batch(&mut self, nodes: Vec<(Hash, StateNode)>) -> Result<(), StoreError> {
        self.nodes.reserve(nodes.len());
        self.nodes.extend(nodes);
        Ok(())
    }
}

/// Errors from reading or updating the tree.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A node reachable from the root is not in the store: the store is corrupt
    /// or the root belongs to another store.
    #[error("state store has no node {}", hex::encode(.0))]
    MissingNode(Hash),
    /// The backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a state proof did not verify or decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateProofError {
    /// More siblings than key bits.
    #[error("proof depth {0} exceeds {KEY_BITS}")]
    TooDeep(usize),
    /// The terminal leaf is not on the path of the key being proved.
    #[error("terminal leaf is not on the key's path")]
    LeafOffPath,
    /// The proof ends in a leaf whose sibling is empty: an honest tree would have
    /// collapsed that pair, so the proof is not canonical.
    #[error("proof is not canonical")]
    NonCanonical,
    /// The recomputed root differs from the expected one.
    #[error("recomputed root does not match")]
    RootMismatch,
    /// The proof shows a different value for the key than claimed.
    #[error("key is bound to a different value")]
    ValueMismatch,
    /// The proof shows the key present where absence was claimed, or vice versa.
    #[error("key presence differs from the claim")]
    PresenceMismatch,
    /// The byte encoding is malformed.
    #[error("malformed proof encoding: {0}")]
    Encoding(&'static str),
}

/// Where a proof's path ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// An empty subtree: the key is absent.
    Empty,
    /// A single-entry subtree. If its key is the proved key, the key is present
    /// with `value`; otherwise the key is absent (this other entry occupies the
    /// only place the key could be).
    Leaf {
        /// The entry's key.
        key: Hash,
        /// The entry's value.
        value: Hash,
    },
}

/// An inclusion or non-inclusion proof for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateProof {
    /// Sibling hashes from the root down (index `i` is the sibling at depth
    /// `i + 1`), including empty ones; [`StateProof::to_bytes`] compresses those away.
    pub siblings: Vec<Hash>,
    /// What the path ends in.
    pub terminal: Terminal,
}

impl StateProof {
    /// Recomputes the root for `key` and returns the value the proof binds to it
    /// (`None` = absent). Callers compare against a root they trust; prefer
    /// [`StateProof::verify_inclusion`] / [`StateProof::verify_non_inclusion`].
    pub fn verify(&self, root: &Hash, key: &Hash) -> Result<Option<Hash>, StateProofError> {
        let depth = self.siblings.len();
        if depth > KEY_BITS {
            return Err(StateProofError::TooDeep(depth));
        }
        let empty = empty_hash();
        let (mut current, found) = match self.terminal {
            Terminal::Empty => (empty, None),
            Terminal::Leaf { key: k, value } => {
                if common_prefix_bits(&k, key) < depth {
                    return Err(StateProofError::LeafOffPath);
                }
                if depth > 0 && self.siblings[depth - 1] == empty {
                    return Err(StateProofError::NonCanonical);
                }
                (leaf_hash(&k, &value), (&k == key).then_some(value))
            }
        };
        for (i, sibling) in self.siblings.iter().enumerate().rev() {
            current = if bit(key, i) {
                node_hash(sibling, &current)
            } else {
                node_hash(&current, sibling)
            };
        }
        if &current != root {
            return Err(StateProofError::RootMismatch);
        }
        Ok(found)
    }

    /// Checks that `key → value` is in the tree with `root`.
    pub fn verify_inclusion(
        &self,
        root: &Hash,
        key: &Hash,
        value: &Hash,
    ) -> Result<(), StateProofError> {
        match self.verify(root, key)? {
            Some(v) if &v == value => Ok(()),
            Some(_) => Err(StateProofError::ValueMismatch),
            None => Err(StateProofError::PresenceMismatch),
        }
    }

    /// Checks that `key` is absent from the tree with `root`.
    pub fn verify_non_inclusion(&self, root: &Hash, key: &Hash) -> Result<(), StateProofError> {
        match self.verify(root, key)? {
            None => Ok(()),
            Some(_) => Err(StateProofError::PresenceMismatch),
        }
    }

    /// Compact encoding:
    /// `terminal (u8: 0 empty, 1 leaf) || depth (u16 BE) || bitmap (ceil(depth/8) bytes,
    /// bit i MSB-first set ⇔ sibling i is not the empty hash) || non-empty siblings ||
    /// [key || value if leaf]`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let empty = empty_hash();
        let depth = self.siblings.len();
        let mut bitmap = vec![0u8; depth.div_ceil(8)];
        let mut hashes = Vec::new();
        for (i, s) in self.siblings.iter().enumerate() {
            if *s != empty {
                bitmap[i / 8] |= 0x80 >> (i % 8);
                hashes.extend_from_slice(s);
            }
        }
        let mut out = Vec::with_capacity(3 + bitmap.len() + hashes.len() + 64);
        out.push(matches!(self.terminal, Terminal::Leaf { .. }) as u8);
        out.extend_from_slice(&(depth as u16).to_be_bytes());
        out.extend_from_slice(&bitmap);
        out.extend_from_slice(&hashes);
        if let Terminal::Leaf { key, value } = &self.terminal {
            out.extend_from_slice(key);
            out.extend_from_slice(value);
        }
        out
    }

    /// Decodes [`StateProof::to_bytes`]. Only the canonical encoding is accepted
    /// (no padding bits, no explicit empty siblings, no trailing bytes), so a
    /// proof has exactly one byte representation.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateProofError> {
        use StateProofError::Encoding;
        let (&terminal, rest) = bytes.split_first().ok_or(Encoding("empty"))?;
        if rest.len() < 2 {
            return Err(Encoding("truncated depth"));
        }
        let depth = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        if depth > KEY_BITS {
            return Err(StateProofError::TooDeep(depth));
        }
        let rest = &rest[2..];
        let bitmap_len = depth.div_ceil(8);
        if rest.len() < bitmap_len {
            return Err(Encoding("truncated bitmap"));
        }
        let (bitmap, mut rest) = rest.split_at(bitmap_len);
        if depth % 8 != 0 && bitmap[bitmap_len - 1] & (0xff >> (depth % 8)) != 0 {
            return Err(Encoding("padding bits set"));
        }
        let empty = empty_hash();
        let mut siblings = Vec::with_capacity(depth);
        for i in 0..depth {
            if bitmap[i / 8] & (0x80 >> (i % 8)) != 0 {
                let h = take_hash(&mut rest).ok_or(Encoding("truncated siblings"))?;
                if h == empty {
                    return Err(Encoding("explicit empty sibling"));
                }
                siblings.push(h);
            } else {
                siblings.push(empty);
            }
        }
        let terminal = match terminal {
            0 => Terminal::Empty,
            1 => {
                let key = take_hash(&mut rest).ok_or(Encoding("truncated leaf"))?;
                let value = take_hash(&mut rest).ok_or(Encoding("truncated leaf"))?;
                Terminal::Leaf { key, value }
            }
            _ => return Err(Encoding("unknown terminal type")),
        };
        if !rest.is_empty() {
            return Err(Encoding("trailing bytes"));
        }
        Ok(Self { siblings, terminal })
    }
}

fn take_hash(rest: &mut &[u8]) -> Option<Hash> {
    if rest.len() < 32 {
        return None;
    }
    let (h, tail) = rest.split_at(32);
    *rest = tail;
    h.try_into().ok()
}

/// A subtree as seen while updating: new subtrees carry their kind, because a
/// parent must know whether a child is a single leaf to collapse correctly.
#[derive(Clone, Copy)]
enum Sub {
    Empty,
    Leaf(Hash),
    Inner(Hash),
    /// An untouched existing subtree whose kind has not been looked up.
    Stored(Hash),
}

impl Sub {
    fn hash(&self, empty: &Hash) -> Hash {
        match self {
            Sub::Empty => *empty,
            Sub::Leaf(h) | Sub::Inner(h) | Sub::Stored(h) => *h,
        }
    }
}

/// A sparse Merkle tree over a [`StateStore`], positioned at one root.
#[derive(Debug, Clone)]
pub struct SparseMerkleTree<S> {
    store: S,
    root: Hash,
    empty: Hash,
}

impl<S: StateStore> SparseMerkleTree<S> {
    /// An empty tree over `store`.
    pub fn new(store: S) -> Self {
        let empty = empty_hash();
        Self {
            store,
            root: empty,
            empty,
        }
    }

    /// The tree with root `root`, whose nodes are in `store`.
    pub fn with_root(store: S, root: Hash) -> Self {
        Self {
            store,
            root,
            empty: empty_hash(),
        }
    }

    /// The current root.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Consumes the tree, returning its store.
    pub fn into_store(self) -> S {
        self.store
    }

    /// The current value for `key`.
    pub fn get(&self, key: &Hash) -> Result<Option<Hash>, StateError> {
        let proof = self.prove_at(&self.root, key)?;
        Ok(match proof.terminal {
            Terminal::Leaf { key: k, value } if &k == key => Some(value),
            _ => None,
        })
    }

    /// Sets `key → value`.
    pub fn insert(&mut self, key: Hash, value: Hash) -> Result<Hash, StateError> {
        self.apply([(key, Some(value))])
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: Hash) -> Result<Hash, StateError> {
        self.apply([(key, None)])
    }

    /// Applies a batch of updates (`None` removes) and returns the new root.
    ///
    /// When a key appears more than once the last update wins. Each changed node
    /// is hashed once per batch, which is what makes bulk loading fast.
    pub fn apply(
        &mut self,
        updates: impl IntoIterator<Item = (Hash, Option<Hash>)>,
    ) -> Result<Hash, StateError> {
        let mut updates: Vec<(Hash, Option<Hash>)> = updates.into_iter().collect();
        // Stable sort keeps submission order among equal keys; keep the last of each run.
        updates.sort_by_key(|u| u.0);
        let mut deduped: Vec<(Hash, Option<Hash>)> = Vec::with_capacity(updates.len());
        for u in updates {
            match deduped.last_mut() {
                Some(last) if last.0 == u.0 => *last = u,
                _ => deduped.push(u),
            }
        }
        let mut created = Vec::new();
        let root = if self.root == self.empty {
            Sub::Empty
        } else {
            Sub::Stored(self.root)
        };
        let new_root = self.update(root, 0, &deduped, &mut created)?;
        self.store.put_batch(created)?;
        self.root = new_root.hash(&self.empty);
        Ok(self.root)
    }

    /// A proof for `key` against the current root.
    pub fn prove(&self, key: &Hash) -> Result<StateProof, StateError> {
        self.prove_at(&self.root, key)
    }

    /// A proof for `key` against an earlier root of this store.
    pub fn prove_at(&self, root: &Hash, key: &Hash) -> Result<StateProof, StateError> {
        let mut siblings = Vec::new();
        let mut current = *root;
        loop {
            if current == self.empty {
                return Ok(StateProof {
                    siblings,
                    terminal: Terminal::Empty,
                });
            }
            match self.load(&current)? {
                StateNode::Leaf { key, value } => {
                    return Ok(StateProof {
                        siblings,
                        terminal: Terminal::Leaf { key, value },
                    })
                }
                StateNode::Inner { left, right } => {
                    let depth = siblings.len();
                    if depth >= KEY_BITS {
                        // Only a corrupt store can nest inner nodes deeper than the key length.
                        return Err(StateError::MissingNode(current));
                    }
                    if bit(key, depth) {
                        siblings.push(left);
                        current = right;
                    } else {
                        siblings.push(right);
                        current = left;
                    }
                }
            }
        }
    }

    fn load(&self, hash: &Hash) -> Result<StateNode, StateError> {
        self.store.get(hash)?.ok_or(StateError::MissingNode(*hash))
    }

    fn resolve(&self, sub: Sub) -> Result<Sub, StateError> {
        Ok(match sub {
            Sub::Stored(h) if h == self.empty => Sub::Empty,
            Sub::Stored(h) => match self.load(&h)? {
                StateNode::Leaf { .. } => Sub::Leaf(h),
                StateNode::Inner { .. } => Sub::Inner(h),
            },
            other => other,
        })
    }

    /// Applies `updates` (sorted, distinct, all under this subtree's prefix) to `node` at `depth`.
    fn update(
        &self,
        node: Sub,
        depth: usize,
        updates: &[(Hash, Option<Hash>)],
        created: &mut Vec<(Hash, StateNode)>,
    ) -> Result<Sub, StateError> {
        if updates.is_empty() {
            return Ok(node);
        }
        match self.resolve(node)? {
            Sub::Empty => {
                let entries: Vec<(Hash, Hash)> = updates
                    .iter()
                    .filter_map(|(k, v)| Some((*k, (*v)?)))
                    .collect();
                Ok(self.build(depth, &entries, created))
            }
            Sub::Leaf(h) => {
                let StateNode::Leaf { key, value } = self.load(&h)? else {
                    unreachable!("resolved as a leaf");
                };
                // The existing entry survives unless an update names its key.
                let mut entries: Vec<(Hash, Hash)> = Vec::with_capacity(updates.len() + 1);
                let mut seen = false;
                for (k, v) in updates {
                    if !seen && key < *k {
                        entries.push((key, value));
                        seen = true;
                    }
                    if *k == key {
                        seen = true;
                    }
                    if let Some(v) = v {
                        entries.push((*k, *v));
                    }
                }
                if !seen {
                    entries.push((key, value));
                }
                Ok(self.build(depth, &entries, created))
            }
            Sub::Inner(h) => {
                let StateNode::Inner { left, right } = self.load(&h)? else {
                    unreachable!("resolved as an inner node");
                };
                let mid = updates.partition_point(|(k, _)| !bit(k, depth));
                let l = self.update(Sub::Stored(left), depth + 1, &updates[..mid], created)?;
                let r = self.update(Sub::Stored(right), depth + 1, &updates[mid..], created)?;
                self.combine(l, r, created)
            }
            Sub::Stored(_) => unreachable!("resolve never returns Stored"),
        }
    }

    /// Builds the canonical subtree for sorted, distinct `entries` at `depth`.
    fn build(
        &self,
        depth: usize,
        entries: &[(Hash, Hash)],
        created: &mut Vec<(Hash, StateNode)>,
    ) -> Sub {
        match entries {
            [] => Sub::Empty,
            [(key, value)] => {
                let h = leaf_hash(key, value);
                created.push((
                    h,
                    StateNode::Leaf {
                        key: *key,
                        value: *value,
                    },
                ));
                Sub::Leaf(h)
            }
            _ => {
                let mid = entries.partition_point(|(k, _)| !bit(k, depth));
                let l = self.build(depth + 1, &entries[..mid], created);
                let r = self.build(depth + 1, &entries[mid..], created);
                self.combine(l, r, created)
                    .expect("fresh subtrees need no store lookups")
            }
        }
    }

    /// Joins two children, collapsing a lone leaf upwards so the tree stays canonical.
    fn combine(
        &self,
        left: Sub,
        right: Sub,
        created: &mut Vec<(Hash, StateNode)>,
    ) -> Result<Sub, StateError> {
        // Inner nodes may point at the empty hash; treat those children as the empty subtree.
        let normalize = |s: Sub| match s {
            Sub::Stored(h) if h == self.empty => Sub::Empty,
            other => other,
        };
        let (left, right) = match (normalize(left), normalize(right)) {
            (Sub::Empty, other) | (other, Sub::Empty) => {
                // Only here does the kind of an untouched sibling matter.
                let other = self.resolve(other)?;
                match other {
                    Sub::Empty | Sub::Leaf(_) => return Ok(other),
                    _ => (self.resolve(left)?, self.resolve(right)?),
                }
            }
            pair => pair,
        };
        let (l, r) = (left.hash(&self.empty), right.hash(&self.empty));
        let h = node_hash(&l, &r);
        created.push((h, StateNode::Inner { left: l, right: r }));
        Ok(Sub::Inner(h))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn value(i: u64) -> Hash {
        crate::hash::sha256(&i.to_le_bytes())
    }

    /// The canonical root computed from scratch, straight from the definition.
    fn reference_root(entries: &BTreeMap<Hash, Hash>) -> Hash {
        fn go(depth: usize, e: &[(Hash, Hash)]) -> Hash {
            match e {
                [] => empty_hash(),
                [(k, v)] => leaf_hash(k, v),
                _ => {
                    let mid = e.partition_point(|(k, _)| !bit(k, depth));
                    node_hash(&go(depth + 1, &e[..mid]), &go(depth + 1, &e[mid..]))
                }
            }
        }
        let v: Vec<(Hash, Hash)> = entries.iter().map(|(k, v)| (*k, *v)).collect();
        go(0, &v)
    }

    #[test]
    fn empty_tree_proves_absence() {
        let tree = SparseMerkleTree::new(MemoryStateStore::new());
        assert_eq!(tree.root(), empty_hash());
        let key = state_key(1);
        let proof = tree.prove(&key).unwrap();
        assert_eq!(proof.to_bytes().len(), 3);
        proof.verify_non_inclusion(&tree.root(), &key).unwrap();
        assert_eq!(
            proof.verify_inclusion(&tree.root(), &key, &value(1)),
            Err(StateProofError::PresenceMismatch)
        );
    }

    #[test]
    fn single_entry_is_the_root_leaf_and_removal_empties() {
        let mut tree = SparseMerkleTree::new(MemoryStateStore::new());
        let key = state_key(7);
        let root = tree.insert(key, value(7)).unwrap();
        assert_eq!(root, leaf_hash(&key, &value(7)));
        assert_eq!(tree.remove(key).unwrap(), empty_hash());
    }

    #[test]
    fn keys_sharing_a_long_prefix_get_empty_siblings_compressed() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a[31] = 0b0000_0010;
        b[31] = 0b0000_0011; // differs from `a` only in the very last bit
        let mut tree = SparseMerkleTree::new(MemoryStateStore::new());
        tree.apply([(a, Some(value(1))), (b, Some(value(2)))])
            .unwrap();
        let proof = tree.prove(&a).unwrap();
        assert_eq!(proof.siblings.len(), 256);
        // 255 empty siblings cost one bitmap bit each.
        let bytes = proof.to_bytes();
        assert_eq!(bytes.len(), 1 + 2 + 32 + 32 + 64);
        assert_eq!(StateProof::from_bytes(&bytes).unwrap(), proof);
        proof.verify_inclusion(&tree.root(), &a, &value(1)).unwrap();
    }

    #[test]
    fn non_canonical_encodings_are_rejected() {
        let mut tree = SparseMerkleTree::new(MemoryStateStore::new());
        for i in 0..50 {
            tree.insert(state_key(i), value(i)).unwrap();
        }
        let bytes = tree.prove(&state_key(3)).unwrap().to_bytes();
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(StateProof::from_bytes(&trailing).is_err());
        assert!(StateProof::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut bad_terminal = bytes.clone();
        bad_terminal[0] = 2;
        assert!(StateProof::from_bytes(&bad_terminal).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn incremental_and_batch_updates_match_the_definition(
            ops in prop::collection::vec((0u64..64, prop::option::weighted(0.8, 0u64..1000)), 1..120),
        ) {
            let mut one_by_one = SparseMerkleTree::new(MemoryStateStore::new());
            let mut model = BTreeMap::new();
            for (id, v) in &ops {
                let key = state_key(*id);
                match v {
                    Some(v) => { one_by_one.insert(key, value(*v)).unwrap(); model.insert(key, value(*v)); }
                    None => { one_by_one.remove(key).unwrap(); model.remove(&key); }
                }
            }
            let mut batch = SparseMerkleTree::new(MemoryStateStore::new());
            batch.apply(ops.iter().map(|(id, v)| (state_key(*id), v.map(value)))).unwrap();
            let expected = reference_root(&model);
            prop_assert_eq!(one_by_one.root(), expected);
            prop_assert_eq!(batch.root(), expected);
        }

        #[test]
        fn proofs_verify_and_mutations_fail(
            ids in prop::collection::btree_set(any::<u64>(), 0..150),
            probe in any::<u64>(),
            flip in any::<usize>(),
        ) {
            let mut tree = SparseMerkleTree::new(MemoryStateStore::new());
            tree.apply(ids.iter().map(|id| (state_key(*id), Some(value(*id))))).unwrap();
            let root = tree.root();

            for id in ids.iter().take(20) {
                let key = state_key(*id);
                let proof = tree.prove(&key).unwrap();
                prop_assert!(proof.verify_inclusion(&root, &key, &value(*id)).is_ok());
                prop_assert!(proof.verify_inclusion(&root, &key, &value(id ^ 1)).is_err());
                prop_assert!(proof.verify_non_inclusion(&root, &key).is_err());
                let decoded = StateProof::from_bytes(&proof.to_bytes()).unwrap();
                prop_assert_eq!(&decoded, &proof);

                // Any flipped bit in the encoding breaks decoding or verification.
                let mut bytes = proof.to_bytes();
                let pos = flip % (bytes.len() * 8);
                bytes[pos / 8] ^= 0x80 >> (pos % 8);
                let still_ok = StateProof::from_bytes(&bytes)
                    .map(|p| p.verify_inclusion(&root, &key, &value(*id)).is_ok())
                    .unwrap_or(false);
                prop_assert!(!still_ok, "mutated proof verified");

                // The proof is for this key only.
                let other = state_key(id.wrapping_add(1));
                prop_assert!(proof.verify_inclusion(&root, &other, &value(*id)).is_err());
            }

            if !ids.contains(&probe) {
                let key = state_key(probe);
                let proof = tree.prove(&key).unwrap();
                prop_assert!(proof.verify_non_inclusion(&root, &key).is_ok());
                prop_assert!(proof.verify_inclusion(&root, &key, &value(probe)).is_err());
                let mut wrong_root = root;
                wrong_root[flip % 32] ^= 1;
                prop_assert!(proof.verify_non_inclusion(&wrong_root, &key).is_err());
            }
        }

        #[test]
        fn old_roots_keep_proving_after_updates(ids in prop::collection::btree_set(any::<u64>(), 1..60)) {
            let mut tree = SparseMerkleTree::new(MemoryStateStore::new());
            let first: Vec<u64> = ids.iter().copied().collect();
            tree.apply(first.iter().map(|id| (state_key(*id), Some(value(*id))))).unwrap();
            let old_root = tree.root();
            tree.apply(first.iter().map(|id| (state_key(*id), Some(value(id ^ 0xff))))).unwrap();
            let key = state_key(first[0]);
            let old = tree.prove_at(&old_root, &key).unwrap();
            prop_assert!(old.verify_inclusion(&old_root, &key, &value(first[0])).is_ok());
            let new = tree.prove(&key).unwrap();
            prop_assert!(new.verify_inclusion(&tree.root(), &key, &value(first[0] ^ 0xff)).is_ok());
        }
    }
}
