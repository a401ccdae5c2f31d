//! The X proof-post check against a local fake X server
//! ([`cairn_identity::x::fake`], which serves the response shapes X's public
//! endpoints really send, and scripted odd ones).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cairn_identity::x::fake::{snowflake, Edit, FakeX, Post, Reply};
use cairn_identity::x::{
    syndication_token, Challenge, CheckPolicy, ClaimField, Endpoint, ProofChecker, ProofClaim,
    ProofError, PublicXClient, RetryPolicy, VerifiedPost, XClient, XClientConfig,
};
use nostr::{nips::nip19::ToBech32, Keys};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Every test finishes well within this, or fails.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);
/// When challenges in these tests are issued (2026-09-21T...Z).
const ISSUED_AT: u64 = 1_790_000_000;

const ALICE_UID: u64 = 1_047_412_980_948_713_472;
const ALICE: &str = "alice_cairn";
const MALLORY_UID: u64 = 250_188_760;
const MALLORY: &str = "mallory";

// ------------------------------------------------------------- fixtures ----

/// Alice's post with `raw_text`, made 90 s after the challenge was issued.
fn alice_post(raw_text: impl Into<String>) -> Post {
    let mut post = Post::new(ALICE_UID, ALICE, "", ISSUED_AT + 90, 4097);
    post.raw_text = raw_text.into();
    post.name = "Alice".into();
    post
}

fn ids(chain: &[u64]) -> Vec<String> {
    chain.iter().map(u64::to_string).collect()
}

fn challenge() -> Challenge {
    let keys =
        Keys::parse("6b911fd37cdf5c81d4c0adb1ab7fa822ed253ab0ad9aa18d77257c88b29b718e").unwrap();
    Challenge::with_nonce(
        *b"\x5e\x11\x0c\x7a\x42\x99\x03\xde\xad\xbe\xef\x10\x20\x30\x40\x50",
        &keys.public_key(),
        ISSUED_AT,
        Duration::from_secs(3600),
    )
}

fn claim(post_id: u64) -> ProofClaim {
    ProofClaim {
        x_uid: ALICE_UID,
        handle: ALICE.into(),
        post_id,
    }
}

/// A moment inside the challenge's validity.
const NOW: u64 = ISSUED_AT + 300;

async fn check(fake: &FakeX, c: &Challenge, post_id: u64) -> Result<VerifiedPost, ProofError> {
    tokio::time::timeout(
        TEST_TIMEOUT,
        fake.checker().check_at(c, &claim(post_id), NOW),
    )
    .await
    .expect("check finished in time")
}

macro_rules! timed_test {
    ($name:ident, $body:expr) => {
        #[tokio::test]
        async fn $name() {
            tokio::time::timeout(TEST_TIMEOUT, $body)
                .await
                .expect("test finished in time");
        }
    };
}

// ---------------------------------------------------------------- tests ----

timed_test!(valid_post_verifies, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.publish(&post);

    let verified = check(&fake, &c, post.id).await.expect("valid proof");
    assert_eq!(verified.x_uid, ALICE_UID);
    assert_eq!(verified.handle, ALICE);
    assert_eq!(verified.post_id, post.id);
    assert_eq!(verified.original_post_id, post.id);
    assert_eq!(verified.text, c.proof_text());
    assert_eq!(Some(verified.subject), c.public_key());
    assert_eq!(verified.nonce, c.nonce);
    assert_eq!(verified.created_at, post.created_at);
    assert_eq!(verified.fetched_at, NOW);
    assert!(!verified.edited);
    assert!(verified.oembed_confirmed);
    assert_eq!(
        verified.text_sha256,
        <[u8; 32]>::from(Sha256::digest(c.proof_text()))
    );

    // The requests carry what X's embed widget sends.
    let syndication = fake.queries(Endpoint::Syndication);
    assert_eq!(syndication.len(), 1);
    assert_eq!(syndication[0]["id"], post.id.to_string());
    assert_eq!(
        syndication[0]["token"],
        syndication_token(&post.id.to_string()).unwrap()
    );
    assert!(syndication[0]["features"].contains("tfw_tweet_edit_backend:on"));
    let oembed = fake.queries(Endpoint::OEmbed);
    assert_eq!(
        oembed[0]["url"],
        format!("https://twitter.com/{ALICE}/status/{}", post.id)
    );
    assert_eq!(oembed[0]["omit_script"], "true");

    // The result serializes with a hex digest, for the attestation.
    let encoded = serde_json::to_value(&verified).unwrap();
    assert_eq!(encoded["text_sha256"], hex::encode(verified.text_sha256));
    let decoded: VerifiedPost = serde_json::from_value(encoded).unwrap();
    assert_eq!(decoded, verified);
});

timed_test!(shared_dyn_client_works, async {
    // The node holds one client behind `Arc<dyn XClient>`.
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.publish(&post);
    let client: Arc<dyn XClient> = Arc::new(PublicXClient::new(fake.config()).unwrap());
    let checker = ProofChecker::new(client, CheckPolicy::default());
    let verified = checker.check_at(&c, &claim(post.id), NOW).await.unwrap();
    assert_eq!(verified.post_id, post.id);
});

timed_test!(handle_is_compared_case_insensitively, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let mut post = alice_post(c.proof_text());
    post.screen_name = "Alice_Cairn".into();
    fake.publish(&post);
    let verified = check(&fake, &c, post.id).await.expect("valid proof");
    // X's spelling is recorded.
    assert_eq!(verified.handle, "Alice_Cairn");
});

timed_test!(deleted_post_404, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let id = snowflake(ISSUED_AT + 10, 1);
    // Nothing published: both endpoints answer 404 with an HTML page.
    let err = check(&fake, &c, id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::Deleted {
            post_id: id,
            endpoint: Endpoint::Syndication,
            reason: None
        }
    );
    assert!(!err.is_transient());
    // A 404 is an answer, not an outage: no retries.
    assert_eq!(fake.hits(Endpoint::Syndication, id), 1);
});

timed_test!(deleted_post_tombstone, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.set(
        Endpoint::Syndication,
        post.id,
        vec![Reply::json(json!({
            "__typename": "TweetTombstone",
            "tombstone": {"text": {
                "text": "This Post was deleted by the Post author. Learn more",
                "entities": [{"from_index": 41, "to_index": 51, "ref": {"__typename": "TimelineUrl", "url": "https://help.twitter.com/rules-and-policies/notices-on-twitter", "url_type": "ExternalUrl"}}],
                "rtl": false
            }}
        }))],
    );
    fake.set(Endpoint::OEmbed, post.id, vec![Reply::not_found()]);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::Deleted {
            post_id: post.id,
            endpoint: Endpoint::Syndication,
            reason: Some("This Post was deleted by the Post author. Learn more".into())
        }
    );
});

timed_test!(deleted_between_endpoints_is_deleted, async {
    // Syndication still has it cached, oEmbed already says 404.
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.publish(&post);
    fake.set(Endpoint::OEmbed, post.id, vec![Reply::not_found()]);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProofError::Deleted {
                endpoint: Endpoint::OEmbed,
                ..
            }
        ),
        "{err:?}"
    );
});

timed_test!(suspended_author_is_deleted, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    let mut body = post.syndication_json();
    body.as_object_mut().unwrap().remove("user");
    fake.set(Endpoint::Syndication, post.id, vec![Reply::json(body)]);
    fake.set(
        Endpoint::OEmbed,
        post.id,
        vec![Reply::json(post.oembed_json())],
    );
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProofError::Deleted {
                reason: Some(_),
                ..
            }
        ),
        "{err:?}"
    );
});

timed_test!(protected_account_oembed_403, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    // Protected posts are withheld from signed-out readers on both endpoints.
    fake.set(
        Endpoint::Syndication,
        post.id,
        vec![Reply::json(
            json!({"__typename": "TweetTombstone", "tombstone": {}}),
        )],
    );
    fake.set(Endpoint::OEmbed, post.id, vec![Reply::status(403)]);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::Protected {
            post_id: post.id,
            endpoint: Endpoint::OEmbed
        }
    );
});

timed_test!(protected_account_flag_in_syndication, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let mut post = alice_post(c.proof_text());
    post.protected = true;
    fake.publish(&post);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::Protected {
            post_id: post.id,
            endpoint: Endpoint::Syndication
        }
    );
});

timed_test!(wrong_author, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    // Mallory posts Alice's challenge text from her own account.
    let mut post = alice_post(c.proof_text());
    post.user_id = MALLORY_UID.to_string();
    post.screen_name = MALLORY.into();
    fake.publish(&post);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::WrongAuthor {
            post_id: post.id,
            claimed_x_uid: ALICE_UID,
            actual_x_uid: MALLORY_UID,
            actual_handle: MALLORY.into(),
        }
    );
});

timed_test!(wrong_author_even_with_the_claimed_handle, async {
    // The handle was recycled: same name, different account id.
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let mut post = alice_post(c.proof_text());
    post.user_id = MALLORY_UID.to_string();
    fake.publish(&post);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert!(
        matches!(err, ProofError::WrongAuthor { ref actual_x_uid, .. } if *actual_x_uid == MALLORY_UID),
        "{err:?}"
    );
});

timed_test!(renamed_account_is_a_handle_mismatch, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let mut post = alice_post(c.proof_text());
    post.screen_name = "alice_renamed".into();
    fake.publish(&post);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::HandleMismatch {
            post_id: post.id,
            claimed: ALICE.into(),
            actual: "alice_renamed".into()
        }
    );
});

timed_test!(endpoints_must_agree_on_the_author, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    let mut other = post.clone();
    other.screen_name = MALLORY.into();
    fake.set(
        Endpoint::Syndication,
        post.id,
        vec![Reply::json(post.syndication_json())],
    );
    fake.set(
        Endpoint::OEmbed,
        post.id,
        vec![Reply::json(other.oembed_json())],
    );
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::EndpointsDisagree {
            post_id: post.id,
            syndication_handle: ALICE.into(),
            oembed_handle: MALLORY.into()
        }
    );
});

timed_test!(missing_nonce, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(format!("Verifying my Nostr key for Cairn: {}", c.npub));
    fake.publish(&post);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::MissingNonce {
            post_id: post.id,
            edited: false
        }
    );
});

timed_test!(stale_nonce_from_another_challenge, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let old = Challenge::with_nonce(
        [7; 16],
        &c.public_key().unwrap(),
        ISSUED_AT - 10,
        Duration::from_secs(3600),
    );
    let post = alice_post(old.proof_text());
    fake.publish(&post);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert!(matches!(err, ProofError::MissingNonce { .. }), "{err:?}");
});

timed_test!(missing_key, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let other = Keys::generate();
    let text = c
        .proof_text()
        .replace(&c.npub, &other.public_key().to_bech32().unwrap());
    let post = alice_post(text);
    fake.publish(&post);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::MissingKey {
            post_id: post.id,
            npub: c.npub.clone(),
            edited: false
        }
    );
});

timed_test!(edited_post_uses_latest_version, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let mut original = alice_post(format!("Verifying my Nostr key for Cairn: {}", c.npub));
    let mut latest = alice_post(format!("{} (typo fixed)", c.proof_text()));
    latest.created_at = original.created_at + 120;
    latest.id = snowflake(latest.created_at, 77);
    let chain = ids(&[original.id, latest.id]);
    original.edit = Edit::Initial(chain.clone());
    latest.edit = Edit::Later(chain.clone());
    fake.publish(&original);
    fake.publish(&latest);

    // The user may name the original (as the NIP-39 tag usually does) or the latest id.
    for claimed in [original.id, latest.id] {
        let verified = check(&fake, &c, claimed).await.expect("edited proof");
        assert!(verified.edited);
        assert_eq!(verified.post_id, latest.id);
        assert_eq!(verified.original_post_id, original.id);
        assert_eq!(verified.text, format!("{} (typo fixed)", c.proof_text()));
        assert_eq!(verified.created_at, latest.created_at);
    }
    assert_eq!(fake.hits(Endpoint::Syndication, latest.id), 2);
});

timed_test!(edit_that_removed_the_nonce_fails, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let mut original = alice_post(c.proof_text());
    let mut latest = alice_post(format!("Verifying my Nostr key for Cairn: {}", c.npub));
    latest.created_at = original.created_at + 60;
    latest.id = snowflake(latest.created_at, 5);
    let chain = ids(&[original.id, latest.id]);
    original.edit = Edit::Initial(chain.clone());
    latest.edit = Edit::Later(chain);
    fake.publish(&original);
    fake.publish(&latest);
    let err = check(&fake, &c, original.id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::MissingNonce {
            post_id: latest.id,
            edited: true
        }
    );
});

timed_test!(old_post_edited_to_add_the_nonce_is_too_old, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let mut original = alice_post("gm");
    original.created_at = ISSUED_AT - 1800;
    original.id = snowflake(original.created_at, 9);
    let mut latest = alice_post(c.proof_text());
    latest.created_at = ISSUED_AT + 60;
    latest.id = snowflake(latest.created_at, 9);
    let chain = ids(&[original.id, latest.id]);
    original.edit = Edit::Initial(chain.clone());
    latest.edit = Edit::Later(chain);
    fake.publish(&original);
    fake.publish(&latest);
    let err = check(&fake, &c, latest.id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::TooOld {
            post_id: original.id,
            created_at: ISSUED_AT - 1800,
            issued_at: ISSUED_AT
        }
    );
});

timed_test!(html_entities_are_decoded, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let raw = format!(
        "Me &amp; my key &lt;3 &gt; &quot;Cairn&quot; isn&#39;t magic. {}",
        c.proof_text()
    );
    let post = alice_post(raw);
    fake.publish(&post);
    let verified = check(&fake, &c, post.id).await.expect("valid proof");
    let expected = format!("Me & my key <3 > \"Cairn\" isn't magic. {}", c.proof_text());
    assert_eq!(verified.text, expected);
    assert_eq!(
        verified.text_sha256,
        <[u8; 32]>::from(Sha256::digest(expected.as_bytes()))
    );
});

timed_test!(tco_links_are_expanded, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    // The user posted a link carrying npub and nonce; X replaced it by t.co,
    // so only the expanded URL proves anything.
    let long = format!(
        "https://cairn.example/verify?key={}&nonce={}",
        c.npub, c.nonce
    );
    let mut post =
        alice_post("My Cairn proof: https://t.co/Zx81QkP0aB and https://t.co/Qw12Er34Ty");
    post.urls = vec![
        (
            "https://t.co/Zx81QkP0aB".into(),
            long.clone(),
            "cairn.example/verify?key=npub…".into(),
        ),
        (
            "https://t.co/Qw12Er34Ty".into(),
            "https://example.org/other".into(),
            "example.org/other".into(),
        ),
    ];
    fake.publish(&post);
    let verified = check(&fake, &c, post.id).await.expect("valid proof");
    assert_eq!(
        verified.text,
        format!("My Cairn proof: {long} and https://example.org/other")
    );
});

timed_test!(post_older_than_challenge_is_too_old, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let mut post = alice_post(c.proof_text());
    post.created_at = ISSUED_AT - 600;
    post.id = snowflake(post.created_at, 3);
    fake.publish(&post);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert!(
        matches!(err, ProofError::TooOld { created_at, .. } if created_at == ISSUED_AT - 600),
        "{err:?}"
    );
});

timed_test!(snowflake_time_overrides_a_fresh_created_at, async {
    // created_at says "after the challenge" but the id was minted an hour before.
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let mut post = alice_post(c.proof_text());
    post.id = snowflake(ISSUED_AT - 3600, 3);
    fake.publish(&post);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert!(
        matches!(err, ProofError::TooOld { created_at, .. } if created_at == ISSUED_AT - 3600),
        "{err:?}"
    );
});

timed_test!(small_clock_skew_is_tolerated, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let mut post = alice_post(c.proof_text());
    post.created_at = ISSUED_AT - 30;
    post.id = snowflake(post.created_at, 3);
    fake.publish(&post);
    check(&fake, &c, post.id)
        .await
        .expect("within the default skew");
});

timed_test!(expired_challenge_fetches_nothing, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.publish(&post);
    let later = c.expires_at + 1;
    let err = fake
        .checker()
        .check_at(&c, &claim(post.id), later)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProofError::ChallengeExpired {
            expires_at: c.expires_at,
            now: later
        }
    );
    assert_eq!(fake.hits(Endpoint::Syndication, post.id), 0);
});

timed_test!(malformed_claims_are_rejected_before_fetching, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let cases = [
        (
            ProofClaim {
                x_uid: 0,
                ..claim(20)
            },
            ClaimField::XUid,
        ),
        (
            ProofClaim {
                handle: "al ice".into(),
                ..claim(20)
            },
            ClaimField::Handle,
        ),
        (claim(0), ClaimField::PostId),
        (
            ProofClaim {
                handle: "@alice".into(),
                ..claim(20)
            },
            ClaimField::Handle,
        ),
    ];
    for (bad, field) in cases {
        let err = fake.checker().check_at(&c, &bad, NOW).await.unwrap_err();
        assert_eq!(err, ProofError::InvalidClaim { field });
    }
    let mut bad_nonce = c.clone();
    bad_nonce.nonce = "xyz".into();
    let err = fake
        .checker()
        .check_at(&bad_nonce, &claim(20), NOW)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProofError::InvalidClaim {
            field: ClaimField::Nonce
        }
    );
    assert!(fake.queries(Endpoint::Syndication).is_empty());
});

timed_test!(timeout_is_retried_then_unavailable, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.publish(&post);
    fake.set(
        Endpoint::Syndication,
        post.id,
        vec![Reply::json(post.syndication_json()).delayed(Duration::from_secs(5))],
    );
    let mut config = fake.config();
    config.request_timeout = Duration::from_millis(150);
    config.retry.attempts = 2;
    let started = Instant::now();
    let err = fake
        .checker_with(config, CheckPolicy::default())
        .check_at(&c, &claim(post.id), NOW)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProofError::Unavailable {
            endpoint: Endpoint::Syndication,
            attempts: 2,
            reason: "timed out".into()
        }
    );
    assert!(err.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gave up promptly"
    );
    assert_eq!(fake.hits(Endpoint::Syndication, post.id), 2);
});

timed_test!(server_errors_then_success, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.publish(&post);
    fake.set(
        Endpoint::Syndication,
        post.id,
        vec![
            Reply::status(503),
            Reply::status(502),
            Reply::json(post.syndication_json()),
        ],
    );
    fake.set(
        Endpoint::OEmbed,
        post.id,
        vec![Reply::status(429), Reply::json(post.oembed_json())],
    );
    let verified = check(&fake, &c, post.id).await.expect("retries succeed");
    assert!(verified.oembed_confirmed);
    assert_eq!(fake.hits(Endpoint::Syndication, post.id), 3);
    assert_eq!(fake.hits(Endpoint::OEmbed, post.id), 2);
});

timed_test!(server_errors_forever_give_a_clear_error, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.publish(&post);
    fake.set(Endpoint::Syndication, post.id, vec![Reply::status(500)]);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert_eq!(
        err,
        ProofError::Unavailable {
            endpoint: Endpoint::Syndication,
            attempts: 3,
            reason: "HTTP 500".into()
        }
    );
    assert_eq!(fake.hits(Endpoint::Syndication, post.id), 3);
    let message = err.to_string();
    assert_eq!(
        message,
        "X syndication endpoint unavailable after 3 attempt(s): HTTP 500"
    );
    // Nothing of the request (URL, token) leaks into the message.
    assert!(!message.contains(&syndication_token(&post.id.to_string()).unwrap()));
    assert!(!message.contains("127.0.0.1"));
});

timed_test!(rate_limited_forever_is_unavailable, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.publish(&post);
    fake.set(Endpoint::Syndication, post.id, vec![Reply::status(429)]);
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert!(
        matches!(err, ProofError::Unavailable { attempts: 3, ref reason, .. } if reason.contains("429")),
        "{err:?}"
    );
});

timed_test!(connection_refused_is_unavailable, async {
    // Bind and drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = url::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
    let config = XClientConfig {
        oembed_base: base.clone(),
        syndication_base: base,
        request_timeout: Duration::from_millis(500),
        retry: RetryPolicy {
            attempts: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        },
        user_agent: "cairn-test".into(),
    };
    let checker = ProofChecker::new(PublicXClient::new(config).unwrap(), CheckPolicy::default());
    let c = challenge();
    let err = checker
        .check_at(&c, &claim(1_703_436_713_362_870_723), NOW)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ProofError::Unavailable {
            endpoint: Endpoint::Syndication,
            attempts: 2,
            reason: "connection failed".into()
        }
    );
});

timed_test!(oembed_outage_is_tolerated_unless_required, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.publish(&post);
    fake.set(Endpoint::OEmbed, post.id, vec![Reply::status(500)]);

    let verified = check(&fake, &c, post.id)
        .await
        .expect("syndication suffices");
    assert!(!verified.oembed_confirmed);

    let strict = CheckPolicy {
        require_oembed: true,
        ..CheckPolicy::default()
    };
    let err = fake
        .checker_with(fake.config(), strict)
        .check_at(&c, &claim(post.id), NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProofError::Unavailable {
                endpoint: Endpoint::OEmbed,
                ..
            }
        ),
        "{err:?}"
    );
});

timed_test!(garbage_answer_is_an_unexpected_response, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.publish(&post);
    fake.set(
        Endpoint::Syndication,
        post.id,
        vec![Reply {
            status: 200,
            body: "<html>Just a moment...</html>".into(),
            content_type: "text/html",
            delay: Duration::ZERO,
        }],
    );
    let err = check(&fake, &c, post.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProofError::UnexpectedResponse {
                endpoint: Endpoint::Syndication,
                ..
            }
        ),
        "{err:?}"
    );
});

timed_test!(author_of_names_the_numeric_id_from_syndication, async {
    let fake = FakeX::start().await.unwrap();
    let c = challenge();
    let post = alice_post(c.proof_text());
    fake.publish(&post);
    let checker = fake.checker();

    // The user knows the handle and the post; X's answer carries `user.id_str`.
    let author = checker.author_of(post.id).await.expect("author");
    assert_eq!(author.x_uid, ALICE_UID);
    assert_eq!(author.handle, ALICE);
    assert_eq!(author.post_id, post.id);
    // Ids exceed JSON's safe integers: decimal strings on the wire.
    let wire = serde_json::to_value(&author).unwrap();
    assert_eq!(wire["x_uid"], ALICE_UID.to_string());
    assert_eq!(
        serde_json::from_value::<cairn_identity::x::PostAuthor>(wire).unwrap(),
        author
    );
    // Only syndication is asked: it alone names the numeric id.
    assert!(fake.queries(Endpoint::OEmbed).is_empty());

    let mut protected = alice_post(c.proof_text());
    protected.id = snowflake(ISSUED_AT + 100, 9);
    protected.protected = true;
    fake.publish(&protected);
    assert!(matches!(
        checker.author_of(protected.id).await,
        Err(ProofError::Protected { .. })
    ));
    fake.delete(post.id);
    assert!(matches!(
        checker.author_of(post.id).await,
        Err(ProofError::Deleted { .. })
    ));
    assert!(matches!(
        checker.author_of(0).await,
        Err(ProofError::InvalidClaim {
            field: ClaimField::PostId
        })
    ));
});
