//! Canonical binary encoding of [`ProofBundle`] (`docs/identity-protocol.md` §11.2).
//!
//! Every length is a fixed-width big-endian integer and the decoder re-encodes
//! what it read and demands the same bytes back, so a bundle has exactly one
//! encoding: a changed byte can never decode to an equivalent bundle.

use bitcoin::{
    consensus::{deserialize, serialize},
    MerkleBlock, Transaction,
};
use nostr::{secp256k1::schnorr::Signature, Event, Kind, PublicKey, Tag, Timestamp};

use super::{LogPath, ProofBundle};
use crate::{
    epoch::{EpochHeader, HEADER_LEN},
    state::StateProof,
};

/// First bytes of every encoded bundle.
pub const BUNDLE_MAGIC: &[u8; 4] = b"CRNP";

/// The bundle format version this code reads and writes.
pub const BUNDLE_VERSION: u8 = 1;

/// Largest accepted encoded bundle. Real bundles are a few KiB; the cap keeps a
/// hostile input from making the decoder allocate much.
pub const MAX_BUNDLE_LEN: usize = 1 << 20;

/// Why bytes are not a canonical bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is larger than [`MAX_BUNDLE_LEN`].
    #[error("bundle of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The magic bytes are wrong.
    #[error("not a Cairn proof bundle")]
    BadMagic,
    /// The version is not [`BUNDLE_VERSION`].
    #[error("unsupported bundle version {0}")]
    UnsupportedVersion(u8),
    /// The input ended inside a field.
    #[error("truncated in {0}")]
    Truncated(&'static str),
    /// A field's content is malformed.
    #[error("malformed {field}: {reason}")]
    Malformed {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The bytes decode, but not from their canonical encoding.
    #[error("{0} is not canonically encoded")]
    NonCanonical(&'static str),
    /// Bytes follow the last field.
    #[error("trailing bytes after the bundle")]
    TrailingBytes,
}

fn malformed(field: &'static str, reason: impl ToString) -> DecodeError {
    DecodeError::Malformed {
        field,
        reason: reason.to_string(),
    }
}

/// High bit of a tag value's length: the value is lowercase hex, stored as its bytes.
const HEX_PACKED: u16 = 0x8000;

/// Whether a tag value is stored hex-packed: non-empty, even length, lowercase hex digits.
/// Keys, signatures, event ids and hashes inside tags are half the size that way.
fn is_packable_hex(v: &str) -> bool {
    !v.is_empty()
        && v.len() % 2 == 0
        && v.len() / 2 < HEX_PACKED as usize
        && v.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Encodes an event without its id (the decoder recomputes it from the rest):
/// `pubkey || sig || u64(created_at) || u16(kind) || u8(#tags)
/// || (u8(#values) || value*)* || u32(len) || content`, where a value is
/// `u16(0x8000 | n) || n bytes` for lowercase hex of `2n` digits and `u16(len) || utf8` otherwise.
pub(crate) fn put_event(out: &mut Vec<u8>, e: &Event) {
    out.extend_from_slice(e.pubkey.as_bytes());
    out.extend_from_slice(e.sig.as_ref());
    out.extend_from_slice(&e.created_at.as_secs().to_be_bytes());
    out.extend_from_slice(&e.kind.as_u16().to_be_bytes());
    let tags: Vec<&Tag> = e.tags.iter().collect();
    out.push(tags.len() as u8);
    for t in tags {
        let values = t.as_slice();
        out.push(values.len() as u8);
        for v in values {
            if is_packable_hex(v) {
                let bytes = hex::decode(v).expect("checked hex");
                out.extend_from_slice(&(HEX_PACKED | bytes.len() as u16).to_be_bytes());
                out.extend_from_slice(&bytes);
            } else {
                out.extend_from_slice(&(v.len() as u16).to_be_bytes());
                out.extend_from_slice(v.as_bytes());
            }
        }
    }
    out.extend_from_slice(&(e.content.len() as u32).to_be_bytes());
    out.extend_from_slice(e.content.as_bytes());
}

/// Whether an event fits the encoding's fixed-width counts.
fn event_fits(e: &Event) -> bool {
    e.tags.len() <= u8::MAX as usize
        && e.tags.iter().all(|t| {
            t.as_slice().len() <= u8::MAX as usize
                && t.as_slice().iter().all(|v| v.len() < HEX_PACKED as usize)
        })
        && e.content.len() <= u32::MAX as usize
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N, field)?.try_into().expect("length checked"))
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn log_path(&mut self, field: &'static str) -> Result<LogPath, DecodeError> {
        let leaf_index = self.u64(field)?;
        let n = self.u8(field)? as usize;
        let path = (0..n)
            .map(|_| self.array::<32>(field))
            .collect::<Result<_, _>>()?;
        Ok(LogPath { leaf_index, path })
    }

    fn string(&mut self, len: usize, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed(field, "not UTF-8"))
    }

    fn event(&mut self, field: &'static str) -> Result<Event, DecodeError> {
        let pubkey = PublicKey::from_byte_array(self.array(field)?);
        let sig =
            Signature::from_slice(&self.array::<64>(field)?).map_err(|e| malformed(field, e))?;
        let created_at = Timestamp::from(self.u64(field)?);
        let kind = Kind::from(self.u16(field)?);
        let n_tags = self.u8(field)?;
        let mut tags = Vec::with_capacity(n_tags as usize);
        for _ in 0..n_tags {
            let n_values = self.u8(field)?;
            let mut values = Vec::with_capacity(n_values as usize);
            for _ in 0..n_values {
                let len = self.u16(field)?;
                if len & HEX_PACKED != 0 {
                    let bytes = self.take((len & !HEX_PACKED) as usize, field)?;
                    if bytes.is_empty() {
                        return Err(malformed(field, "empty hex-packed value"));
                    }
                    values.push(hex::encode(bytes));
                } else {
                    values.push(self.string(len as usize, field)?);
                }
            }
            tags.push(Tag::parse(values).map_err(|e| malformed(field, e))?);
        }
        let len = self.u32(field)? as usize;
        let content = self.string(len, field)?;
        let tags = nostr::Tags::from_list(tags);
        // The id is a hash of the other fields, so the encoding leaves it out.
        let id = crate::nip01::event_id(
            &pubkey,
            created_at.as_secs(),
            kind.as_u16(),
            &tags,
            &content,
        );
        Ok(Event::new(id, pubkey, created_at, kind, tags, content, sig))
    }

    fn events(&mut self, field: &'static str) -> Result<Vec<Event>, DecodeError> {
        let n = self.u8(field)?;
        (0..n).map(|_| self.event(field)).collect()
    }

    fn blob32(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)? as usize;
        self.take(len, field)
    }
}

/// Why a bundle cannot be encoded.
fn check_encodable(b: &ProofBundle) -> Result<(), DecodeError> {
    let too_many = |field| malformed(field, "too many entries for the encoding");
    if b.record.len() > u8::MAX as usize {
        return Err(malformed("record", "longer than 255 bytes"));
    }
    if b.ops.len() > u8::MAX as usize || !b.ops.iter().all(event_fits) {
        return Err(too_many("ops"));
    }
    if b.attestations.len() > u8::MAX as usize || !b.attestations.iter().all(event_fits) {
        return Err(too_many("attestations"));
    }
    if b.attestation_paths.len() != b.attestations.len() {
        return Err(malformed(
            "attestation paths",
            "one path per attestation is required",
        ));
    }
    if std::iter::once(&b.op_path)
        .chain(&b.attestation_paths)
        .any(|p| p.path.len() > u8::MAX as usize)
    {
        return Err(too_many("log path"));
    }
    Ok(())
}

impl ProofBundle {
    /// The canonical binary encoding (§11.2). Fails only for bundles whose
    /// counts do not fit the format (more than 255 events, tags, hashes…),
    /// which no honest node produces.
    pub fn to_bytes(&self) -> Result<Vec<u8>, DecodeError> {
        check_encodable(self)?;
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(BUNDLE_MAGIC);
        out.push(BUNDLE_VERSION);
        out.push(self.record.len() as u8);
        out.extend_from_slice(&self.record);
        for events in [&self.ops, &self.attestations] {
            out.push(events.len() as u8);
            for e in events {
                put_event(&mut out, e);
            }
        }
        for p in std::iter::once(&self.op_path).chain(&self.attestation_paths) {
            out.extend_from_slice(&p.leaf_index.to_be_bytes());
            out.push(p.path.len() as u8);
            for h in &p.path {
                out.extend_from_slice(h);
            }
        }
        let state = self.state_proof.to_bytes();
        out.extend_from_slice(&(state.len() as u16).to_be_bytes());
        out.extend_from_slice(&state);
        out.extend_from_slice(&self.epoch_header.to_bytes());
        let tx = serialize(&strip_witness(&self.anchor_tx));
        out.extend_from_slice(&(tx.len() as u32).to_be_bytes());
        out.extend_from_slice(&tx);
        out.extend_from_slice(&self.block_height.to_be_bytes());
        let mb = serialize(&self.merkle_block);
        out.extend_from_slice(&(mb.len() as u32).to_be_bytes());
        out.extend_from_slice(&mb);
        Ok(out)
    }

    /// Decodes [`ProofBundle::to_bytes`]. Only the canonical encoding of a
    /// bundle is accepted; this does not verify anything beyond the syntax.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_BUNDLE_LEN {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let mut r = Reader { rest: bytes };
        if r.take(BUNDLE_MAGIC.len(), "magic")? != BUNDLE_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u8("version")?;
        if version != BUNDLE_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let record_len = r.u8("record")? as usize;
        let record = r.take(record_len, "record")?.to_vec();
        let ops = r.events("ops")?;
        let attestations = r.events("attestations")?;
        let op_path = r.log_path("op path")?;
        let attestation_paths = (0..attestations.len())
            .map(|_| r.log_path("attestation path"))
            .collect::<Result<Vec<_>, _>>()?;
        let state_len = r.u16("state proof")? as usize;
        let state_proof = StateProof::from_bytes(r.take(state_len, "state proof")?)
            .map_err(|e| malformed("state proof", e))?;
        let epoch_header = EpochHeader::from_bytes(r.take(HEADER_LEN, "epoch header")?)
            .map_err(|e| malformed("epoch header", e))?;
        let tx_bytes = r.blob32("anchor transaction")?;
        let anchor_tx: Transaction =
            deserialize(tx_bytes).map_err(|e| malformed("anchor transaction", e))?;
        if anchor_tx.input.iter().any(|i| !i.witness.is_empty()) {
            return Err(malformed(
                "anchor transaction",
                "witness data is not part of a bundle",
            ));
        }
        let block_height = r.u32("block height")?;
        let mb_bytes = r.blob32("merkle block")?;
        let merkle_block: MerkleBlock =
            deserialize(mb_bytes).map_err(|e| malformed("merkle block", e))?;
        if !r.rest.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        let bundle = Self {
            record,
            ops,
            attestations,
            op_path,
            attestation_paths,
            state_proof,
            epoch_header,
            anchor_tx,
            block_height,
            merkle_block,
        };
        // One representation per bundle: whatever the parsers tolerated (odd
        // varints, tag shapes, transaction formats) shows up as a difference here.
        if bundle.to_bytes()? != bytes {
            return Err(DecodeError::NonCanonical("bundle"));
        }
        Ok(bundle)
    }
}

/// The transaction with its witnesses removed: the bytes its txid commits to.
pub(crate) fn strip_witness(tx: &Transaction) -> Transaction {
    let mut stripped = tx.clone();
    for input in &mut stripped.input {
        input.witness.clear();
    }
    stripped
}
