//! The in-memory registry, log and state tree ([`Core`]), and the one way
//! they change: [`Core::apply`] an operation, [`Core::close`] and
//! [`Core::commit_close`] an epoch.
//!
//! Invariants: the log, the state tree and the registry always agree (an
//! operation is applied to all three or to none); `height` never goes back;
//! every closed epoch's header is the log and state roots at its close.
//! Live acceptance and replay at start ([`super::replay`]) both go through
//! these methods, so they cannot decide differently.

use std::collections::{BTreeMap, HashMap, HashSet};

use bitcoin::Txid;
use nostr::{Event, PublicKey};

use crate::binding::{
    log_entry, BindingOp, Identity, LogEntryKind, OpContext, OpKind, Registry, RegistryConfig,
};
use crate::epoch::{EpochHeader, HEADER_VERSION};
use crate::log::{MemoryLogStore, MerkleLog};
use crate::state::{state_key, MemoryStateStore, SparseMerkleTree, StateError};

use super::ServiceError;

#[derive(Debug, Clone)]
pub(super) struct ClosedEpoch {
    pub(super) header: EpochHeader,
    pub(super) close_height: u32,
    pub(super) anchor_txid: Option<Txid>,
    pub(super) closed_at: u64,
}

#[derive(Debug, Clone)]
pub(super) struct AcceptedOp {
    pub(super) event: Event,
    pub(super) op: OpKind,
    pub(super) attestation: Option<Event>,
    pub(super) log_index: u64,
    pub(super) attestation_index: Option<u64>,
    pub(super) epoch: u64,
    /// Block height it was applied at (published in the epoch's log segment).
    pub(super) height: u32,
}

/// In-memory registry, log and state tree, rebuilt from SQL at start.
pub(super) struct Core {
    pub(super) registry: Registry,
    pub(super) log: MerkleLog<MemoryLogStore>,
    pub(super) state: SparseMerkleTree<MemoryStateStore>,
    pub(super) epochs: Vec<ClosedEpoch>,
    pub(super) open_ops: usize,
    /// Highest block height used so far; never goes back (a reorg must not
    /// make replay disagree with what was decided live).
    pub(super) height: u32,
    pub(super) history: HashMap<u64, Vec<AcceptedOp>>,
    /// Record of each identity at the close of every epoch that changed it.
    pub(super) snapshots: HashMap<u64, BTreeMap<u64, Identity>>,
    pub(super) dirty: HashSet<u64>,
    /// Every key ever bound, to the identity it was bound to.
    pub(super) keys: HashMap<PublicKey, u64>,
}

impl Core {
    pub(super) fn new(config: RegistryConfig) -> Self {
        Self {
            registry: Registry::new(config),
            log: MerkleLog::new(MemoryLogStore::new()),
            state: SparseMerkleTree::new(MemoryStateStore::new()),
            epochs: Vec::new(),
            open_ops: 0,
            height: 0,
            history: HashMap::new(),
            snapshots: HashMap::new(),
            dirty: HashSet::new(),
            keys: HashMap::new(),
        }
    }

    pub(super) fn open_epoch(&self) -> u64 {
        self.epochs.len() as u64
    }

    /// Completes due recoveries at `height` (and remembers the height).
    pub(super) fn advance(&mut self, height: u32) -> Result<(), StateError> {
        self.height = self.height.max(height);
        for applied in self.registry.advance(self.height) {
            self.state
                .insert(state_key(applied.x_uid), applied.record_hash)?;
            self.dirty.insert(applied.x_uid);
            self.note_key(applied.x_uid);
        }
        Ok(())
    }

    pub(super) fn note_key(&mut self, x_uid: u64) {
        if let Some(key) = self.registry.get(x_uid).and_then(|i| i.key) {
            self.keys.insert(key, x_uid);
        }
    }

    pub(super) fn ctx(&self) -> OpContext {
        OpContext {
            epoch: self.open_epoch(),
            height: self.height,
        }
    }

    /// Applies an operation already checked against the registry.
    pub(super) fn apply(
        &mut self,
        op: &BindingOp,
        attestation: Option<Event>,
        ctx: OpContext,
    ) -> Result<AcceptedOp, ServiceError> {
        let applied = self.registry.apply(op, ctx)?;
        let attestation_index = match &attestation {
            Some(att) => Some(
                self.log
                    .append(&log_entry(LogEntryKind::Attestation, &att.id))?,
            ),
            None => None,
        };
        let log_index = self.log.append(&op.log_entry())?;
        self.state
            .insert(state_key(applied.x_uid), applied.record_hash)?;
        self.dirty.insert(op.x_uid);
        self.note_key(op.x_uid);
        // A key that signed an operation for this id stays findable, even
        // when it is not (or no longer) the bound one.
        self.keys.entry(op.signer()).or_insert(op.x_uid);
        self.open_ops += 1;
        let accepted = AcceptedOp {
            event: op.event.clone(),
            op: op.op,
            attestation,
            log_index,
            attestation_index,
            epoch: ctx.epoch,
            height: ctx.height,
        };
        self.history
            .entry(op.x_uid)
            .or_default()
            .push(accepted.clone());
        Ok(accepted)
    }

    /// Closes the open epoch at the current height and returns its header,
    /// linked to the previous epoch by that epoch's header hash.
    pub(super) fn close(&mut self) -> Result<EpochHeader, ServiceError> {
        let prev_header_hash = self
            .epochs
            .last()
            .map_or([0; 32], |prev| prev.header.hash());
        let header = EpochHeader {
            version: HEADER_VERSION,
            epoch: self.open_epoch(),
            prev_header_hash,
            log_size: self.log.size()?,
            log_root: self.log.root()?,
            state_root: self.state.root(),
        };
        Ok(header)
    }

    pub(super) fn commit_close(&mut self, epoch: ClosedEpoch) {
        let n = epoch.header.epoch;
        for x_uid in self.dirty.drain() {
            if let Some(identity) = self.registry.get(x_uid) {
                self.snapshots
                    .entry(x_uid)
                    .or_default()
                    .insert(n, identity.clone());
            }
        }
        self.epochs.push(epoch);
        self.open_ops = 0;
    }
}
