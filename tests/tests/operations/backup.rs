//! `cairn backup` while the node takes writes, then `cairn restore` into a
//! fresh data directory and a node started on it: every event acknowledged
//! before the backup began is there, nothing that was never acknowledged
//! is, secrets only with `--include-secrets`, files private.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context as _, Result};
use cairn_e2e::{note, test_settings, within, Backend, TestNode, CASE_TIMEOUT};
use cairn_node::cli::backup::{backup, restore, FileKind, Manifest};
use cairn_relay::config::Rate;
use nostr::Keys;
use serde_json::json;

/// Publishes notes until `stop`, recording the id of each one acknowledged.
async fn publish_until(
    node_url: String,
    keys: Keys,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let mut client = cairn_e2e::WsClient::connect(&node_url).await?;
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        let event = note(&keys, &format!("load {n}"));
        n += 1;
        let ok = client.publish(&event).await?;
        ensure!(ok.accepted, "refused under load: {}", ok.message);
        acked.lock().expect("not poisoned").push(event.id.to_hex());
    }
    client.close().await;
    Ok(())
}

/// Takes the plain (`plain`, no secrets) and the full (`full`) backup while
/// the writers behind `acked` keep publishing, and returns both manifests
/// with how many events were acknowledged before the taken pair began.
///
/// The point is a backup taken under write load, so the pair counts only if
/// at least one write was acknowledged while it ran. On a fast machine a pair
/// can finish between two acknowledgements, and on a loaded one a stalled
/// writer can miss the window: then the pair is taken again (the outputs
/// removed first, `backup` never overwrites), bounded by a deadline, instead
/// of betting on timing.
async fn backups_under_load(
    settings: &cairn_node::Settings,
    plain: &std::path::Path,
    full: &std::path::Path,
    acked: &Mutex<Vec<String>>,
) -> Result<(Manifest, Manifest, usize)> {
    let deadline = std::time::Instant::now() + 3 * cairn_e2e::WAIT;
    loop {
        let before = acked.lock().expect("not poisoned").len();
        let plain_manifest = backup(settings, plain, false).await?;
        let full_manifest = backup(settings, full, true).await?;
        let during = acked.lock().expect("not poisoned").len();
        if during > before {
            return Ok((plain_manifest, full_manifest, before));
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no write was acknowledged while the backups ran"
        );
        std::fs::remove_file(plain)?;
        std::fs::remove_file(full)?;
    }
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_restores_to_a_node_with_every_acknowledged_event() -> Result<()>
{
    tokio::time::timeout(CASE_TIMEOUT, async {
        let fast = Rate::new(1e6, 1e6);
        let node = TestNode::start_with(&Backend::Sqlite, |s| {
            s.relay.rate_limits.events_per_ip = fast;
            s.relay.rate_limits.events_per_pubkey = fast;
        })
        .await?;
        // A secret of the kind the node keeps (seed, keys): private, not SQLite.
        let secret = node.data_dir().join("witness.key");
        cairn_bitcoin::private_file::create_new(&secret, b"not a real key")?;
        // Payments state as the NWC service keeps it: its own SQLite database
        // (connections) beside the node's, and its service key (a secret).
        let nwc = cairn_payments::nwc::NwcStore::open(
            &node.data_dir().join(cairn_payments::nwc::STORE_FILE_NAME),
        )?;
        let app_key = Keys::generate().public_key();
        let connection = nwc.insert_connection(&cairn_payments::nwc::NwcConnection {
            id: 0,
            name: "backed-up app".into(),
            client_pubkey: app_key,
            permissions: vec!["get_balance".into(), "pay_invoice".into()],
            budget_msat: Some(10_000_000),
            renewal: cairn_payments::nwc::BudgetRenewal::Monthly,
            max_payment_msat: Some(2_000_000),
            expires_at: None,
            revoked: false,
            created_at: 0,
        })?;
        let nwc_key = node
            .data_dir()
            .join(cairn_payments::nwc::SERVICE_KEY_FILE_NAME);
        cairn_bitcoin::private_file::create_new(&nwc_key, b"not a real nwc key")?;

        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn(publish_until(
                    node.ws_url(),
                    Keys::generate(),
                    Arc::clone(&acked),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        // Let a few hundred land first.
        while acked.lock().expect("not poisoned").len() < 300 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let out_dir = tempfile::tempdir()?;
        let plain = out_dir.path().join("plain.tar");
        let with_secrets = out_dir.path().join("full.tar");
        let (manifest, full, before) =
            backups_under_load(&node.settings, &plain, &with_secrets, &acked).await?;
        let before: HashSet<String> = acked.lock().expect("not poisoned")[..before]
            .iter()
            .cloned()
            .collect();
        stop.store(true, Ordering::Release);
        for w in writers {
            within("a writer", w).await???;
        }
        let all: HashSet<String> = acked
            .lock()
            .expect("not poisoned")
            .iter()
            .cloned()
            .collect();

        // The plain backup: databases only.
        assert_eq!(mode(&plain), 0o600);
        assert!(manifest
            .files
            .iter()
            .any(|f| f.path == "cairn.db" && f.kind == FileKind::Database));
        assert!(
            manifest.files.iter().all(|f| f.kind == FileKind::Database),
            "{manifest:?}"
        );
        assert!(
            manifest.skipped.contains(&"witness.key".to_owned()),
            "{manifest:?}"
        );
        assert!(!manifest
            .files
            .iter()
            .any(|f| f.path.ends_with("-wal") || f.path.ends_with("-shm")));
        let bytes = std::fs::read(&plain)?;
        assert!(
            !bytes.windows(14).any(|w| w == b"not a real key"),
            "no secret in a backup without --include-secrets"
        );
        assert!(full
            .files
            .iter()
            .any(|f| f.path == "witness.key" && f.kind == FileKind::Secret));
        let nwc_db = cairn_payments::nwc::STORE_FILE_NAME;
        assert!(
            manifest
                .files
                .iter()
                .any(|f| f.path == nwc_db && f.kind == FileKind::Database),
            "the NWC database without --include-secrets: {manifest:?}"
        );
        assert!(
            !bytes.windows(18).any(|w| w == b"not a real nwc key"),
            "no NWC key without --include-secrets"
        );
        // Never over an existing file.
        assert!(backup(&node.settings, &plain, false).await.is_err());
        node.finish().await?;

        // Restore: refused into a directory that holds anything.
        let busy = tempfile::tempdir()?;
        std::fs::write(busy.path().join("something"), b"x")?;
        let err = restore(&with_secrets, busy.path()).unwrap_err();
        assert!(format!("{err:#}").contains("not empty"), "{err:#}");

        let fresh = tempfile::tempdir()?;
        let target = fresh.path().join("restored");
        restore(&with_secrets, &target)?;
        assert_eq!(mode(&target), 0o700);
        assert_eq!(mode(&target.join("witness.key")), 0o600);
        assert_eq!(mode(&target.join("cairn.db")), 0o600);
        assert_eq!(
            std::fs::read(target.join("witness.key"))?,
            b"not a real key"
        );
        // The NWC connection is there, as it was, and its key, private.
        let nwc_file = target.join(cairn_payments::nwc::STORE_FILE_NAME);
        assert_eq!(mode(&nwc_file), 0o600);
        let restored_nwc = cairn_payments::nwc::NwcStore::open(&nwc_file)?;
        let connections = restored_nwc.list_connections()?;
        assert_eq!(connections.len(), 1, "{connections:?}");
        let back = &connections[0];
        assert_eq!(
            (
                back.id,
                back.client_pubkey,
                back.budget_msat,
                back.max_payment_msat
            ),
            (connection.id, app_key, Some(10_000_000), Some(2_000_000))
        );
        assert_eq!(back.permissions, connection.permissions);
        drop(restored_nwc);
        let key_file = target.join(cairn_payments::nwc::SERVICE_KEY_FILE_NAME);
        assert_eq!(mode(&key_file), 0o600);
        assert_eq!(std::fs::read(&key_file)?, b"not a real nwc key");

        let restored = cairn_node::start(test_settings(target.clone(), None)).await?;
        let mut client = cairn_e2e::WsClient::connect(&format!("ws://{}", restored.addr)).await?;
        let mut found = HashSet::new();
        let ids: Vec<&String> = all.iter().collect();
        for chunk in ids.chunks(200) {
            let got = client.query("ids", &[json!({"ids": chunk})]).await?;
            found.extend(got.iter().map(|e| e.id.to_hex()));
        }
        client.close().await;
        let missing: Vec<_> = before.difference(&found).collect();
        assert!(
            missing.is_empty(),
            "{} acknowledged events missing: {missing:?}",
            missing.len()
        );
        assert!(found.is_subset(&all), "only events that were written");
        within("shutdown", restored.shutdown()).await??;
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("timed out")?
}

#[test]
fn a_damaged_archive_is_refused_and_leaves_nothing_behind() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("junk.tar");
    std::fs::write(&archive, b"definitely not a tar archive, nor a backup")?;
    let target = dir.path().join("restored");
    assert!(restore(&archive, &target).is_err());
    assert!(
        !target.exists(),
        "a failed restore removes the directory it created"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_archive_says_the_events_need_pg_dump() -> Result<()> {
    let Some(backend) = Backend::postgres_from_env() else {
        cairn_e2e::skip_postgres("on_postgres_the_archive_says_the_events_need_pg_dump");
        return Ok(());
    };
    tokio::time::timeout(CASE_TIMEOUT, async {
        let node = TestNode::start(&backend).await?;
        let secret = node.data_dir().join("seed");
        cairn_bitcoin::private_file::create_new(&secret, b"not a real seed")?;
        let out = tempfile::tempdir()?;
        let archive = out.path().join("files.tar");
        let manifest = backup(&node.settings, &archive, true).await?;
        assert_eq!(manifest.event_database, "postgres");
        assert!(
            !manifest.files.iter().any(|f| f.path == "cairn.db"),
            "{manifest:?}"
        );
        assert!(
            manifest.files.iter().any(|f| f.path == "seed"),
            "{manifest:?}"
        );
        node.finish().await?;
        let target = out.path().join("restored");
        let restored = restore(&archive, &target)?;
        assert_eq!(restored, manifest);
        assert_eq!(mode(&target.join("seed")), 0o600);
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("timed out")?
}

/// GETs `path` from the admin API until it answers, at most [`cairn_e2e::WAIT`]
/// (payments may still be starting on a node that just came up).
async fn admin_get_when_up(
    admin: &cairn_node::cli::support::admin::AdminClient,
    path: &str,
) -> Result<serde_json::Value> {
    let deadline = std::time::Instant::now() + cairn_e2e::WAIT;
    loop {
        match within(path, admin.get::<serde_json::Value>(path)).await? {
            Ok(v) => return Ok(v),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(e.context(format!("{path} never answered")))
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// An admin client for the node serving at `base` whose data directory is `dir`.
fn admin_for(
    base: &str,
    dir: &std::path::Path,
) -> Result<cairn_node::cli::support::admin::AdminClient> {
    let token = std::fs::read_to_string(cairn_node::admin_token::token_path(dir))?;
    cairn_node::cli::support::admin::AdminClient::new(base, token.trim())
}

/// Both wallets after a sync: on-chain balance and history, Lightning node
/// id and balances.
async fn wallets(
    admin: &cairn_node::cli::support::admin::AdminClient,
) -> Result<serde_json::Value> {
    within(
        "sync",
        admin.post::<serde_json::Value>("/admin/v1/sync", &json!({})),
    )
    .await??;
    let balance = admin_get_when_up(admin, "/admin/v1/wallet/balance").await?;
    let transactions = admin_get_when_up(admin, "/admin/v1/wallet/transactions").await?;
    let info = admin_get_when_up(admin, "/admin/v1/lightning/info").await?;
    Ok(json!({
        "balance": balance,
        "transactions": transactions,
        "node_id": info["node_id"],
    }))
}

/// The identity witness and both wallets survive a backup taken under write
/// load: a node started on the restored directory serves the same binding,
/// the same epochs and roots (it replayed the restored log to them), signs
/// with the same witness key and holds the same coins; a backup without
/// secrets restores none of the keys and says which are missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_identity_log_epochs_and_both_wallets_survive_a_restore() -> Result<()> {
    use crate::id_support::{bind, identity_settings, mine, IdNode, User, CONFIRMATIONS};
    use cairn_testchain::TestChain;
    use reqwest::StatusCode;

    tokio::time::timeout(std::time::Duration::from_secs(300), async {
        let chain = TestChain::start().await?;
        let x = crate::fake_x::FakeX::start().await?;
        let dir = tempfile::tempdir()?;
        let mut settings = crate::pay_support::payments_settings(dir.path(), &chain)?;
        settings.identity = identity_settings(dir.path(), None, &chain, &x).identity;
        let fast = Rate::new(1e6, 1e6);
        settings.relay.rate_limits.events_per_ip = fast;
        settings.relay.rate_limits.events_per_pubkey = fast;
        let mut node = IdNode::start_with(settings.clone(), dir, None).await?;

        // A final binding in an anchored, confirmed epoch.
        node.fund(&chain, 200_000).await?;
        let alice = User::new(1_047_412_980_948_713_472, "alice_cairn");
        bind(&node, &x, &alice, 1).await?;
        node.close_epoch().await?;
        mine(&chain, CONFIRMATIONS).await?;
        node.sync().await?;
        let (status, binding) = node.get("/identity/v1/handles/alice_cairn").await?;
        ensure!(
            status == StatusCode::OK && binding["status"] == "final",
            "{binding}"
        );
        // A binding still pending in the open epoch: the log beyond the
        // last epoch is state too.
        let bob = User::new(2_000_001, "bob_cairn");
        bind(&node, &x, &bob, 2).await?;

        // Coins in the on-chain payments wallet.
        let admin = admin_for(&node.base, node.dir.path())?;
        let address = admin_get_when_up(&admin, "/admin/v1/wallet/address").await?;
        let address: bitcoin::Address<bitcoin::address::NetworkUnchecked> =
            address["address"].as_str().context("address")?.parse()?;
        let address = address.require_network(bitcoin::Network::Regtest)?;
        within(
            "fund the wallet",
            chain.fund(&address, bitcoin::Amount::from_sat(150_000)),
        )
        .await??;
        let deadline = std::time::Instant::now() + cairn_e2e::WAIT;
        let before_wallets = loop {
            let w = wallets(&admin).await?;
            if w["balance"]["onchain"]["confirmed_sat"] == 150_000 {
                break w;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "the wallet never saw its coin: {w}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        };

        // Back up while events are being written.
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(publish_until(
                    node.node().ws_url(),
                    Keys::generate(),
                    Arc::clone(&acked),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        let deadline = std::time::Instant::now() + cairn_e2e::WAIT;
        while acked.lock().expect("not poisoned").len() < 100 {
            ensure!(
                std::time::Instant::now() < deadline,
                "the writers never got going"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let out = tempfile::tempdir()?;
        let (plain, full) = (out.path().join("plain.tar"), out.path().join("full.tar"));
        let (plain_manifest, _, before_backup) =
            backups_under_load(&node.settings, &plain, &full, &acked).await?;
        stop.store(true, Ordering::Release);
        for w in writers {
            within("a writer", w).await???;
        }

        // Anchor confirmations as of the chain's tip now (funding mined a
        // block), so both nodes count from the same tip.
        node.sync().await?;
        let (_, latest) = node.get("/identity/v1/epochs/latest").await?;
        let (_, epoch0) = node.get("/identity/v1/epochs/0").await?;
        let (_, status_before) = node.get("/identity/v1/status").await?;
        let (_, bob_before) = node.get("/identity/v1/handles/bob_cairn").await?;
        let witness = node.service().witness_public_key();
        let anchor_before = within("anchor status", node.service().anchorer().status()).await??;
        node.stop().await?;

        // A full restore, and a node on it against the same chain.
        let fresh = tempfile::tempdir()?;
        let restored_manifest = restore(&full, fresh.path())?;
        let summary = cairn_node::cli::backup::restore_summary(&restored_manifest, fresh.path());
        assert!(!summary.contains("missing"), "{summary}");
        for secret in [
            cairn_bitcoin::SEED_FILE_NAME,
            cairn_identity::service::WITNESS_KEY_FILE,
            cairn_payments::nwc::SERVICE_KEY_FILE_NAME,
        ] {
            let path = fresh.path().join(secret);
            assert!(path.is_file(), "{secret} restored");
            assert_eq!(mode(&path), 0o600, "{secret}");
        }
        // The Lightning node's state, private.
        let ln_files: Vec<_> = restored_manifest
            .files
            .iter()
            .filter(|f| f.path.starts_with("lightning/"))
            .collect();
        assert!(!ln_files.is_empty(), "{restored_manifest:?}");
        for f in &ln_files {
            assert_eq!(mode(&fresh.path().join(&f.path)), 0o600, "{}", f.path);
        }
        let mut again = settings.clone();
        again.data_dir = fresh.path().to_path_buf();
        again.payments.lightning_listen = crate::ln_support::free_port()?;
        let restored = IdNode::start_with(again, fresh, None).await?;

        assert_eq!(restored.service().witness_public_key(), witness);
        let (status, binding_after) = restored.get("/identity/v1/handles/alice_cairn").await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            binding_after["status"], binding["status"],
            "{binding_after}"
        );
        assert_eq!(binding_after["key"], binding["key"], "{binding_after}");
        let (_, bob_after) = restored.get("/identity/v1/handles/bob_cairn").await?;
        assert_eq!(bob_after["status"], bob_before["status"], "{bob_after}");
        let (_, latest_after) = restored.get("/identity/v1/epochs/latest").await?;
        assert_eq!(latest_after, latest, "the latest epoch, header and roots");
        let (_, epoch0_after) = restored.get("/identity/v1/epochs/0").await?;
        assert_eq!(epoch0_after, epoch0);
        let (_, status_after) = restored.get("/identity/v1/status").await?;
        for field in ["witness", "open_epoch", "log_size", "identities"] {
            assert_eq!(status_after[field], status_before[field], "{field}");
        }
        restored.sync().await?;
        let anchor_after =
            within("anchor status", restored.service().anchorer().status()).await??;
        assert_eq!(
            anchor_after.balance, anchor_before.balance,
            "anchoring wallet"
        );
        assert_eq!(anchor_after.chain_output, anchor_before.chain_output);

        let restored_admin = admin_for(&restored.base, restored.dir.path())?;
        let after_wallets = wallets(&restored_admin).await?;
        assert_eq!(after_wallets, before_wallets, "both payment wallets");

        // Every event acknowledged before the backup began.
        let mut client = cairn_e2e::WsClient::connect(&restored.node().ws_url()).await?;
        let ids: Vec<String> = acked.lock().expect("not poisoned")[..before_backup].to_vec();
        let mut found = HashSet::new();
        for chunk in ids.chunks(200) {
            let got = client.query("ids", &[json!({ "ids": chunk })]).await?;
            found.extend(got.iter().map(|e| e.id.to_hex()));
        }
        client.close().await;
        assert_eq!(found.len(), ids.len(), "every acknowledged event");
        restored.finish().await?;
        node.finish().await?;

        // Without --include-secrets: databases only; the keys are missing
        // and the restore says so.
        let bare = tempfile::tempdir()?;
        let manifest = restore(&plain, bare.path())?;
        assert_eq!(manifest, plain_manifest);
        let summary = cairn_node::cli::backup::restore_summary(&manifest, bare.path());
        for secret in [
            cairn_bitcoin::SEED_FILE_NAME,
            cairn_identity::service::WITNESS_KEY_FILE,
            cairn_payments::nwc::SERVICE_KEY_FILE_NAME,
        ] {
            assert!(!bare.path().join(secret).exists(), "{secret} not restored");
            assert!(
                manifest.skipped.iter().any(|s| s == secret),
                "{secret} listed as left out: {manifest:?}"
            );
            assert!(summary.contains(secret), "{summary}");
        }
        assert!(summary.contains("missing"), "{summary}");
        for db in [
            "cairn.db",
            cairn_identity::anchor::DB_FILE_NAME,
            cairn_payments::wallet::WALLET_DB_FILE_NAME,
        ] {
            assert!(bare.path().join(db).is_file(), "{db} restored");
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("timed out")?
}
