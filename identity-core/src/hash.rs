//! Hash primitives shared by the log, the state tree and the epoch headers.
//!
//! Everything Cairn commits to is SHA-256. The Merkle log keeps the exact
//! RFC 6962 prefixes so that off-the-shelf Certificate Transparency tooling can
//! check it; everything else uses BIP-340 style *tagged* hashes
//! (`SHA256(SHA256(tag) || SHA256(tag) || msg)`), so a hash computed for one
//! purpose can never be replayed as a hash for another.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// Plain SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// A hashing domain: a tag whose doubled hash prefixes every message.
///
/// The prefixed hasher state is computed once and cloned for each use, because
/// the state tree hashes millions of nodes and re-hashing the 64-byte prefix
/// every time would double its cost.
pub struct Tag {
    name: &'static str,
    prefixed: OnceLock<Sha256>,
}

impl Tag {
    /// A tag named `name` (ASCII, e.g. `"cairn/state/leaf"`).
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            prefixed: OnceLock::new(),
        }
    }

    /// The tag's name as it is hashed.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A hasher that has already absorbed `SHA256(tag) || SHA256(tag)`.
    pub fn engine(&self) -> Sha256 {
        self.prefixed
            .get_or_init(|| {
                let t = sha256(self.name.as_bytes());
                let mut h = Sha256::new();
                h.update(t);
                h.update(t);
                h
            })
            .clone()
    }

    /// Tagged hash of the concatenation of `parts`.
    pub fn hash(&self, parts: &[&[u8]]) -> Hash {
        let mut h = self.engine();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }
}

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tag").field(&self.name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_hash_matches_bip340_definition() {
        // Recompute the definition the slow way; the cached prefix must not change the result.
        let tag = Tag::new("cairn/test");
        let t = sha256(b"cairn/test");
        let mut msg = Vec::new();
        msg.extend_from_slice(&t);
        msg.extend_from_slice(&t);
        msg.extend_from_slice(b"hello");
        assert_eq!(tag.hash(&[b"hel", b"lo"]), sha256(&msg));
        // Second use goes through the cached state.
        assert_eq!(tag.hash(&[b"hello"]), sha256(&msg));
    }

    #[test]
    fn distinct_tags_separate_domains() {
        let a = Tag::new("cairn/a").hash(&[b"x"]);
        let b = Tag::new("cairn/b").hash(&[b"x"]);
        assert_ne!(a, b);
    }
}
