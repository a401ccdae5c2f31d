//! One connection's outbound queue: messages waiting for its socket, bounded
//! in messages (`max_outbound_queue`) and in bytes (`max_outbound_bytes`),
//! and the rule that drops a slow reader.
//!
//! Invariants:
//!
//! - At most `max_outbound_bytes` of messages wait in the queue, plus one
//!   message larger than that on its own (it takes the whole budget, so it
//!   waits for an empty queue), plus the one the writer is handing to the
//!   socket. The bytes are given back when the socket has taken the message.
//! - A send waits for room only while the writer makes progress: a send
//!   that found no room for a whole grace period (`slow_reader_grace_ms`)
//!   during which the socket took nothing at all fails with
//!   [`SendError::SlowReader`] ([`is_slow_reader`]), and the connection is
//!   closed. A client that reads, however slowly it drains a large result,
//!   is not dropped; one that stops reading is, after the grace.
//! - When the writer side is gone (the socket failed), every send fails
//!   with [`SendError::Closed`] at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

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
    cost: u32,
}

/// Handed out with each message; give it back with
/// [`OutboundReceiver::taken`] once the socket has taken the message.
#[derive(Debug)]
#[must_use]
pub(crate) struct Receipt {
    cost: u32,
}

/// The session's end of the queue.
#[derive(Debug)]
pub(crate) struct OutboundSender {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
    grace: Duration,
}

/// The writer's end of the queue.
#[derive(Debug)]
pub(crate) struct OutboundReceiver {
    rx: mpsc::Receiver<Queued>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Free bytes of the budget, as permits.
    room: Semaphore,
    /// The budget (the most one message is charged).
    budget: u32,
    /// Messages the socket has taken; a send that waited compares it.
    progress: AtomicU64,
}

/// A queue of at most `max_messages` messages and `max_bytes` bytes whose
/// sends give up after `grace` without progress (see the module docs).
pub(crate) fn channel(
    max_messages: usize,
    max_bytes: usize,
    grace: Duration,
) -> (OutboundSender, OutboundReceiver) {
    let (tx, rx) = mpsc::channel(max_messages.max(1));
    let budget = u32::try_from(max_bytes.max(1)).unwrap_or(u32::MAX);
    let shared = Arc::new(Shared {
        room: Semaphore::new(budget as usize),
        budget,
        progress: AtomicU64::new(0),
    });
    (
        OutboundSender {
            tx,
            shared: Arc::clone(&shared),
            grace,
        },
        OutboundReceiver { rx, shared },
    )
}

/// The slow-reader rule: a sender that waited a whole grace period for room
/// gives up only if the socket took nothing in that time (`progress` is the
/// count of messages the socket has taken, before and after the wait).
pub(crate) fn is_slow_reader(progress_before: u64, progress_after: u64) -> bool {
    progress_before == progress_after
}

impl OutboundSender {
    fn cost(&self, len: usize) -> u32 {
        let cost = len.saturating_add(PER_MESSAGE_OVERHEAD);
        u32::try_from(cost)
            .unwrap_or(u32::MAX)
            .min(self.shared.budget)
    }

    /// Queue `text`, waiting for room while the client reads.
    pub(crate) async fn send(&self, text: String) -> Result<(), SendError> {
        let cost = self.cost(text.len());
        loop {
            let before = self.shared.progress.load(Ordering::Acquire);
            match tokio::time::timeout(self.grace, self.shared.room.acquire_many(cost)).await {
                Ok(Ok(permit)) => {
                    // Given back by the writer once the socket took the message.
                    permit.forget();
                    break;
                }
                Ok(Err(_)) => return Err(SendError::Closed),
                Err(_) => {
                    if is_slow_reader(before, self.shared.progress.load(Ordering::Acquire)) {
                        return Err(SendError::SlowReader);
                    }
                }
            }
        }
        let mut item = Queued { text, cost };
        loop {
            let before = self.shared.progress.load(Ordering::Acquire);
            match self.tx.send_timeout(item, self.grace).await {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendTimeoutError::Timeout(back)) => {
                    if is_slow_reader(before, self.shared.progress.load(Ordering::Acquire)) {
                        self.shared.room.add_permits(cost as usize);
                        return Err(SendError::SlowReader);
                    }
                    item = back;
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => return Err(SendError::Closed),
            }
        }
    }

    /// Queue `text` only if there is room right now (a last word before
    /// closing); otherwise drop it.
    pub(crate) fn try_send(&self, text: String) {
        let cost = self.cost(text.len());
        let Ok(permit) = self.shared.room.try_acquire_many(cost) else {
            return;
        };
        if self.tx.try_send(Queued { text, cost }).is_ok() {
            permit.forget();
        }
    }
}

impl OutboundReceiver {
    /// The next message, or `None` once the sender is gone and the queue empty.
    pub(crate) async fn recv(&mut self) -> Option<(String, Receipt)> {
        self.rx.recv().await.map(Self::split)
    }

    /// The next message if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<(String, Receipt)> {
        self.rx.try_recv().ok().map(Self::split)
    }

    fn split(item: Queued) -> (String, Receipt) {
        (item.text, Receipt { cost: item.cost })
    }

    /// The socket has taken a message: give its bytes back.
    pub(crate) fn taken(&self, receipt: Receipt) {
        self.shared.room.add_permits(receipt.cost as usize);
        self.shared.progress.fetch_add(1, Ordering::Release);
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        // Wake every waiting send with `Closed`.
        self.shared.room.close();
    }
}

#[cfg(test)]
mod tests {
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
        // Once the socket takes the first, there is room again.
        let (_, receipt) = rx.recv().await.unwrap();
        rx.taken(receipt);
        tx.send(msg(100)).await.unwrap();
    }

    #[tokio::test]
    async fn a_reader_that_makes_progress_is_not_dropped() {
        let grace = Duration::from_millis(100);
        let (tx, mut rx) = channel(1_000, 2_000, grace);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            while let Some((_, receipt)) = rx.recv().await {
                // Slower than the grace per whole queue, faster per message.
                tokio::time::sleep(Duration::from_millis(40)).await;
                rx.taken(receipt);
                got += 1;
            }
            got
        });
        for _ in 0..10 {
            tx.send(msg(1_500)).await.unwrap();
        }
        drop(tx);
        assert_eq!(reader.await.unwrap(), 10);
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

    #[test]
    fn the_rule() {
        assert!(is_slow_reader(3, 3));
        assert!(!is_slow_reader(3, 4));
    }
}
