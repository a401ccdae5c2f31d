//! NIP-77 messages on one connection: the session's side of
//! [`crate::negentropy`] (which holds the sets and the protocol). A child
//! module of `connection`, so that it shares the session's checks (REQ's
//! [`Session::check_query`], the query context, `unless_gone`) instead of
//! copying them.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::Peekable;
use futures::Stream;
use nostr::Filter;

use super::{Flow, Incoming, Session};
use crate::kinds::is_private;
use crate::matching::check_sizes;
use crate::message::out;
use crate::negentropy::{decode_message, NegError};
use crate::privacy::stored_event_visible;
use crate::store::{QueryBudget, StoreError, StoredEvent, SyncItem};

impl Session {
    /// `NEG-OPEN`: build the set the connection may see for `filter` and
    /// answer the client's initial message.
    pub(super) async fn on_neg_open<In>(
        &mut self,
        sub_id: String,
        filter: Filter,
        message: String,
        incoming: &mut Peekable<In>,
    ) -> Flow
    where
        In: Stream<Item = Incoming> + Unpin + Send,
    {
        let relay = Arc::clone(&self.relay);
        let config = &relay.config.negentropy;
        // NIP-77: a NEG-OPEN for an open session's id closes that one first.
        self.neg.close(&sub_id);
        if !config.enabled {
            let err = NegError::Blocked {
                reason: "NIP-77 negentropy is disabled on this relay".into(),
                max_records: None,
            };
            return self.neg_err(&sub_id, &err).await;
        }
        let filters = std::slice::from_ref(&filter);
        // The checks of a REQ: id length, rate limit, AUTH for private kinds.
        if let Err(reason) = self.check_query(&sub_id, filters) {
            let limited = reason.starts_with("rate-limited:");
            if let Flow::Close(c) = self.note_rate_limit(limited) {
                return Flow::Close(c);
            }
            return self
                .send_or_close(out::neg_err(&sub_id, &reason, None))
                .await;
        }
        if let Err(reason) = check_sizes(&relay.config.limits, filters, 0) {
            return self
                .send_or_close(out::neg_err(&sub_id, &reason, None))
                .await;
        }
        if let Err(err) = self.neg.check_room(config) {
            return self.neg_err(&sub_id, &err).await;
        }
        let initial = match decode_message(&message) {
            Ok(initial) => initial,
            Err(err) => return self.neg_err(&sub_id, &err).await,
        };
        let ctx = self.query_context();
        let budget = QueryBudget::millis(config.max_query_ms);
        let listed = relay
            .store
            .sync_items(&filter, &ctx, budget, config.max_records);
        let items = match Self::unless_gone(incoming, listed).await {
            None => return Flow::Continue,
            Some(Ok(items)) => items,
            Some(Err(err)) => {
                let err = self.sync_error(&err);
                return self.neg_err(&sub_id, &err).await;
            }
        };
        let checked = visible_items(&relay, items, &self.authed, budget);
        let items = match Self::unless_gone(incoming, checked).await {
            None => return Flow::Continue,
            Some(Ok(items)) => items,
            Some(Err(err)) => {
                let err = self.sync_error(&err);
                return self.neg_err(&sub_id, &err).await;
            }
        };
        let opened = self
            .neg
            .open(
                sub_id.clone(),
                items,
                initial,
                config,
                &relay.negentropy_records,
            )
            .await;
        match opened {
            Ok(reply) => self.send_or_close(out::neg_msg(&sub_id, &reply)).await,
            Err(err) => self.neg_err(&sub_id, &err).await,
        }
    }

    /// `NEG-MSG`: the next step of an open session.
    pub(super) async fn on_neg_msg(&mut self, sub_id: String, message: String) -> Flow {
        let relay = Arc::clone(&self.relay);
        let stepped = match decode_message(&message) {
            Ok(message) => {
                self.neg
                    .step(&sub_id, message, &relay.config.negentropy)
                    .await
            }
            Err(err) => Err(err),
        };
        match stepped {
            Ok(reply) => self.send_or_close(out::neg_msg(&sub_id, &reply)).await,
            Err(err) => self.neg_err(&sub_id, &err).await,
        }
    }

    /// Close the sessions idle past `idle_timeout_secs`, telling the client.
    pub(super) async fn expire_neg_sessions(&mut self) -> Flow {
        let secs = self.relay.config.negentropy.idle_timeout_secs;
        for sub_id in self.neg.expire(std::time::Instant::now()) {
            let err = NegError::Closed(format!("the session was idle for more than {secs} s"));
            if let Flow::Close(c) = self.neg_err(&sub_id, &err).await {
                return Flow::Close(c);
            }
        }
        Flow::Continue
    }

    /// Answer with NEG-ERR; the session (if any) is closed (NIP-77).
    pub(super) async fn neg_err(&mut self, sub_id: &str, err: &NegError) -> Flow {
        self.neg.close(sub_id);
        let max = match err {
            NegError::Blocked { max_records, .. } => *max_records,
            _ => None,
        };
        self.send_or_close(out::neg_err(sub_id, &err.to_string(), max))
            .await
    }

    fn sync_error(&self, err: &StoreError) -> NegError {
        let config = &self.relay.config.negentropy;
        match err.root() {
            StoreError::TooManyItems { max } => NegError::Blocked {
                reason: format!(
                    "too many results: more than {max} events match (max_records); narrow the filter"
                ),
                max_records: Some(*max),
            },
            StoreError::Timeout => NegError::Blocked {
                reason: format!(
                    "the query took longer than max_query_ms ({} ms); narrow the filter",
                    config.max_query_ms
                ),
                max_records: None,
            },
            StoreError::TooManyValues { values, max } => {
                NegError::Invalid(format!("the filter lists {values} values (max {max})"))
            }
            other => {
                tracing::warn!(error = %other, "negentropy query failed");
                NegError::Blocked {
                    reason: "could not query the database".into(),
                    max_records: None,
                }
            }
        }
    }
}

/// Defence in depth, as for REQ results: the store applied the privacy rule
/// in SQL; every private event left in the set is checked again against its
/// own JSON ([`stored_event_visible`]), and dropped unless `viewers` may
/// receive it (or if it is gone, or its `seq` now names another event).
async fn visible_items(
    relay: &crate::relay::Relay,
    items: Vec<SyncItem>,
    viewers: &[nostr::PublicKey],
    budget: QueryBudget,
) -> Result<Vec<SyncItem>, StoreError> {
    let private: Vec<i64> = items
        .iter()
        .filter(|item| is_private(item.kind))
        .map(|item| item.seq)
        .collect();
    if private.is_empty() {
        return Ok(items);
    }
    let fetched: HashMap<i64, (Vec<u8>, String)> = relay
        .store
        .fetch_json(&private, budget)
        .await?
        .into_iter()
        .map(|(seq, id, json)| (seq, (id, json)))
        .collect();
    Ok(items
        .into_iter()
        .filter(|item| {
            if !is_private(item.kind) {
                return true;
            }
            let Some((id, json)) = fetched.get(&item.seq) else {
                return false;
            };
            id.as_slice() == item.id
                && stored_event_visible(
                    &StoredEvent {
                        id: item.id,
                        created_at: item.created_at,
                        kind: item.kind,
                        json: json.clone(),
                    },
                    viewers,
                )
        })
        .collect())
}
