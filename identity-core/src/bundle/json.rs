//! JSON form of a bundle, for HTTP APIs and humans: events as NIP-01 JSON,
//! everything binary as lowercase hex. The binary encoding stays the normative
//! one (it is canonical); JSON converts to and from the same [`ProofBundle`].
//!
//! Decoding is strict so that two readers of one JSON bundle see one bundle:
//! unknown fields are refused (in events too), hex must be lowercase, and an
//! event's `id` is required and kept as given, so verification compares it
//! with the NIP-01 hash of the other fields (§11.3 steps 2 and 3).

use bitcoin::consensus::{deserialize, serialize};
use nostr::Event;
use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};

use super::{codec::strip_witness, LogPath, ProofBundle, BUNDLE_VERSION};
use bitcoin::{MerkleBlock, Transaction};

use crate::{epoch::EpochHeader, state::StateProof, Hash};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogPathJson {
    leaf_index: u64,
    #[serde(with = "crate::log::hex_hashes")]
    path: Vec<Hash>,
}

/// A NIP-01 event object with exactly its seven fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventJson {
    id: String,
    pubkey: String,
    created_at: u64,
    kind: u16,
    tags: Vec<Vec<String>>,
    content: String,
    sig: String,
}

/// Decodes lowercase hex of exactly `N` bytes.
fn hex_array<const N: usize, E: serde::de::Error>(field: &str, s: &str) -> Result<[u8; N], E> {
    let bytes = lower_hex(field, s)?;
    bytes
        .try_into()
        .map_err(|_| E::custom(format!("{field}: expected {N} bytes")))
}

/// Decodes lowercase hex; uppercase digits are refused (one spelling per value).
pub(super) fn lower_hex<E: serde::de::Error>(field: &str, s: &str) -> Result<Vec<u8>, E> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(E::custom(format!("{field}: hex must be lowercase")));
    }
    hex::decode(s).map_err(|e| E::custom(format!("{field}: {e}")))
}

fn de_events<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
    use nostr::{secp256k1::schnorr::Signature, EventId, Kind, PublicKey, Tag, Tags, Timestamp};
    let raw = Vec::<EventJson>::deserialize(d)?;
    raw.into_iter()
        .map(|e| {
            let tags = e
                .tags
                .into_iter()
                .map(|t| Tag::parse(t).map_err(|err| D::Error::custom(format!("tags: {err}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let sig = Signature::from_slice(&hex_array::<64, D::Error>("sig", &e.sig)?)
                .map_err(|err| D::Error::custom(format!("sig: {err}")))?;
            Ok(Event::new(
                EventId::from_byte_array(hex_array("id", &e.id)?),
                PublicKey::from_byte_array(hex_array("pubkey", &e.pubkey)?),
                Timestamp::from(e.created_at),
                Kind::from(e.kind),
                Tags::from_list(tags),
                e.content,
                sig,
            ))
        })
        .collect()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleJson {
    version: u8,
    record: String,
    #[serde(deserialize_with = "de_events")]
    ops: Vec<Event>,
    #[serde(deserialize_with = "de_events")]
    attestations: Vec<Event>,
    op_path: LogPathJson,
    attestation_paths: Vec<LogPathJson>,
    state_proof: String,
    epoch_header: String,
    anchor_tx: String,
    block_height: u32,
    merkle_block: String,
}

impl From<&LogPath> for LogPathJson {
    fn from(p: &LogPath) -> Self {
        Self {
            leaf_index: p.leaf_index,
            path: p.path.clone(),
        }
    }
}

impl From<LogPathJson> for LogPath {
    fn from(p: LogPathJson) -> Self {
        Self {
            leaf_index: p.leaf_index,
            path: p.path,
        }
    }
}

/// The hex fields every bundle kind carries for its anchor: header,
/// transaction (without witness) and Merkle block.
pub(super) struct AnchorHex {
    pub epoch_header: String,
    pub anchor_tx: String,
    pub merkle_block: String,
}

impl AnchorHex {
    pub(super) fn encode(header: &EpochHeader, tx: &Transaction, mb: &MerkleBlock) -> Self {
        Self {
            epoch_header: hex::encode(header.to_bytes()),
            anchor_tx: hex::encode(serialize(&strip_witness(tx))),
            merkle_block: hex::encode(serialize(mb)),
        }
    }

    pub(super) fn decode<E: serde::de::Error>(
        &self,
    ) -> Result<(EpochHeader, Transaction, MerkleBlock), E> {
        let bytes = |field: &str, s: &str| lower_hex::<E>(field, s);
        let header = EpochHeader::from_bytes(&bytes("epoch_header", &self.epoch_header)?)
            .map_err(|e| E::custom(format!("epoch_header: {e}")))?;
        let tx: Transaction = deserialize(&bytes("anchor_tx", &self.anchor_tx)?)
            .map_err(|e| E::custom(format!("anchor_tx: {e}")))?;
        let mb = deserialize(&bytes("merkle_block", &self.merkle_block)?)
            .map_err(|e| E::custom(format!("merkle_block: {e}")))?;
        Ok((header, strip_witness(&tx), mb))
    }
}

impl Serialize for ProofBundle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let anchor = AnchorHex::encode(&self.epoch_header, &self.anchor_tx, &self.merkle_block);
        BundleJson {
            version: BUNDLE_VERSION,
            record: hex::encode(&self.record),
            ops: self.ops.clone(),
            attestations: self.attestations.clone(),
            op_path: (&self.op_path).into(),
            attestation_paths: self.attestation_paths.iter().map(Into::into).collect(),
            state_proof: hex::encode(self.state_proof.to_bytes()),
            epoch_header: anchor.epoch_header,
            anchor_tx: anchor.anchor_tx,
            block_height: self.block_height,
            merkle_block: anchor.merkle_block,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ProofBundle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = BundleJson::deserialize(d)?;
        if j.version != BUNDLE_VERSION {
            return Err(D::Error::custom(format!(
                "unsupported bundle version {}",
                j.version
            )));
        }
        let bytes = |field: &str, s: &str| lower_hex::<D::Error>(field, s);
        let (epoch_header, anchor_tx, merkle_block) = AnchorHex {
            epoch_header: j.epoch_header,
            anchor_tx: j.anchor_tx,
            merkle_block: j.merkle_block,
        }
        .decode()?;
        Ok(Self {
            record: bytes("record", &j.record)?,
            ops: j.ops,
            attestations: j.attestations,
            op_path: j.op_path.into(),
            attestation_paths: j.attestation_paths.into_iter().map(Into::into).collect(),
            state_proof: StateProof::from_bytes(&bytes("state_proof", &j.state_proof)?)
                .map_err(|e| D::Error::custom(format!("state_proof: {e}")))?,
            epoch_header,
            anchor_tx,
            block_height: j.block_height,
            merkle_block,
        })
    }
}
