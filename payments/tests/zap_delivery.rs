//! Zap receipts reach relays that missed them: a relay URL that refuses
//! connections at first (nothing listens on its port yet) is retried with
//! backoff, with the very same stored event (same id), until it takes it —
//! and not after the retry window. Real Cairn relays over real WebSockets;
//! `now` is passed explicitly so the backoff schedule is checked without
//! waiting for it.

use std::time::Duration;

use anyhow::{Context, Result};
use cairn_payments::zap::{
    PendingZap, ReceiptPublisher, RelayPolicy, RetryPolicy, ZapState, ZapStore,
};
use cairn_relay::store::QueryContext;
use cairn_relay::testing::TestRelay;
use nostr::{Event, EventBuilder, JsonUtil, Keys, Kind, RelayUrl};

mod support;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn relay_on(bind: &str, dir: &std::path::Path) -> Result<TestRelay> {
    Ok(TestRelay::start(bind.parse()?, dir).await?)
}

/// Copies of `receipt` (same id) stored by `node`'s relay. Read from its
/// store, not through a client: what the relay acknowledged is durably there
/// (a nostr-sdk `fetch_events` right after connecting sometimes returned
/// nothing, which made the test flaky).
async fn held(node: &TestRelay, receipt: &Event) -> Result<usize> {
    let ctx = QueryContext {
        viewers: Vec::new(),
        now: nostr::Timestamp::now().as_secs(),
        max_limit: 100,
    };
    let found = node
        .relay()
        .store()
        .query(&nostr::Filter::new().id(receipt.id), &ctx)
        .await?;
    Ok(found
        .iter()
        .filter(|e| e.id == receipt.id.to_bytes())
        .count())
}

fn new_zap(hash: &str, relays: Vec<String>) -> PendingZap {
    PendingZap {
        payment_hash: hash.into(),
        request: "{}".into(),
        relays,
        invoice: "lnbcrt1".into(),
        amount_msat: 1000,
        created_at: 1,
        expires_at: 4_000_000_000,
        state: ZapState::Pending,
        receipt: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_refuses_at_first_gets_the_same_receipt_later() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .context("test timed out")?
}

async fn run() -> Result<()> {
    let own_dir = tempfile::tempdir()?;
    let own = relay_on("127.0.0.1:0", own_dir.path()).await?;
    // A port with nothing on it (yet): connections are refused.
    let late_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let late_url = format!("ws://{late_addr}");

    let db_dir = tempfile::tempdir()?;
    let store = ZapStore::open(&db_dir.path().join("zaps.sqlite"))?;
    let retry = RetryPolicy {
        first_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(600),
        window: Duration::from_secs(3600),
    };
    // Both relays are on loopback: private relays must be allowed here.
    let own_link = support::ws_link(&own.ws_url(), Keys::generate())?;
    let publisher = ReceiptPublisher::new(
        RelayUrl::parse(&own.ws_url())?,
        own_link.clone(),
        RelayPolicy {
            allow_private: true,
        },
        retry,
    );
    let receipt = EventBuilder::new(Kind::ZapReceipt, "").sign_with_keys(&Keys::generate())?;
    store.insert(&new_zap("aa", vec![late_url.clone()]))?;
    let stored = store
        .set_receipt("aa", &receipt.as_json())?
        .context("stored")?;
    let zap = store.get("aa")?.context("zap")?;
    let event = Event::from_json(&stored)?;

    // t = 1000: the own relay takes it, the late one refuses.
    let t = 1000;
    assert_eq!(publisher.deliver(&store, &zap, &event, t).await?, 1);
    let d = store.deliveries("aa")?;
    let late = d.iter().find(|d| d.relay == late_url).context("late row")?;
    assert!(!late.delivered && late.attempts == 1);
    assert_eq!(late.next_attempt_at, t + 30, "first backoff");
    assert!(d.iter().any(|d| d.relay != late_url && d.delivered));
    assert_eq!(held(&own, &receipt).await?, 1);

    // Still down at the next attempt: the backoff doubles.
    assert_eq!(publisher.deliver(&store, &zap, &event, t + 30).await?, 0);
    let late_row = |store: &ZapStore| -> Result<_> {
        store
            .deliveries("aa")?
            .into_iter()
            .find(|d| d.relay == late_url)
            .context("late row")
    };
    assert_eq!(late_row(&store)?.next_attempt_at, t + 30 + 60);

    // The relay comes up on that port.
    let late_dir = tempfile::tempdir()?;
    let late_relay = relay_on(&late_addr.to_string(), late_dir.path()).await?;
    // Not due yet: nothing is sent, even though it would accept now.
    assert_eq!(publisher.deliver(&store, &zap, &event, t + 60).await?, 0);
    assert_eq!(held(&late_relay, &receipt).await?, 0);
    // Due: it gets the stored receipt — same id — and the own relay is not
    // sent it again.
    assert_eq!(publisher.deliver(&store, &zap, &event, t + 90).await?, 1);
    assert_eq!(held(&late_relay, &receipt).await?, 1);
    let row = late_row(&store)?;
    assert!(row.delivered && row.attempts == 3, "{row:?}");
    assert_eq!(publisher.deliver(&store, &zap, &event, t + 5000).await?, 0);

    // A relay down for the whole window is given up on.
    let gone = format!(
        "ws://{}",
        std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?
    );
    store.insert(&new_zap("bb", vec![gone.clone()]))?;
    let receipt_b = EventBuilder::new(Kind::ZapReceipt, "b").sign_with_keys(&Keys::generate())?;
    store.set_receipt("bb", &receipt_b.as_json())?;
    let zap_b = store.get("bb")?.context("zap")?;
    assert_eq!(publisher.deliver(&store, &zap_b, &receipt_b, t).await?, 1);
    assert_eq!(
        store.due_deliveries("bb", t + 3599, 3600)?,
        vec![gone.clone()]
    );
    assert!(store.due_deliveries("bb", t + 3600, 3600)?.is_empty());
    assert_eq!(
        publisher
            .deliver(&store, &zap_b, &receipt_b, t + 3600)
            .await?,
        0
    );

    // Without allow_private, a loopback relay from a request is dropped and
    // never contacted; the node's own relay (also loopback) still works.
    let strict = ReceiptPublisher::new(
        RelayUrl::parse(&own.ws_url())?,
        own_link,
        RelayPolicy {
            allow_private: false,
        },
        retry,
    );
    store.insert(&new_zap("cc", vec![late_relay.ws_url()]))?;
    let receipt_c = EventBuilder::new(Kind::ZapReceipt, "c").sign_with_keys(&Keys::generate())?;
    store.set_receipt("cc", &receipt_c.as_json())?;
    let zap_c = store.get("cc")?.context("zap")?;
    assert_eq!(strict.deliver(&store, &zap_c, &receipt_c, t).await?, 1);
    let d = store.deliveries("cc")?;
    assert!(d
        .iter()
        .any(|d| d.relay == late_relay.ws_url() && d.dropped && !d.delivered));
    assert_eq!(held(&late_relay, &receipt_c).await?, 0);
    assert_eq!(held(&own, &receipt_c).await?, 1);

    late_relay.shutdown().await;
    own.shutdown().await;
    Ok(())
}

/// Resolves every name to one address, counting the calls.
struct PinnedResolver {
    addr: std::net::SocketAddr,
    calls: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl cairn_payments::zap::Resolver for PinnedResolver {
    async fn resolve(&self, _host: &str, port: u16) -> std::io::Result<Vec<std::net::SocketAddr>> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(vec![std::net::SocketAddr::new(self.addr.ip(), port)])
    }
}

/// A relay named by host is resolved once, and the receipt goes over a
/// connection to the address that answer gave — the host name is never
/// looked up again by a client library (which could be answered with
/// another address: DNS rebinding). `relay.invalid` cannot resolve in real
/// DNS, so the receipt arrives only through the checked address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_goes_to_the_address_that_was_checked() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let own_dir = tempfile::tempdir()?;
        let own = relay_on("127.0.0.1:0", own_dir.path()).await?;
        let far_dir = tempfile::tempdir()?;
        let far = relay_on("127.0.0.1:0", far_dir.path()).await?;
        let far_addr: std::net::SocketAddr = far.ws_url().trim_start_matches("ws://").parse()?;
        let resolver = std::sync::Arc::new(PinnedResolver {
            addr: far_addr,
            calls: Default::default(),
        });
        let publisher = ReceiptPublisher::new(
            RelayUrl::parse(&own.ws_url())?,
            support::ws_link(&own.ws_url(), Keys::generate())?,
            // Loopback stands in for the public address here.
            RelayPolicy {
                allow_private: true,
            },
            RetryPolicy::default(),
        )
        .with_resolver(resolver.clone());
        let named = format!("ws://relay.invalid:{}", far_addr.port());
        let db_dir = tempfile::tempdir()?;
        let store = ZapStore::open(&db_dir.path().join("zaps.sqlite"))?;
        let receipt = EventBuilder::new(Kind::ZapReceipt, "").sign_with_keys(&Keys::generate())?;
        store.insert(&new_zap("dd", vec![named.clone()]))?;
        store.set_receipt("dd", &receipt.as_json())?;
        let zap = store.get("dd")?.context("zap")?;
        assert_eq!(publisher.deliver(&store, &zap, &receipt, 1000).await?, 2);
        assert_eq!(held(&far, &receipt).await?, 1, "the far relay has it");
        assert_eq!(
            resolver.calls.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one resolution per attempt"
        );
        let row = store
            .deliveries("dd")?
            .into_iter()
            .find(|d| d.relay == named)
            .context("row")?;
        assert!(row.delivered, "{row:?}");

        // Strict policy: the same name answering with loopback is dropped,
        // and nothing connects to it.
        let strict = ReceiptPublisher::new(
            RelayUrl::parse(&own.ws_url())?,
            support::ws_link(&own.ws_url(), Keys::generate())?,
            RelayPolicy {
                allow_private: false,
            },
            RetryPolicy::default(),
        )
        .with_resolver(resolver.clone());
        let receipt_e =
            EventBuilder::new(Kind::ZapReceipt, "e").sign_with_keys(&Keys::generate())?;
        store.insert(&new_zap("ee", vec![named.clone()]))?;
        store.set_receipt("ee", &receipt_e.as_json())?;
        let zap_e = store.get("ee")?.context("zap")?;
        assert_eq!(strict.deliver(&store, &zap_e, &receipt_e, 1000).await?, 1);
        assert_eq!(held(&far, &receipt_e).await?, 0);
        assert!(store
            .deliveries("ee")?
            .iter()
            .any(|d| d.relay == named && d.dropped));
        far.shutdown().await;
        own.shutdown().await;
        Ok(())
    })
    .await
    .context("test timed out")?
}
