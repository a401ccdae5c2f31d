//! Challenges and binding operations: issuing a challenge, checking a
//! `bind`/`recover` proof post on X and attesting it, and accepting an
//! operation into the log.
//!
//! Invariants: a challenge is used by at most one accepted operation (the
//! database marks it used in the same transaction that stores the
//! operation); an operation is checked against the registry before X is
//! asked and again under the core's lock before it is stored, so two
//! concurrent submissions cannot both be accepted against the same state;
//! the row is stored before the in-memory core changes, and only if the
//! stored log still ends where the core did (other processes may share the
//! database, see [`super`]).

use std::sync::atomic::Ordering;

use nostr::nips::nip19::ToBech32;
use nostr::{Event, JsonUtil, PublicKey};
use tracing::info;

use crate::binding::{BindingOp, OpKind, WitnessAttestation};
use crate::x::{Challenge, PostAuthor, ProofClaim};

use super::db::{ChallengeRow, Insert, OperationRow};
use super::{unix_now, BindingReceipt, IdentityService, IssuedChallenge, ServiceError};

/// How many times a submission is decided again after another process
/// extended the log first, before it is refused as [`ServiceError::Contended`].
const MAX_STALE_ATTEMPTS: u32 = 8;

impl IdentityService {
    /// Issues a challenge for `pubkey` and stores it, unless
    /// [`ServiceConfig::max_outstanding_challenges`] are already outstanding.
    pub async fn issue_challenge(
        &self,
        pubkey: &PublicKey,
    ) -> Result<IssuedChallenge, ServiceError> {
        let _issuing = self.issuing.lock().await;
        let now = unix_now();
        let (outstanding, oldest_expiry) = self.db.outstanding_challenges(now).await?;
        if outstanding >= self.config.max_outstanding_challenges {
            return Err(ServiceError::TooManyChallenges {
                // A challenge is valid through its `expires_at` second.
                retry_after_secs: oldest_expiry.map_or(1, |e| (e + 1).saturating_sub(now).max(1)),
            });
        }
        let challenge = Challenge::issue(pubkey, now, self.config.challenge_ttl);
        self.db
            .insert_challenge(&ChallengeRow {
                nonce: challenge.nonce.clone(),
                pubkey: pubkey.to_hex(),
                issued_at: challenge.issued_at,
                expires_at: challenge.expires_at,
                used: false,
            })
            .await?;
        Ok(IssuedChallenge {
            text: challenge.proof_text(),
            nonce: challenge.nonce,
            npub: challenge.npub,
            issued_at: challenge.issued_at,
            expires_at: challenge.expires_at,
        })
    }

    /// Who wrote proof post `post_id` (numeric id and handle, from X's
    /// syndication answer), so a user can sign a `bind` without knowing
    /// their numeric X id.
    pub async fn post_author(&self, post_id: u64) -> Result<PostAuthor, ServiceError> {
        Ok(self.checker.author_of(post_id).await?)
    }

    /// Checks a `bind`/`recover` proof post and signs the attestation.
    async fn attest(&self, op: &BindingOp, post_id: Option<u64>) -> Result<Event, ServiceError> {
        let identity = op.identity.as_ref().expect("bind and recover carry i");
        if post_id.is_some_and(|p| p != identity.post_id) {
            return Err(ServiceError::BadRequest(
                "post_id differs from the event's `i` tag".into(),
            ));
        }
        let nonce = op.challenge.as_deref().expect("bind and recover carry one");
        let row = self
            .db
            .challenge(nonce)
            .await?
            .ok_or(ServiceError::UnknownChallenge)?;
        if row.used {
            return Err(ServiceError::ChallengeUsed);
        }
        if row.pubkey != op.signer().to_hex() {
            return Err(ServiceError::ChallengeKeyMismatch);
        }
        let now = unix_now();
        if now > row.expires_at {
            return Err(ServiceError::ChallengeExpired {
                expires_at: row.expires_at,
            });
        }
        let challenge = Challenge {
            nonce: row.nonce.clone(),
            npub: op.signer().to_bech32().unwrap_or_default(),
            issued_at: row.issued_at,
            expires_at: row.expires_at,
        };
        let claim = ProofClaim {
            x_uid: op.x_uid,
            handle: identity.handle.clone(),
            post_id: identity.post_id,
        };
        let post = self.checker.check_at(&challenge, &claim, now).await?;
        if post.subject != op.signer() {
            return Err(ServiceError::Mismatch(
                "the post names another key than the signer",
            ));
        }
        if post.x_uid != op.x_uid {
            return Err(ServiceError::Mismatch("the post's author is another id"));
        }
        let attestation = WitnessAttestation {
            x_uid: post.x_uid,
            handle: identity.handle.clone(),
            post_id: identity.post_id,
            subject: post.subject,
            challenge: post.nonce.clone(),
            post_text_sha256: post.text_sha256,
            posted_at: post.created_at,
            fetched_at: post.fetched_at,
        };
        attestation
            .matches(op)
            .map_err(|_| ServiceError::Mismatch("attestation does not match the operation"))?;
        let event = attestation
            .to_event_builder()
            .sign_with_keys(&self.witness)
            .map_err(|e| ServiceError::BadRequest(format!("signing the attestation: {e}")))?;
        Ok(event)
    }

    /// Validates and logs a signed binding operation. For `bind` and
    /// `recover` the proof post is fetched from X and attested first.
    /// `post_id`, when given, must equal the event's `i` tag.
    pub async fn submit(
        &self,
        event: &Event,
        post_id: Option<u64>,
    ) -> Result<BindingReceipt, ServiceError> {
        let op = BindingOp::from_event(event)?;
        // Cheap refusal before asking X: history may already rule it out.
        {
            let mut core = self.core().await;
            core.advance(self.tip.load(Ordering::Relaxed))?;
            let ctx = core.ctx();
            core.registry.check(&op, ctx)?;
        }
        let attestation = match op.op {
            OpKind::Bind | OpKind::Recover => Some(self.attest(&op, post_id).await?),
            _ => None,
        };
        let mut attempts = 0;
        let (ctx, log_index) = loop {
            let mut core = self.core.lock().await;
            self.catch_up(&mut core).await?;
            core.advance(self.tip.load(Ordering::Relaxed))?;
            let ctx = core.ctx();
            // Again: another operation may have been accepted while X was asked.
            core.registry.check(&op, ctx)?;
            let size = core.log.size()?;
            let (attestation_index, log_index) = match attestation {
                Some(_) => (Some(size), size + 1),
                None => (None, size),
            };
            let row = OperationRow {
                log_index,
                event_id: op.id().to_hex(),
                x_uid: op.x_uid,
                event_json: event.as_json(),
                attestation_json: attestation.as_ref().map(|a| a.as_json()),
                attestation_index,
                epoch: ctx.epoch,
                height: ctx.height,
                accepted_at: unix_now(),
            };
            match self
                .db
                .insert_operation(&row, op.challenge.as_deref())
                .await?
            {
                Insert::Stored => {
                    let accepted = core.apply(&op, attestation.clone(), ctx)?;
                    debug_assert_eq!(accepted.log_index, log_index);
                    break (ctx, log_index);
                }
                Insert::ChallengeUsed => return Err(ServiceError::ChallengeUsed),
                // Another process logged or closed an epoch since this
                // core was caught up: catch up and decide again.
                Insert::Stale if attempts < MAX_STALE_ATTEMPTS => attempts += 1,
                Insert::Stale => {
                    tracing::warn!(
                        attempts = attempts + 1,
                        x_uid = op.x_uid,
                        "identity operation not stored: other processes kept extending the log \
                         first; refused as busy (the client may retry)"
                    );
                    return Err(ServiceError::Contended);
                }
            }
        };
        info!(op = %op.op, x_uid = op.x_uid, seq = op.seq, epoch = ctx.epoch, "identity operation accepted");
        self.publish(event.clone());
        if let Some(att) = &attestation {
            self.publish(att.clone());
        }
        Ok(BindingReceipt {
            status: "accepted".to_owned(),
            op: op.op.as_str().to_owned(),
            x_uid: op.x_uid.to_string(),
            seq: op.seq,
            event_id: op.id().to_hex(),
            epoch: ctx.epoch,
            log_index,
            attestation,
        })
    }
}
