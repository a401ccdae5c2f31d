//! The listener: one dedicated connection per process that LISTENs on
//! [`CHANNEL`] and hands other processes' events to this process's live
//! fan-out (the rules are in [`super::notify`]).
//!
//! Invariants:
//! - The connection is its own (a one-connection pool, application name
//!   `cairn listener <pid>`), so queries never wait behind it and an
//!   operator can tell it apart in `pg_stat_activity`.
//! - When it is lost (the server restarted, `pg_terminate_backend`, a
//!   network cut) the listener logs it, waits (`retry`, doubling up to
//!   [`MAX_RETRY`]), connects again, LISTENs, and only then catches up on
//!   every event stored meanwhile (`seq` above the cursor, in order), so
//!   there is no silent gap and nothing is delivered twice.
//! - **A long catch-up happens before LISTEN.** After a long outage the
//!   catch-up goes at the pace of this process's live subscribers (the
//!   relay paces remote events against them), which can take a while; a
//!   session that LISTENed first would make Postgres queue every
//!   notification of that while for it. So the listener first reads
//!   pages past the cursor without listening until one comes back short
//!   (the gap is less than a page), then LISTENs, then reads the rest:
//!   only that last short read happens while notifications queue up.
//! - Ephemeral events announced while the connection was down are lost
//!   (they are never stored); that is the same promise live delivery of an
//!   ephemeral event always makes.
//! - It stops when `shutdown` is cancelled, the store's pool is closed
//!   (`Store::close`), or the receiving side is gone.
//! - **It never blocks while listening.** A listener that stopped reading
//!   would make Postgres keep every notification for it in the server-wide
//!   notification queue, and once that queue is full every `COMMIT` that
//!   notifies fails, on every process. So when this process's queue to its
//!   fan-out is full, the listener drops its connection (and with it its
//!   LISTEN), rewinds its cursor to before the event it could not hand
//!   over, waits until the queue has drained to half, and connects again:
//!   the catch-up by seq delivers what it skipped (ephemeral events
//!   announced meanwhile are lost, as above).

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::notify::{split_stamp, Action, Cursor, Origin, OwnSeqs, Payload, CHANNEL};

use crate::store::RemoteEvent;

/// Longest wait between two connection attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// Events read per catch-up query.
const CATCH_UP_PAGE: i64 = 500;

/// Why a listening session ended.
enum End {
    /// Shutdown, or nobody receives any more: stop.
    Stop,
    /// This process's fan-out queue was full: reconnect once it drains.
    Behind,
}

/// Run the listener until `shutdown` (see the module docs).
pub(super) async fn run(
    pool: PgPool,
    origin: Origin,
    own: Arc<OwnSeqs>,
    tx: mpsc::Sender<RemoteEvent>,
    retry: Duration,
    start: i64,
    shutdown: CancellationToken,
) {
    let mut cursor = Cursor::new(origin, start);
    let mut failures: u32 = 0;
    let mut connected_before = false;
    loop {
        let session = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = pool.close_event() => return,
            s = session(&pool, &own, &tx, &mut cursor, &mut failures, &mut connected_before) => s,
        };
        match session {
            Ok(End::Stop) => return,
            Ok(End::Behind) => {
                metrics::counter!(crate::metrics::CLUSTER_LISTENER_LOST).increment(1);
                tracing::warn!(
                    "this process's fan-out is behind: dropped the cluster listener \
                     connection; catching up by seq once it drains"
                );
                let half = tx.max_capacity() / 2;
                loop {
                    if tx.is_closed() {
                        return;
                    }
                    if tx.capacity() >= half {
                        break;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = pool.close_event() => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics::counter!(crate::metrics::CLUSTER_LISTENER_LOST).increment(1);
                let wait = retry
                    .saturating_mul(2u32.saturating_pow(failures - 1))
                    .min(MAX_RETRY);
                tracing::warn!(
                    error = %e,
                    "cluster listener connection lost; reconnecting in {} ms",
                    wait.as_millis()
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = pool.close_event() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// One connection's life: connect, LISTEN, catch up, then deliver
/// notifications until the connection fails.
async fn session(
    pool: &PgPool,
    own: &OwnSeqs,
    tx: &mpsc::Sender<RemoteEvent>,
    cursor: &mut Cursor,
    failures: &mut u32,
    connected_before: &mut bool,
) -> Result<End, sqlx::Error> {
    let options = (*pool.connect_options())
        .clone()
        .application_name(&format!("cairn listener {}", std::process::id()));
    let own_pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(super::DEFAULT_ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?;
    let result = listen_on(pool, &own_pool, own, tx, cursor, failures, connected_before).await;
    // Bounded: closing waits for the dropped listener's connection.
    let _ = tokio::time::timeout(super::DEFAULT_ACQUIRE_TIMEOUT, own_pool.close()).await;
    result
}

async fn listen_on(
    pool: &PgPool,
    own_pool: &PgPool,
    own: &OwnSeqs,
    tx: &mpsc::Sender<RemoteEvent>,
    cursor: &mut Cursor,
    failures: &mut u32,
    connected_before: &mut bool,
) -> Result<End, sqlx::Error> {
    // A lost connection ends the session (`try_recv` gives `None`): the
    // reconnection, with its catch-up, is ours, not PgListener's silent one.
    let mut listener = PgListener::connect_with(own_pool).await?;
    // The bulk of a long gap, before listening (see the module docs).
    let Some(before) = catch_up(pool, cursor, own, tx).await? else {
        return Ok(End::Stop);
    };
    listener.listen(CHANNEL).await?;
    // LISTEN is in effect: whatever commits from now on is notified, so
    // reading what was stored past the cursor now leaves no gap.
    let Some(after) = catch_up(pool, cursor, own, tx).await? else {
        return Ok(End::Stop);
    };
    let caught_up = before + after;
    if *connected_before {
        tracing::info!(caught_up, "cluster listener reconnected");
    } else {
        tracing::info!(
            caught_up,
            "cluster listener connected (live events from other processes)"
        );
        *connected_before = true;
    }
    *failures = 0;
    loop {
        let Some(notification) = listener.try_recv().await? else {
            return Err(sqlx::Error::Protocol(
                "the listener connection was closed".into(),
            ));
        };
        let (sent_at_ms, text) = split_stamp(notification.payload());
        let payload = match Payload::decode(text) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a notification");
                continue;
            }
        };
        let stored_seq = match payload {
            Payload::Stored { seq, .. } | Payload::Reference { seq, .. } => Some(seq),
            Payload::Ephemeral { .. } => None,
        };
        let json = match cursor.on_notification(&payload, own) {
            Action::Skip => continue,
            Action::Deliver(json) => json.to_owned(),
            Action::Fetch { seq, id } => match fetch(pool, seq, id).await? {
                Some(json) => json,
                // Deleted (or replaced) since: nothing to deliver.
                None => continue,
            },
        };
        match tx.try_send(RemoteEvent { json, sent_at_ms }) {
            Ok(()) => {
                metrics::counter!(crate::metrics::CLUSTER_EVENTS, "via" => "notify").increment(1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Ok(End::Stop),
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Never wait while listening (see the module docs): the
                // catch-up after reconnecting delivers this one again.
                if let Some(seq) = stored_seq {
                    cursor.rewind_before(seq);
                }
                return Ok(End::Behind);
            }
        }
    }
}

/// Deliver every stored event past the cursor, in seq order; the number
/// delivered, or `None` when nobody receives any more.
async fn catch_up(
    pool: &PgPool,
    cursor: &mut Cursor,
    own: &OwnSeqs,
    tx: &mpsc::Sender<RemoteEvent>,
) -> Result<Option<u64>, sqlx::Error> {
    let mut delivered = 0u64;
    loop {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, json FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(cursor.high())
                .bind(CATCH_UP_PAGE)
                .fetch_all(pool)
                .await?;
        let page = rows.len();
        for (seq, json) in rows {
            if cursor.catch_up(seq, own) {
                delivered += 1;
                metrics::counter!(crate::metrics::CLUSTER_EVENTS, "via" => "catch_up").increment(1);
                let event = RemoteEvent {
                    json,
                    sent_at_ms: None,
                };
                if tx.send(event).await.is_err() {
                    return Ok(None);
                }
            }
        }
        if page < CATCH_UP_PAGE as usize {
            return Ok(Some(delivered));
        }
    }
}

/// The JSON of the event at `seq`, if it is still the one with `id_hex`.
async fn fetch(pool: &PgPool, seq: i64, id_hex: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(Vec<u8>, String)> =
        sqlx::query_as("SELECT id, json FROM events WHERE seq = $1")
            .bind(seq)
            .fetch_optional(pool)
            .await?;
    Ok(row
        .filter(|(id, _)| hex::encode(id) == id_hex)
        .map(|(_, json)| json))
}
