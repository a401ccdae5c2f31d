//! The verifier's own view of the Bitcoin chain.
//!
//! [`verify`](super::verify) never takes block headers from the bundle on
//! trust: it asks a [`ChainView`] which block is at which height. Two views are
//! provided: [`HeaderChain`], a header chain checked for linkage and proof of
//! work when it is built (from a headers file, say), and
//! [`RpcChainView`](super::RpcChainView), a Bitcoin Core node the verifier runs.

use std::{collections::HashMap, path::Path};

use bitcoin::{
    block::Header, consensus::encode::deserialize, hashes::Hash as _, BlockHash, Network,
};

use super::pow::{decode_compact, hash_as_number, permitted_transition, NetworkRules};

/// A failure of a chain view's backend (I/O, RPC).
#[derive(Debug, thiserror::Error)]
#[error("chain view: {0}")]
pub struct ChainViewError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl ChainViewError {
    /// Wraps a backend error.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(e.into())
    }
}

/// Which block is where on the chain the verifier believes in.
///
/// Implementations answer for their *active* chain only: a block on a stale
/// branch has no height.
pub trait ChainView {
    /// The header at `height` on the active chain, if the chain is that long.
    fn header_at(&self, height: u32) -> Result<Option<Header>, ChainViewError>;

    /// The height of `hash` if it is on the active chain.
    fn height_of(&self, hash: &BlockHash) -> Result<Option<u32>, ChainViewError>;

    /// Height of the active chain's tip.
    fn tip_height(&self) -> Result<u32, ChainViewError>;
}

impl<T: ChainView + ?Sized> ChainView for &T {
    fn header_at(&self, height: u32) -> Result<Option<Header>, ChainViewError> {
        (**self).header_at(height)
    }

    fn height_of(&self, hash: &BlockHash) -> Result<Option<u32>, ChainViewError> {
        (**self).height_of(hash)
    }

    fn tip_height(&self) -> Result<u32, ChainViewError> {
        (**self).tip_height()
    }
}

/// A block the verifier trusts without checking what came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its height.
    pub height: u32,
    /// Its hash.
    pub hash: BlockHash,
}

/// Why a header chain was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderChainError {
    /// The file could not be read.
    #[error("reading headers file: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a whole number of 80-byte headers, or has none.
    #[error("headers file must hold one or more 80-byte headers, got {0} bytes")]
    Length(usize),
    /// The first header is not the expected genesis or checkpoint block.
    #[error("first header {found} is not the expected start block {expected}")]
    WrongStart {
        /// The hash the start must have.
        expected: BlockHash,
        /// The first header's hash.
        found: BlockHash,
    },
    /// A header does not name its predecessor.
    #[error("header at height {0} does not link to its predecessor")]
    Linkage(u32),
    /// A header's hash does not meet its target.
    #[error("header at height {0} does not meet its proof-of-work target")]
    ProofOfWork(u32),
    /// A header's difficulty is not allowed by the network's rules.
    #[error("header at height {0} has a difficulty the network does not allow")]
    Difficulty(u32),
    /// More headers than a `u32` height can hold.
    #[error("header chain too long")]
    TooLong,
}

/// A chain of headers checked for linkage and proof of work, kept in memory.
#[derive(Debug, Clone)]
pub struct HeaderChain {
    start: u32,
    headers: Vec<Header>,
    index: HashMap<BlockHash, u32>,
}

/// Checks that `header`'s `bits` are allowed and that its hash meets them
/// (§11.6): Core's compact decoding, the network's limit, the retarget rule
/// against `prev` (the previous header, when known), then the hash.
pub(crate) fn check_header_work(
    rules: &NetworkRules,
    header: &Header,
    height: u32,
    prev: Option<&Header>,
) -> Result<(), HeaderChainError> {
    let bits = header.bits.to_consensus();
    let target = decode_compact(bits).ok_or(HeaderChainError::Difficulty(height))?;
    if target > rules.pow_limit {
        return Err(HeaderChainError::Difficulty(height));
    }
    if let Some(prev) = prev {
        if !permitted_transition(rules, height, prev.bits.to_consensus(), bits) {
            return Err(HeaderChainError::Difficulty(height));
        }
    }
    if hash_as_number(&header.block_hash()) > target {
        return Err(HeaderChainError::ProofOfWork(height));
    }
    Ok(())
}

impl HeaderChain {
    /// A chain starting at `network`'s genesis block; `headers[0]` must be the genesis header.
    pub fn from_genesis(network: Network, headers: Vec<Header>) -> Result<Self, HeaderChainError> {
        let genesis = NetworkRules::for_network(network).genesis;
        Self::build(
            network,
            Checkpoint {
                height: 0,
                hash: genesis,
            },
            headers,
        )
    }

    /// A chain starting at a trusted checkpoint; `headers[0]` must be that block.
    pub fn from_checkpoint(
        network: Network,
        checkpoint: Checkpoint,
        headers: Vec<Header>,
    ) -> Result<Self, HeaderChainError> {
        Self::build(network, checkpoint, headers)
    }

    /// Loads a headers file: consecutive 80-byte consensus-encoded headers, the
    /// first being the genesis block (`checkpoint = None`) or the checkpoint.
    pub fn load(
        path: &Path,
        network: Network,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Self, HeaderChainError> {
        let bytes = std::fs::read(path)?;
        Self::from_file_bytes(&bytes, network, checkpoint)
    }

    /// [`HeaderChain::load`] from bytes already in memory.
    pub fn from_file_bytes(
        bytes: &[u8],
        network: Network,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Self, HeaderChainError> {
        if bytes.is_empty() || bytes.len() % 80 != 0 {
            return Err(HeaderChainError::Length(bytes.len()));
        }
        let headers = bytes
            .chunks_exact(80)
            .map(|c| deserialize::<Header>(c).expect("80 bytes always decode as a header"))
            .collect();
        match checkpoint {
            None => Self::from_genesis(network, headers),
            Some(c) => Self::from_checkpoint(network, c, headers),
        }
    }

    /// The file form: headers concatenated, 80 bytes each.
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.headers.len() * 80);
        for h in &self.headers {
            out.extend_from_slice(&bitcoin::consensus::serialize(h));
        }
        out
    }

    fn build(
        network: Network,
        start: Checkpoint,
        headers: Vec<Header>,
    ) -> Result<Self, HeaderChainError> {
        let rules = NetworkRules::for_network(network);
        let first = headers.first().ok_or(HeaderChainError::Length(0))?;
        if first.block_hash() != start.hash {
            return Err(HeaderChainError::WrongStart {
                expected: start.hash,
                found: first.block_hash(),
            });
        }
        let end = u32::try_from(headers.len())
            .ok()
            .and_then(|n| start.height.checked_add(n - 1))
            .ok_or(HeaderChainError::TooLong)?;
        let mut index = HashMap::with_capacity(headers.len());
        let mut prev_hash = BlockHash::all_zeros();
        for (i, h) in headers.iter().enumerate() {
            let height = start.height + i as u32;
            let prev = i.checked_sub(1).map(|p| &headers[p]);
            if prev.is_some() && h.prev_blockhash != prev_hash {
                return Err(HeaderChainError::Linkage(height));
            }
            // The first header is trusted by hash; its predecessor's bits are unknown.
            check_header_work(&rules, h, height, prev)?;
            prev_hash = h.block_hash();
            index.insert(prev_hash, height);
        }
        debug_assert_eq!(start.height + headers.len() as u32 - 1, end);
        Ok(Self {
            start: start.height,
            headers,
            index,
        })
    }

    /// Height of the first header.
    pub fn start_height(&self) -> u32 {
        self.start
    }
}

impl ChainView for HeaderChain {
    fn header_at(&self, height: u32) -> Result<Option<Header>, ChainViewError> {
        Ok(height
            .checked_sub(self.start)
            .and_then(|i| self.headers.get(i as usize))
            .copied())
    }

    fn height_of(&self, hash: &BlockHash) -> Result<Option<u32>, ChainViewError> {
        Ok(self.index.get(hash).copied())
    }

    fn tip_height(&self) -> Result<u32, ChainViewError> {
        Ok(self.start + self.headers.len() as u32 - 1)
    }
}
