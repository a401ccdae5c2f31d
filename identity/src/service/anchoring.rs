//! Epochs and their anchors: closing an epoch, handing it to the anchorer,
//! following the anchorer's txids (fee bumps, re-anchoring after a reorg),
//! and the epoch and status views.
//!
//! Invariants: an epoch is stored before it is handed to the anchorer, so a
//! crash never loses a closed epoch; an epoch close catches up, decides and
//! stores under identity's write lock, so it closes whatever was logged
//! before it (never "skipped" for losing a race); the epochs table's
//! `anchor_txid` follows the anchorer's current transaction; lookups read
//! the anchor records cached at the last sync or close, never wait for the
//! wallet; anchors are signed, broadcast and recorded only under the
//! current anchoring term ([`TermFence`], see the fence in [`super`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bitcoin::Txid;
use nostr::nips::nip19::ToBech32;
use tracing::{info, warn};

use crate::anchor::{AnchorRecord, Fence, FenceHold};

use super::db::{EpochRow, IdentityDb, Insert, Rows, TermHold};
use super::memory::ClosedEpoch;
use super::views::{anchor_view, health_view};
use super::{
    unix_now, AnchoringStatus, EpochClose, EpochView, IdentityService, ServiceError, ServiceStatus,
};

/// How long the status view waits for the wallet to name a funding address
/// it has not cached yet.
const FUNDING_ADDRESS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl IdentityService {
    /// Closes the open epoch if it has operations, stores it and hands it
    /// to the anchorer (which queues it behind any epoch still waiting for
    /// a transaction).
    pub async fn close_epoch(&self) -> Result<EpochClose, ServiceError> {
        self.refresh_anchor_txids().await?;
        let mut core = self.core.lock().await;
        // Under the write lock from the catch-up to the insert: operations
        // other processes log meanwhile wait, and the next epoch takes them.
        let mut lock = self.db.write_lock().await?;
        self.catch_up_from(&mut core, Rows::Locked(&mut lock))
            .await?;
        if core.open_ops == 0 {
            return Ok(EpochClose::Skipped);
        }
        core.advance(self.tip.load(Ordering::Relaxed))?;
        let header = core.close()?;
        let closed = ClosedEpoch {
            header,
            close_height: core.height,
            anchor_txid: None,
            closed_at: unix_now(),
        };
        let row = EpochRow {
            epoch: header.epoch,
            header: hex::encode(header.to_bytes()),
            close_height: closed.close_height,
            anchor_txid: None,
            closed_at: closed.closed_at,
        };
        if lock.insert_epoch(&row, header.log_size).await? == Insert::Stale {
            // Not after a catch-up under the lock (a core that missed rows
            // it was caught up with): drop what this core has and rebuild.
            let (ops, epochs) = (self.db.operations().await?, self.db.epochs().await?);
            *core = super::memory::Core::replay(self.config.registry, ops, epochs)?;
            return Err(ServiceError::Contended);
        }
        core.commit_close(closed);
        drop(core);
        info!(
            epoch = header.epoch,
            log_size = header.log_size,
            "identity epoch closed"
        );
        let (txid, queued) = match self
            .anchorer()
            .anchor(header.epoch, &header.op_return_payload())
            .await
        {
            Ok(txid) => {
                // Refused (and logged) only if the term moved since the broadcast.
                self.set_txid(header.epoch, txid).await?;
                self.refresh_anchor_txids().await?;
                (Some(txid), None)
            }
            Err(e @ crate::anchor::AnchorError::Fenced { .. }) => {
                warn!(epoch = header.epoch, reason = %e,
                    "epoch closed but not anchored here: another process anchors now");
                (None, Some(e.to_string()))
            }
            Err(e) if e.is_queued() => {
                warn!(epoch = header.epoch, reason = %e, "epoch queued for anchoring");
                (None, Some(e.to_string()))
            }
            Err(e) => {
                warn!(epoch = header.epoch, error = %e, "anchoring failed; will retry on sync");
                (None, Some(e.to_string()))
            }
        };
        if let Ok(event) = header
            .to_event_builder(txid.as_ref())
            .sign_with_keys(&self.witness)
        {
            self.publish(event);
        }
        // Where each operation sits in the log, for mirrors (kind 3473).
        for event in self.segment_events(header.epoch).await {
            self.publish(event);
        }
        Ok(EpochClose::Closed {
            epoch: header.epoch,
            txid,
            queued,
        })
    }

    /// Records `txid` as `epoch`'s anchor, under this process's anchoring
    /// term: `false` (nothing recorded) when another process took the
    /// anchoring over.
    async fn set_txid(&self, epoch: u64, txid: Txid) -> Result<bool, ServiceError> {
        let term = self.term.load(Ordering::Acquire);
        if !self
            .db
            .set_anchor_txid(epoch, &txid.to_string(), term)
            .await?
        {
            warn!(epoch, %txid, term,
                "not recording the anchor txid: another process holds a later anchoring term");
            return Ok(false);
        }
        let mut core = self.core.lock().await;
        if let Some(e) = core.epochs.get_mut(epoch as usize) {
            e.anchor_txid = Some(txid);
        }
        Ok(true)
    }

    /// Copies the anchorer's current txids (new anchors, fee bumps,
    /// re-anchoring after a reorg) into the epochs table. A process that
    /// does not run the anchoring (see [`IdentityService::run`]) reads the
    /// records the anchoring process wrote to the shared wallet file and
    /// only updates its own view: it neither writes the table nor publishes.
    pub(super) async fn refresh_anchor_txids(&self) -> Result<(), ServiceError> {
        let records = match self.anchorer().records().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read anchor records");
                return Ok(());
            }
        };
        *self.records.lock().unwrap_or_else(|p| p.into_inner()) =
            records.iter().map(|r| (r.epoch, r.clone())).collect();
        if !self.running.load(Ordering::Acquire) {
            let mut core = self.core().await;
            for r in &records {
                if let (Some(txid), Some(e)) = (r.txid, core.epochs.get_mut(r.epoch as usize)) {
                    e.anchor_txid = Some(txid);
                }
            }
            return Ok(());
        }
        let known: Vec<Option<Txid>> = {
            let core = self.core().await;
            core.epochs.iter().map(|e| e.anchor_txid).collect()
        };
        for r in records {
            let (Some(txid), Some(current)) = (r.txid, known.get(r.epoch as usize)) else {
                continue;
            };
            if *current != Some(txid) {
                if !self.set_txid(r.epoch, txid).await? {
                    break;
                }
                {
                    // The epoch event published at close had no anchor yet,
                    // and a fee bump or re-anchoring replaced the one named
                    // since: mirrors look the anchor up by this txid.
                    let header = {
                        let core = self.core.lock().await;
                        core.epochs[r.epoch as usize].header
                    };
                    if let Ok(event) = header
                        .to_event_builder(Some(&txid))
                        .sign_with_keys(&self.witness)
                    {
                        self.publish(event);
                    }
                }
            }
        }
        Ok(())
    }

    /// Syncs the anchoring wallet with the chain (confirmations, fee bumps,
    /// reorgs, queued epochs) and records the new tip and txids.
    pub async fn sync_anchors(&self) -> Result<(), ServiceError> {
        let anchorer = self.anchorer();
        if let Err(e) = anchorer.sync().await {
            if e.is_queued() {
                warn!(reason = %e, "anchoring is waiting");
            } else {
                warn!(error = %e, "anchor sync failed");
            }
        }
        if let Ok(status) = anchorer.status().await {
            self.tip.fetch_max(status.tip_height, Ordering::Relaxed);
        }
        self.refresh_funding_address().await;
        {
            // Recoveries whose delay passed complete now, not only when the
            // next operation or epoch close comes along.
            let mut core = self.core.lock().await;
            core.advance(self.tip.load(Ordering::Relaxed))?;
        }
        self.refresh_anchor_txids().await
    }

    /// Asks the wallet for its funding address (which changes once paid) and
    /// caches it for the status view; `None` while the node is unreachable
    /// before the first one is known.
    async fn refresh_funding_address(&self) -> Option<String> {
        let address = match self.anchorer().funding_address().await {
            Ok(a) => Some(a.to_string()),
            Err(e) => {
                warn!(error = %e, "cannot derive the anchoring wallet's funding address");
                None
            }
        };
        let mut cached = self
            .funding_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if address.is_some() {
            cached.clone_from(&address);
        }
        cached.clone()
    }

    pub(super) fn cached_record(&self, epoch: u64) -> Option<AnchorRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&epoch)
            .cloned()
    }

    /// One closed epoch.
    pub async fn epoch(&self, n: u64) -> Result<EpochView, ServiceError> {
        let closed = {
            let core = self.core().await;
            core.epochs
                .get(n as usize)
                .cloned()
                .ok_or(ServiceError::NotFound("epoch"))?
        };
        let anchor = self.cached_record(n).as_ref().map(anchor_view);
        let h = closed.header;
        Ok(EpochView {
            epoch: h.epoch,
            header: hex::encode(h.to_bytes()),
            header_hash: hex::encode(h.hash()),
            prev_header_hash: hex::encode(h.prev_header_hash),
            log_size: h.log_size,
            log_root: hex::encode(h.log_root),
            state_root: hex::encode(h.state_root),
            closed_at: closed.closed_at,
            anchor,
        })
    }

    /// The latest closed epoch.
    pub async fn latest_epoch(&self) -> Result<EpochView, ServiceError> {
        let n = {
            let core = self.core().await;
            core.epochs
                .len()
                .checked_sub(1)
                .ok_or(ServiceError::NotFound("epoch"))?
        };
        self.epoch(n as u64).await
    }

    /// Health of the service and of anchoring.
    pub async fn status(&self) -> Result<ServiceStatus, ServiceError> {
        let anchor = self.anchorer().status().await?;
        let cached = self
            .funding_address
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let funding_address = match cached {
            Some(a) => Some(a),
            // Not known yet (no sync so far): ask, but a status page must not
            // wait for a busy wallet.
            None => tokio::time::timeout(FUNDING_ADDRESS_WAIT, self.refresh_funding_address())
                .await
                .ok()
                .flatten(),
        };
        let (health, message) = health_view(&anchor.health, funding_address.as_deref());
        let core = self.core().await;
        Ok(ServiceStatus {
            witness: self.witness.public_key().to_bech32().unwrap_or_default(),
            open_epoch: core.open_epoch(),
            open_epoch_operations: core.open_ops,
            log_size: core.log.size()?,
            identities: core.history.len(),
            anchoring: AnchoringStatus {
                health,
                message,
                tip_height: anchor.tip_height,
                balance_sat: anchor.balance.to_sat(),
                funding_address,
                queued_epochs: anchor.queued,
                unconfirmed_epochs: anchor.unconfirmed,
            },
        })
    }
}

/// The anchorer's [`Fence`]: a signing and broadcast goes ahead only while
/// this process's term is the stored one, held for its length
/// ([`IdentityDb::hold_anchor_term`]).
pub(super) struct TermFence {
    db: IdentityDb,
    term: Arc<AtomicU64>,
}

/// The fence for the process whose term is `term`.
pub(super) fn term_fence(db: &IdentityDb, term: &Arc<AtomicU64>) -> Arc<dyn Fence> {
    Arc::new(TermFence {
        db: db.clone(),
        term: Arc::clone(term),
    })
}

impl Fence for TermFence {
    fn hold(&self) -> Result<Box<dyn FenceHold>, String> {
        let term = self.term.load(Ordering::Acquire);
        // The anchorer calls this on its blocking thread, inside the runtime.
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        match runtime.block_on(self.db.hold_anchor_term(term)) {
            Ok(Some(hold)) => Ok(Box::new(hold)),
            Ok(None) => Err(format!(
                "anchoring term {term} is no longer current: another process took the anchoring over"
            )),
            Err(e) => Err(format!("cannot check the anchoring term: {e}")),
        }
    }
}

impl FenceHold for TermHold {
    fn release(self: Box<Self>) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.block_on((*self).release());
        }
    }
}
