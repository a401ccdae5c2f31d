//! `cairn backup` while the node takes writes, then `cairn restore` into a
//! fresh data directory and a node started on it: every event acknowledged
//! before the backup began is there, nothing that was never acknowledged
//! is, secrets only with `--include-secrets`, files private.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context as _, Result};
use cairn_e2e::{note, test_settings, within, Backend, TestNode, CASE_TIMEOUT};
use cairn_node::cli::backup::{backup, restore, FileKind};
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
        let before: HashSet<String> = acked
            .lock()
            .expect("not poisoned")
            .iter()
            .cloned()
            .collect();
        let manifest = backup(&node.settings, &plain, false).await?;
        let full = backup(&node.settings, &with_secrets, true).await?;
        let during = acked.lock().expect("not poisoned").len();
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
        ensure!(
            during > before.len(),
            "the backups ran while events were being written"
        );

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
