//! `cairn msg send|inbox` end to end: two Cairn nodes on testchain. Alice's
//! node runs the identity registry (her handle bound and anchored),
//! payments, and `[zaps] names = ["alice"]`; the sender's node has a
//! Lightning channel to it and on-chain funds. The sender messages @alice
//! with a Lightning payment and with an on-chain payment, through the command
//! code (`cairn_node::cli::msg`); Alice's inbox shows both as paid, verified
//! by her node. A tampered receipt, a replayed one (also backdated, in a
//! later run: claims persist), an invoice of her node that is not her
//! LNURL-pay's, and an on-chain receipt naming another of her addresses are
//! not shown as paid; a payment made without a message is sent later with
//! `--receipt` and shown as paid; and a handle whose binding does not verify
//! is refused without `--to`.

use anyhow::{ensure, Context, Result};
use bitcoin::{Address, Amount, Network};
use cairn_node::admin_token::token_path;
use cairn_node::cli::msg::CLAIMS_FILE;
use cairn_node::cli::msg::{
    self as msg_cli, BitcoinRpc, Inbox, InboxContext, InboxMessage, PayRequest, SendContext,
    SendRequest, UnverifiedRecipient,
};
use cairn_node::cli::support::admin::AdminClient;
use cairn_node::cli::{ChainSource, VerifyOptions};
use cairn_payments::ldk_node::Event;
use cairn_payments::message_payment::{
    MessagePayment, MessagePaymentError, Method, OnchainRequest, Receipt, Verification,
};
use cairn_testchain::TestChain;
use nostr::{EventBuilder, Keys, Kind, PublicKey, Tag, TagKind};
use serde_json::{json, Value};

use crate::fake_x::FakeX;
use crate::id_support::{self, IdNode, User, CONFIRMATIONS};
use crate::ln_support::next_event;
use crate::support::{
    mempool_nonempty, mine, payments_settings, poll, str_at, u64_at, PayNode, TEST_TIMEOUT, WAIT,
};

const ALICE_UID: u64 = 1_400_000_000_000_000_001;
const CAROL_UID: u64 = 1_400_000_000_000_000_002;
const LN_FUNDING: u64 = 1_000_000;
const CHANNEL: u64 = 400_000;
const ONCHAIN_FUNDING: u64 = 300_000;
const PAY_MSAT: u64 = 5_000_000;
const ONCHAIN_PAY_SAT: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_in_messages_are_verified_by_the_recipients_node() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, run())
        .await
        .context("test timed out")?
}

/// Alice's node: identity (with the fake X), payments, LNURL for "alice".
async fn alice_node(chain: &TestChain, x: &FakeX) -> Result<(IdNode, AdminClient)> {
    let dir = tempfile::tempdir()?;
    let mut settings = payments_settings(dir.path(), chain)?;
    settings.identity = id_support::identity_settings(dir.path(), None, chain, x).identity;
    settings.zaps.names = vec!["alice".into()];
    let node = IdNode::start_with(settings, dir, None).await?;
    let token = std::fs::read_to_string(token_path(node.dir.path()))?;
    let admin = AdminClient::new(&node.base, token.trim())?;
    Ok((node, admin))
}

async fn sync(admin: &AdminClient) -> Result<()> {
    admin.post::<Value>("/admin/v1/sync", &json!({})).await?;
    Ok(())
}

async fn address(admin: &AdminClient, path: &str) -> Result<Address> {
    let v: Value = admin.get(path).await?;
    Ok(str_at(&v, "/address")?
        .parse::<Address<bitcoin::address::NetworkUnchecked>>()?
        .assume_checked())
}

fn inbox_of(
    keys: &Keys,
    node: &IdNode,
    admin: &AdminClient,
    chain: &TestChain,
    lnurl_metadata: &[String],
) -> InboxContext {
    InboxContext {
        keys: keys.clone(),
        relays: vec![node.node().ws_url()],
        admin: Some(admin.clone()),
        admin_unavailable: None,
        network: Network::Regtest,
        limit: 100,
        bitcoin: Some(BitcoinRpc {
            url: chain.rpc_url().to_owned(),
            user: chain.rpc_user().to_owned(),
            password: chain.rpc_password().to_owned(),
        }),
        lnurl_metadata: lnurl_metadata.to_vec(),
        claims_file: Some(node.dir.path().join(CLAIMS_FILE)),
    }
}

async fn read_inbox(ctx: &InboxContext, want: usize) -> Result<Inbox> {
    // Delivery is confirmed by the relay's OK, so one fetch should see it all;
    // the bound only covers a slow AUTH round trip.
    let start = std::time::Instant::now();
    loop {
        let inbox = msg_cli::inbox(ctx).await?;
        if inbox.messages.len() >= want || start.elapsed() > WAIT {
            return Ok(inbox);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

fn message<'a>(inbox: &'a Inbox, text: &str) -> Result<&'a InboxMessage> {
    inbox
        .messages
        .iter()
        .find(|m| m.text == text)
        .with_context(|| format!("no message `{text}` in {inbox:#?}"))
}

fn verification(m: &InboxMessage) -> Result<&Verification> {
    Ok(&m
        .payment
        .as_ref()
        .context("the message carries a payment")?
        .verification)
}

async fn run() -> Result<()> {
    let chain = TestChain::start().await?;
    let x = FakeX::start().await?;
    let (alice_node, alice_admin) = alice_node(&chain, &x).await?;
    let sender_node = PayNode::start(&chain).await?;
    let sender = Keys::generate();

    // --- @alice bound and anchored with CONFIRMATIONS; @carol only pending ---
    alice_node.fund(&chain, 200_000).await?;
    let alice = User::new(ALICE_UID, "alice");
    id_support::bind(&alice_node, &x, &alice, 1).await?;
    alice_node.close_epoch().await?;
    id_support::mine(&chain, CONFIRMATIONS).await?;
    alice_node.sync().await?;
    let carol = User::new(CAROL_UID, "carol");
    id_support::bind(&alice_node, &x, &carol, 2).await?;

    let ctx = SendContext {
        keys: sender.clone(),
        node_url: alice_node.base.clone(),
        verify: VerifyOptions {
            chain: ChainSource::Rpc {
                url: chain.rpc_url().to_owned(),
                user: chain.rpc_user().to_owned(),
                password: chain.rpc_password().to_owned(),
            },
            network: Network::Regtest,
            min_confirmations: CONFIRMATIONS,
            trusted_witnesses: vec![alice_node.service().witness_public_key()],
        },
        admin: Some(sender_node.admin.clone()),
        own_relay: Some(sender_node.node.ws_url()),
        // Published once from here, as before the outbox: this test is
        // about payments (the outbox has its own, node/tests/outbox.rs).
        outbox: None,
        wait: std::time::Duration::ZERO,
    };

    // --- an unverified handle is refused without --to, used with it ---
    let plain = |recipient: &str, to: Option<PublicKey>| SendRequest {
        recipient: recipient.into(),
        text: "hi carol".into(),
        to,
        payment: None,
        existing: None,
    };
    let refused = msg_cli::send(&ctx, &plain("@carol", None))
        .await
        .expect_err("a pending binding is not verified");
    let why = refused
        .downcast_ref::<UnverifiedRecipient>()
        .with_context(|| format!("{refused:#}"))?;
    ensure!(why.handle == "carol", "{why}");
    let sent = msg_cli::send(&ctx, &plain("@carol", Some(carol.keys.public_key()))).await?;
    assert_eq!(sent.recipient.key, carol.keys.public_key());
    assert!(sent.recipient.unverified.is_some());
    assert!(sent.payment.is_none());
    // A verified handle whose key differs from --to is an error, not a choice.
    let other = Keys::generate().public_key();
    let mismatch = msg_cli::send(&ctx, &plain("@alice", Some(other)))
        .await
        .expect_err("--to differs from the verified key");
    ensure!(
        format!("{mismatch:#}").contains("is verified as"),
        "{mismatch:#}"
    );

    // --- a Lightning channel sender → Alice's node; on-chain funds for the sender ---
    let sender_admin = &sender_node.admin;
    chain
        .fund(
            &address(sender_admin, "/admin/v1/lightning/funding-address").await?,
            Amount::from_sat(LN_FUNDING),
        )
        .await?;
    chain
        .fund(
            &address(sender_admin, "/admin/v1/wallet/address").await?,
            Amount::from_sat(ONCHAIN_FUNDING),
        )
        .await?;
    poll("the sender's funds", &[&sender_node], async || {
        let b: Value = sender_admin.get("/admin/v1/wallet/balance").await?;
        let ok = u64_at(&b, "/lightning/spendable_onchain_sat")? == LN_FUNDING
            && u64_at(&b, "/onchain/confirmed_sat")? == ONCHAIN_FUNDING;
        Ok(ok.then_some(()))
    })
    .await?;
    let ln_sender_payments = sender_node.node.payments().context("payments")?;
    let ln_sender = ln_sender_payments.lightning();
    let ln_alice_payments = alice_node.node().payments().context("payments")?;
    let ln_alice = ln_alice_payments.lightning();
    let mut events = ln_sender.subscribe();
    let info: Value = alice_admin.get("/admin/v1/lightning/info").await?;
    sender_admin
        .post::<Value>(
            "/admin/v1/lightning/channels",
            &json!({
                "node_id": str_at(&info, "/node_id")?,
                "address": str_at(&info, "/listening_address")?,
                "amount_sat": CHANNEL,
            }),
        )
        .await?;
    mempool_nonempty(&chain).await?;
    mine(&chain, 6).await?;
    next_event("ChannelReady", &mut events, &[ln_sender, ln_alice], |e| {
        matches!(e, Event::ChannelReady { .. })
    })
    .await?;
    poll("a usable channel", &[&sender_node], async || {
        sync(&alice_admin).await?;
        let chans: Vec<Value> = sender_admin.get("/admin/v1/lightning/channels").await?;
        Ok(chans.iter().any(|c| c["is_usable"] == true).then_some(()))
    })
    .await?;

    // --- Alice lists her NIP-17 inbox relays (kind 10050): her node's and the sender's ---
    let (alice_ws, sender_ws) = (alice_node.node().ws_url(), sender_node.node.ws_url());
    let inbox_list = EventBuilder::new(Kind::InboxRelays, "")
        .tags([
            Tag::custom(TagKind::Relay, [alice_ws.as_str()]),
            Tag::custom(TagKind::Relay, [sender_ws.as_str()]),
        ])
        .sign_with_keys(&alice.keys)?;
    let mut ws = cairn_e2e::WsClient::connect(&alice_ws).await?;
    ws.publish(&inbox_list).await?.assert_accepted("kind 10050");
    ws.close().await;

    // --- msg send @alice "lunch" --pay 5000sat ---
    let lunch = SendRequest {
        recipient: "@alice".into(),
        text: "lunch".into(),
        to: None,
        payment: Some(PayRequest {
            amount_msat: PAY_MSAT,
            onchain: false,
        }),
        existing: None,
    };
    let sent = msg_cli::send(&ctx, &lunch).await?;
    assert_eq!(sent.recipient.key, alice.keys.public_key());
    assert_eq!(sent.recipient.unverified, None);
    // To both relays of her list; the copy to self to the sender's own relay.
    let trimmed = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|u| u.trim_end_matches('/').to_owned())
            .collect()
    };
    assert_eq!(
        trimmed(&sent.delivered_to),
        vec![alice_ws.clone(), sender_ws.clone()]
    );
    assert_eq!(trimmed(&sent.copied_to), vec![sender_ws.clone()]);
    let paid = sent.payment.clone().context("paid")?;
    assert_eq!(paid.request.method(), Method::Lightning);
    assert_eq!(paid.request.amount_msat(), Some(PAY_MSAT));
    let printed = msg_cli::render_sent(&sent);
    assert!(printed.contains("5000 sat (lightning)"), "{printed}");

    // --- a tampered receipt (wrong preimage) and a replay of the real one ---
    let tampered = MessagePayment {
        request: paid.request.clone(),
        receipt: Some(Receipt::Preimage([0u8; 32])),
    };
    // Wraps first seen in the same inbox run are ordered by their rumor
    // times (one-second resolution): the replay must come after the original.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let rumor = msg_cli::build_rumor(
        sender.public_key(),
        alice.keys.public_key(),
        "tampered",
        Some(&tampered),
    );
    msg_cli::deliver(
        &sender,
        alice.keys.public_key(),
        rumor,
        &alice_node.node().ws_url(),
        &sender_node.node.ws_url(),
    )
    .await?;
    // The replay goes through `msg send --receipt`: nothing is paid again.
    let replayed = SendRequest {
        recipient: "@alice".into(),
        text: "replayed".into(),
        to: None,
        payment: None,
        existing: Some(paid.clone()),
    };
    msg_cli::send(&ctx, &replayed).await?;

    // --- paid, message lost: `msg send --receipt preimage:… --invoice …` ---
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let unsent = msg_cli::pay_lightning(
        &http,
        sender_admin,
        &alice_node.base,
        "alice",
        PAY_MSAT + 1_000,
        Network::Regtest,
    )
    .await?;
    let resent = SendRequest {
        recipient: "@alice".into(),
        text: "resent".into(),
        to: None,
        payment: None,
        existing: Some(unsent.clone()),
    };
    let sent_again = msg_cli::send(&ctx, &resent).await?;
    assert_eq!(sent_again.payment.as_ref(), Some(&unsent));

    // --- a real payment to an invoice of Alice's node that is not her
    // LNURL-pay's (as a zap's, whose preimage the zap receipt publishes) ---
    let foreign: Value = alice_admin
        .post(
            "/admin/v1/lightning/invoices",
            &json!({ "amount_msat": 2_000_000, "description": "coffee" }),
        )
        .await?;
    let foreign_invoice = str_at(&foreign, "/invoice")?.to_owned();
    let foreign_paid: Value = sender_admin
        .post(
            "/admin/v1/lightning/pay",
            &json!({ "invoice": foreign_invoice }),
        )
        .await?;
    ensure!(foreign_paid["status"] == "succeeded", "{foreign_paid}");
    let foreign_payment = msg_cli::existing_payment(
        &format!("preimage:{}", str_at(&foreign_paid, "/preimage")?),
        Some(&foreign_invoice),
        None,
    )?;
    // `msg send --receipt` refuses it: the inbox would not accept it.
    let refused = msg_cli::send(
        &ctx,
        &SendRequest {
            recipient: "@alice".into(),
            text: "coffee".into(),
            to: None,
            payment: None,
            existing: Some(foreign_payment.clone()),
        },
    )
    .await
    .expect_err("not an invoice of @alice's LNURL-pay");
    ensure!(format!("{refused:#}").contains("LNURL-pay"), "{refused:#}");
    let rumor = msg_cli::build_rumor(
        sender.public_key(),
        alice.keys.public_key(),
        "coffee",
        Some(&foreign_payment),
    );
    msg_cli::deliver(
        &sender,
        alice.keys.public_key(),
        rumor,
        &alice_node.node().ws_url(),
        &sender_node.node.ws_url(),
    )
    .await?;

    // --- msg send @alice "rent" --pay 20000sat --onchain ---
    let rent = SendRequest {
        recipient: "@alice".into(),
        text: "rent".into(),
        to: None,
        payment: Some(PayRequest {
            amount_msat: ONCHAIN_PAY_SAT * 1000,
            onchain: true,
        }),
        existing: None,
    };
    let sent_rent = msg_cli::send(&ctx, &rent).await?;
    let txid = sent_rent
        .payment
        .as_ref()
        .and_then(MessagePayment::txid)
        .context("a txid receipt")?;
    // The same txid claimed for another of Alice's addresses: her wallet did
    // receive that much in the transaction, but not at this address.
    let elsewhere = OnchainRequest::new(
        address(&alice_admin, "/admin/v1/wallet/address").await?,
        Amount::from_sat(ONCHAIN_PAY_SAT),
    );
    let rumor = msg_cli::build_rumor(
        sender.public_key(),
        alice.keys.public_key(),
        "elsewhere",
        Some(&MessagePayment::onchain(elsewhere, txid)),
    );
    msg_cli::deliver(
        &sender,
        alice.keys.public_key(),
        rumor,
        &alice_node.node().ws_url(),
        &sender_node.node.ws_url(),
    )
    .await?;
    mempool_nonempty(&chain).await?;
    mine(&chain, 1).await?;

    // --- Alice's inbox ---
    // Read from her node's relay and the relays she lists there: each message
    // arrives twice and is shown once.
    // Her LNURL metadata, as `msg inbox` fetches it for her [zaps] names.
    let metadata = msg_cli::lnurl_metadata(&http, &alice_node.base, &["alice".into()]).await;
    assert_eq!(metadata.len(), 1, "{metadata:?}");
    let mut ctx_alice = inbox_of(&alice.keys, &alice_node, &alice_admin, &chain, &metadata);
    ctx_alice.relays = msg_cli::reading_relays(&alice.keys, &alice_ws).await;
    assert_eq!(
        trimmed(&ctx_alice.relays),
        vec![alice_ws.clone(), sender_ws.clone()]
    );
    let inbox = read_inbox(&ctx_alice, 7).await?;
    assert!(inbox.refused.is_empty(), "{:?}", inbox.refused);
    assert_eq!(inbox.messages.len(), 7, "{inbox:#?}");
    for m in &inbox.messages {
        assert_eq!(m.sender, sender.public_key());
        assert_eq!(m.recipients, vec![alice.keys.public_key()]);
    }
    assert_eq!(
        verification(message(&inbox, "lunch")?)?,
        &Verification::Paid {
            method: Method::Lightning,
            amount_msat: PAY_MSAT,
            confirmations: None
        }
    );
    let v = verification(message(&inbox, "tampered")?)?;
    assert!(
        matches!(
            v,
            Verification::Unverified(MessagePaymentError::WrongPreimage { .. })
        ),
        "{v:?}"
    );
    let lunch_wrap = message(&inbox, "lunch")?.wrap_id;
    assert_eq!(
        verification(message(&inbox, "replayed")?)?,
        &Verification::Unverified(MessagePaymentError::AlreadyClaimed {
            by: lunch_wrap.to_hex()
        })
    );
    assert_eq!(
        verification(message(&inbox, "resent")?)?,
        &Verification::Paid {
            method: Method::Lightning,
            amount_msat: PAY_MSAT + 1_000,
            confirmations: None
        }
    );
    assert_eq!(
        verification(message(&inbox, "coffee")?)?,
        &Verification::Unverified(MessagePaymentError::NotYourLnurlInvoice)
    );
    match verification(message(&inbox, "rent")?)? {
        Verification::Paid {
            method: Method::Onchain,
            amount_msat,
            confirmations: Some(c),
        } => {
            assert_eq!(*amount_msat, ONCHAIN_PAY_SAT * 1000);
            assert!(*c >= 1, "mined: {c}");
        }
        other => panic!("rent for {txid}: {other:?}"),
    }
    let v = verification(message(&inbox, "elsewhere")?)?;
    assert_eq!(
        v,
        &Verification::Unverified(MessagePaymentError::AmountMismatch {
            expected_msat: ONCHAIN_PAY_SAT * 1000,
            found_msat: 0
        })
    );
    let shown = msg_cli::render_inbox(&inbox, &alice.keys.public_key());
    assert!(shown.contains("PAID 5000 sat (lightning"), "{shown}");
    assert!(shown.contains("UNVERIFIED: wrong preimage"), "{shown}");
    assert!(shown.contains("PAID 20000 sat (onchain"), "{shown}");
    assert!(
        shown.contains(&format!(
            "already claimed by gift wrap {}",
            lunch_wrap.to_hex()
        )),
        "{shown}"
    );

    // --- a later run: a replay backdated before the original still loses,
    // because claims persist and follow when the wraps were first seen ---
    let lunch_at = message(&inbox, "lunch")?.created_at;
    let mut backdated = msg_cli::build_rumor(
        sender.public_key(),
        alice.keys.public_key(),
        "backdated",
        Some(&paid),
    );
    backdated.created_at = nostr::Timestamp::from(lunch_at.as_secs() - 3_600);
    backdated.id = None;
    backdated.ensure_id();
    msg_cli::deliver(
        &sender,
        alice.keys.public_key(),
        backdated,
        &alice_node.node().ws_url(),
        &sender_node.node.ws_url(),
    )
    .await?;
    let inbox = read_inbox(&ctx_alice, 8).await?;
    assert_eq!(inbox.messages.len(), 8, "{inbox:#?}");
    assert_eq!(
        verification(message(&inbox, "backdated")?)?,
        &Verification::Unverified(MessagePaymentError::AlreadyClaimed {
            by: lunch_wrap.to_hex()
        })
    );
    assert!(verification(message(&inbox, "lunch")?)?.is_paid());
    assert!(verification(message(&inbox, "rent")?)?.is_paid());

    // Plain LUD-06, no zap request: no public receipt (kind 9735) of the
    // private payment on either relay.
    for relay in [&alice_ws, &sender_ws] {
        let mut ws = cairn_e2e::WsClient::connect(relay).await?;
        let receipts = ws.query_once(&[json!({ "kinds": [9735] })]).await?;
        assert!(
            receipts.is_empty(),
            "public receipts on {relay}: {receipts:?}"
        );
        ws.close().await;
    }

    // Without her node, nothing is shown as paid.
    let mut offline = inbox_of(&alice.keys, &alice_node, &alice_admin, &chain, &metadata);
    offline.admin = None;
    offline.admin_unavailable = Some("no admin token".into());
    let inbox = read_inbox(&offline, 8).await?;
    ensure!(
        inbox
            .messages
            .iter()
            .all(|m| !m.payment.as_ref().is_some_and(|p| p.verification.is_paid())),
        "{inbox:#?}"
    );

    // --- the sender's copy to self, on the sender's own relay ---
    let own = InboxContext {
        relays: vec![sender_node.node.ws_url()],
        ..inbox_of(&sender, &alice_node, sender_admin, &chain, &[])
    };
    let copies = read_inbox(&own, 6).await?;
    let lunch_copy = message(&copies, "lunch")?;
    assert_eq!(lunch_copy.sender, sender.public_key());
    assert!(
        !verification(lunch_copy)?.is_paid(),
        "only the payee's node can confirm"
    );
    assert!(message(&copies, "hi carol").is_ok());

    sender_node.node.shutdown().await?;
    alice_node.finish().await?;
    chain.stop().await?;
    Ok(())
}
