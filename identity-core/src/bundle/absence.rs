//! Absence bundles: proof that an `x_uid` has **no** record in an anchored
//! epoch (`docs/identity-protocol.md` §11.5).
//!
//! The state tree is keyed by `x_uid`, so a §8.1 proof that ends in an empty
//! subtree, or in another key's leaf, shows that nothing is bound to it under
//! the header's `state_root`. The rest is the anchor chain a [`ProofBundle`]
//! carries (header, transaction, Merkle block), verified the same way.
//!
//! [`ProofBundle`]: super::ProofBundle

use bitcoin::{BlockHash, MerkleBlock, Transaction, Txid};
use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};

use super::json::AnchorHex;
use super::verify::verify_anchored;
use super::{BundleError, ChainView, RecordError, VerifyPolicy};
use crate::epoch::EpochHeader;
use crate::state::{state_key, StateProof};
use crate::Hash;

/// Version of the absence bundle's JSON form.
pub const ABSENCE_VERSION: u8 = 1;

/// "No record for `x_uid`" as of one anchored epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsenceBundle {
    /// The X user id shown absent.
    pub x_uid: u64,
    /// §8.1 proof for `key(x_uid)` that ends in an empty subtree or another key's leaf.
    pub state_proof: StateProof,
    /// The epoch header whose `state_root` the proof leads to.
    pub epoch_header: EpochHeader,
    /// Its anchor transaction (without witness data).
    pub anchor_tx: Transaction,
    /// Height of the block holding the anchor.
    pub block_height: u32,
    /// `gettxoutproof` of the anchor in that block.
    pub merkle_block: MerkleBlock,
}

/// What a verified absence bundle shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAbsence {
    /// The X user id with no record.
    pub x_uid: u64,
    /// The epoch header it is absent from.
    pub epoch: EpochHeader,
    /// Its hash.
    pub header_hash: Hash,
    /// The anchor transaction.
    pub anchor_txid: Txid,
    /// The block holding it.
    pub block_hash: BlockHash,
    /// That block's height in the verifier's chain.
    pub block_height: u32,
    /// Confirmations in the verifier's chain.
    pub confirmations: u32,
}

/// Verifies `bundle` (§11.5): `x_uid` non-zero, the state proof shows
/// `key(x_uid)` absent under the header's `state_root`, and the header is
/// anchored on the verifier's chain (§11.3 steps 8–12).
pub fn verify_absence<C: ChainView + ?Sized>(
    bundle: &AbsenceBundle,
    chain: &C,
    policy: &VerifyPolicy,
) -> Result<VerifiedAbsence, BundleError> {
    if bundle.x_uid == 0 {
        return Err(BundleError::Record(RecordError::ZeroUid));
    }
    let header = &bundle.epoch_header;
    bundle
        .state_proof
        .verify_non_inclusion(&header.state_root, &state_key(bundle.x_uid))
        .map_err(BundleError::StateProof)?;
    let anchored = verify_anchored(
        header,
        &bundle.anchor_tx,
        bundle.block_height,
        &bundle.merkle_block,
        chain,
        policy,
    )?;
    Ok(VerifiedAbsence {
        x_uid: bundle.x_uid,
        epoch: *header,
        header_hash: header.hash(),
        anchor_txid: anchored.txid,
        block_hash: anchored.block_hash,
        block_height: anchored.block_height,
        confirmations: anchored.confirmations,
    })
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AbsenceJson {
    version: u8,
    /// Decimal string, as everywhere in the API (X ids exceed JSON's safe integers).
    x_uid: String,
    state_proof: String,
    epoch_header: String,
    anchor_tx: String,
    block_height: u32,
    merkle_block: String,
}

impl Serialize for AbsenceBundle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let anchor = AnchorHex::encode(&self.epoch_header, &self.anchor_tx, &self.merkle_block);
        AbsenceJson {
            version: ABSENCE_VERSION,
            x_uid: self.x_uid.to_string(),
            state_proof: hex::encode(self.state_proof.to_bytes()),
            epoch_header: anchor.epoch_header,
            anchor_tx: anchor.anchor_tx,
            block_height: self.block_height,
            merkle_block: anchor.merkle_block,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for AbsenceBundle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = AbsenceJson::deserialize(d)?;
        if j.version != ABSENCE_VERSION {
            return Err(D::Error::custom(format!(
                "unsupported absence bundle version {}",
                j.version
            )));
        }
        let (epoch_header, anchor_tx, merkle_block) = AnchorHex {
            epoch_header: j.epoch_header,
            anchor_tx: j.anchor_tx,
            merkle_block: j.merkle_block,
        }
        .decode()?;
        let state_proof = super::json::lower_hex::<D::Error>("state_proof", &j.state_proof)?;
        Ok(Self {
            // Canonical decimal, as in tags (§2): "+5" and "05" are not 5.
            x_uid: crate::binding::parse_decimal("x_uid", &j.x_uid)
                .map_err(|e| D::Error::custom(e.to_string()))?,
            state_proof: StateProof::from_bytes(&state_proof)
                .map_err(|e| D::Error::custom(format!("state_proof: {e}")))?,
            epoch_header,
            anchor_tx,
            block_height: j.block_height,
            merkle_block,
        })
    }
}
