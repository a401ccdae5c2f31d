//! Zaps (NIP-57) and payments to a verified name, end to end: node B with
//! identity and payments serves `@alice` (bound through the fake X), node A
//! pays over a real Lightning channel, a Nostr client reads the LNURL-pay
//! endpoint and builds a real kind-9734 request, and the kind-9735 receipt
//! shows up on the relays the request names (a third Cairn relay and B's
//! own) — once, also across a restart, and for a zap paid while B's zap
//! service was down.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bitcoin::hashes::{sha256, Hash};
use cairn_payments::ldk_node::lightning_invoice::{Bolt11Invoice, Bolt11InvoiceDescriptionRef};
use cairn_payments::ldk_node::Event as LdkEvent;
use cairn_payments::lightning::LightningNode;
use cairn_testchain::TestChain;
use nostr::{Event, EventBuilder, JsonUtil, Keys, Kind, PublicKey, Tag};
use serde_json::Value;

use crate::fake_x::FakeX;
use crate::id_support::{bind, identity_settings, IdNode, User};
use crate::ln_support::{next_event, open_channel};
use crate::support::{payments_settings, PayNode, TEST_TIMEOUT, WAIT};

const AMOUNT_MSAT: u64 = 21_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zap_a_verified_name_and_publish_one_receipt() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .context("test timed out")?
}

fn tag(values: &[&str]) -> Tag {
    Tag::parse(values.iter().copied()).expect("tag")
}

/// GET `url` with an `Origin` (as a browser would): status, CORS header, JSON.
async fn get(http: &reqwest::Client, url: &str) -> Result<(u16, Option<String>, Value)> {
    let resp = http
        .get(url)
        .header("Origin", "https://client.example")
        .send()
        .await?;
    let status = resp.status().as_u16();
    let cors = resp
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .json()
        .await
        .with_context(|| format!("{url}: not JSON"))?;
    Ok((status, cors, body))
}

/// The callback URL with `amount` and, if given, the `nostr` zap request.
fn callback_url(callback: &str, amount: u64, nostr: Option<&str>) -> Result<String> {
    let mut url = url::Url::parse(callback)?;
    url.query_pairs_mut()
        .append_pair("amount", &amount.to_string());
    if let Some(n) = nostr {
        url.query_pairs_mut().append_pair("nostr", n);
    }
    Ok(url.to_string())
}

/// Zap receipts by `zapper` on `relay_url` (a raw REQ up to EOSE).
async fn receipts(relay_url: &str, zapper: &PublicKey) -> Result<Vec<Event>> {
    let mut ws = cairn_e2e::WsClient::connect(relay_url).await?;
    let got = ws
        .query_once(&[serde_json::json!({ "kinds": [9735], "authors": [zapper.to_hex()] })])
        .await;
    ws.close().await;
    got
}

/// Polls `relay_url` until it holds `n` receipts by `zapper` (bounded).
async fn wait_receipts(relay_url: &str, zapper: &PublicKey, n: usize) -> Result<Vec<Event>> {
    let start = Instant::now();
    loop {
        let got = receipts(relay_url, zapper).await?;
        if got.len() >= n {
            return Ok(got);
        }
        if start.elapsed() > WAIT {
            bail!("{relay_url} holds {} zap receipts, expected {n}", got.len());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn tag_value<'a>(ev: &'a Event, name: &str) -> Option<&'a str> {
    ev.tags
        .iter()
        .map(|t| t.as_slice())
        .find(|t| t[0] == name)
        .and_then(|t| t.get(1))
        .map(String::as_str)
}

/// Pays `invoice` from `payer` and waits for the outcome.
async fn pay(payer: &LightningNode, invoice: &Bolt11Invoice) -> Result<()> {
    let mut ev = payer.subscribe();
    payer.pay_bolt11(invoice)?;
    let hash = *invoice.payment_hash();
    match next_event("payment outcome", &mut ev, &[], |e| {
        matches!(e, LdkEvent::PaymentSuccessful { payment_hash, .. } | LdkEvent::PaymentFailed { payment_hash: Some(payment_hash), .. } if payment_hash.0 == hash.to_byte_array())
    })
    .await?
    {
        LdkEvent::PaymentSuccessful { .. } => Ok(()),
        other => bail!("payment failed: {other:?}"),
    }
}

/// Asks B's callback for a zap invoice; checks it commits to the request.
async fn zap_invoice(
    http: &reqwest::Client,
    callback: &str,
    request: &str,
) -> Result<Bolt11Invoice> {
    let (status, cors, body) =
        get(http, &callback_url(callback, AMOUNT_MSAT, Some(request))?).await?;
    ensure!(status == 200, "callback: {status} {body}");
    assert_eq!(cors.as_deref(), Some("*"));
    assert_eq!(body["routes"], serde_json::json!([]));
    let invoice: Bolt11Invoice = body["pr"]
        .as_str()
        .context("pr")?
        .parse()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(invoice.amount_milli_satoshis(), Some(AMOUNT_MSAT));
    match invoice.description() {
        Bolt11InvoiceDescriptionRef::Hash(h) => {
            assert_eq!(
                h.0,
                sha256::Hash::hash(request.as_bytes()),
                "hash of the request as sent"
            )
        }
        other => bail!("expected a description hash, got {other:?}"),
    }
    Ok(invoice)
}

async fn run() -> Result<()> {
    let chain = TestChain::start().await?;
    let x = FakeX::start().await?;
    // A third relay, plain: the zap requests name it.
    let third_dir = tempfile::tempdir()?;
    let third = cairn_node::start(cairn_e2e::test_settings(
        third_dir.path().to_path_buf(),
        None,
    ))
    .await?;

    // B: identity + payments; takes payments for alice and carol.
    let dir = tempfile::tempdir()?;
    let mut settings = identity_settings(dir.path(), None, &chain, &x);
    settings.payments = payments_settings(dir.path(), &chain)?.payments;
    settings.zaps.names = vec!["alice".into(), "carol".into()];
    // Every relay in this test is on 127.0.0.1, which a production node
    // refuses to send receipts to (SSRF guard): allow loopback here.
    settings.zaps.allow_private_relays = true;
    // Small, so the cap on unpaid zap invoices is reached below.
    settings.zaps.max_pending_zaps = 3;
    let mut b = IdNode::start_with(settings, dir, None).await?;
    let alice = User::new(4201, "alice");
    let bob = User::new(4202, "bob");
    bind(&b, &x, &alice, 1).await?;
    bind(&b, &x, &bob, 2).await?;

    // A pays; a private channel A → B.
    let a = PayNode::start(&chain).await?;
    let ln_a_payments = a.node.payments().context("A's payments run")?;
    let ln_a = ln_a_payments.lightning();
    let ln_b_payments = b.node().payments().context("B's payments run")?;
    let ln_b = ln_b_payments.lightning();
    open_channel(&chain, ln_a, ln_b, 1_000_000, 400_000).await?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    // --- LNURL-pay for alice ---
    let (status, cors, pay_req) =
        get(&http, &format!("{}/.well-known/lnurlp/alice", b.base)).await?;
    ensure!(status == 200, "lnurlp: {status} {pay_req}");
    assert_eq!(cors.as_deref(), Some("*"));
    assert_eq!(pay_req["tag"], "payRequest");
    assert_eq!(pay_req["allowsNostr"], true);
    assert_eq!(pay_req["minSendable"], 1000);
    assert_eq!(pay_req["maxSendable"], 100_000_000);
    let callback = pay_req["callback"].as_str().context("callback")?.to_owned();
    assert_eq!(callback, format!("{}/lnurlp/alice/callback", b.base));
    let zapper = PublicKey::from_hex(pay_req["nostrPubkey"].as_str().context("nostrPubkey")?)?;
    let metadata: Value = serde_json::from_str(pay_req["metadata"].as_str().context("metadata")?)?;
    let host = b.base.trim_start_matches("http://");
    assert!(
        metadata
            .as_array()
            .context("array")?
            .iter()
            .any(|m| m[0] == "text/identifier" && m[1] == format!("alice@{host}")),
        "{metadata}"
    );
    assert!(metadata
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m[0] == "text/plain"));

    // Verified but not listed, listed but not verified, unknown: refused.
    for name in ["bob", "carol", "nobody"] {
        let (status, _, body) =
            get(&http, &format!("{}/.well-known/lnurlp/{name}", b.base)).await?;
        assert_eq!(status, 404, "{name}: {body}");
        assert_eq!(body["status"], "ERROR");
        assert!(body["reason"].is_string());
    }

    // --- a zap: a real 9734 from a Nostr client ---
    let sender = Keys::generate();
    let note = EventBuilder::text_note("hello from alice").sign_with_keys(&alice.keys)?;
    let (third_ws, b_ws) = (third.ws_url(), b.node().ws_url());
    let zap_tags = |amount: u64, p: &PublicKey| {
        vec![
            tag(&["p", &p.to_hex()]),
            tag(&["e", &note.id.to_hex()]),
            tag(&["relays", &third_ws, &b_ws]),
            tag(&["amount", &amount.to_string()]),
        ]
    };
    let request = EventBuilder::new(Kind::ZapRequest, "great note")
        .tags(zap_tags(AMOUNT_MSAT, &alice.keys.public_key()))
        .sign_with_keys(&sender)?
        .as_json();

    // Invalid requests and amounts get LUD-06 errors.
    let other_p = EventBuilder::new(Kind::ZapRequest, "")
        .tags(zap_tags(AMOUNT_MSAT, &bob.keys.public_key()))
        .sign_with_keys(&sender)?
        .as_json();
    let wrong_amount = EventBuilder::new(Kind::ZapRequest, "")
        .tags(zap_tags(AMOUNT_MSAT + 1000, &alice.keys.public_key()))
        .sign_with_keys(&sender)?
        .as_json();
    let tampered = request.replace("great note", "greater note");
    for (what, amount, nostr, reason) in [
        (
            "p of someone else",
            AMOUNT_MSAT,
            Some(other_p.as_str()),
            "p tag",
        ),
        (
            "amount tag differs",
            AMOUNT_MSAT,
            Some(wrong_amount.as_str()),
            "amount",
        ),
        (
            "bad id/signature",
            AMOUNT_MSAT,
            Some(tampered.as_str()),
            "signature",
        ),
        (
            "not an event",
            AMOUNT_MSAT,
            Some("{\"kind\":9734}"),
            "not a Nostr event",
        ),
        ("below minSendable", 999, None, "between"),
        ("above maxSendable", 100_000_001, None, "between"),
    ] {
        let (status, _, body) = get(&http, &callback_url(&callback, amount, nostr)?).await?;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["status"], "ERROR", "{what}");
        let got = body["reason"].as_str().unwrap_or_default();
        assert!(got.contains(reason), "{what}: {got}");
    }
    let (status, _, body) = get(&http, &format!("{}/lnurlp/alice/callback", b.base)).await?;
    assert_eq!(status, 400, "no amount: {body}");

    // Plain LUD-06 (no zap request): the invoice commits to the metadata.
    let (status, _, plain) = get(&http, &callback_url(&callback, 5_000, None)?).await?;
    ensure!(status == 200, "plain callback: {status} {plain}");
    let plain: Bolt11Invoice = plain["pr"]
        .as_str()
        .context("pr")?
        .parse()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    match plain.description() {
        Bolt11InvoiceDescriptionRef::Hash(h) => assert_eq!(
            h.0,
            sha256::Hash::hash(pay_req["metadata"].as_str().unwrap().as_bytes())
        ),
        other => bail!("expected a description hash, got {other:?}"),
    }

    // --- pay the zap; the receipt appears on both relays ---
    let invoice = zap_invoice(&http, &callback, &request).await?;
    pay(ln_a, &invoice).await?;
    for relay in [third.ws_url(), b.node().ws_url()] {
        let got = wait_receipts(&relay, &zapper, 1).await?;
        assert_eq!(got.len(), 1, "{relay}");
        let receipt = &got[0];
        receipt.verify()?;
        assert_eq!(receipt.kind, Kind::ZapReceipt);
        assert_eq!(
            tag_value(receipt, "p"),
            Some(alice.keys.public_key().to_hex().as_str())
        );
        assert_eq!(tag_value(receipt, "e"), Some(note.id.to_hex().as_str()));
        assert_eq!(
            tag_value(receipt, "P"),
            Some(sender.public_key().to_hex().as_str())
        );
        assert_eq!(
            tag_value(receipt, "bolt11"),
            Some(invoice.to_string().as_str())
        );
        assert_eq!(
            tag_value(receipt, "description"),
            Some(request.as_str()),
            "byte for byte"
        );
        let preimage = hex::decode(tag_value(receipt, "preimage").context("preimage")?)?;
        assert_eq!(sha256::Hash::hash(&preimage), *invoice.payment_hash());
    }
    let hash_hex = hex::encode(invoice.payment_hash().to_byte_array());
    let zaps = b.node().zaps().context("B's zap service runs")?;
    // The receipt is on the relays a moment before the service records the
    // delivery (it marks the zap once every relay has answered).
    let start = Instant::now();
    loop {
        let state = zaps.store().get(&hash_hex)?.context("recorded")?.state;
        if state == cairn_payments::zap::ZapState::Published {
            break;
        }
        ensure!(
            start.elapsed() < crate::support::WAIT,
            "zap still {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Paying the same invoice again is refused by the payer; nothing new.
    assert!(
        ln_a.pay_bolt11(&invoice).is_err(),
        "a second payment of one invoice"
    );
    assert_eq!(zaps.sweep().await, 0, "nothing left to publish");

    // --- a zap paid while B's zap service is down is published on restart ---
    zaps.stop().await;
    let request2 = EventBuilder::new(Kind::ZapRequest, "second")
        .tags(zap_tags(AMOUNT_MSAT, &alice.keys.public_key()))
        .sign_with_keys(&sender)?
        .as_json();
    let invoice2 = zap_invoice(&http, &callback, &request2).await?;
    pay(ln_a, &invoice2).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hash2 = hex::encode(invoice2.payment_hash().to_byte_array());
    assert_eq!(
        zaps.store().get(&hash2)?.context("recorded")?.state,
        cairn_payments::zap::ZapState::Pending,
        "paid, but the service is down"
    );
    assert_eq!(
        receipts(&third.ws_url(), &zapper).await?.len(),
        1,
        "not while down"
    );
    b.restart().await?;
    let got = wait_receipts(&third.ws_url(), &zapper, 2).await?;
    assert_eq!(got.len(), 2);
    assert!(got
        .iter()
        .any(|r| tag_value(r, "description") == Some(request2.as_str())));
    // The first zap was not published again: still one receipt for it, and
    // the restarted service finds nothing to publish.
    let zaps = b.node().zaps().context("zap service after restart")?;
    assert_eq!(zaps.sweep().await, 0);
    let first: Vec<_> = got
        .iter()
        .filter(|r| tag_value(r, "bolt11") == Some(invoice.to_string().as_str()))
        .collect();
    assert_eq!(first.len(), 1);

    // --- on-chain payment address for a name ---
    let url = format!("{}/payments/v1/names/alice/onchain?amount_sat=1500", b.base);
    let (status, cors, one) = get(&http, &url).await?;
    ensure!(status == 200, "onchain: {status} {one}");
    assert_eq!(cors.as_deref(), Some("*"));
    let addr = one["address"].as_str().context("address")?;
    addr.parse::<bitcoin::Address<bitcoin::address::NetworkUnchecked>>()?
        .require_network(bitcoin::Network::Regtest)?;
    assert_eq!(one["bip21"], format!("bitcoin:{addr}?amount=0.000015"));
    let (_, _, two) = get(&http, &url).await?;
    assert_ne!(one["address"], two["address"], "a fresh address each time");
    let (status, _, _) = get(&http, &format!("{}/payments/v1/names/bob/onchain", b.base)).await?;
    assert_eq!(status, 404);
    let (status, _, _) = get(
        &http,
        &format!("{}/payments/v1/names/alice/onchain?amount_sat=0", b.base),
    )
    .await?;
    assert_eq!(status, 400);

    // --- limits: unpaid zap invoices are capped, requests per IP too ---
    let zaps = b.node().zaps().context("zap service")?;
    assert_eq!(zaps.store().count_pending(0)?.0, 0, "both zaps were paid");
    // B listens on a new port since the restart.
    let callback = format!("{}/lnurlp/alice/callback", b.base);
    for i in 0..3 {
        let unpaid = EventBuilder::new(Kind::ZapRequest, format!("unpaid {i}"))
            .tags(zap_tags(AMOUNT_MSAT, &alice.keys.public_key()))
            .sign_with_keys(&sender)?
            .as_json();
        zap_invoice(&http, &callback, &unpaid).await?;
    }
    let fourth = EventBuilder::new(Kind::ZapRequest, "one too many")
        .tags(zap_tags(AMOUNT_MSAT, &alice.keys.public_key()))
        .sign_with_keys(&sender)?
        .as_json();
    let resp = http
        .get(callback_url(&callback, AMOUNT_MSAT, Some(&fourth))?)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 429, "fourth unpaid zap invoice");
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await?;
    assert_eq!(body["status"], "ERROR");
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("unpaid"),
        "{body}"
    );
    // The per-IP bucket (burst 20 by default) runs dry: LUD-06 429 with
    // Retry-After, counted even for names this node does not serve.
    let mut limited = None;
    for _ in 0..40 {
        let resp = http
            .get(format!("{}/payments/v1/names/bob/onchain", b.base))
            .send()
            .await?;
        if resp.status().as_u16() == 429 {
            limited = Some(resp);
            break;
        }
        assert_eq!(resp.status().as_u16(), 404);
    }
    let resp = limited.context("no 429 after 40 requests from one IP")?;
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .context("Retry-After")?
        .to_str()?
        .parse()?;
    assert!(retry_after >= 1, "{retry_after}");
    let body: Value = resp.json().await?;
    assert_eq!(body["status"], "ERROR");
    assert!(body["reason"].is_string());
    // The callback shares the bucket.
    let (status, _, _) = get(&http, &callback_url(&callback, 5_000, None)?).await?;
    assert_eq!(status, 429);

    b.finish().await?;
    a.node.shutdown().await?;
    third.shutdown().await?;
    Ok(())
}
