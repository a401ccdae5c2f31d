//! Epoch headers and their Bitcoin anchor.
//!
//! An epoch commits to the log and the state tree as they stood when it closed.
//! Its header hash goes into one OP_RETURN output; the anchor transaction also
//! spends the previous anchor's change output, so the anchors form a chain on
//! Bitcoin. The header names the previous epoch by its **header hash**, not by
//! its anchor txid: an anchor's txid changes when it is fee-bumped (RBF) or
//! re-anchored after a reorg, while the header it carries does not, so a link
//! by header hash is known at close time and can never go stale.

use bitcoin::{
    opcodes::all::OP_RETURN, script::PushBytesBuf, Script, ScriptBuf, Transaction, Txid,
};
use nostr::{Event, EventBuilder, Kind, Tag, TagKind};

use crate::{hash::Tag as HashTag, kinds, Hash};

/// The header version this code writes and reads. Version 1 linked epochs by
/// the previous anchor's txid, which fee bumps and re-anchoring invalidate; it
/// is withdrawn and rejected (the field's meaning changed, its size did not).
pub const HEADER_VERSION: u8 = 2;

/// Encoded header length: version (1) + epoch (8) + previous header hash (32) + log size (8) + two roots (64).
pub const HEADER_LEN: usize = 113;

/// Magic prefix of the OP_RETURN payload. Short, because every byte is paid for.
pub const MAGIC: &[u8; 5] = b"CAIRN";

/// Version of the OP_RETURN payload layout.
pub const PAYLOAD_VERSION: u8 = 1;

/// OP_RETURN payload length: magic (5) + payload version (1) + header hash (32).
pub const PAYLOAD_LEN: usize = MAGIC.len() + 1 + 32;

/// Bitcoin Core's default relay policy caps OP_RETURN data at 80 bytes.
pub const MAX_OP_RETURN_DATA: usize = 80;

const _: () = assert!(PAYLOAD_LEN <= MAX_OP_RETURN_DATA);

static HEADER_TAG: HashTag = HashTag::new("cairn/epoch-header");

/// Problems with headers, payloads and anchor transactions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    /// The header has the wrong length.
    #[error("epoch header must be {HEADER_LEN} bytes, got {0}")]
    HeaderLength(usize),
    /// The header version is not one this code understands.
    #[error("unsupported epoch header version {0}")]
    UnsupportedVersion(u8),
    /// The payload is not a Cairn anchor payload.
    #[error("not a Cairn anchor payload")]
    NotAnchorPayload,
    /// The payload version is not one this code understands.
    #[error("unsupported anchor payload version {0}")]
    UnsupportedPayloadVersion(u8),
    /// The script is not `OP_RETURN <one push>`.
    #[error("not an OP_RETURN script with a single push")]
    NotOpReturn,
    /// A Cairn output that is not the canonical 40-byte script (another push
    /// opcode, trailing data, a payload of the wrong length).
    #[error("Cairn output is not the canonical OP_RETURN script")]
    NonCanonicalAnchorScript,
    /// The transaction has no Cairn anchor output.
    #[error("transaction has no Cairn anchor output")]
    NoAnchorOutput,
    /// The transaction has more than one Cairn anchor output, which is ambiguous.
    #[error("transaction has more than one Cairn anchor output")]
    MultipleAnchorOutputs,
    /// The anchor commits to a different header.
    #[error("anchor commits to a different header hash")]
    HeaderHashMismatch,
    /// The header does not follow its predecessor.
    #[error("header does not follow its predecessor: {0}")]
    BrokenChain(&'static str),
    /// An epoch event is malformed.
    #[error("malformed epoch event: {0}")]
    Event(String),
}

/// The header of one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochHeader {
    /// Header format version ([`HEADER_VERSION`]).
    pub version: u8,
    /// Epoch number: 0 for the first anchored epoch, then +1 per anchored epoch.
    pub epoch: u64,
    /// Header hash of the previous epoch; all zeros for epoch 0.
    pub prev_header_hash: Hash,
    /// Number of leaves in the log at the end of the epoch.
    pub log_size: u64,
    /// Log root at `log_size`.
    pub log_root: Hash,
    /// State tree root at the end of the epoch.
    pub state_root: Hash,
}

impl EpochHeader {
    /// Fixed encoding: `version || epoch (u64 BE) || prev_header_hash (32)
    /// || log_size (u64 BE) || log_root || state_root`.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.version;
        out[1..9].copy_from_slice(&self.epoch.to_be_bytes());
        out[9..41].copy_from_slice(&self.prev_header_hash);
        out[41..49].copy_from_slice(&self.log_size.to_be_bytes());
        out[49..81].copy_from_slice(&self.log_root);
        out[81..113].copy_from_slice(&self.state_root);
        out
    }

    /// Decodes [`EpochHeader::to_bytes`]; rejects other lengths and unknown versions.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EpochError> {
        if bytes.len() != HEADER_LEN {
            return Err(EpochError::HeaderLength(bytes.len()));
        }
        if bytes[0] != HEADER_VERSION {
            return Err(EpochError::UnsupportedVersion(bytes[0]));
        }
        let arr32 = |r: std::ops::Range<usize>| -> [u8; 32] {
            bytes[r].try_into().expect("range is 32 bytes")
        };
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Ok(Self {
            version: bytes[0],
            epoch: u64_at(1),
            prev_header_hash: arr32(9..41),
            log_size: u64_at(41),
            log_root: arr32(49..81),
            state_root: arr32(81..113),
        })
    }

    /// Header hash: `TH("cairn/epoch-header", to_bytes())`.
    pub fn hash(&self) -> Hash {
        HEADER_TAG.hash(&[&self.to_bytes()])
    }

    /// The OP_RETURN data: `b"CAIRN" || PAYLOAD_VERSION || header hash`.
    pub fn op_return_payload(&self) -> [u8; PAYLOAD_LEN] {
        let mut out = [0u8; PAYLOAD_LEN];
        out[..MAGIC.len()].copy_from_slice(MAGIC);
        out[MAGIC.len()] = PAYLOAD_VERSION;
        out[MAGIC.len() + 1..].copy_from_slice(&self.hash());
        out
    }

    /// The anchor output's script: `OP_RETURN <payload>`.
    pub fn anchor_script(&self) -> ScriptBuf {
        let push =
            PushBytesBuf::try_from(self.op_return_payload().to_vec()).expect("38 bytes fit a push");
        ScriptBuf::new_op_return(push)
    }

    /// Checks that `tx` anchors this header (exactly one Cairn output, with this hash).
    pub fn verify_anchor(&self, tx: &Transaction) -> Result<(), EpochError> {
        let (_, hash) = find_anchor(tx)?;
        if hash == self.hash() {
            Ok(())
        } else {
            Err(EpochError::HeaderHashMismatch)
        }
    }

    /// Checks the fields that tie this header to the previous one. Log
    /// append-only-ness between the two sizes is shown separately with a
    /// consistency proof. Neither header's anchor txid plays a part, so the
    /// link holds however often either anchor was fee-bumped or re-anchored.
    pub fn verify_successor_of(&self, prev: &EpochHeader) -> Result<(), EpochError> {
        if prev.epoch.checked_add(1) != Some(self.epoch) {
            return Err(EpochError::BrokenChain("epoch number is not previous + 1"));
        }
        if self.prev_header_hash != prev.hash() {
            return Err(EpochError::BrokenChain("previous header hash differs"));
        }
        if self.log_size <= prev.log_size {
            // Empty epochs are skipped, so every anchored epoch adds at least one leaf.
            return Err(EpochError::BrokenChain("log did not grow"));
        }
        Ok(())
    }

    /// An unsigned epoch event (kind [`kinds::EPOCH_HEADER`]) for publication on
    /// relays: tags `["epoch", n]`, `["header", hex(to_bytes())]` and, once known,
    /// `["anchor", txid]` (txid in the usual display hex).
    pub fn to_event_builder(&self, anchor_txid: Option<&Txid>) -> EventBuilder {
        let mut tags = vec![
            Tag::custom(TagKind::custom("epoch"), [self.epoch.to_string()]),
            Tag::custom(TagKind::custom("header"), [hex::encode(self.to_bytes())]),
        ];
        if let Some(txid) = anchor_txid {
            tags.push(Tag::custom(TagKind::custom("anchor"), [txid.to_string()]));
        }
        EventBuilder::new(Kind::Custom(kinds::EPOCH_HEADER), "").tags(tags)
    }

    /// Parses and checks an epoch event: signature, kind, header and the
    /// `epoch` tag agreeing with it. Whether its author is a node you trust is up to you.
    pub fn from_event(event: &Event) -> Result<(Self, Option<Txid>), EpochError> {
        let bad = |m: &str| EpochError::Event(m.to_owned());
        event
            .verify()
            .map_err(|e| EpochError::Event(e.to_string()))?;
        if event.kind != Kind::Custom(kinds::EPOCH_HEADER) {
            return Err(bad("wrong kind"));
        }
        let value = |name: &str| -> Option<&str> {
            event
                .tags
                .iter()
                .map(|t| t.as_slice())
                .find(|t| t.len() >= 2 && t[0] == name)
                .map(|t| t[1].as_str())
        };
        let raw = hex::decode(value("header").ok_or_else(|| bad("missing header tag"))?)
            .map_err(|_| bad("header tag is not hex"))?;
        let header = Self::from_bytes(&raw)?;
        if value("epoch") != Some(header.epoch.to_string().as_str()) {
            return Err(bad("epoch tag does not match the header"));
        }
        let anchor = value("anchor")
            .map(|s| {
                s.parse::<Txid>()
                    .map_err(|_| bad("anchor tag is not a txid"))
            })
            .transpose()?;
        Ok((header, anchor))
    }
}

/// Extracts the header hash from an OP_RETURN payload.
pub fn parse_op_return_payload(payload: &[u8]) -> Result<Hash, EpochError> {
    if payload.len() < MAGIC.len() + 1 || &payload[..MAGIC.len()] != MAGIC {
        return Err(EpochError::NotAnchorPayload);
    }
    let version = payload[MAGIC.len()];
    if version != PAYLOAD_VERSION {
        return Err(EpochError::UnsupportedPayloadVersion(version));
    }
    payload[MAGIC.len() + 1..]
        .try_into()
        .map_err(|_| EpochError::NotAnchorPayload)
}

/// The data of the first push after a leading `OP_RETURN`, if the script
/// starts that way and the push is complete. Any push opcode counts (a direct
/// push `0x01..=0x4b`, `OP_PUSHDATA1/2/4`), so a differently encoded Cairn
/// payload is still recognised as one, and then refused as non-canonical.
fn first_push_after_op_return(script: &[u8]) -> Option<&[u8]> {
    let (&op_return, rest) = script.split_first()?;
    if op_return != OP_RETURN.to_u8() {
        return None;
    }
    let (&opcode, rest) = rest.split_first()?;
    let (len, rest) = match opcode {
        0x01..=0x4b => (usize::from(opcode), rest),
        0x4c => (usize::from(*rest.first()?), &rest[1..]),
        0x4d => (
            usize::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?)),
            &rest[2..],
        ),
        0x4e => (
            usize::try_from(u32::from_le_bytes(rest.get(..4)?.try_into().ok()?)).ok()?,
            &rest[4..],
        ),
        _ => return None,
    };
    rest.get(..len)
}

/// Whether `script` is a **Cairn output** (§9.2): `OP_RETURN` followed by a
/// push whose data starts with [`MAGIC`], whatever else it holds. Every Cairn
/// output counts towards "exactly one"; only the canonical one is valid.
pub fn is_cairn_output(script: &Script) -> bool {
    first_push_after_op_return(script.as_bytes()).is_some_and(|d| d.starts_with(MAGIC))
}

/// Extracts the header hash from an anchor output script. Only the canonical
/// 40-byte script `0x6a 0x26 "CAIRN" 0x01 <header hash>` is accepted.
pub fn parse_anchor_script(script: &Script) -> Result<Hash, EpochError> {
    let bytes = script.as_bytes();
    let Some(data) = first_push_after_op_return(bytes) else {
        return Err(EpochError::NotOpReturn);
    };
    if !data.starts_with(MAGIC) {
        return Err(EpochError::NotAnchorPayload);
    }
    // Version first, so an unknown version is reported as such.
    if let Some(&v) = data.get(MAGIC.len()) {
        if v != PAYLOAD_VERSION {
            return Err(EpochError::UnsupportedPayloadVersion(v));
        }
    }
    if bytes.len() != 2 + PAYLOAD_LEN || bytes[1] as usize != PAYLOAD_LEN {
        return Err(EpochError::NonCanonicalAnchorScript);
    }
    parse_op_return_payload(data)
}

/// Finds the single Cairn anchor output of `tx`: its index and the header hash.
/// Outputs that are not Cairn outputs ([`is_cairn_output`]) are ignored; two
/// Cairn outputs, or one that is not canonical, make `tx` invalid as an anchor.
pub fn find_anchor(tx: &Transaction) -> Result<(usize, Hash), EpochError> {
    let mut cairn = tx
        .output
        .iter()
        .enumerate()
        .filter(|(_, o)| is_cairn_output(&o.script_pubkey));
    let Some((i, out)) = cairn.next() else {
        return Err(EpochError::NoAnchorOutput);
    };
    if cairn.next().is_some() {
        return Err(EpochError::MultipleAnchorOutputs);
    }
    Ok((i, parse_anchor_script(&out.script_pubkey)?))
}

#[cfg(test)]
mod tests {
    use bitcoin::{absolute::LockTime, hashes::Hash as _, transaction::Version, Amount, TxOut};
    use nostr::Keys;

    use super::*;

    fn header() -> EpochHeader {
        EpochHeader {
            version: HEADER_VERSION,
            epoch: 7,
            prev_header_hash: [0xab; 32],
            log_size: 1_000_000,
            log_root: [1; 32],
            state_root: [2; 32],
        }
    }

    fn tx_with(outputs: Vec<ScriptBuf>) -> Transaction {
        Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![],
            output: outputs
                .into_iter()
                .map(|script_pubkey| TxOut {
                    value: Amount::ZERO,
                    script_pubkey,
                })
                .collect(),
        }
    }

    #[test]
    fn encoding_is_fixed_and_round_trips() {
        let h = header();
        let bytes = h.to_bytes();
        assert_eq!(bytes[0], 2);
        assert_eq!(&bytes[1..9], &7u64.to_be_bytes());
        assert_eq!(&bytes[9..41], &[0xab; 32]);
        assert_eq!(&bytes[41..49], &1_000_000u64.to_be_bytes());
        assert_eq!(EpochHeader::from_bytes(&bytes).unwrap(), h);
        assert_eq!(
            EpochHeader::from_bytes(&bytes[..112]),
            Err(EpochError::HeaderLength(112))
        );
        // Version 1 (linked by anchor txid) is withdrawn, not reinterpreted.
        for version in [0, 1, 3] {
            let mut other = bytes;
            other[0] = version;
            assert_eq!(
                EpochHeader::from_bytes(&other),
                Err(EpochError::UnsupportedVersion(version))
            );
        }
    }

    #[test]
    fn every_header_byte_changes_the_hash() {
        let h = header();
        let base = h.hash();
        let bytes = h.to_bytes();
        for i in 1..HEADER_LEN {
            let mut b = bytes;
            b[i] ^= 0x01;
            assert_ne!(
                EpochHeader::from_bytes(&b).unwrap().hash(),
                base,
                "byte {i}"
            );
        }
    }

    #[test]
    fn payload_and_script_round_trip_within_limits() {
        let h = header();
        let payload = h.op_return_payload();
        assert_eq!(payload.len(), 38);
        assert!(payload.starts_with(b"CAIRN\x01"));
        assert_eq!(parse_op_return_payload(&payload).unwrap(), h.hash());
        let script = h.anchor_script();
        // OP_RETURN, push opcode, 38 bytes.
        assert_eq!(script.len(), 40);
        assert_eq!(parse_anchor_script(&script).unwrap(), h.hash());

        let mut wrong_magic = payload;
        wrong_magic[0] = b'X';
        assert_eq!(
            parse_op_return_payload(&wrong_magic),
            Err(EpochError::NotAnchorPayload)
        );
        assert_eq!(
            parse_op_return_payload(&payload[..37]),
            Err(EpochError::NotAnchorPayload)
        );
    }

    #[test]
    fn anchor_transaction_is_found_and_checked() {
        let h = header();
        let other = ScriptBuf::new_op_return(PushBytesBuf::try_from(b"hello".to_vec()).unwrap());
        let tx = tx_with(vec![other.clone(), h.anchor_script()]);
        assert_eq!(find_anchor(&tx).unwrap(), (1, h.hash()));
        h.verify_anchor(&tx).unwrap();

        let mut changed = h;
        changed.log_size += 1;
        assert_eq!(
            changed.verify_anchor(&tx),
            Err(EpochError::HeaderHashMismatch)
        );
        assert_eq!(
            find_anchor(&tx_with(vec![other])),
            Err(EpochError::NoAnchorOutput)
        );
        assert_eq!(
            find_anchor(&tx_with(vec![h.anchor_script(), h.anchor_script()])),
            Err(EpochError::MultipleAnchorOutputs)
        );
    }

    /// Every OP_RETURN whose first push starts with `CAIRN` is a Cairn output:
    /// odd encodings next to a valid one make the transaction ambiguous, and on
    /// their own they are refused rather than ignored (the old code ignored the
    /// PUSHDATA1 and trailing-push forms and accepted the transaction).
    #[test]
    fn every_cairn_shaped_output_counts() {
        let h = header();
        let payload = h.op_return_payload();
        let raw = |bytes: Vec<u8>| ScriptBuf::from_bytes(bytes);
        let pushdata1 = raw([&[0x6a, 0x4c, 38][..], &payload].concat());
        let trailing = raw([&[0x6a, 38][..], &payload, &[0x01, 0x00]].concat());
        let mut v2 = payload;
        v2[5] = 2;
        let version2 = raw([&[0x6a, 38][..], &v2].concat());
        let short = raw([&[0x6a, 5][..], b"CAIRN"].concat());
        for odd in [&pushdata1, &trailing, &version2, &short] {
            assert!(is_cairn_output(odd));
            assert_eq!(
                find_anchor(&tx_with(vec![h.anchor_script(), odd.clone()])),
                Err(EpochError::MultipleAnchorOutputs)
            );
            assert!(find_anchor(&tx_with(vec![odd.clone()])).is_err());
        }
        assert_eq!(
            find_anchor(&tx_with(vec![pushdata1])),
            Err(EpochError::NonCanonicalAnchorScript)
        );
        assert_eq!(
            find_anchor(&tx_with(vec![version2])),
            Err(EpochError::UnsupportedPayloadVersion(2))
        );
        // Not Cairn outputs: another magic, a truncated push, no push at all.
        let truncated = raw([&[0x6a, 0x4c, 80][..], &payload].concat());
        for other in [
            raw([&[0x6a, 5][..], b"CAIRX"].concat()),
            truncated,
            raw(vec![0x6a]),
            raw([&[0x51, 38][..], &payload].concat()),
        ] {
            assert!(!is_cairn_output(&other));
            assert_eq!(
                find_anchor(&tx_with(vec![other, h.anchor_script()])),
                Ok((1, h.hash()))
            );
        }
    }

    #[test]
    fn successor_rules() {
        let prev = header();
        let mut next = EpochHeader {
            epoch: 8,
            prev_header_hash: prev.hash(),
            log_size: prev.log_size + 5,
            ..prev
        };
        next.verify_successor_of(&prev).unwrap();
        let mut skipped = next;
        skipped.epoch = 9;
        assert!(skipped.verify_successor_of(&prev).is_err());
        let mut other_prev = prev;
        other_prev.state_root[0] ^= 1;
        assert_eq!(
            next.verify_successor_of(&other_prev),
            Err(EpochError::BrokenChain("previous header hash differs"))
        );
        let mut unlinked = next;
        unlinked.prev_header_hash = [0; 32];
        assert!(unlinked.verify_successor_of(&prev).is_err());
        next.log_size = prev.log_size;
        assert!(next.verify_successor_of(&prev).is_err());
    }

    #[test]
    fn epoch_event_round_trips_and_is_signed() {
        let keys = Keys::generate();
        let h = header();
        let txid = Txid::from_byte_array([0x11; 32]);
        let event = h
            .to_event_builder(Some(&txid))
            .sign_with_keys(&keys)
            .unwrap();
        assert_eq!(event.kind.as_u16(), kinds::EPOCH_HEADER);
        assert_eq!(EpochHeader::from_event(&event).unwrap(), (h, Some(txid)));

        let mut forged = event.clone();
        forged.content = "x".into();
        assert!(EpochHeader::from_event(&forged).is_err());
    }
}
