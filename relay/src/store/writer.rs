//! Group commit: many concurrent `save` calls share one transaction (and one
//! fsync), so durable ingest is not bounded by the disk's sync latency.

use std::sync::Arc;
use std::time::Duration;

use nostr::Event;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{SaveOutcome, Store, StoreError, WriterPause};

/// Most events committed in one transaction by default.
pub const DEFAULT_MAX_BATCH: usize = 512;

/// Saves waiting for the writer task before `save` itself waits (backpressure).
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// How long the queue stays empty before the store gets a
/// [`WriterPause::Idle`] (and again each time this passes while it stays so).
pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(1);

struct Job {
    event: Event,
    reply: oneshot::Sender<Result<SaveOutcome, StoreError>>,
}

/// Handle to the group-commit task; clone it freely.
///
/// The task takes the first queued save, adds whatever else is already queued
/// (up to `max_batch`, without waiting for more), commits them with one
/// [`Store::save_batch`] call and answers every caller. Under light load each
/// event is its own batch; under heavy load batches grow, and so does
/// throughput. After answering a batch, and while the queue stays empty, it
/// gives the store its [`Store::maintain`] moment: upkeep that must stay out
/// of every commit runs there, in line with the writes, never inside one.
/// The task ends once every `Writer` clone is dropped and the queue is
/// drained, which is how shutdown finishes in-flight writes.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    /// Start the task on the current Tokio runtime.
    pub fn spawn(store: Arc<dyn Store>, max_batch: usize) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(DEFAULT_QUEUE_CAPACITY);
        let handle = tokio::spawn(run(store, rx, max_batch.max(1)));
        (Writer { tx }, handle)
    }

    /// Durably store one event; returns once its batch is committed.
    ///
    /// If the batch fails, every caller in it gets the error: the original
    /// [`StoreError`] when the batch held only this event, otherwise
    /// [`StoreError::Batch`] sharing it. [`StoreError::WriterClosed`] if the
    /// task is gone.
    pub async fn save(&self, event: Event) -> Result<SaveOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { event, reply })
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        answer.await.map_err(|_| StoreError::WriterClosed)?
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    let mut events = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    loop {
        let first = match tokio::time::timeout(DEFAULT_IDLE_AFTER, rx.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => break,
            Err(_idle) => {
                maintain(&*store, WriterPause::Idle).await;
                continue;
            }
        };
        events.push(first.event);
        replies.push(first.reply);
        while events.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    events.push(job.event);
                    replies.push(job.reply);
                }
                Err(_) => break,
            }
        }

        let started = std::time::Instant::now();
        let saved = store.save_batch(&events).await;
        record_commit(events.len(), started.elapsed(), saved.is_ok());
        match saved {
            Ok(outcomes) if outcomes.len() == replies.len() => {
                for (reply, outcome) in replies.drain(..).zip(outcomes) {
                    // The caller may have gone away (e.g. its connection closed); the
                    // event is stored regardless.
                    let _ = reply.send(Ok(outcome));
                }
            }
            Ok(outcomes) => {
                tracing::error!(
                    expected = replies.len(),
                    got = outcomes.len(),
                    "store returned the wrong number of outcomes"
                );
                let shared = Arc::new(StoreError::OutcomeMismatch);
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(StoreError::Batch(shared.clone())));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, batch = events.len(), "batch commit failed");
                if replies.len() == 1 {
                    if let Some(reply) = replies.pop() {
                        let _ = reply.send(Err(err));
                    }
                } else {
                    let shared = Arc::new(err);
                    for reply in replies.drain(..) {
                        let _ = reply.send(Err(StoreError::Batch(shared.clone())));
                    }
                }
            }
        }
        events.clear();
        maintain(&*store, WriterPause::BetweenBatches).await;
    }
}

/// The commit's metrics (see [`crate::metrics`]); no-ops without a recorder.
fn record_commit(events: usize, took: Duration, ok: bool) {
    use crate::metrics::{WRITER_BATCH_EVENTS, WRITER_COMMITS, WRITER_COMMIT_SECONDS};
    metrics::histogram!(WRITER_BATCH_EVENTS).record(events as f64);
    metrics::histogram!(WRITER_COMMIT_SECONDS).record(took.as_secs_f64());
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(WRITER_COMMITS, "result" => result).increment(1);
}

async fn maintain(store: &dyn Store, pause: WriterPause) {
    if let Err(err) = store.maintain(pause).await {
        tracing::warn!(error = %err, ?pause, "store upkeep failed");
    }
}
