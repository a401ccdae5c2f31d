//! One connection's outbound queue: messages waiting for its socket, bounded
//! in messages (`max_outbound_queue`) and in bytes (`max_outbound_bytes`),
//! and the rule that drops a slow reader.
//!
//! Invariants:
//!
//! - At most `max_outbound_bytes` of messages wait in the queue or are being
//!   handed to the socket, counting each message as its text plus
//!   [`PER_MESSAGE_OVERHEAD`]; a message larger than the whole budget is
//!   charged the whole budget, so it goes alone, once everything before it
//!   has been taken. At most `max_outbound_queue` messages wait in the queue.
//!   The bytes are given back when the socket has taken the message.
//! - A send waits for room only while the writer makes progress: a send
//!   that found no room for a whole grace period (`slow_reader_grace_ms`)
//!   during which the socket took nothing at all fails with
//!   [`SendError::SlowReader`] ([`is_slow_reader`]), and the connection is
//!   closed. A client that reads, however slowly it drains a large result,
//!   is not dropped; one that stops reading is, after the grace.
//! - When the writer side is gone (the socket failed), every send fails
//!   with [`SendError::Closed`] at once, and what was queued is freed.
//!
//! - A send never leaves the writer asleep with a message queued: it wakes
//!   the writer's task, except on a [`channel_joined`] queue when the send
//!   runs in that very task — whose writer is polled after the sender on
//!   every poll, so the poll in progress reaches the writer anyway.
//!
//! Cost: this is on the path of every live delivery (fan-out sends one
//! message per matching subscriber per event), so a send that finds room —
//! the common case — takes one uncontended lock and arms no timer; only a
//! send that has to wait sets up the grace timer. An idle connection's
//! queue allocates nothing beyond its shared state. A connection's session
//! and writer share one task ([`channel_joined`]): waking that task for its
//! own send would poll the whole connection a second time for nothing, once
//! per delivery.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;

/// Bytes charged per message beyond its text: the allocation and queue slot.
const PER_MESSAGE_OVERHEAD: usize = 64;

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The client read nothing for a whole grace period while the queue was full.
    SlowReader,
    /// The writer is gone: the socket is closed.
    Closed,
}

/// A message in the queue, with the bytes it holds of the budget.
#[derive(Debug)]
struct Queued {
    text: String,
    cost: usize,
}

/// Handed out with each message; give it back with
/// [`OutboundReceiver::taken`] once the socket has taken the message.
#[derive(Debug)]
#[must_use]
pub(crate) struct Receipt {
    cost: usize,
}

/// The session's end of the queue.
#[derive(Debug)]
pub(crate) struct OutboundSender {
    shared: Arc<Shared>,
    grace: Duration,
}

/// The writer's end of the queue.
#[derive(Debug)]
pub(crate) struct OutboundReceiver {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The byte budget (the most one message is charged).
    budget: usize,
    /// The most messages waiting in the queue.
    max_messages: usize,
    /// The writer runs in the sender's task, polled after it (see
    /// [`channel_joined`]).
    joined: bool,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Queued>,
    /// Bytes charged for messages queued or handed out and not yet taken.
    charged: usize,
    /// Messages the socket has taken; a send that waited compares it.
    progress: u64,
    /// The writer, waiting for a message.
    writer: Option<Waker>,
    /// The sender, waiting for room.
    sender: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

/// Keeps `slot` waking `waker`, cloning it only when it changed.
fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(old) if old.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

/// A queue of at most `max_messages` messages and `max_bytes` bytes whose
/// sends give up after `grace` without progress (see the module docs).
#[cfg(test)]
pub(crate) fn channel(
    max_messages: usize,
    max_bytes: usize,
    grace: Duration,
) -> (OutboundSender, OutboundReceiver) {
    new_channel(max_messages, max_bytes, grace, false)
}

/// [`channel`] for a writer that runs in the sender's own task and is polled
/// after the sender on every poll of it (`join(session, writer)`, in that
/// order): a send made in that task does not wake it, since the poll in
/// progress goes on to the writer. A send from any other task wakes it as
/// usual.
pub(crate) fn channel_joined(
    max_messages: usize,
    max_bytes: usize,
    grace: Duration,
) -> (OutboundSender, OutboundReceiver) {
    new_channel(max_messages, max_bytes, grace, true)
}

fn new_channel(
    max_messages: usize,
    max_bytes: usize,
    grace: Duration,
    joined: bool,
) -> (OutboundSender, OutboundReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        budget: max_bytes.max(1),
        max_messages: max_messages.max(1),
        joined,
    });
    (
        OutboundSender {
            shared: Arc::clone(&shared),
            grace,
        },
        OutboundReceiver { shared },
    )
}

/// The slow-reader rule: a sender that waited a whole grace period for room
/// gives up only if the socket took nothing in that time (`progress` is the
/// count of messages the socket has taken, before and after the wait).
pub(crate) fn is_slow_reader(progress_before: u64, progress_after: u64) -> bool {
    progress_before == progress_after
}

impl Shared {
    /// Queue `*item` if there is room (taking it out of the option), or
    /// note `waker` (the sending task's) to be woken when the socket takes
    /// something.
    fn try_push(
        &self,
        item: &mut Option<Queued>,
        waker: Option<&Waker>,
    ) -> Poll<Result<(), SendError>> {
        let mut state = self.state.lock();
        if state.receiver_gone {
            return Poll::Ready(Err(SendError::Closed));
        }
        let cost = item.as_ref().map_or(0, |q| q.cost);
        if state.queue.len() < self.max_messages && state.charged + cost <= self.budget {
            if let Some(queued) = item.take() {
                state.charged += cost;
                state.queue.push_back(queued);
            }
            // Left registered: the writer is polled next in this very poll.
            let own_task = self.joined
                && matches!((&state.writer, waker), (Some(w), Some(s)) if w.will_wake(s));
            let writer = if own_task { None } else { state.writer.take() };
            drop(state);
            if let Some(writer) = writer {
                writer.wake();
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(waker) = waker {
            register(&mut state.sender, waker);
        }
        Poll::Pending
    }

    /// The next queued message; `None` once the sender is gone and the queue
    /// is empty; pending (with `waker` noted) while the queue is empty.
    fn poll_pop(&self, waker: Option<&Waker>) -> Poll<Option<Queued>> {
        let mut state = self.state.lock();
        if let Some(item) = state.queue.pop_front() {
            return Poll::Ready(Some(item));
        }
        if state.sender_gone {
            return Poll::Ready(None);
        }
        if let Some(waker) = waker {
            register(&mut state.writer, waker);
        }
        Poll::Pending
    }

    fn progress(&self) -> u64 {
        self.state.lock().progress
    }
}

impl OutboundSender {
    fn cost(&self, len: usize) -> usize {
        len.saturating_add(PER_MESSAGE_OVERHEAD)
            .min(self.shared.budget)
    }

    /// Queue `text`, waiting for room while the client reads.
    pub(crate) async fn send(&self, text: String) -> Result<(), SendError> {
        let cost = self.cost(text.len());
        let mut item = Some(Queued { text, cost });
        // The common case: room now, and no timer. (Polled, not called, to
        // know the sending task: see `channel_joined`.)
        let now = std::future::poll_fn(|cx: &mut Context<'_>| {
            Poll::Ready(self.shared.try_push(&mut item, Some(cx.waker())))
        })
        .await;
        if let Poll::Ready(result) = now {
            return result;
        }
        loop {
            let before = self.shared.progress();
            let room = std::future::poll_fn(|cx: &mut Context<'_>| {
                self.shared.try_push(&mut item, Some(cx.waker()))
            });
            match tokio::time::timeout(self.grace, room).await {
                Ok(result) => return result,
                Err(_) => {
                    if is_slow_reader(before, self.shared.progress()) {
                        return Err(SendError::SlowReader);
                    }
                }
            }
        }
    }

    /// Queue `text` only if there is room right now (a last word before
    /// closing); otherwise drop it.
    pub(crate) fn try_send(&self, text: String) {
        let cost = self.cost(text.len());
        let _ = self.shared.try_push(&mut Some(Queued { text, cost }), None);
    }
}

impl Drop for OutboundSender {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.sender_gone = true;
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
    }
}

impl OutboundReceiver {
    /// The next message, or `None` once the sender is gone and the queue empty.
    pub(crate) async fn recv(&mut self) -> Option<(String, Receipt)> {
        std::future::poll_fn(|cx: &mut Context<'_>| self.shared.poll_pop(Some(cx.waker())))
            .await
            .map(Self::split)
    }

    /// The next message if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<(String, Receipt)> {
        match self.shared.poll_pop(None) {
            Poll::Ready(item) => item.map(Self::split),
            Poll::Pending => None,
        }
    }

    fn split(item: Queued) -> (String, Receipt) {
        (item.text, Receipt { cost: item.cost })
    }

    /// The socket has taken a message: give its bytes back.
    pub(crate) fn taken(&self, receipt: Receipt) {
        let mut state = self.shared.state.lock();
        state.charged -= receipt.cost;
        state.progress += 1;
        let sender = state.sender.take();
        drop(state);
        if let Some(sender) = sender {
            sender.wake();
        }
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.receiver_gone = true;
        // Nobody will read them: free them now.
        let queued = std::mem::take(&mut state.queue);
        let sender = state.sender.take();
        drop(state);
        drop(queued);
        // Wake a waiting send with `Closed`.
        if let Some(sender) = sender {
            sender.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    fn msg(n: usize) -> String {
        "x".repeat(n)
    }

    #[tokio::test]
    async fn bytes_bound_the_queue_and_a_stuck_reader_is_dropped_after_the_grace() {
        let grace = Duration::from_millis(100);
        let (tx, mut rx) = channel(1_000, 1_000, grace);
        // 900 + 64 fits; the next one does not.
        tx.send(msg(900)).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(tx.send(msg(100)).await, Err(SendError::SlowReader));
        assert!(started.elapsed() >= grace);
        // Handed to the writer but not yet taken, it still holds its bytes.
        let (_, receipt) = rx.recv().await.unwrap();
        assert_eq!(tx.send(msg(100)).await, Err(SendError::SlowReader));
        // Once the socket takes the first, there is room again.
        rx.taken(receipt);
        tx.send(msg(100)).await.unwrap();
    }

    #[tokio::test]
    async fn messages_bound_the_queue_too() {
        let (tx, mut rx) = channel(2, 1_000_000, Duration::from_millis(50));
        tx.send(msg(1)).await.unwrap();
        tx.send(msg(1)).await.unwrap();
        assert_eq!(tx.send(msg(1)).await, Err(SendError::SlowReader));
        // Taken off the queue, a message no longer counts against its length.
        let (_, receipt) = rx.try_recv().unwrap();
        tx.send(msg(1)).await.unwrap();
        rx.taken(receipt);
    }

    #[tokio::test]
    async fn a_waiting_send_goes_through_once_the_socket_takes_something() {
        let (tx, mut rx) = channel(10, 200, Duration::from_secs(60));
        tx.send(msg(100)).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some((text, receipt)) = rx.recv().await {
                got.push(text.len());
                rx.taken(receipt);
            }
            got
        });
        // Each of these waits for the previous one to be taken.
        tx.send(msg(101)).await.unwrap();
        tx.send(msg(102)).await.unwrap();
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the reader ends once the sender is gone")
            .unwrap();
        assert_eq!(got, vec![100, 101, 102]);
    }

    #[tokio::test]
    async fn a_reader_that_makes_progress_is_not_dropped() {
        // Real time (tokio's `test-util` is not enabled here), so the grace is
        // 100 times one reader step: a descheduled test process must not turn
        // a steady reader into a "slow" one.
        let grace = Duration::from_secs(1);
        let step = Duration::from_millis(10);
        let messages = 150;
        let (tx, mut rx) = channel(1_000, 2_000, grace);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            while let Some((_, receipt)) = rx.recv().await {
                tokio::time::sleep(step).await;
                rx.taken(receipt);
                got += 1;
            }
            got
        });
        let started = std::time::Instant::now();
        // Each send waits for the previous message to be taken.
        for _ in 0..messages {
            tx.send(msg(1_500)).await.unwrap();
        }
        drop(tx);
        assert_eq!(reader.await.unwrap(), messages);
        // Slower than the grace for the whole run, yet never dropped: the
        // grace bounds a wait without progress, not the total.
        assert!(started.elapsed() > grace);
    }

    #[tokio::test]
    async fn an_oversized_message_goes_alone_and_a_closed_writer_fails_fast() {
        let (tx, rx) = channel(10, 100, Duration::from_secs(60));
        tx.send(msg(10_000)).await.unwrap();
        drop(rx);
        let started = std::time::Instant::now();
        assert_eq!(tx.send(msg(1)).await, Err(SendError::Closed));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_send_waiting_for_room_fails_fast_when_the_writer_goes() {
        let (tx, rx) = channel(10, 100, Duration::from_secs(60));
        tx.send(msg(30)).await.unwrap();
        let waiting = tokio::spawn(async move { tx.send(msg(30)).await });
        // Poll until the send is parked waiting for room (no fixed sleep).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rx.shared.state.lock().sender.is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the send never waited"
            );
            tokio::task::yield_now().await;
        }
        drop(rx);
        let result = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken when the writer went")
            .unwrap();
        assert_eq!(result, Err(SendError::Closed));
    }

    /// A waker that counts its wake-ups.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<Wakes>, Waker) {
        let wakes = Arc::new(Wakes(0.into()));
        (Arc::clone(&wakes), Waker::from(wakes))
    }

    fn count(wakes: &Wakes) -> usize {
        wakes.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// One task holding a session and its writer, polled as
    /// `serve_connection` polls them: the session sends once `go` fires.
    #[test]
    fn a_send_from_the_writers_own_task_is_written_in_the_same_poll_without_a_wake() {
        for joined in [true, false] {
            let (tx, mut rx) = new_channel(10, 1_000, Duration::from_secs(60), joined);
            let (go, gate) = futures::channel::oneshot::channel::<()>();
            let session = async {
                gate.await.unwrap();
                tx.send(msg(5)).await
            };
            let mut task = std::pin::pin!(futures::future::join(session, rx.recv()));
            let (wakes, waker) = counting_waker();
            let mut cx = Context::from_waker(&waker);
            // Both wait: the session for `go`, the writer for a message.
            assert!(task.as_mut().poll(&mut cx).is_pending());
            go.send(()).unwrap();
            let woken = count(&wakes);
            assert_eq!(woken, 1, "`go` wakes the task");
            // The session sends; the writer, polled next, takes it.
            let Poll::Ready((sent, got)) = task.as_mut().poll(&mut cx) else {
                panic!("the message is taken in the poll that sent it");
            };
            assert_eq!(sent, Ok(()));
            assert_eq!(got.map(|(text, _)| text), Some(msg(5)));
            // Joined: no second poll asked for. Not joined: the usual wake.
            let extra = if joined { 0 } else { 1 };
            assert_eq!(count(&wakes), woken + extra, "joined = {joined}");
        }
    }

    #[test]
    fn a_send_from_another_task_wakes_a_joined_writer() {
        let (tx, mut rx) = channel_joined(10, 1_000, Duration::from_secs(60));
        let (writer_wakes, writer_waker) = counting_waker();
        let mut recv = std::pin::pin!(rx.recv());
        assert!(recv
            .as_mut()
            .poll(&mut Context::from_waker(&writer_waker))
            .is_pending());
        let (_, other) = counting_waker();
        let mut send = std::pin::pin!(tx.send(msg(5)));
        assert_eq!(
            send.as_mut().poll(&mut Context::from_waker(&other)),
            Poll::Ready(Ok(()))
        );
        assert_eq!(count(&writer_wakes), 1);
        let Poll::Ready(Some((text, _))) = recv.poll(&mut Context::from_waker(&writer_waker))
        else {
            panic!("the writer takes the message once woken");
        };
        assert_eq!(text, msg(5));
    }

    #[test]
    fn the_rule() {
        assert!(is_slow_reader(3, 3));
        assert!(!is_slow_reader(3, 4));
    }
}
