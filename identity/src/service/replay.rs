//! Rebuilding [`Core`] at start from the stored rows.
//!
//! Every stored operation is applied again in log order, at its stored
//! epoch and height, and must land at its stored log index; every stored
//! epoch header must equal the header the replayed log and state close to.
//! Anything else is [`ServiceError::Corrupt`]: a damaged or edited database
//! is refused, never served.

use nostr::{Event, JsonUtil};

use crate::binding::{BindingOp, OpContext, RegistryConfig};
use crate::epoch::EpochHeader;

use super::db::{EpochRow, OperationRow};
use super::memory::{ClosedEpoch, Core};
use super::ServiceError;

impl Core {
    /// Rebuilds the core from stored rows, checking every stored header.
    pub(super) fn replay(
        config: RegistryConfig,
        ops: Vec<OperationRow>,
        epochs: Vec<EpochRow>,
    ) -> Result<Self, ServiceError> {
        let mut core = Self::new(config);
        core.replay_rows(ops, epochs)?;
        Ok(core)
    }

    /// Applies stored rows that follow what the core holds: `epochs` from
    /// the open epoch on, `ops` from the log's size on (those of each epoch
    /// before it closes, then those of the open epoch). Used at start
    /// (from empty) and to catch up with rows other processes stored.
    pub(super) fn replay_rows(
        &mut self,
        ops: Vec<OperationRow>,
        epochs: Vec<EpochRow>,
    ) -> Result<(), ServiceError> {
        let corrupt = |m: String| ServiceError::Corrupt(m);
        let core = self;
        let mut ops = ops.into_iter().peekable();
        let replay_op = |core: &mut Core, row: OperationRow| -> Result<(), ServiceError> {
            if row.epoch != core.open_epoch() {
                return Err(corrupt(format!(
                    "operation {} is in epoch {} while epoch {} is open",
                    row.log_index,
                    row.epoch,
                    core.open_epoch()
                )));
            }
            let event = Event::from_json(&row.event_json)
                .map_err(|e| corrupt(format!("operation {}: {e}", row.log_index)))?;
            let op = BindingOp::from_event(&event)
                .map_err(|e| corrupt(format!("operation {}: {e}", row.log_index)))?;
            let attestation = row
                .attestation_json
                .as_deref()
                .map(Event::from_json)
                .transpose()
                .map_err(|e| corrupt(format!("attestation of {}: {e}", row.log_index)))?;
            core.advance(row.height)?;
            let ctx = OpContext {
                epoch: row.epoch,
                height: row.height,
            };
            let accepted = core.apply(&op, attestation, ctx).map_err(|e| {
                corrupt(format!("operation {} does not replay: {e}", row.log_index))
            })?;
            if accepted.log_index != row.log_index
                || accepted.attestation_index != row.attestation_index
            {
                return Err(corrupt(format!(
                    "operation {} replays at log index {}",
                    row.log_index, accepted.log_index
                )));
            }
            Ok(())
        };
        for stored in epochs {
            if stored.epoch != core.open_epoch() {
                return Err(corrupt(format!("epoch {} is missing", core.open_epoch())));
            }
            while let Some(row) = ops.next_if(|o| o.epoch == stored.epoch) {
                replay_op(core, row)?;
            }
            core.advance(stored.close_height)?;
            let bytes = hex::decode(&stored.header)
                .map_err(|e| corrupt(format!("epoch {} header: {e}", stored.epoch)))?;
            let header = EpochHeader::from_bytes(&bytes)
                .map_err(|e| corrupt(format!("epoch {} header: {e}", stored.epoch)))?;
            let replayed = core.close()?;
            if replayed != header {
                return Err(corrupt(format!(
                    "epoch {} header does not match the replayed log and state",
                    stored.epoch
                )));
            }
            let anchor_txid = stored
                .anchor_txid
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| corrupt(format!("epoch {} anchor txid: {e}", stored.epoch)))?;
            core.commit_close(ClosedEpoch {
                header,
                close_height: stored.close_height,
                anchor_txid,
                closed_at: stored.closed_at,
            });
        }
        for row in ops {
            replay_op(core, row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use nostr::Keys;

    use super::*;

    #[test]
    fn replay_refuses_rows_that_do_not_match_their_header() {
        let user = Keys::generate();
        let event = crate::binding::proof_post_op(
            false,
            42,
            0,
            None,
            "alice",
            7,
            "abcdefabcdefabcdefabcdefabcdefab",
        )
        .sign_with_keys(&user)
        .unwrap();
        let op = OperationRow {
            log_index: 0,
            event_id: event.id.to_hex(),
            x_uid: 42,
            event_json: event.as_json(),
            attestation_json: None,
            attestation_index: None,
            epoch: 0,
            height: 100,
            accepted_at: 1,
        };
        // The right header replays; any other is refused.
        let mut core = Core::new(RegistryConfig::default());
        let parsed = BindingOp::from_event(&event).unwrap();
        core.apply(
            &parsed,
            None,
            OpContext {
                epoch: 0,
                height: 100,
            },
        )
        .unwrap();
        let header = core.close().unwrap();
        let row = |h: &EpochHeader| EpochRow {
            epoch: 0,
            header: hex::encode(h.to_bytes()),
            close_height: 100,
            anchor_txid: None,
            closed_at: 2,
        };
        let replayed = Core::replay(
            RegistryConfig::default(),
            vec![op.clone()],
            vec![row(&header)],
        )
        .unwrap();
        assert_eq!(replayed.log.size().unwrap(), 1);
        assert_eq!(
            replayed.registry.get(42).unwrap().key,
            Some(user.public_key())
        );
        let mut forged = header;
        forged.state_root[0] ^= 1;
        assert!(matches!(
            Core::replay(RegistryConfig::default(), vec![op], vec![row(&forged)]),
            Err(ServiceError::Corrupt(_))
        ));
    }
}
