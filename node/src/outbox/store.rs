//! The outbox's tables in the node's database (SQLite or Postgres), created
//! by the node's own migrations ([`crate::db`]: `node/migrations/`, versions
//! `20260110…`, unique across the relay's and identity's sets that share
//! `_sqlx_migrations`; each migrator ignores the others' rows).
//!
//! The SQL is written once: both backends take `$N` placeholders, and every
//! column is `TEXT` or a 64-bit integer. Every change of a delivery's state
//! is one statement (or one transaction) committed before the caller goes
//! on: an item and all its deliveries are committed together before
//! anything is sent, and a delivery is marked delivered right where its
//! `OK` is read.

use nostr::{Event, EventId, PublicKey};
use sqlx::{PgPool, SqlitePool};

use super::schedule::{State, DELIVERED, EXPIRED, FAILED, QUEUED, RETRYING};

/// A connection pool to the database holding the outbox.
#[derive(Debug, Clone)]
pub enum OutboxDb {
    /// SQLite (the relay's write connection: writers queue behind each other).
    Sqlite(SqlitePool),
    /// Postgres.
    Postgres(PgPool),
}

/// What an outbox item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A gift wrap for the recipient.
    Message,
    /// The gift wrap of the copy to self.
    Copy,
    /// The owner's kind 10050 inbox-relay list.
    InboxList,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Message => "message",
            Role::Copy => "copy",
            Role::InboxList => "inbox-list",
        }
    }

    /// The role a stored name names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(Role::Message),
            "copy" => Some(Role::Copy),
            "inbox-list" => Some(Role::InboxList),
            _ => None,
        }
    }
}

/// An event to deliver to `relays`.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// The signed event (a gift wrap, or a kind 10050).
    pub event: Event,
    /// What it is.
    pub role: Role,
    /// Who it is for (the author, for a list).
    pub recipient: PublicKey,
    /// The message (rumor) id its wraps share.
    pub rumor_id: Option<EventId>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds after which it is no longer tried.
    pub expires_at: u64,
    /// Destination relays (normalized URLs, no duplicates).
    pub relays: Vec<String>,
}

/// A delivery loaded (and claimed) for sending.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The item's row id.
    pub item_id: i64,
    /// The event's id, hex.
    pub event_id: String,
    /// The event, JSON.
    pub event_json: String,
    /// Failed tries so far.
    pub attempts: u32,
    /// The item's end of life, unix seconds.
    pub expires_at: u64,
}

/// One destination of an item, as the owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeliveryView {
    /// The relay.
    pub relay: String,
    /// `queued`, `retrying`, `delivered`, `failed` or `expired`.
    pub state: String,
    /// Tries so far.
    pub attempts: u32,
    /// Unix seconds of the next try (pending only).
    pub next_attempt_at: Option<u64>,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// Unix seconds of the relay's `OK true`.
    pub delivered_at: Option<u64>,
    /// The relay's OK message, when it said something.
    pub ok_message: Option<String>,
}

/// One item and its destinations.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ItemView {
    /// Row id.
    pub id: i64,
    /// The event's id, hex.
    pub event_id: String,
    /// `message`, `copy` or `inbox-list`.
    pub role: String,
    /// Hex key it is for.
    pub recipient: String,
    /// The message id, hex.
    pub rumor_id: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// Its destinations, by relay URL.
    pub deliveries: Vec<DeliveryView>,
}

/// Counts of deliveries by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Not tried yet.
    pub queued: u64,
    /// Waiting for a retry.
    pub retrying: u64,
    /// Accepted.
    pub delivered: u64,
    /// Refused for good.
    pub failed: u64,
    /// Out of time.
    pub expired: u64,
}

macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            OutboxDb::Sqlite($pool) => $body,
            OutboxDb::Postgres($pool) => $body,
        }
    };
}

fn to_i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

const PENDING: &str = "state IN ('queued', 'retrying')";

type ViewRow = (
    i64,
    String,
    String,
    String,
    Option<String>,
    i64,
    i64,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
);

fn record_sql() -> String {
    format!(
        "UPDATE outbox_deliveries SET state = $3, attempts = $4, \
         next_attempt_at = COALESCE($5, next_attempt_at), \
         last_error = COALESCE($6, last_error), delivered_at = $7, ok_message = $8 \
         WHERE item_id = $1 AND relay = $2 AND {PENDING}"
    )
}

/// `next_attempt_at`, `last_error`, `delivered_at`, `ok_message` of a state.
fn record_values(state: &State) -> (Option<i64>, Option<&str>, Option<i64>, Option<&str>) {
    match state {
        State::Queued => (None, None, None, None),
        State::Retrying { next_at, error } => (Some(to_i(*next_at)), Some(error), None, None),
        State::Delivered { at, message } => (
            None,
            None,
            Some(to_i(*at)),
            (!message.is_empty()).then_some(message.as_str()),
        ),
        State::Failed { error } => (None, Some(error), None, None),
        State::Expired { error } => (None, error.as_deref(), None, None),
    }
}

impl OutboxDb {
    /// Creates the outbox's tables or brings them up to date.
    pub async fn migrate(&self) -> Result<(), sqlx::Error> {
        // The node's one migration set ([`crate::db`]), shared with the
        // web sessions' tables.
        let db = match self {
            OutboxDb::Sqlite(pool) => cairn_relay::store::Database::Sqlite(pool.clone()),
            OutboxDb::Postgres(pool) => cairn_relay::store::Database::Postgres(pool.clone()),
        };
        Ok(crate::db::migrate(&db).await?)
    }

    /// Stores an item and one queued delivery per relay, in one
    /// transaction. An item already stored (same event id) keeps its row;
    /// relays it did not have yet are added. Returns the item's row id.
    pub async fn enqueue(&self, item: &NewItem) -> Result<i64, sqlx::Error> {
        let ids = self.enqueue_all(std::slice::from_ref(item)).await?;
        Ok(ids[0])
    }

    /// Stores `items` as [`OutboxDb::enqueue`] does, all in one
    /// transaction: either every item of a request is queued or none is, so
    /// a caller told of a failure can send again without the recipient
    /// getting a message twice. Returns the row ids in the items' order.
    pub async fn enqueue_all(&self, items: &[NewItem]) -> Result<Vec<i64>, sqlx::Error> {
        const ITEM: &str = "INSERT INTO outbox_items \
             (event_id, event_json, role, recipient, rumor_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING";
        const ID: &str = "SELECT id FROM outbox_items WHERE event_id = $1";
        const DELIVERY: &str = "INSERT INTO outbox_deliveries \
             (item_id, relay, state, attempts, next_attempt_at) VALUES ($1, $2, 'queued', 0, $3) \
             ON CONFLICT (item_id, relay) DO NOTHING";
        let ids = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut ids = Vec::with_capacity(items.len());
            for item in items {
                let event_id = item.event.id.to_hex();
                let json = nostr::JsonUtil::as_json(&item.event);
                let rumor = item.rumor_id.map(|r| r.to_hex());
                sqlx::query(ITEM)
                    .bind(&event_id)
                    .bind(&json)
                    .bind(item.role.as_str())
                    .bind(item.recipient.to_hex())
                    .bind(&rumor)
                    .bind(to_i(item.created_at))
                    .bind(to_i(item.expires_at))
                    .execute(&mut *tx)
                    .await?;
                let (id,): (i64,) = sqlx::query_as(ID).bind(&event_id).fetch_one(&mut *tx).await?;
                for relay in &item.relays {
                    sqlx::query(DELIVERY)
                        .bind(id)
                        .bind(relay)
                        .bind(to_i(item.created_at))
                        .execute(&mut *tx)
                        .await?;
                }
                ids.push(id);
            }
            tx.commit().await?;
            ids
        });
        Ok(ids)
    }

    /// Deletes up to `limit` items whose time to live ended before `before`
    /// and that have nothing left to try (every delivery delivered, failed
    /// or expired), with their deliveries, in one transaction. Returns how
    /// many items went.
    pub async fn prune(&self, before: u64, limit: usize) -> Result<u64, sqlx::Error> {
        let deliveries = format!(
            "DELETE FROM outbox_deliveries WHERE item_id IN (SELECT i.id FROM outbox_items i \
             WHERE i.expires_at < $1 AND NOT EXISTS (SELECT 1 FROM outbox_deliveries p \
             WHERE p.item_id = i.id AND p.{PENDING}) ORDER BY i.expires_at LIMIT $2)"
        );
        // The items just emptied (and any without deliveries), old enough.
        const ITEMS: &str = "DELETE FROM outbox_items WHERE id IN (SELECT i.id \
             FROM outbox_items i WHERE i.expires_at < $1 AND NOT EXISTS \
             (SELECT 1 FROM outbox_deliveries d WHERE d.item_id = i.id) \
             ORDER BY i.expires_at LIMIT $2)";
        let before = to_i(before);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let n = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(&deliveries)
                .bind(before)
                .bind(limit)
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query(ITEMS)
                .bind(before)
                .bind(limit)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            n
        });
        Ok(n)
    }

    /// Up to `limit` relays with deliveries due at `now`, the longest
    /// waiting first.
    pub async fn due_relays(&self, now: u64, limit: usize) -> Result<Vec<String>, sqlx::Error> {
        let sql = format!(
            "SELECT relay FROM outbox_deliveries WHERE {PENDING} AND next_attempt_at <= $1 \
             GROUP BY relay ORDER BY MIN(next_attempt_at), relay LIMIT $2"
        );
        let rows: Vec<(String,)> = on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(to_i(now))
                .bind(to_i(limit as u64))
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    /// Loads up to `limit` deliveries to `relay` due at `now` and claims
    /// them until `claim_until` (their next try is pushed there), so that
    /// another worker on the same database does not send them meanwhile; a
    /// worker killed while holding a claim leaves them due again at its end.
    pub async fn claim(
        &self,
        relay: &str,
        now: u64,
        claim_until: u64,
        limit: usize,
    ) -> Result<Vec<DueDelivery>, sqlx::Error> {
        let select = |lock: &str| {
            format!(
                "SELECT d.item_id, i.event_id, i.event_json, d.attempts, i.expires_at \
                 FROM outbox_deliveries d JOIN outbox_items i ON i.id = d.item_id \
                 WHERE d.relay = $1 AND d.{PENDING} AND d.next_attempt_at <= $2 \
                 ORDER BY d.next_attempt_at, d.item_id LIMIT $3{lock}"
            )
        };
        const CLAIM: &str = "UPDATE outbox_deliveries SET next_attempt_at = $3 \
                             WHERE item_id = $1 AND relay = $2";
        type Row = (i64, String, String, i64, i64);
        let rows: Vec<Row> = match self {
            OutboxDb::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let rows: Vec<Row> = sqlx::query_as(&select(""))
                    .bind(relay)
                    .bind(to_i(now))
                    .bind(to_i(limit as u64))
                    .fetch_all(&mut *tx)
                    .await?;
                for r in &rows {
                    sqlx::query(CLAIM)
                        .bind(r.0)
                        .bind(relay)
                        .bind(to_i(claim_until))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                rows
            }
            OutboxDb::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let rows: Vec<Row> = sqlx::query_as(&select(" FOR UPDATE OF d SKIP LOCKED"))
                    .bind(relay)
                    .bind(to_i(now))
                    .bind(to_i(limit as u64))
                    .fetch_all(&mut *tx)
                    .await?;
                for r in &rows {
                    sqlx::query(CLAIM)
                        .bind(r.0)
                        .bind(relay)
                        .bind(to_i(claim_until))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                rows
            }
        };
        Ok(rows
            .into_iter()
            .map(
                |(item_id, event_id, event_json, attempts, expires_at)| DueDelivery {
                    item_id,
                    event_id,
                    event_json,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    expires_at: to_u(expires_at),
                },
            )
            .collect())
    }

    /// Records the state a try led to. Only a pending delivery changes: a
    /// delivered one stays delivered whatever a late or second answer says.
    pub async fn record(
        &self,
        item_id: i64,
        relay: &str,
        attempts: u32,
        state: &State,
    ) -> Result<(), sqlx::Error> {
        let sql = record_sql();
        let (next, error, at, message) = record_values(state);
        on_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(item_id)
                .bind(relay)
                .bind(state.name())
                .bind(i64::from(attempts))
                .bind(next)
                .bind(error)
                .bind(at)
                .bind(message)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// [`OutboxDb::record`] for many deliveries to `relay`, in one
    /// transaction (one commit, not one per row: a relay that is down
    /// fails a whole batch at once).
    pub async fn record_batch(
        &self,
        relay: &str,
        updates: &[(i64, (u32, State))],
    ) -> Result<(), sqlx::Error> {
        if updates.is_empty() {
            return Ok(());
        }
        let sql = record_sql();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (item_id, (attempts, state)) in updates {
                let (next, error, at, message) = record_values(state);
                sqlx::query(&sql)
                    .bind(*item_id)
                    .bind(relay)
                    .bind(state.name())
                    .bind(i64::from(*attempts))
                    .bind(next)
                    .bind(error)
                    .bind(at)
                    .bind(message)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Marks expired every pending delivery whose item's time to live
    /// ended by `now`; returns how many.
    pub async fn expire_due(&self, now: u64) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "UPDATE outbox_deliveries SET state = '{EXPIRED}' WHERE {PENDING} \
             AND item_id IN (SELECT id FROM outbox_items WHERE expires_at <= $1)"
        );
        let n = on_pool!(self, pool => {
            sqlx::query(&sql).bind(to_i(now)).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }

    /// Ends the pending deliveries of `recipient`'s earlier inbox lists
    /// than item `keep`: a newer list replaces them on every relay.
    pub async fn supersede_lists(
        &self,
        recipient: &PublicKey,
        keep: i64,
    ) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "UPDATE outbox_deliveries SET state = '{EXPIRED}', \
             last_error = 'replaced by a newer list' WHERE {PENDING} AND item_id IN \
             (SELECT id FROM outbox_items WHERE role = 'inbox-list' AND recipient = $1 \
              AND id <> $2)"
        );
        let n = on_pool!(self, pool => {
            sqlx::query(&sql)
                .bind(recipient.to_hex())
                .bind(keep)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    /// The newest inbox list enqueued for `author`, JSON.
    pub async fn latest_list(&self, author: &PublicKey) -> Result<Option<String>, sqlx::Error> {
        const SQL: &str = "SELECT event_json FROM outbox_items \
                           WHERE role = 'inbox-list' AND recipient = $1 ORDER BY id DESC LIMIT 1";
        let row: Option<(String,)> = on_pool!(self, pool => {
            sqlx::query_as(SQL).bind(author.to_hex()).fetch_optional(pool).await?
        });
        Ok(row.map(|(j,)| j))
    }

    /// The relays the newest inbox list enqueued for `author` is still
    /// pending for (queued or retrying).
    pub async fn list_pending_relays(
        &self,
        author: &PublicKey,
    ) -> Result<Vec<String>, sqlx::Error> {
        let sql = format!(
            "SELECT relay FROM outbox_deliveries WHERE {PENDING} AND item_id = \
             (SELECT MAX(id) FROM outbox_items WHERE role = 'inbox-list' AND recipient = $1)"
        );
        let rows: Vec<(String,)> = on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(author.to_hex()).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(|(r,)| r).collect())
    }

    /// The earliest next try of any pending delivery.
    pub async fn next_due_at(&self) -> Result<Option<u64>, sqlx::Error> {
        let sql = format!("SELECT MIN(next_attempt_at) FROM outbox_deliveries WHERE {PENDING}");
        let (v,): (Option<i64>,) = on_pool!(self, pool => {
            sqlx::query_as(&sql).fetch_one(pool).await?
        });
        Ok(v.map(to_u))
    }

    /// Deliveries by state.
    pub async fn totals(&self) -> Result<Totals, sqlx::Error> {
        const SQL: &str = "SELECT state, COUNT(*) FROM outbox_deliveries GROUP BY state";
        let rows: Vec<(String, i64)> = on_pool!(self, pool => {
            sqlx::query_as(SQL).fetch_all(pool).await?
        });
        let mut t = Totals::default();
        for (state, n) in rows {
            let n = to_u(n);
            match state.as_str() {
                QUEUED => t.queued = n,
                RETRYING => t.retrying = n,
                DELIVERED => t.delivered = n,
                FAILED => t.failed = n,
                EXPIRED => t.expired = n,
                _ => {}
            }
        }
        Ok(t)
    }

    /// The newest `limit` items (of message `rumor`, when given), newest
    /// first, each with its deliveries.
    pub async fn list(
        &self,
        limit: usize,
        rumor: Option<&str>,
    ) -> Result<Vec<ItemView>, sqlx::Error> {
        const SQL: &str = "SELECT i.id, i.event_id, i.role, i.recipient, i.rumor_id, \
             i.created_at, i.expires_at, d.relay, d.state, d.attempts, d.next_attempt_at, \
             d.last_error, d.delivered_at, d.ok_message \
             FROM (SELECT * FROM outbox_items WHERE $2 = '' OR rumor_id = $2 \
                   ORDER BY id DESC LIMIT $1) i \
             JOIN outbox_deliveries d ON d.item_id = i.id ORDER BY i.id DESC, d.relay";
        let rows: Vec<ViewRow> = on_pool!(self, pool => {
            sqlx::query_as(SQL)
                .bind(to_i(limit as u64))
                .bind(rumor.unwrap_or(""))
                .fetch_all(pool)
                .await?
        });
        let mut items: Vec<ItemView> = Vec::new();
        for r in rows {
            let (id, event_id, role, recipient, rumor_id, created, expires) =
                (r.0, r.1, r.2, r.3, r.4, r.5, r.6);
            let (relay, state, attempts, next, last_error, delivered_at, ok_message) =
                (r.7, r.8, r.9, r.10, r.11, r.12, r.13);
            let pending = state == QUEUED || state == RETRYING;
            let d = DeliveryView {
                relay,
                state,
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                next_attempt_at: pending.then(|| to_u(next)),
                last_error,
                delivered_at: delivered_at.map(to_u),
                ok_message,
            };
            match items.last_mut() {
                Some(last) if last.id == id => last.deliveries.push(d),
                _ => items.push(ItemView {
                    id,
                    event_id,
                    role,
                    recipient,
                    rumor_id,
                    created_at: to_u(created),
                    expires_at: to_u(expires),
                    deliveries: vec![d],
                }),
            }
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use nostr::{EventBuilder, Keys, Kind};
    use sqlx::Connection as _;
    use sqlx::Executor as _;

    use super::*;

    fn item(relays: &[&str], created_at: u64) -> NewItem {
        let keys = Keys::generate();
        let event = EventBuilder::new(Kind::GiftWrap, "x")
            .sign_with_keys(&keys)
            .unwrap();
        NewItem {
            event,
            role: Role::Message,
            recipient: keys.public_key(),
            rumor_id: Some(EventId::all_zeros()),
            created_at,
            expires_at: created_at + 100,
            relays: relays.iter().map(|r| r.to_string()).collect(),
        }
    }

    /// The store's rules, the same on both backends.
    async fn store_rules(db: OutboxDb) {
        db.migrate().await.unwrap();
        let a = item(&["ws://a", "ws://b"], 1_000);
        let id = db.enqueue(&a).await.unwrap();
        // Enqueueing the same event again adds only new relays.
        let again = NewItem {
            relays: vec!["ws://b".into(), "ws://c".into()],
            ..a.clone()
        };
        assert_eq!(db.enqueue(&again).await.unwrap(), id);
        let t = db.totals().await.unwrap();
        assert_eq!(t.queued, 3);
        assert_eq!(db.next_due_at().await.unwrap(), Some(1_000));

        // Due relays; a claim pushes the rows past `claim_until`.
        assert_eq!(db.due_relays(999, 10).await.unwrap(), Vec::<String>::new());
        assert_eq!(db.due_relays(1_000, 10).await.unwrap().len(), 3);
        let claimed = db.claim("ws://a", 1_000, 1_060, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].event_id, a.event.id.to_hex());
        assert!(db
            .claim("ws://a", 1_000, 1_060, 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(db.due_relays(1_000, 10).await.unwrap().len(), 2);

        // Delivered stays delivered, whatever comes later.
        let delivered = State::Delivered {
            at: 1_001,
            message: "duplicate: have it".into(),
        };
        db.record(id, "ws://a", 1, &delivered).await.unwrap();
        let retry = State::Retrying {
            next_at: 1_010,
            error: "late".into(),
        };
        db.record(id, "ws://a", 2, &retry).await.unwrap();
        db.record_batch("ws://b", &[(id, (1, retry.clone()))])
            .await
            .unwrap();
        let items = db.list(10, None).await.unwrap();
        assert_eq!(items.len(), 1);
        let by_relay = |r: &str| {
            items[0]
                .deliveries
                .iter()
                .find(|d| d.relay == r)
                .cloned()
                .unwrap()
        };
        let da = by_relay("ws://a");
        assert_eq!(da.state, "delivered");
        assert_eq!(da.delivered_at, Some(1_001));
        assert_eq!(da.ok_message.as_deref(), Some("duplicate: have it"));
        assert_eq!(da.next_attempt_at, None);
        let db_ = by_relay("ws://b");
        assert_eq!(db_.state, "retrying");
        assert_eq!(db_.next_attempt_at, Some(1_010));
        assert_eq!(db_.last_error.as_deref(), Some("late"));
        assert_eq!(
            db.list(10, Some(&EventId::all_zeros().to_hex()))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(db.list(10, Some("ff")).await.unwrap().is_empty());

        // Past the time to live, what is pending expires; delivered stays.
        assert_eq!(db.expire_due(1_099).await.unwrap(), 0);
        assert_eq!(db.expire_due(1_100).await.unwrap(), 2);
        let t = db.totals().await.unwrap();
        assert_eq!((t.delivered, t.expired, t.queued, t.retrying), (1, 2, 0, 0));
        assert_eq!(db.next_due_at().await.unwrap(), None);

        // A newer inbox list ends the pending deliveries of older ones.
        let owner = Keys::generate();
        let list = |n: u64| NewItem {
            event: EventBuilder::new(Kind::InboxRelays, "")
                .custom_created_at(nostr::Timestamp::from(n))
                .sign_with_keys(&owner)
                .unwrap(),
            role: Role::InboxList,
            recipient: owner.public_key(),
            rumor_id: None,
            created_at: 2_000,
            expires_at: 9_000,
            relays: vec!["ws://a".into()],
        };
        let first = db.enqueue(&list(1)).await.unwrap();
        let second = db.enqueue(&list(2)).await.unwrap();
        assert_eq!(
            db.supersede_lists(&owner.public_key(), second)
                .await
                .unwrap(),
            1
        );
        let latest = db.latest_list(&owner.public_key()).await.unwrap().unwrap();
        assert!(latest.contains(&list(2).event.id.to_hex()), "{latest}");
        let items = db.list(10, None).await.unwrap();
        let state_of = |id: i64| {
            items.iter().find(|i| i.id == id).unwrap().deliveries[0]
                .state
                .clone()
        };
        assert_eq!(state_of(first), "expired");
        assert_eq!(state_of(second), "queued");

        // One request's items are committed together or not at all: the
        // second item's delivery row cannot be written, so the first item
        // (already inserted in the transaction) is not kept either.
        let poison = match &db {
            OutboxDb::Sqlite(pool) => {
                sqlx::query(
                    "CREATE TRIGGER outbox_test_poison BEFORE INSERT ON outbox_deliveries \
                     WHEN NEW.relay = 'ws://poison' BEGIN SELECT RAISE(ABORT, 'poison'); END",
                )
                .execute(pool)
                .await
                .unwrap();
                "ws://poison"
            }
            // Postgres text cannot hold a NUL byte.
            OutboxDb::Postgres(_) => "ws://poi\0son",
        };
        let before = db.list(100, None).await.unwrap().len();
        let fine = item(&["ws://a"], 3_000);
        let bad = item(&[poison], 3_000);
        assert!(db.enqueue_all(&[fine.clone(), bad]).await.is_err());
        let after = db.list(100, None).await.unwrap();
        assert_eq!(after.len(), before, "nothing of the failed request kept");
        assert!(after.iter().all(|i| i.event_id != fine.event.id.to_hex()));
        // Both good: both kept, ids in order.
        let other = item(&["ws://b"], 3_000);
        let ids = db.enqueue_all(&[fine.clone(), other]).await.unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(db.enqueue(&fine).await.unwrap(), ids[0]);

        // Pruning: a finished item past its retention goes with its
        // deliveries; one still pending, or not old enough, stays.
        let done = item(&["ws://p1", "ws://p2"], 10);
        let done_id = db.enqueue(&done).await.unwrap();
        let delivered = State::Delivered {
            at: 11,
            message: String::new(),
        };
        db.record(done_id, "ws://p1", 1, &delivered).await.unwrap();
        let failed = State::Failed {
            error: "blocked: x".into(),
        };
        db.record(done_id, "ws://p2", 1, &failed).await.unwrap();
        let pending = item(&["ws://p3"], 20);
        let pending_id = db.enqueue(&pending).await.unwrap();
        assert_eq!(db.prune(100, 500).await.unwrap(), 0, "not past retention");
        assert_eq!(db.prune(1_000, 500).await.unwrap(), 1);
        let left = db.list(1_000, None).await.unwrap();
        assert!(left.iter().all(|i| i.id != done_id));
        assert!(left.iter().any(|i| i.id == pending_id));
        assert_eq!(db.prune(1_000, 500).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn store_rules_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("o.db").display());
        let pool = SqlitePool::connect(&url).await.unwrap();
        store_rules(OutboxDb::Sqlite(pool)).await;
    }

    #[tokio::test]
    async fn store_rules_on_postgres() {
        let Ok(admin_url) = std::env::var("CAIRN_TEST_POSTGRES_URL") else {
            eprintln!("skipped: CAIRN_TEST_POSTGRES_URL is not set");
            return;
        };
        let name = format!(
            "cairn_outbox_{}",
            &Keys::generate().public_key().to_hex()[..16]
        );
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&format!("/{name}"));
        let pool = PgPool::connect(url.as_str()).await.unwrap();
        store_rules(OutboxDb::Postgres(pool.clone())).await;
        pool.close().await;
        admin
            .execute(format!("DROP DATABASE \"{name}\" WITH (FORCE)").as_str())
            .await
            .unwrap();
    }
}
