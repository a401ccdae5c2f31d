//! Group commit: many concurrent `save` calls share one transaction (and one
//! fsync), so durable ingest is not bounded by the disk's sync latency.
//!
//! Batches are bounded by what they cost the database, not only by how many
//! events they hold, and heavy events cannot delay light ones by more than
//! one batch:
//! - every event has a [`write_cost`] (its rows, tag rows, deletion targets
//!   and JSON size);
//! - events costing more than [`WriterLimits::heavy_cost`] queue in their
//!   own lane (with its own, smaller, backpressure), so a flood of them
//!   never stands in front of light events;
//! - a batch takes the queued light events (up to `max_batch` and
//!   `max_batch_cost`), and, every other batch at most, heavy events while
//!   they fit both that budget and the smaller heavy budget
//!   ([`WriterLimits::max_heavy_batch_cost`]). A heavy event that does not
//!   fit beside the light ones is left for the next batch, which then takes
//!   heavy events only (at least one, even over the budget, so each makes
//!   progress): light events never share a commit with more than one heavy
//!   budget. A light event therefore waits at most for the batch in
//!   progress, one heavy-only batch and its own: never for a queue of heavy
//!   ones, and each of those commits is bounded by the heavy budget (or by
//!   the one event over it, which the relay's limits bound in turn:
//!   `max_event_tags`, `max_deletion_targets`).
//!
//! Commits and syncs are pipelined: a batch is committed with
//! [`Store::save_batch_unsynced`] (visible, not yet on disk) and handed to a
//! sync task, which calls [`Store::sync_commits`] once for every batch
//! committed since its last sync and only then answers their callers, while
//! the writer already commits the next batch. So the disk's sync latency
//! overlaps the next batch's work instead of adding to it, and events that
//! arrive during a sync are not made to wait for a whole extra commit.
//! At most [`SYNC_QUEUE`] committed batches wait for a sync; past that the
//! writer waits.
//!
//! Invariants kept from the plain group commit: every `save` is answered
//! `Ok` only after its batch was committed *and* a `sync_commits` that began
//! after that commit returned (`Stored` means durably stored; a failed sync
//! answers its batches with [`StoreError::Sync`]); and the task drains both
//! lanes, and the sync queue, before it ends. Saves in flight at the
//! same time have no defined order (a heavy event may be committed after a
//! light one queued later, even from the same author); a caller that needs
//! order waits for the answer before the next save.

use std::sync::Arc;
use std::time::Duration;

use nostr::Event;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{SaveOutcome, Store, StoreError, WriterPause};
use crate::kinds;

/// Most events committed in one transaction by default.
pub const DEFAULT_MAX_BATCH: usize = 512;

/// Most [`write_cost`] one batch takes by default (a single event costing
/// more still goes, alone among the heavy ones). About 1,000 typical notes
/// or one 2,500-tag deletion request.
pub const DEFAULT_MAX_BATCH_COST: usize = 8_192;

/// Events costing more than this go into the heavy lane by default (a
/// contact list of a few hundred `p` tags, a large deletion request).
pub const DEFAULT_HEAVY_COST: usize = 256;

/// Most [`write_cost`] of heavy events in one batch by default: one
/// deletion request of 500 targets (the relay's default
/// `max_deletion_targets`), or three contact lists of 300 follows. A heavy
/// commit's time is its random index rows more than its one fsync, so
/// smaller heavy batches cost heavy events little throughput, and they
/// bound what a light event sharing or waiting for one waits.
pub const DEFAULT_MAX_HEAVY_BATCH_COST: usize = 1_024;

/// Committed batches waiting for their sync before the writer waits for it.
pub const SYNC_QUEUE: usize = 4;

/// Saves waiting for the writer task before `save` itself waits (backpressure).
pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;

/// Heavy saves waiting for the writer task before `save` waits: kept small,
/// because each may take a whole batch.
pub const DEFAULT_HEAVY_QUEUE_CAPACITY: usize = 64;

/// How long the queue stays empty before the store gets a
/// [`WriterPause::Idle`] (and again each time this passes while it stays so).
pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The work saving `event` puts on the database, in rough units of one
/// index row: the event's own row, one per tag (tag rows), one more per
/// `e`/`a` tag of a deletion request (a target to delete and tombstone),
/// and one per KiB of JSON.
pub fn write_cost(event: &Event) -> usize {
    let tags = event.tags.len();
    let targets = kinds::deletion_targets(event);
    // Content dominates the JSON; tags are counted above.
    1 + tags + targets + event.content.len() / 1024
}

/// How the [`Writer`] sizes its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterLimits {
    /// Most events in one batch.
    pub max_batch: usize,
    /// Most [`write_cost`] in one batch (a single heavier event goes alone
    /// among the heavy ones).
    pub max_batch_cost: usize,
    /// Events costing more than this are heavy: they queue in their own
    /// lane and at most every other batch takes some.
    pub heavy_cost: usize,
    /// Most [`write_cost`] of heavy events in one batch (a single heavier
    /// one still goes, alone).
    pub max_heavy_batch_cost: usize,
}

impl Default for WriterLimits {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            max_batch_cost: DEFAULT_MAX_BATCH_COST,
            heavy_cost: DEFAULT_HEAVY_COST,
            max_heavy_batch_cost: DEFAULT_MAX_HEAVY_BATCH_COST,
        }
    }
}

struct Job {
    event: Event,
    cost: usize,
    reply: oneshot::Sender<Result<SaveOutcome, StoreError>>,
}

/// Handle to the group-commit task; clone it freely.
///
/// The task takes the queued saves (without waiting for more) as the
/// module documentation describes, commits them with one
/// [`Store::save_batch_unsynced`] call and answers every caller once a
/// [`Store::sync_commits`] after it returned. Under light load
/// each event is its own batch; under heavy load batches grow, and so does
/// throughput. After answering a batch, and while the queue stays empty, it
/// gives the store its [`Store::maintain`] moment: upkeep that must stay out
/// of every commit runs there, in line with the writes, never inside one.
/// The task ends once every `Writer` clone is dropped and both lanes are
/// drained, which is how shutdown finishes in-flight writes.
#[derive(Clone, Debug)]
pub struct Writer {
    light: mpsc::Sender<Job>,
    heavy: mpsc::Sender<Job>,
    heavy_cost: usize,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("cost", &self.cost).finish()
    }
}

impl Writer {
    /// Start the task on the current Tokio runtime, with at most
    /// `max_batch` events per batch and the default cost limits.
    pub fn spawn(store: Arc<dyn Store>, max_batch: usize) -> (Writer, JoinHandle<()>) {
        Self::spawn_with(
            store,
            WriterLimits {
                max_batch,
                ..WriterLimits::default()
            },
        )
    }

    /// Start the task on the current Tokio runtime with `limits`.
    pub fn spawn_with(store: Arc<dyn Store>, limits: WriterLimits) -> (Writer, JoinHandle<()>) {
        let limits = WriterLimits {
            max_batch: limits.max_batch.max(1),
            max_batch_cost: limits.max_batch_cost.max(1),
            heavy_cost: limits.heavy_cost,
            max_heavy_batch_cost: limits.max_heavy_batch_cost.max(1),
        };
        let (light, light_rx) = mpsc::channel(DEFAULT_QUEUE_CAPACITY);
        let (heavy, heavy_rx) = mpsc::channel(DEFAULT_HEAVY_QUEUE_CAPACITY);
        let lanes = Lanes {
            light: Lane::new(light_rx),
            heavy: Lane::new(heavy_rx),
            heavy_first: false,
        };
        let handle = tokio::spawn(run(store, lanes, limits));
        (
            Writer {
                light,
                heavy,
                heavy_cost: limits.heavy_cost,
            },
            handle,
        )
    }

    /// Durably store one event; returns once its batch is committed and synced.
    ///
    /// If the batch fails, every caller in it gets the error: the original
    /// [`StoreError`] when the batch held only this event, otherwise
    /// [`StoreError::Batch`] sharing it. [`StoreError::WriterClosed`] if the
    /// task is gone.
    pub async fn save(&self, event: Event) -> Result<SaveOutcome, StoreError> {
        let cost = write_cost(&event);
        let (reply, answer) = oneshot::channel();
        let lane = if cost > self.heavy_cost {
            &self.heavy
        } else {
            &self.light
        };
        lane.send(Job { event, cost, reply })
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        answer.await.map_err(|_| StoreError::WriterClosed)?
    }
}

/// One lane's queue, and the job taken from it that did not fit the last
/// batch (it goes first in the next).
struct Lane {
    rx: mpsc::Receiver<Job>,
    held: Option<Job>,
    open: bool,
}

impl Lane {
    fn new(rx: mpsc::Receiver<Job>) -> Self {
        Self {
            rx,
            held: None,
            open: true,
        }
    }

    /// The next queued job, without waiting.
    fn next(&mut self) -> Option<Job> {
        if let Some(job) = self.held.take() {
            return Some(job);
        }
        if !self.open {
            return None;
        }
        match self.rx.try_recv() {
            Ok(job) => Some(job),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.open = false;
                None
            }
        }
    }

    /// Wait for a job (`None`: the lane is closed and empty).
    async fn recv(&mut self) -> Option<Job> {
        if let Some(job) = self.held.take() {
            return Some(job);
        }
        if !self.open {
            return std::future::pending().await;
        }
        let job = self.rx.recv().await;
        if job.is_none() {
            self.open = false;
        }
        job
    }

    fn done(&self) -> bool {
        !self.open && self.held.is_none()
    }
}

struct Lanes {
    light: Lane,
    heavy: Lane,
    /// The last batch was light only because the heavy job whose turn it
    /// was did not fit beside its light jobs: the next batch takes heavy
    /// jobs only.
    heavy_first: bool,
}

/// What [`next_batch`] decided.
#[derive(Debug, Default)]
struct Batch {
    jobs: Vec<Job>,
    cost: usize,
    /// The part of `cost` from the heavy lane.
    heavy_cost: usize,
    /// Whether it took from the heavy lane.
    heavy: bool,
}

impl Batch {
    /// Whether `job` still fits within `limits` (an empty batch takes anything).
    fn fits(&self, job: &Job, limits: &WriterLimits) -> bool {
        self.jobs.is_empty()
            || (self.jobs.len() < limits.max_batch
                && self.cost.saturating_add(job.cost) <= limits.max_batch_cost)
    }

    /// Whether heavy `job` still fits: the batch's budget and the heavy
    /// budget (an empty batch takes anything).
    fn fits_heavy(&self, job: &Job, limits: &WriterLimits) -> bool {
        self.jobs.is_empty()
            || (self.fits(job, limits)
                && self.heavy_cost.saturating_add(job.cost) <= limits.max_heavy_batch_cost)
    }

    fn push(&mut self, job: Job) {
        self.cost = self.cost.saturating_add(job.cost);
        self.jobs.push(job);
    }

    fn push_heavy(&mut self, job: Job) {
        self.heavy_cost = self.heavy_cost.saturating_add(job.cost);
        self.heavy = true;
        self.push(job);
    }
}

/// The next batch from what is queued now (empty when nothing is): light
/// jobs first, then heavy ones if it is their turn (`heavy_turn`, or no light
/// job waiting) while they fit the rest of the cost budget and the heavy
/// budget. A heavy job
/// that does not fit beside the light jobs is not added (light events must
/// not share a heavy commit): the light jobs go alone and the next batch
/// takes heavy jobs only, at least one, even over the budget.
fn next_batch(lanes: &mut Lanes, limits: &WriterLimits, heavy_turn: bool) -> Batch {
    let mut batch = Batch::default();
    let heavy_only = std::mem::take(&mut lanes.heavy_first);
    if !heavy_only {
        while let Some(job) = lanes.light.next() {
            if !batch.fits(&job, limits) {
                lanes.light.held = Some(job);
                break;
            }
            batch.push(job);
        }
    }
    if heavy_only || heavy_turn || batch.jobs.is_empty() {
        while let Some(job) = lanes.heavy.next() {
            if !batch.fits_heavy(&job, limits) {
                // Only light jobs so far: the heavy turn moves to the next
                // batch, which it has to itself.
                lanes.heavy_first = !batch.heavy;
                lanes.heavy.held = Some(job);
                break;
            }
            batch.push_heavy(job);
        }
    }
    batch
}

/// A committed batch waiting for its sync: its callers and their outcomes.
struct Committed {
    replies: Vec<oneshot::Sender<Result<SaveOutcome, StoreError>>>,
    outcomes: Vec<SaveOutcome>,
}

async fn run(store: Arc<dyn Store>, mut lanes: Lanes, limits: WriterLimits) {
    let (synced_tx, synced_rx) = mpsc::channel(SYNC_QUEUE);
    let syncer = tokio::spawn(sync_loop(Arc::clone(&store), synced_rx));
    let mut events = Vec::with_capacity(limits.max_batch);
    let mut replies = Vec::with_capacity(limits.max_batch);
    let mut last_was_heavy = false;
    loop {
        let mut batch = next_batch(&mut lanes, &limits, !last_was_heavy);
        if batch.jobs.is_empty() {
            if lanes.light.done() && lanes.heavy.done() {
                break;
            }
            // Wait for either lane; the job goes back to its lane's held
            // slot, so the batch is formed by the rules above.
            let waited = tokio::time::timeout(DEFAULT_IDLE_AFTER, async {
                tokio::select! {
                    job = lanes.light.recv() => job.map(|j| (j, false)),
                    job = lanes.heavy.recv() => job.map(|j| (j, true)),
                }
            })
            .await;
            match waited {
                Ok(Some((job, heavy))) => {
                    if heavy {
                        lanes.heavy.held = Some(job);
                    } else {
                        lanes.light.held = Some(job);
                    }
                }
                // One lane closed and empty; the loop checks the other.
                Ok(None) => {}
                Err(_idle) => maintain(&*store, WriterPause::Idle).await,
            }
            continue;
        }
        last_was_heavy = batch.heavy;
        for job in batch.jobs.drain(..) {
            events.push(job.event);
            replies.push(job.reply);
        }

        let started = std::time::Instant::now();
        let saved = store.save_batch_unsynced(&events).await;
        record_commit(events.len(), started.elapsed(), saved.is_ok());
        match saved {
            Ok(outcomes) if outcomes.len() == replies.len() => {
                let committed = Committed {
                    replies: std::mem::replace(&mut replies, Vec::with_capacity(limits.max_batch)),
                    outcomes,
                };
                // The sync task only ends once this sender is dropped.
                let _ = synced_tx.send(committed).await;
            }
            // Nothing to sync: a failed commit is answered at once.
            other => answer(&mut replies, other, events.len()),
        }
        events.clear();
        maintain(&*store, WriterPause::BetweenBatches).await;
    }
    drop(synced_tx);
    if let Err(err) = syncer.await {
        tracing::error!(error = %err, "writer's sync task failed");
    }
}

/// Sync what was committed, then answer it: one [`Store::sync_commits`]
/// covers every batch queued when it starts.
async fn sync_loop(store: Arc<dyn Store>, mut committed: mpsc::Receiver<Committed>) {
    let mut ready = Vec::with_capacity(SYNC_QUEUE);
    while let Some(first) = committed.recv().await {
        ready.push(first);
        while let Ok(more) = committed.try_recv() {
            ready.push(more);
        }
        let started = std::time::Instant::now();
        let synced = store.sync_commits().await;
        metrics::histogram!(crate::metrics::WRITER_SYNC_SECONDS)
            .record(started.elapsed().as_secs_f64());
        match synced {
            Ok(()) => {
                for mut batch in ready.drain(..) {
                    let events = batch.replies.len();
                    answer(&mut batch.replies, Ok(batch.outcomes), events);
                }
            }
            Err(err) => {
                let events: usize = ready.iter().map(|b| b.replies.len()).sum();
                tracing::warn!(error = %err, events, "sync after commit failed");
                let shared = Arc::new(err);
                for batch in ready.drain(..) {
                    for reply in batch.replies {
                        let _ = reply.send(Err(StoreError::Batch(shared.clone())));
                    }
                }
            }
        }
    }
}

/// Answer every caller of a batch with its outcome, or the batch's error.
fn answer(
    replies: &mut Vec<oneshot::Sender<Result<SaveOutcome, StoreError>>>,
    saved: Result<Vec<SaveOutcome>, StoreError>,
    batch: usize,
) {
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
            tracing::warn!(error = %err, batch, "batch commit failed");
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use nostr::{EventBuilder, EventId, Keys, Kind, Tag};

    use super::*;

    fn job(event: Event) -> (Job, oneshot::Receiver<Result<SaveOutcome, StoreError>>) {
        let (reply, rx) = oneshot::channel();
        let cost = write_cost(&event);
        (Job { event, cost, reply }, rx)
    }

    fn note(keys: &Keys, i: usize) -> Event {
        EventBuilder::text_note(format!("note {i}"))
            .sign_with_keys(keys)
            .expect("sign")
    }

    fn deletion(keys: &Keys, targets: usize) -> Event {
        let tags: Vec<Tag> = (0..targets)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(i as u64).to_be_bytes());
                Tag::event(EventId::from_byte_array(id))
            })
            .collect();
        EventBuilder::new(Kind::EventDeletion, "")
            .tags(tags)
            .sign_with_keys(keys)
            .expect("sign")
    }

    #[test]
    fn cost_counts_tags_and_deletion_targets() {
        let keys = Keys::generate();
        assert_eq!(write_cost(&note(&keys, 0)), 1);
        // 2,500 tag rows and 2,500 targets.
        assert_eq!(write_cost(&deletion(&keys, 2_500)), 5_001);
        let big = EventBuilder::text_note("x".repeat(10 * 1024))
            .sign_with_keys(&keys)
            .expect("sign");
        assert_eq!(write_cost(&big), 11);
    }

    type Answers = Vec<oneshot::Receiver<Result<SaveOutcome, StoreError>>>;

    /// Lanes over channels already holding `light` and `heavy` events, with
    /// their senders (to queue more later) and the callers' answer ends.
    fn lanes(
        light: Vec<Event>,
        heavy: Vec<Event>,
    ) -> (Lanes, mpsc::Sender<Job>, mpsc::Sender<Job>, Answers) {
        let (ltx, lrx) = mpsc::channel(1024);
        let (htx, hrx) = mpsc::channel(1024);
        let mut answers = Vec::new();
        for (tx, events) in [(&ltx, light), (&htx, heavy)] {
            for ev in events {
                let (j, rx) = job(ev);
                tx.try_send(j).expect("room");
                answers.push(rx);
            }
        }
        let lanes = Lanes {
            light: Lane::new(lrx),
            heavy: Lane::new(hrx),
            heavy_first: false,
        };
        (lanes, ltx, htx, answers)
    }

    /// Heavy events never stand in front of light ones: with 16 large
    /// deletion requests queued before 100 notes, the first batch takes all
    /// the notes and one deletion (1,001 fits the heavy budget), and each
    /// later one a single deletion.
    #[test]
    fn heavy_events_take_at_most_one_budget_per_batch() {
        let keys = Keys::generate();
        let limits = WriterLimits::default();
        let notes: Vec<Event> = (0..100).map(|i| note(&keys, i)).collect();
        let deletions: Vec<Event> = (0..16).map(|_| deletion(&keys, 500)).collect();
        let (mut lanes, _l, _h, _answers) = lanes(notes, deletions);

        let first = next_batch(&mut lanes, &limits, true);
        assert_eq!(first.jobs.len(), 101, "all notes and one deletion");
        assert!(first.heavy);
        assert_eq!(first.jobs.iter().filter(|j| j.cost > 256).count(), 1);
        assert_eq!(first.heavy_cost, 1_001);

        // Nothing light is waiting: the heavy lane is served whatever the
        // turn, one 1,001-cost deletion per batch (two would pass 1,024).
        let mut heavy_batches = 1;
        loop {
            let batch = next_batch(&mut lanes, &limits, false);
            if batch.jobs.is_empty() {
                break;
            }
            assert_eq!(batch.jobs.len(), 1, "{batch:?}");
            assert!(batch.heavy);
            heavy_batches += 1;
        }
        assert_eq!(heavy_batches, 16);
    }

    /// Several heavy events share a batch while they fit the heavy budget.
    #[test]
    fn heavy_events_share_a_batch_within_the_heavy_budget() {
        let keys = Keys::generate();
        let limits = WriterLimits::default();
        // 150 targets cost 301: three fit in 1,024, the fourth waits.
        let (mut narrow_lanes, _l, _h, _answers) =
            lanes(vec![], (0..4).map(|_| deletion(&keys, 150)).collect());
        let first = next_batch(&mut narrow_lanes, &limits, true);
        assert_eq!(first.jobs.len(), 3);
        assert_eq!(first.cost, 903);
        let second = next_batch(&mut narrow_lanes, &limits, false);
        assert_eq!(second.jobs.len(), 1);

        // With a heavy budget as large as the batch's, the batch's decides:
        // 1,000 targets cost 2,001, four fit in 8,192.
        let wide = WriterLimits {
            max_heavy_batch_cost: DEFAULT_MAX_BATCH_COST,
            ..WriterLimits::default()
        };
        let (mut wide_lanes, _l, _h, _answers) =
            lanes(vec![], (0..5).map(|_| deletion(&keys, 1_000)).collect());
        let first = next_batch(&mut wide_lanes, &wide, true);
        assert_eq!(first.jobs.len(), 4);
        assert_eq!(first.cost, 8_004);
        assert_eq!(next_batch(&mut wide_lanes, &wide, false).jobs.len(), 1);
    }

    /// A heavy event over the heavy budget never shares a commit with
    /// light events: they commit alone, then it does, alone.
    #[test]
    fn a_heavy_event_over_the_heavy_budget_commits_alone() {
        let keys = Keys::generate();
        let limits = WriterLimits::default();
        let (mut lanes, _l, _h, _answers) = lanes(
            (0..10).map(|i| note(&keys, i)).collect(),
            vec![deletion(&keys, 2_500), deletion(&keys, 100)],
        );
        let a = next_batch(&mut lanes, &limits, true);
        assert!(!a.heavy && a.jobs.len() == 10, "the notes alone: {a:?}");
        let b = next_batch(&mut lanes, &limits, !a.heavy);
        assert!(
            b.heavy && b.jobs.len() == 1,
            "the big deletion alone: {b:?}"
        );
        assert_eq!(b.cost, 5_001);
        let c = next_batch(&mut lanes, &limits, !b.heavy);
        assert!(c.heavy && c.jobs.len() == 1 && c.cost == 201, "{c:?}");
    }

    /// While light events keep coming, a batch after one with heavy events
    /// takes none, and the one after takes some again (no starvation).
    #[test]
    fn batches_alternate_while_light_events_wait() {
        let keys = Keys::generate();
        let limits = WriterLimits::default();
        let (mut lanes, light, _h, mut answers) = lanes(
            vec![note(&keys, 0)],
            (0..2).map(|_| deletion(&keys, 400)).collect(),
        );
        let a = next_batch(&mut lanes, &limits, true);
        assert!(
            a.heavy && a.jobs.len() == 2,
            "the note and a deletion: {a:?}"
        );
        // A note arrives while `a` commits.
        let (j, rx) = job(note(&keys, 1));
        light.try_send(j).expect("room");
        answers.push(rx);
        let b = next_batch(&mut lanes, &limits, !a.heavy);
        assert!(!b.heavy && b.jobs.len() == 1, "the new note alone: {b:?}");
        let c = next_batch(&mut lanes, &limits, !b.heavy);
        assert!(c.heavy && c.jobs.len() == 1, "the waiting deletion: {c:?}");
    }

    /// Cost bounds light batches too: notes each costing 200 fill a batch
    /// at 40 (8,000), not at `max_batch`.
    #[test]
    fn light_batches_are_bounded_by_cost() {
        let keys = Keys::generate();
        let limits = WriterLimits::default();
        let tagged: Vec<Event> = (0..100)
            .map(|i| {
                let tags: Vec<Tag> = (0..199).map(|t| Tag::hashtag(format!("t{t}"))).collect();
                EventBuilder::text_note(format!("n{i}"))
                    .tags(tags)
                    .sign_with_keys(&keys)
                    .expect("sign")
            })
            .collect();
        let (mut lanes, _l, _h, _answers) = lanes(tagged, vec![]);
        let batch = next_batch(&mut lanes, &limits, true);
        assert_eq!(batch.cost, 8_000);
        assert_eq!(batch.jobs.len(), 40);
        assert!(!batch.heavy);
    }

    /// A heavy event whose turn it is but that does not fit the rest of the
    /// budget beside the light events does not join them: the light events
    /// commit alone, the heavy one next on its own (even a light event queued
    /// meanwhile waits), and light events after that.
    #[test]
    fn a_heavy_event_over_the_remaining_budget_does_not_join_light_ones() {
        let keys = Keys::generate();
        let limits = WriterLimits::default();
        // 30 notes costing 200 each (6,000) leave 2,192; the deletion costs 5,001.
        let tagged: Vec<Event> = (0..30)
            .map(|i| {
                let tags: Vec<Tag> = (0..199).map(|t| Tag::hashtag(format!("t{t}"))).collect();
                EventBuilder::text_note(format!("n{i}"))
                    .tags(tags)
                    .sign_with_keys(&keys)
                    .expect("sign")
            })
            .collect();
        let (mut lanes, light, _h, mut answers) = lanes(tagged, vec![deletion(&keys, 2_500)]);
        let a = next_batch(&mut lanes, &limits, true);
        assert!(!a.heavy, "the light events alone: {a:?}");
        assert_eq!(a.jobs.len(), 30);
        assert_eq!(a.cost, 6_000);
        assert!(a.cost <= limits.max_batch_cost);
        // A note arrives while `a` commits; the deferred heavy turn goes first.
        let (j, rx) = job(note(&keys, 0));
        light.try_send(j).expect("room");
        answers.push(rx);
        let b = next_batch(&mut lanes, &limits, !a.heavy);
        assert!(b.heavy && b.jobs.len() == 1, "the deletion alone: {b:?}");
        assert_eq!(b.cost, 5_001);
        let c = next_batch(&mut lanes, &limits, !b.heavy);
        assert!(!c.heavy && c.jobs.len() == 1, "the new note: {c:?}");
        assert!(next_batch(&mut lanes, &limits, !c.heavy).jobs.is_empty());
    }

    /// A real (in-memory) store whose syncs wait for the test's permits and
    /// can be told to fail; it counts commits and syncs.
    #[derive(Debug)]
    struct GatedSync {
        inner: crate::store::sqlite::SqliteStore,
        permits: tokio::sync::Semaphore,
        commits: std::sync::atomic::AtomicUsize,
        syncs: std::sync::atomic::AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Store for GatedSync {
        async fn save_batch(&self, _: &[Event]) -> Result<Vec<SaveOutcome>, StoreError> {
            unreachable!("the writer commits unsynced")
        }
        async fn save_batch_unsynced(
            &self,
            events: &[Event],
        ) -> Result<Vec<SaveOutcome>, StoreError> {
            let saved = self.inner.save_batch(events).await;
            self.commits.fetch_add(1, Ordering::SeqCst);
            saved
        }
        async fn sync_commits(&self) -> Result<(), StoreError> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            self.permits.acquire().await.expect("open").forget();
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::Sync(std::io::Error::other("disk gone")));
            }
            Ok(())
        }
        async fn query(
            &self,
            filter: &nostr::Filter,
            ctx: &crate::store::QueryContext,
        ) -> Result<Vec<crate::store::StoredEvent>, StoreError> {
            self.inner.query(filter, ctx).await
        }
        async fn count(
            &self,
            filters: &[nostr::Filter],
            ctx: &crate::store::QueryContext,
        ) -> Result<u64, StoreError> {
            self.inner.count(filters, ctx).await
        }
        async fn purge_expired(&self, now: u64) -> Result<u64, StoreError> {
            self.inner.purge_expired(now).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn close(&self) {}
    }

    /// Wait (bounded) until `ready` holds, yielding to the writer's tasks.
    async fn until(ready: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !ready() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("condition reached");
    }

    /// No caller hears `Stored` before a sync that began after its commit
    /// returned, and the next batch is committed while the previous one's
    /// sync is still running (the pipeline).
    #[tokio::test]
    async fn answers_wait_for_a_sync_that_follows_the_commit() {
        let store = Arc::new(GatedSync {
            inner: crate::store::sqlite::SqliteStore::open("sqlite::memory:")
                .await
                .expect("open"),
            permits: tokio::sync::Semaphore::new(0),
            commits: Default::default(),
            syncs: Default::default(),
            fail: Default::default(),
        });
        let (writer, task) = Writer::spawn(store.clone(), 8);
        let keys = Keys::generate();
        let first = tokio::spawn({
            let writer = writer.clone();
            let ev = note(&keys, 0);
            async move { writer.save(ev).await }
        });
        until(|| store.syncs.load(Ordering::SeqCst) == 1).await;
        assert_eq!(store.commits.load(Ordering::SeqCst), 1);

        // The first batch's sync is held: a second save is still committed…
        let second = tokio::spawn({
            let writer = writer.clone();
            let ev = note(&keys, 1);
            async move { writer.save(ev).await }
        });
        until(|| store.commits.load(Ordering::SeqCst) == 2).await;
        // …but neither caller has an answer yet.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!first.is_finished() && !second.is_finished());

        // Releasing the first sync answers only the first save: the second
        // was committed after that sync began and needs one of its own.
        store.permits.add_permits(1);
        assert_eq!(
            first.await.expect("join").expect("save"),
            SaveOutcome::Stored
        );
        until(|| store.syncs.load(Ordering::SeqCst) == 2).await;
        assert!(!second.is_finished());
        store.permits.add_permits(1);
        assert_eq!(
            second.await.expect("join").expect("save"),
            SaveOutcome::Stored
        );

        // A failed sync reaches its callers as an error.
        store.fail.store(true, Ordering::SeqCst);
        store.permits.add_permits(1);
        let err = writer.save(note(&keys, 2)).await.expect_err("sync failed");
        assert!(matches!(err.root(), StoreError::Sync(_)), "{err:?}");

        drop(writer);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("writer task ends when all handles are dropped")
            .expect("no panic");
    }
}
