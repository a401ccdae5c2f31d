//! Mirroring another witness: rebuilding its log, state tree and registry
//! from the events it publishes (kinds 3470-3473), checked against the
//! epoch headers anchored on this node's own Bitcoin view.
//!
//! A [`Mirror`] follows one witness key. Events come in any order and any
//! number of times ([`Mirror::add`]); an epoch is taken once everything it
//! needs is there ([`Mirror::wanted`]): its signed header, every part of its
//! log segment, every operation and attestation the segment names, and a
//! sighting of its anchor transaction in a block of this node's chain
//! ([`Mirror::verify_epoch`]). The epoch's operations are then replayed
//! through the same [`Core`] the witness itself uses (registry rules,
//! RFC 6962 log, state tree), and the resulting header must equal the
//! anchored one byte for byte.
//!
//! Invariants:
//! - only verified epochs are in the core: what a mirror serves is exactly
//!   what the anchored headers commit to, never a claim still waiting;
//! - every event is checked before it is kept (id and signature, its
//!   kind's rules, the witness as author of 3471-3473);
//! - two different headers for one epoch, both signed by the witness, are a
//!   **split view**: the mirror stops for good and keeps both events as
//!   evidence ([`Stop::SplitView`]); an anchored header its own published
//!   segment and events do not replay to is a **fault** and stops it too.
//!   Missing pieces, or an anchor not (yet) in a block, only make it wait.
//!   After a split view no event is taken, but the epochs already held are
//!   still checked against their anchors (so a restarted mirror serves what
//!   it verified before); after a fault nothing more is verified;
//! - memory is bounded by what the witness logged: events no segment names
//!   are kept only up to [`MAX_UNCLAIMED`].

use std::collections::{BTreeMap, HashMap};

use bitcoin::{BlockHash, MerkleBlock, Transaction, Txid};
use nostr::{Event, EventId, Kind, PublicKey};

use crate::binding::{
    BindingOp, Identity, IdentityStatus, OpKind, RegistryConfig, WitnessAttestation,
};
use crate::bundle::ProofBundle;
use crate::epoch::EpochHeader;
use crate::kinds;
use crate::segment::{LogSegment, SegmentEntry};

use super::memory::{AcceptedOp, ClosedEpoch, Core};

/// Most operations and attestations kept before an epoch's segment claims
/// them (a relay could send any number of strangers' binding events).
pub const MAX_UNCLAIMED: usize = 200_000;

/// Why an event was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Its id or signature does not check.
    #[error("bad id or signature: {0}")]
    BadSignature(String),
    /// A kind the witness signs (3471-3473) by another author.
    #[error("kind {kind} signed by {author}, not by the mirrored witness")]
    NotTheWitness {
        /// The kind.
        kind: u16,
        /// Its author, hex.
        author: String,
    },
    /// Not a well-formed record of its kind.
    #[error("malformed kind {kind}: {reason}")]
    Malformed {
        /// The kind.
        kind: u16,
        /// What is wrong.
        reason: String,
    },
    /// Not an identity kind.
    #[error("kind {0} is not an identity record")]
    OtherKind(u16),
    /// Too many events waiting for a segment.
    #[error("too many unclaimed events")]
    Full,
    /// The mirror has stopped (split view or fault).
    #[error("the mirror has stopped following this witness")]
    Stopped,
}

/// Where an anchor transaction was found on this node's chain.
#[derive(Debug, Clone)]
pub struct AnchorSighting {
    /// The transaction (without witness data is what a bundle carries).
    pub tx: Transaction,
    /// Height of its block.
    pub height: u32,
    /// Its block.
    pub block_hash: BlockHash,
    /// `gettxoutproof` for it in that block.
    pub merkle_block: MerkleBlock,
}

/// An epoch ready to be checked except for its anchor: look for one of
/// `txids` on the chain (near `closed_at`, when the witness says it closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorQuery {
    /// The epoch.
    pub epoch: u64,
    /// Every anchor txid the witness published for it (fee bumps replace it).
    pub txids: Vec<Txid>,
    /// Unix time the epoch closed, per its segment.
    pub closed_at: u64,
}

/// Evidence of a split view: two different headers for one epoch, both
/// signed by the witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitView {
    /// The epoch.
    pub epoch: u64,
    /// The header event seen first (the verified one, when it was).
    pub first: Event,
    /// The conflicting one.
    pub second: Event,
}

/// Why a mirror stopped following its witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Two signed headers for one epoch (boxed: two whole events).
    SplitView(Box<SplitView>),
    /// An anchored header that the witness's own published log segment and
    /// events do not replay to.
    Fault {
        /// The epoch.
        epoch: u64,
        /// What did not match.
        reason: String,
    },
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::SplitView(s) => write!(
                f,
                "split view: two different headers signed for epoch {} (events {} and {})",
                s.epoch, s.first.id, s.second.id
            ),
            Stop::Fault { epoch, reason } => write!(f, "epoch {epoch} does not replay: {reason}"),
        }
    }
}

/// What a mirror has verified of one identity.
#[derive(Debug, Clone)]
pub struct MirroredIdentity {
    /// The record at the end of the latest verified epoch.
    pub identity: Identity,
    /// The id now holding its handle, when moved.
    pub moved_to: Option<u64>,
    /// The latest epoch that changed it.
    pub epoch: u64,
    /// Height of that epoch's anchor block.
    pub anchor_height: u32,
    /// That epoch's anchor txid.
    pub anchor_txid: Txid,
}

#[derive(Debug, Clone)]
struct SeenHeader {
    event: Event,
    header: EpochHeader,
    txids: Vec<Txid>,
}

/// The mirror of one witness's log (see the module doc).
pub struct Mirror {
    witness: PublicKey,
    core: Core,
    ops: HashMap<EventId, Event>,
    attestations: HashMap<EventId, Event>,
    headers: BTreeMap<u64, SeenHeader>,
    segments: BTreeMap<u64, BTreeMap<u32, LogSegment>>,
    anchors: HashMap<u64, AnchorSighting>,
    stop: Option<Stop>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("witness", &self.witness)
            .field("verified_epochs", &self.verified_epochs())
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl Mirror {
    /// A mirror of `witness` with nothing verified yet, under the registry
    /// rules the witness uses (its recovery delay).
    pub fn new(witness: PublicKey, config: RegistryConfig) -> Self {
        Self {
            witness,
            core: Core::new(config),
            ops: HashMap::new(),
            attestations: HashMap::new(),
            headers: BTreeMap::new(),
            segments: BTreeMap::new(),
            anchors: HashMap::new(),
            stop: None,
        }
    }

    /// The witness followed.
    pub fn witness(&self) -> PublicKey {
        self.witness
    }

    /// Why it stopped, if it did.
    pub fn stopped(&self) -> Option<&Stop> {
        self.stop.as_ref()
    }

    /// Stops the mirror with `stop` (e.g. evidence persisted by an earlier run).
    pub fn restore_stop(&mut self, stop: Stop) {
        self.stop = Some(stop);
    }

    /// How many epochs are verified (the next one to verify).
    pub fn verified_epochs(&self) -> u64 {
        self.core.open_epoch()
    }

    /// The latest signed header seen, verified or not.
    pub fn latest_seen_epoch(&self) -> Option<u64> {
        self.headers.keys().next_back().copied()
    }

    /// The log size at the latest verified epoch.
    pub fn log_size(&self) -> u64 {
        self.core.epochs.last().map_or(0, |e| e.header.log_size)
    }

    /// Identities with a verified record.
    pub fn identities(&self) -> usize {
        self.core.history.len()
    }

    /// The verified header of `epoch`.
    pub fn header(&self, epoch: u64) -> Option<EpochHeader> {
        self.core.epochs.get(epoch as usize).map(|e| e.header)
    }

    /// Takes one event. `Ok(true)` when it is new, `Ok(false)` when it was
    /// already known. A second, different header for an epoch stops the
    /// mirror ([`Self::stopped`] then holds the evidence) and is `Ok(true)`.
    pub fn add(&mut self, event: Event) -> Result<bool, Rejected> {
        if self.stop.is_some() {
            return Err(Rejected::Stopped);
        }
        event
            .verify()
            .map_err(|e| Rejected::BadSignature(e.to_string()))?;
        let kind = event.kind.as_u16();
        let malformed = |reason: String| Rejected::Malformed { kind, reason };
        if matches!(
            kind,
            kinds::WITNESS_ATTESTATION | kinds::EPOCH_HEADER | kinds::LOG_SEGMENT
        ) && event.pubkey != self.witness
        {
            return Err(Rejected::NotTheWitness {
                kind,
                author: event.pubkey.to_hex(),
            });
        }
        let unclaimed = self.ops.len() + self.attestations.len();
        match kind {
            kinds::BINDING => {
                BindingOp::from_event(&event).map_err(|e| malformed(e.to_string()))?;
                if self.ops.contains_key(&event.id) {
                    return Ok(false);
                }
                if unclaimed >= MAX_UNCLAIMED {
                    return Err(Rejected::Full);
                }
                self.ops.insert(event.id, event);
                Ok(true)
            }
            kinds::WITNESS_ATTESTATION => {
                WitnessAttestation::from_event(&event).map_err(|e| malformed(e.to_string()))?;
                if self.attestations.contains_key(&event.id) {
                    return Ok(false);
                }
                if unclaimed >= MAX_UNCLAIMED {
                    return Err(Rejected::Full);
                }
                self.attestations.insert(event.id, event);
                Ok(true)
            }
            kinds::EPOCH_HEADER => {
                let (header, txid) =
                    EpochHeader::from_event(&event).map_err(|e| malformed(e.to_string()))?;
                Ok(self.add_header(event, header, txid))
            }
            kinds::LOG_SEGMENT => {
                let segment =
                    LogSegment::from_event(&event).map_err(|e| malformed(e.to_string()))?;
                let parts = self.segments.entry(segment.epoch).or_default();
                if let Some(first) = parts.values().next() {
                    if first.parts != segment.parts || first.close_height != segment.close_height {
                        return Err(malformed("disagrees with another part".into()));
                    }
                }
                if parts.contains_key(&segment.part) {
                    // The first part seen is kept; a different one would
                    // show up as a fault when the epoch replays.
                    return Ok(false);
                }
                parts.insert(segment.part, segment);
                Ok(true)
            }
            other => Err(Rejected::OtherKind(other)),
        }
    }

    fn add_header(&mut self, event: Event, header: EpochHeader, txid: Option<Txid>) -> bool {
        let n = header.epoch;
        // The first header seen for an epoch is never dropped (a verified
        // epoch keeps it), so a later different one always meets it here.
        match self.headers.get_mut(&n) {
            Some(seen) if seen.header == header => {
                let new = txid.is_some_and(|t| !seen.txids.contains(&t));
                if let Some(t) = txid.filter(|_| new) {
                    seen.txids.push(t);
                }
                new
            }
            Some(seen) => {
                self.stop = Some(Stop::SplitView(Box::new(SplitView {
                    epoch: n,
                    first: seen.event.clone(),
                    second: event,
                })));
                true
            }
            None => {
                self.headers.insert(
                    n,
                    SeenHeader {
                        event,
                        header,
                        txids: txid.into_iter().collect(),
                    },
                );
                true
            }
        }
    }

    /// The next epoch whose header, segment and events are all here, and
    /// which only waits for its anchor to be found on the chain.
    ///
    /// After a split view the mirror takes no new events, but epochs whose
    /// pieces it already holds are still checked against their anchors (the
    /// chain decides which header is real); after a fault nothing is.
    pub fn wanted(&self) -> Option<AnchorQuery> {
        if matches!(self.stop, Some(Stop::Fault { .. })) {
            return None;
        }
        let n = self.core.open_epoch();
        let seen = self.headers.get(&n)?;
        if seen.txids.is_empty() {
            return None;
        }
        let entries = self.entries(n)?;
        let complete = entries.iter().all(|e| {
            self.ops.contains_key(&e.op)
                && e.attestation
                    .is_none_or(|a| self.attestations.contains_key(&a))
        });
        complete.then(|| AnchorQuery {
            epoch: n,
            txids: seen.txids.clone(),
            closed_at: self.segments[&n].values().next().map_or(0, |s| s.closed_at),
        })
    }

    /// Every operation of epoch `n`, in log order, once all parts are here.
    fn entries(&self, n: u64) -> Option<Vec<SegmentEntry>> {
        let parts = self.segments.get(&n)?;
        let total = parts.values().next()?.parts;
        if parts.len() != total as usize {
            return None;
        }
        Some(parts.values().flat_map(|p| p.entries.clone()).collect())
    }

    /// Checks epoch [`Self::wanted`] named, with its anchor as found on this
    /// node's chain: the anchor must carry the header's hash; the epoch's
    /// operations, replayed in the segment's order at its heights, must close
    /// to exactly that header. `Ok(())` adds the epoch to what the mirror
    /// serves; `Err` leaves it waiting (the anchor does not carry this
    /// header: another transaction, or a forgery) or, when the replay itself
    /// fails, stops the mirror ([`Stop::Fault`]).
    pub fn verify_epoch(&mut self, epoch: u64, anchor: AnchorSighting) -> Result<(), String> {
        if matches!(self.stop, Some(Stop::Fault { .. })) {
            return Err("the mirror has stopped on a fault".into());
        }
        if self.wanted().map(|q| q.epoch) != Some(epoch) {
            return Err(format!("epoch {epoch} is not the one waiting"));
        }
        let seen = self.headers[&epoch].clone();
        seen.header.verify_anchor(&anchor.tx).map_err(|e| {
            format!("epoch {epoch}: the anchor found does not carry its header: {e}")
        })?;
        let entries = self.entries(epoch).unwrap_or_default();
        let close_height = self.segments[&epoch]
            .values()
            .next()
            .map_or(0, |s| s.close_height);
        let closed_at = self.segments[&epoch]
            .values()
            .next()
            .map_or(0, |s| s.closed_at);
        match self.replay_epoch(epoch, &entries, close_height) {
            Ok(header) if header == seen.header => {}
            Ok(_) => {
                return Err(self.fault(
                    epoch,
                    "its operations replay to other log or state roots than the anchored header"
                        .into(),
                ))
            }
            Err(reason) => return Err(self.fault(epoch, reason)),
        }
        self.core.commit_close(ClosedEpoch {
            header: seen.header,
            close_height,
            anchor_txid: Some(anchor.tx.compute_txid()),
            closed_at,
        });
        // What the log now holds is no longer waiting for a segment.
        for e in &entries {
            self.ops.remove(&e.op);
            if let Some(a) = e.attestation {
                self.attestations.remove(&a);
            }
        }
        self.segments.remove(&epoch);
        self.anchors.insert(epoch, anchor);
        Ok(())
    }

    fn fault(&mut self, epoch: u64, reason: String) -> String {
        let stop = Stop::Fault { epoch, reason };
        let text = stop.to_string();
        // A split view seen before stays the reason (and the evidence).
        if self.stop.is_none() {
            self.stop = Some(stop);
        }
        text
    }

    /// Applies the epoch's operations to the core, as the witness did.
    fn replay_epoch(
        &mut self,
        epoch: u64,
        entries: &[SegmentEntry],
        close_height: u32,
    ) -> Result<EpochHeader, String> {
        if entries.is_empty() {
            return Err("its segment lists no operation".into());
        }
        for (i, e) in entries.iter().enumerate() {
            let at = |m: String| format!("operation {i} ({}): {m}", e.op);
            let event = &self.ops[&e.op];
            let op = BindingOp::from_event(event).map_err(|x| at(x.to_string()))?;
            let attestation = match (op.op, e.attestation) {
                (OpKind::Bind | OpKind::Recover, Some(id)) => {
                    let att = self.attestations[&id].clone();
                    let (parsed, signer) =
                        WitnessAttestation::from_event(&att).map_err(|x| at(x.to_string()))?;
                    if signer != self.witness {
                        return Err(at("attested by another key".into()));
                    }
                    parsed
                        .matches(&op)
                        .map_err(|x| at(format!("attestation does not match: {x}")))?;
                    Some(att)
                }
                (OpKind::Bind | OpKind::Recover, None) => {
                    return Err(at("a bind or recover without its attestation".into()))
                }
                (_, Some(_)) => {
                    return Err(at("an attestation on an operation without one".into()))
                }
                (_, None) => None,
            };
            if e.height < self.core.height {
                return Err(at(format!(
                    "height {} goes back from {}",
                    e.height, self.core.height
                )));
            }
            self.core.advance(e.height).map_err(|x| at(x.to_string()))?;
            let ctx = self.core.ctx();
            debug_assert_eq!(ctx.epoch, epoch);
            self.core
                .apply(&op, attestation, ctx)
                .map_err(|x| at(format!("the registry refuses it: {x}")))?;
        }
        if close_height < self.core.height {
            return Err("its close height goes back".into());
        }
        self.core.advance(close_height).map_err(|x| x.to_string())?;
        self.core.close().map_err(|x| x.to_string())
    }

    /// The verified record of the identity holding `handle`.
    pub fn lookup_handle(&self, handle: &str) -> Option<MirroredIdentity> {
        let x_uid = self.core.registry.resolve_handle(handle)?.x_uid;
        self.lookup(x_uid)
    }

    /// The verified record of the identity `key` is (or was) bound to.
    pub fn lookup_key(&self, key: &PublicKey) -> Option<MirroredIdentity> {
        self.lookup(*self.core.keys.get(key)?)
    }

    /// The verified record of `x_uid`.
    pub fn lookup(&self, x_uid: u64) -> Option<MirroredIdentity> {
        let (identity, moved_to) = match self.core.registry.status(x_uid)? {
            IdentityStatus::Bound(i) | IdentityStatus::Revoked(i) => (i.clone(), None),
            IdentityStatus::Moved { identity, now } => (identity.clone(), Some(now)),
        };
        let epoch = identity.last_epoch;
        let anchor = self.anchors.get(&epoch)?;
        Some(MirroredIdentity {
            identity,
            moved_to,
            epoch,
            anchor_height: anchor.height,
            anchor_txid: anchor.tx.compute_txid(),
        })
    }

    /// The proof bundle of `x_uid` as of the latest verified epoch that
    /// changed it: the same bundle the witness itself would hand out.
    pub fn bundle(&self, x_uid: u64) -> Option<ProofBundle> {
        let (&epoch, identity) = self.core.snapshots.get(&x_uid)?.iter().next_back()?;
        let closed = self.core.epochs.get(epoch as usize)?;
        let anchor = self.anchors.get(&epoch)?;
        let ops: Vec<&AcceptedOp> = self
            .core
            .history
            .get(&x_uid)?
            .iter()
            .filter(|o| o.epoch <= epoch)
            .collect();
        let head = ops.last()?;
        let attestations: Vec<(Event, u64)> = ops
            .iter()
            .filter(|o| matches!(o.op, OpKind::Bind | OpKind::Recover))
            .filter_map(|o| Some((o.attestation.clone()?, o.attestation_index?)))
            .collect();
        ProofBundle::assemble(
            identity,
            ops.iter().map(|o| o.event.clone()).collect(),
            attestations.iter().map(|(e, _)| e.clone()).collect(),
            head.log_index,
            &attestations.iter().map(|(_, i)| *i).collect::<Vec<_>>(),
            &self.core.log,
            &self.core.state,
            closed.header,
            anchor.tx.clone(),
            anchor.height,
            anchor.merkle_block.clone(),
        )
        .ok()
    }
}

/// Whether `kind` is one a mirror asks a relay for.
pub fn is_mirrored_kind(kind: Kind) -> bool {
    matches!(
        kind.as_u16(),
        kinds::BINDING | kinds::WITNESS_ATTESTATION | kinds::EPOCH_HEADER | kinds::LOG_SEGMENT
    )
}

/// The kinds a mirror asks a relay for.
pub const MIRRORED_KINDS: [u16; 4] = [
    kinds::BINDING,
    kinds::WITNESS_ATTESTATION,
    kinds::EPOCH_HEADER,
    kinds::LOG_SEGMENT,
];

impl super::IdentityService {
    /// The log segment events of closed epoch `epoch` (kind 3473), signed
    /// by the witness: its operations in log order, for mirrors.
    pub(super) async fn segment_events(&self, epoch: u64) -> Vec<Event> {
        let (entries, closed) = {
            let core = self.core.lock().await;
            let Some(closed) = core.epochs.get(epoch as usize).cloned() else {
                return Vec::new();
            };
            let mut ops: Vec<&AcceptedOp> = core
                .history
                .values()
                .flatten()
                .filter(|o| o.epoch == epoch)
                .collect();
            ops.sort_by_key(|o| o.log_index);
            let entries: Vec<SegmentEntry> = ops
                .iter()
                .map(|o| SegmentEntry {
                    op: o.event.id,
                    attestation: o.attestation.as_ref().map(|a| a.id),
                    height: o.height,
                })
                .collect();
            (entries, closed)
        };
        LogSegment::split(epoch, closed.close_height, closed.closed_at, &entries)
            .iter()
            .filter_map(|s| s.to_event_builder().sign_with_keys(&self.witness).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use bitcoin::absolute::LockTime;
    use bitcoin::block::{Header, Version};
    use bitcoin::hashes::Hash as _;
    use bitcoin::{Amount, Block, CompactTarget, OutPoint, ScriptBuf, TxIn, TxMerkleNode, TxOut};
    use nostr::{EventBuilder, JsonUtil, Keys};

    use super::*;
    use crate::binding::{proof_post_op, revoke_op};
    use crate::bundle::{HeaderChain, VerifyPolicy};

    /// A witness as the service runs one: the same core, its events.
    struct Witness {
        keys: Keys,
        core: Core,
        events: Vec<Event>,
        entries: Vec<SegmentEntry>,
        blocks: Vec<Block>,
        anchors: HashMap<u64, AnchorSighting>,
    }

    fn anchor_block(prev: BlockHash, tx: Transaction) -> Block {
        let coinbase = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn::default()],
            output: vec![TxOut {
                value: Amount::from_sat(1),
                script_pubkey: ScriptBuf::new(),
            }],
        };
        let mut block = Block {
            header: Header {
                version: Version::TWO,
                prev_blockhash: prev,
                merkle_root: TxMerkleNode::all_zeros(),
                time: 1_700_000_000,
                bits: CompactTarget::from_consensus(0x207fffff),
                nonce: 0,
            },
            txdata: vec![coinbase, tx],
        };
        block.header.merkle_root = block.compute_merkle_root().unwrap();
        while block.header.validate_pow(block.header.target()).is_err() {
            block.header.nonce += 1;
        }
        block
    }

    impl Witness {
        fn new() -> Self {
            Self {
                keys: Keys::generate(),
                core: Core::new(RegistryConfig::default()),
                events: Vec::new(),
                entries: Vec::new(),
                blocks: vec![bitcoin::blockdata::constants::genesis_block(
                    bitcoin::Network::Regtest,
                )],
                anchors: HashMap::new(),
            }
        }

        fn bind(&mut self, user: &Keys, x_uid: u64, handle: &str, height: u32) -> Event {
            let nonce = format!("{:032x}", x_uid);
            let event = proof_post_op(false, x_uid, 0, None, handle, x_uid, &nonce)
                .sign_with_keys(user)
                .unwrap();
            let att = WitnessAttestation {
                x_uid,
                handle: handle.into(),
                post_id: x_uid,
                subject: user.public_key(),
                challenge: nonce,
                post_text_sha256: [7; 32],
                posted_at: 1,
                fetched_at: 2,
            }
            .to_event_builder()
            .sign_with_keys(&self.keys)
            .unwrap();
            self.apply(event.clone(), Some(att), height);
            event
        }

        fn apply(&mut self, event: Event, att: Option<Event>, height: u32) {
            let op = BindingOp::from_event(&event).unwrap();
            self.core.advance(height).unwrap();
            let ctx = self.core.ctx();
            self.core.apply(&op, att.clone(), ctx).unwrap();
            self.entries.push(SegmentEntry {
                op: event.id,
                attestation: att.as_ref().map(|a| a.id),
                height: ctx.height,
            });
            self.events.push(event);
            self.events.extend(att);
        }

        /// Closes the epoch, anchors it in a new block and publishes the
        /// header (with its txid) and the segment.
        fn close(&mut self, close_height: u32) -> EpochHeader {
            self.core.advance(close_height).unwrap();
            let header = self.core.close().unwrap();
            self.core.commit_close(ClosedEpoch {
                header,
                close_height,
                anchor_txid: None,
                closed_at: 1_700_000_000,
            });
            let tx = self.anchor_tx(&header);
            let txid = tx.compute_txid();
            self.events.push(
                header
                    .to_event_builder(Some(&txid))
                    .sign_with_keys(&self.keys)
                    .unwrap(),
            );
            for s in LogSegment::split(header.epoch, close_height, 1_700_000_000, &self.entries) {
                self.events
                    .push(s.to_event_builder().sign_with_keys(&self.keys).unwrap());
            }
            self.entries.clear();
            let block = anchor_block(self.blocks.last().unwrap().block_hash(), tx.clone());
            let merkle_block = MerkleBlock::from_block_with_predicate(&block, |t| *t == txid);
            self.anchors.insert(
                header.epoch,
                AnchorSighting {
                    tx,
                    height: self.blocks.len() as u32,
                    block_hash: block.block_hash(),
                    merkle_block,
                },
            );
            self.blocks.push(block);
            header
        }

        fn anchor_tx(&self, header: &EpochHeader) -> Transaction {
            Transaction {
                version: bitcoin::transaction::Version::TWO,
                lock_time: LockTime::ZERO,
                input: vec![TxIn {
                    previous_output: OutPoint::new(
                        Txid::from_byte_array([9; 32]),
                        header.epoch as u32,
                    ),
                    ..TxIn::default()
                }],
                output: vec![
                    TxOut {
                        value: Amount::ZERO,
                        script_pubkey: header.anchor_script(),
                    },
                    TxOut {
                        value: Amount::from_sat(10_000),
                        script_pubkey: ScriptBuf::new(),
                    },
                ],
            }
        }
    }

    /// Feeds every event and verifies what can be, with the witness's anchors.
    fn follow(mirror: &mut Mirror, witness: &Witness, events: &[Event]) {
        for e in events {
            let _ = mirror.add(e.clone());
        }
        while let Some(q) = mirror.wanted() {
            let anchor = witness.anchors[&q.epoch].clone();
            assert!(q.txids.contains(&anchor.tx.compute_txid()));
            if mirror.verify_epoch(q.epoch, anchor).is_err() {
                break;
            }
        }
    }

    #[test]
    fn a_mirror_replays_the_witness_and_serves_bundles_that_verify() {
        let mut w = Witness::new();
        let alice = Keys::generate();
        let bob = Keys::generate();
        let bind_alice = w.bind(&alice, 11, "alice", 1);
        w.bind(&bob, 22, "bob", 1);
        let h0 = w.close(1);
        // Epoch 1: Bob revokes.
        let bob_head = w.core.registry.get(22).unwrap().head;
        let revoke = revoke_op(22, 1, &bob_head).sign_with_keys(&bob).unwrap();
        w.apply(revoke, None, 2);
        let h1 = w.close(2);

        let mut mirror = Mirror::new(w.keys.public_key(), RegistryConfig::default());
        // Out of order and twice over: the mirror does not care.
        let mut events = w.events.clone();
        events.reverse();
        events.extend(w.events.clone());
        follow(&mut mirror, &w, &events);
        assert!(mirror.stopped().is_none());
        assert_eq!(mirror.verified_epochs(), 2);
        assert_eq!(mirror.header(0), Some(h0));
        assert_eq!(mirror.header(1), Some(h1));
        let seen = mirror.lookup_handle("alice").unwrap();
        assert_eq!(seen.identity.key, Some(alice.public_key()));
        assert_eq!(seen.identity.head, bind_alice.id);
        assert_eq!(
            mirror.lookup_key(&bob.public_key()).unwrap().identity.key,
            None
        );

        // The mirror's bundle verifies offline against the witness key and
        // the chain, exactly as the witness's own would.
        let bundle = mirror.bundle(11).unwrap();
        assert_eq!(bundle.attestations[0].pubkey, w.keys.public_key());
        let chain = HeaderChain::from_genesis(
            bitcoin::Network::Regtest,
            w.blocks.iter().map(|b| b.header).collect(),
        )
        .unwrap();
        let policy = VerifyPolicy {
            network: bitcoin::Network::Regtest,
            min_confirmations: 1,
            trusted_witnesses: vec![w.keys.public_key()],
        };
        let verified = crate::bundle::verify(&bundle, &chain, &policy).unwrap();
        assert_eq!(verified.key, Some(alice.public_key()));
        let other = VerifyPolicy {
            trusted_witnesses: vec![Keys::generate().public_key()],
            ..policy
        };
        assert!(crate::bundle::verify(&bundle, &chain, &other).is_err());
    }

    #[test]
    fn an_epoch_waits_for_every_piece_and_for_its_anchor() {
        let mut w = Witness::new();
        w.bind(&Keys::generate(), 11, "alice", 1);
        w.close(1);
        let mut mirror = Mirror::new(w.keys.public_key(), RegistryConfig::default());
        // Without the segment, nothing is wanted.
        for e in w
            .events
            .iter()
            .filter(|e| e.kind.as_u16() != kinds::LOG_SEGMENT)
        {
            mirror.add(e.clone()).unwrap();
        }
        assert_eq!(mirror.wanted(), None);
        for e in &w.events {
            let _ = mirror.add(e.clone());
        }
        let q = mirror.wanted().unwrap();
        assert_eq!(q.epoch, 0);
        // An anchor carrying another header leaves it waiting, not stopped.
        let mut wrong = w.anchors[&0].clone();
        wrong.tx.output[0].script_pubkey = EpochHeader {
            log_size: 9,
            ..mirror.headers[&0].header
        }
        .anchor_script();
        assert!(mirror.verify_epoch(0, wrong).is_err());
        assert!(mirror.stopped().is_none());
        assert_eq!(mirror.verified_epochs(), 0);
        mirror.verify_epoch(0, w.anchors[&0].clone()).unwrap();
        assert_eq!(mirror.verified_epochs(), 1);
    }

    #[test]
    fn tampered_and_foreign_events_are_rejected() {
        let mut w = Witness::new();
        let alice = Keys::generate();
        w.bind(&alice, 11, "alice", 1);
        w.close(1);
        let mut mirror = Mirror::new(w.keys.public_key(), RegistryConfig::default());
        // A changed byte: the id and signature no longer check.
        let mut json: serde_json::Value = serde_json::from_str(&w.events[0].as_json()).unwrap();
        json["content"] = "x".into();
        let tampered = Event::from_json(json.to_string()).unwrap();
        assert!(matches!(
            mirror.add(tampered),
            Err(Rejected::BadSignature(_))
        ));
        // A header, an attestation or a segment signed by someone else.
        let mallory = Keys::generate();
        for e in w
            .events
            .iter()
            .filter(|e| e.kind.as_u16() != kinds::BINDING)
        {
            let forged = EventBuilder::new(e.kind, e.content.clone())
                .tags(e.tags.iter().cloned())
                .sign_with_keys(&mallory)
                .unwrap();
            assert!(matches!(
                mirror.add(forged),
                Err(Rejected::NotTheWitness { .. })
            ));
        }
        assert!(matches!(
            mirror.add(
                EventBuilder::text_note("hi")
                    .sign_with_keys(&alice)
                    .unwrap()
            ),
            Err(Rejected::OtherKind(1))
        ));
        assert!(mirror.stopped().is_none());
    }

    #[test]
    fn an_anchored_header_with_wrong_roots_stops_the_mirror() {
        let mut w = Witness::new();
        w.bind(&Keys::generate(), 11, "alice", 1);
        w.bind(&Keys::generate(), 22, "bob", 1);
        w.close(1);
        // The witness signs and anchors a header whose state root its own
        // published operations do not give.
        let header_event = w
            .events
            .iter()
            .position(|e| e.kind.as_u16() == kinds::EPOCH_HEADER)
            .unwrap();
        let (mut forged, _) = EpochHeader::from_event(&w.events[header_event]).unwrap();
        forged.state_root[0] ^= 1;
        let tx = w.anchor_tx(&forged);
        w.events[header_event] = forged
            .to_event_builder(Some(&tx.compute_txid()))
            .sign_with_keys(&w.keys)
            .unwrap();
        let mut anchor = w.anchors[&0].clone();
        anchor.tx = tx;
        w.anchors.insert(0, anchor);
        let mut mirror = Mirror::new(w.keys.public_key(), RegistryConfig::default());
        follow(&mut mirror, &w, &w.events.clone());
        assert_eq!(mirror.verified_epochs(), 0);
        assert!(
            matches!(mirror.stopped(), Some(Stop::Fault { epoch: 0, .. })),
            "{:?}",
            mirror.stopped()
        );
        assert!(mirror.lookup_handle("alice").is_none());

        // A segment in another order than the log: the log root differs.
        let mut w = Witness::new();
        w.bind(&Keys::generate(), 11, "alice", 1);
        w.bind(&Keys::generate(), 22, "bob", 1);
        w.entries.reverse();
        w.close(1);
        let mut mirror = Mirror::new(w.keys.public_key(), RegistryConfig::default());
        follow(&mut mirror, &w, &w.events.clone());
        assert!(matches!(
            mirror.stopped(),
            Some(Stop::Fault { epoch: 0, .. })
        ));
    }

    #[test]
    fn a_second_header_for_an_epoch_is_a_split_view_with_both_events_kept() {
        let mut w = Witness::new();
        w.bind(&Keys::generate(), 11, "alice", 1);
        let h0 = w.close(1);
        let mut mirror = Mirror::new(w.keys.public_key(), RegistryConfig::default());
        follow(&mut mirror, &w, &w.events.clone());
        assert_eq!(mirror.verified_epochs(), 1);
        // The same header again (say, republished with its anchor) is no conflict.
        let again = h0.to_event_builder(None).sign_with_keys(&w.keys).unwrap();
        assert_eq!(mirror.add(again), Ok(false));
        assert!(mirror.stopped().is_none());
        // Another header for the anchored epoch 0, signed by the witness.
        let other = EpochHeader {
            log_size: h0.log_size + 1,
            ..h0
        };
        let second = other
            .to_event_builder(None)
            .sign_with_keys(&w.keys)
            .unwrap();
        assert_eq!(mirror.add(second.clone()), Ok(true));
        let Some(Stop::SplitView(evidence)) = mirror.stopped().cloned() else {
            panic!("expected a split view, got {:?}", mirror.stopped());
        };
        assert_eq!(evidence.epoch, 0);
        assert_eq!(evidence.second, second);
        assert_eq!(EpochHeader::from_event(&evidence.first).unwrap().0, h0);
        assert_eq!(evidence.first.pubkey, w.keys.public_key());
        // Stopped: nothing more is taken.
        assert_eq!(mirror.add(w.events[0].clone()), Err(Rejected::Stopped));
        assert_eq!(mirror.wanted(), None);
    }
}
