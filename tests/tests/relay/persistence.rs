//! Persistence across restarts, clean shutdown, and a database that goes away.

use std::time::Duration;

use cairn_e2e::serde_json::json;
use cairn_e2e::*;
use cairn_relay::config::Rate;
use nostr::prelude::*;

cairn_e2e::backend_tests!(
    data_survives_restart,
    shutdown_keeps_every_acknowledged_event,
    ok_true_means_committed,
);

async fn data_survives_restart(backend: Backend) -> anyhow::Result<()> {
    let mut node = TestNode::start(&backend).await?;
    let alice = Keys::generate();
    let bob = Keys::generate();
    let pk = alice.public_key().to_hex();
    let t = now() - 1_000;

    let n1 = event_at(&alice, 1, "kept", &[&["t", "persist"]], t);
    let n2 = event_at(&alice, 1, "deleted", &[&["t", "persist"]], t + 1);
    let meta_old = event_at(&alice, 0, "{\"name\":\"old\"}", &[], t);
    let meta_new = event_at(&alice, 0, "{\"name\":\"new\"}", &[], t + 5);
    let art = event_at(&alice, 30_023, "article", &[&["d", "a"]], t);
    let del = event_at(&alice, 5, "", &[&["e", &n2.id.to_hex()]], t + 10);
    let gw = gift_wrap_to(&bob.public_key(), "offline message");
    {
        let mut c = node.connect().await?;
        c.publish_all(&[&n1, &n2, &meta_old, &meta_new, &art, &del, &gw])
            .await?;
    }

    node.restart().await?;

    let mut c = node.connect().await?;
    let got = c.query_once(&[json!({"authors": [pk]})]).await?;
    // n1 and art share created_at: NIP-01 order (newest first, then lowest id).
    let mut expected = vec![del.clone(), meta_new.clone(), n1.clone(), art.clone()];
    newest_first(&mut expected);
    let expected: Vec<&Event> = expected.iter().collect();
    assert_ids("alice's events after restart", &got, &expected);
    let got = c.query_once(&[json!({"#t": ["persist"]})]).await?;
    assert_ids("deleted stays deleted", &got, &[&n1]);
    let ok = c.publish(&n2).await?;
    assert!(
        !ok.accepted,
        "deleted event re-published after restart: {}",
        ok.message
    );
    let older_meta = event_at(&alice, 0, "{\"name\":\"older\"}", &[], t + 1);
    let _ = c.publish(&older_meta).await?;
    let got = c
        .query_once(&[json!({"authors": [pk], "kinds": [0]})])
        .await?;
    assert_ids("replaceable after restart", &got, &[&meta_new]);

    // Store-and-forward across the restart: bob comes online afterwards.
    let closed = c
        .req(
            "inbox",
            &[json!({"kinds": [1059], "#p": [bob.public_key().to_hex()]})],
        )
        .await?
        .closed("inbox before AUTH");
    assert_prefix("inbox before AUTH", &closed, &["auth-required:"]);
    c.auth(&bob).await?.assert_accepted("bob after restart");
    let got = c
        .query(
            "inbox",
            &[json!({"kinds": [1059], "#p": [bob.public_key().to_hex()], "since": now() - 3 * 86_400})],
        )
        .await?;
    assert_ids("gift wrap after restart", &got, &[&gw]);
    node.finish().await
}

async fn shutdown_keeps_every_acknowledged_event(backend: Backend) -> anyhow::Result<()> {
    let mut node = TestNode::start_with(&backend, |s| {
        let r = &mut s.relay.rate_limits;
        r.events_per_ip = Rate::new(100_000.0, 100_000.0);
        r.events_per_pubkey = Rate::new(100_000.0, 100_000.0);
    })
    .await?;
    let keys = Keys::generate();
    let events: Vec<Event> = (0..400)
        .map(|i| note(&keys, &format!("in flight {i}")))
        .collect();
    let mut c = node.connect().await?;
    let mut idle = node.connect().await?;

    // Pipeline every EVENT without waiting, then shut down while OKs arrive.
    for e in &events {
        c.send_json(&json!(["EVENT", e])).await?;
    }
    let mut acked: Vec<String> = Vec::new();
    while acked.len() < 20 {
        let v = c.recv_json().await?;
        if v[0] == "OK" && v[2] == json!(true) {
            acked.push(v[1].as_str().unwrap_or_default().to_owned());
        }
    }
    let read_rest = async {
        let seen = c.wait_closed().await?;
        for v in seen {
            if v[0] == "OK" && v[2] == json!(true) {
                acked.push(v[1].as_str().unwrap_or_default().to_owned());
            }
        }
        anyhow::Ok(())
    };
    let (stopped, read) = tokio::join!(node.stop(), read_rest);
    stopped?;
    read.context_msg("publisher socket after shutdown")?;
    // Idle sockets are closed by shutdown as well.
    idle.wait_closed()
        .await
        .context_msg("idle socket after shutdown")?;

    node.restart().await?;
    let mut r = node.connect().await?;
    let got = r
        .query_once(&[json!({"authors": [keys.public_key().to_hex()], "limit": 500})])
        .await?;
    let stored: Vec<String> = hex_ids(&got);
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost across shutdown: {lost:?}",
        lost.len(),
        acked.len()
    );
    node.finish().await
}

trait ContextMsg<T> {
    fn context_msg(self, msg: &str) -> anyhow::Result<T>;
}

impl<T> ContextMsg<T> for anyhow::Result<T> {
    fn context_msg(self, msg: &str) -> anyhow::Result<T> {
        self.map_err(|e| e.context(msg.to_owned()))
    }
}

/// Postgres only: terminate the test database's sessions (the cluster keeps
/// running); an EVENT gets `OK true` after reconnecting or `OK false
/// "error: …"`, and later ones succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connection_loss_returns_error_and_recovers() {
    match Backend::postgres_from_env() {
        Some(backend) => {
            run_case(
                "postgres_connection_loss_returns_error_and_recovers",
                backend,
                database_goes_away,
            )
            .await
        }
        None => skip_postgres("postgres_connection_loss_returns_error_and_recovers"),
    }
}

async fn database_goes_away(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let keys = Keys::generate();
    let mut c = node.connect().await?;
    let before = note(&keys, "before outage");
    c.publish_all(&[&before]).await?;
    let pg = node.pg().expect("postgres backend");

    let mut accepted = vec![before.clone()];
    for round in 0..2 {
        let killed = pg.terminate_connections().await?;
        eprintln!("round {round}: terminated {killed} sessions");

        let during = note(&keys, &format!("during outage {round}"));
        let ok = c.publish(&during).await?;
        if ok.accepted {
            accepted.push(during);
        } else {
            assert_prefix("EVENT while the database is away", &ok.message, &["error:"]);
        }
        // A REQ: results or CLOSED error:, never a hang or a dropped socket.
        let r = c
            .req(
                &format!("during{round}"),
                &[json!({"ids": [before.id.to_hex()]})],
            )
            .await?;
        if let ReqEnd::Closed(m) = &r.end {
            assert_prefix("REQ while the database is away", m, &["error:"]);
        }

        // Recovery: within a few seconds, events are accepted again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        loop {
            let e = note(&keys, &format!("recovery {round} {}", now()));
            let ok = c.publish(&e).await?;
            if ok.accepted {
                accepted.push(e);
                break;
            }
            assert_prefix("EVENT during recovery", &ok.message, &["error:"]);
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "relay did not recover from the lost database connection: {}",
                ok.message
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for i in 0..5 {
            let e = note(&keys, &format!("after recovery {round} {i}"));
            c.publish(&e).await?.assert_accepted("after recovery");
            accepted.push(e);
        }
    }
    let got = c
        .query_once(&[json!({"authors": [keys.public_key().to_hex()]})])
        .await?;
    let expected: Vec<&Event> = accepted.iter().collect();
    assert_id_set("every accepted event is stored", &got, &expected);
    node.finish().await
}

/// `OK true` only after the event is committed: a separate database
/// connection sees every acknowledged event the moment its OK arrives.
async fn ok_true_means_committed(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        let r = &mut s.relay.rate_limits;
        r.events_per_ip = Rate::new(100_000.0, 100_000.0);
        r.events_per_pubkey = Rate::new(100_000.0, 100_000.0);
    })
    .await?;
    let mut db = node.db_reader().await?;
    let keys = Keys::generate();
    let mut c = node.connect().await?;
    let events: Vec<Event> = (0..150)
        .map(|i| note(&keys, &format!("durable {i}")))
        .collect();
    // Pipelined, so that group commit batches them.
    for e in &events {
        c.send_json(&json!(["EVENT", e])).await?;
    }
    for e in &events {
        let id = e.id.to_hex();
        c.wait_ok(&id).await?.assert_accepted("pipelined event");
        assert_eq!(
            db.stored_rows(&id).await?,
            1,
            "OK true arrived before event {id} was visible in the database"
        );
    }
    db.close().await;
    node.finish().await
}
