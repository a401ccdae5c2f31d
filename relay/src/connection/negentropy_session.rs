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
use crate::ratelimit::Busy;
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
        // Room for the set is reserved before it is built, so that sets
        // being built count against max_records_total too; what the set
        // does not use is given back when it opens.
        let most = filter
            .limit
            .map_or(config.max_records, |limit| limit.min(config.max_records));
        let reserved = match relay.negentropy_records.reserve(most) {
            Ok(reserved) => reserved,
            Err(err) => return self.neg_err(&sub_id, &err).await,
        };
        let ctx = self.query_context();
        let budget = QueryBudget::millis(config.max_query_ms);
        let viewers = self.authed.clone();
        let built = async {
            let items = relay
                .store
                .sync_items(&filter, &ctx, budget, config.max_records)
                .await?;
            visible_items(&relay, items, &viewers, budget).await
        };
        // As a REQ's query, under one of the address's query slots.
        let built = super::with_query_slot(&relay, self.ip, built);
        let items = match Self::unless_gone(incoming, built).await {
            None => return Flow::Continue,
            Some(Ok(Ok(items))) => items,
            Some(Ok(Err(err))) => {
                let err = self.sync_error(&err);
                return self.neg_err(&sub_id, &err).await;
            }
            Some(Err(Busy)) => {
                self.neg.close(&sub_id);
                return self.send_or_close(self.queries_busy_neg(&sub_id)).await;
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
                reserved,
            )
            .await;
        match opened {
            Ok(reply) => self.send_or_close(out::neg_msg(&sub_id, &reply)).await,
            Err(err) => self.neg_err(&sub_id, &err).await,
        }
    }

    /// `NEG-MSG`: the next step of an open session.
    /// Each step is O(n) in the set, so it counts against the REQ rate
    /// limits; a step over them ends the session with NEG-ERR.
    pub(super) async fn on_neg_msg(&mut self, sub_id: String, message: String) -> Flow {
        let relay = Arc::clone(&self.relay);
        if let Err(reason) = self.check_req_rate() {
            if let Flow::Close(c) = self.note_rate_limit(true) {
                return Flow::Close(c);
            }
            self.neg.close(&sub_id);
            return self
                .send_or_close(out::neg_err(&sub_id, &reason, None))
                .await;
        }
        let stepped = match decode_message(&message) {
            Ok(message) => {
                self.neg
                    .step(
                        &sub_id,
                        message,
                        &relay.config.negentropy,
                        &relay.negentropy_records,
                    )
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

    /// The NEG-ERR for a NEG-OPEN that found all of its address's query
    /// slots taken for `query_wait_ms` (the same reason as a REQ's CLOSED).
    fn queries_busy_neg(&self, sub_id: &str) -> String {
        let limits = &self.relay.config.limits;
        out::neg_err(
            sub_id,
            &format!(
                "rate-limited: too many queries at once from your address (max {}); try again",
                limits.max_concurrent_queries_per_ip
            ),
            None,
        )
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

/// Private events re-checked per database round trip: bounds the JSON held
/// at once while a set is checked.
const RECHECK_CHUNK: usize = 1_000;

/// Defence in depth, as for REQ results: the store applied the privacy rule
/// in SQL; every private event left in the set is checked again against its
/// own JSON ([`stored_event_visible`]), and dropped unless `viewers` may
/// receive it (or if it is gone, or its `seq` now names another event).
/// The JSON is read [`RECHECK_CHUNK`] events at a time, all under `budget`.
async fn visible_items(
    relay: &crate::relay::Relay,
    mut items: Vec<SyncItem>,
    viewers: &[nostr::PublicKey],
    budget: QueryBudget,
) -> Result<Vec<SyncItem>, StoreError> {
    let private: Vec<usize> = (0..items.len())
        .filter(|&i| is_private(items[i].kind))
        .collect();
    if private.is_empty() {
        return Ok(items);
    }
    let mut keep = vec![true; items.len()];
    for chunk in private.chunks(RECHECK_CHUNK) {
        let seqs: Vec<i64> = chunk.iter().map(|&i| items[i].seq).collect();
        let mut fetched: HashMap<i64, (Vec<u8>, String)> = relay
            .store
            .fetch_json(&seqs, budget)
            .await?
            .into_iter()
            .map(|(seq, id, json)| (seq, (id, json)))
            .collect();
        for &i in chunk {
            let item = &items[i];
            keep[i] = fetched.remove(&item.seq).is_some_and(|(id, json)| {
                id.as_slice() == item.id
                    && stored_event_visible(
                        &StoredEvent {
                            id: item.id,
                            created_at: item.created_at,
                            kind: item.kind,
                            json,
                        },
                        viewers,
                    )
            });
        }
    }
    let mut flags = keep.into_iter();
    items.retain(|_| flags.next().unwrap_or(false));
    Ok(items)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::channel::mpsc;
    use futures::StreamExt;
    use serde_json::{json, Value};

    use crate::config::{Rate, RelayConfig};
    use crate::connection::{serve_connection, Incoming, Outgoing};
    use crate::relay::Relay;

    const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

    async fn recv(rx: &mut mpsc::Receiver<Outgoing>) -> Value {
        match tokio::time::timeout(REPLY_TIMEOUT, rx.next()).await {
            Ok(Some(Outgoing::Text(text))) => serde_json::from_str(&text).unwrap(),
            other => panic!("no reply: {other:?}"),
        }
    }

    /// A NEG-OPEN builds its set holding one of its address's query slots,
    /// as a REQ: with `max_concurrent_queries_per_ip = 1`, no wait, and the
    /// address's slot taken (held here, so nothing depends on timing), it
    /// is refused with `rate-limited:`; once the slot is free it opens.
    /// (Before, NEG-OPEN ran its queries outside the cap.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn neg_open_holds_a_query_slot_of_its_address() {
        let body = async {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}/relay.db", dir.path().display());
            let store = crate::store::open(&url).await.unwrap();
            let mut config = RelayConfig::default();
            config.rate_limits.reqs_per_ip = Rate::new(100_000.0, 100_000.0);
            config.limits.max_concurrent_queries_per_ip = 1;
            config.limits.query_wait_ms = 0;
            let (relay, _writer) = Relay::new(config, "ws://127.0.0.1:1", store.clone());
            let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
            let permit = relay.admit(ip).unwrap();
            let (tx, incoming) = mpsc::unbounded();
            let (outgoing, mut rx) = mpsc::channel(64);
            tokio::spawn(serve_connection(
                std::sync::Arc::clone(&relay),
                permit,
                incoming,
                outgoing,
            ));
            assert_eq!(recv(&mut rx).await[0], "AUTH");
            let open = json!(["NEG-OPEN", "s", {"kinds": [1]}, "61"]).to_string();

            let slot = relay.limiters.queries_per_ip.acquire(&ip).await.unwrap();
            tx.unbounded_send(Incoming::Text(open.clone())).unwrap();
            let reply = recv(&mut rx).await;
            assert_eq!(reply[0], "NEG-ERR", "{reply}");
            assert_eq!(reply[1], "s", "{reply}");
            assert!(
                reply[2].as_str().unwrap().starts_with("rate-limited:"),
                "{reply}"
            );
            drop(slot);
            tx.unbounded_send(Incoming::Text(open)).unwrap();
            let reply = recv(&mut rx).await;
            assert_eq!(reply[0], "NEG-MSG", "{reply}");
            drop(tx);
            store.close().await;
        };
        tokio::time::timeout(Duration::from_secs(120), body)
            .await
            .expect("test timed out");
    }
}
