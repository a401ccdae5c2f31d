//! The admin API's token, the node's behaviour when Bitcoin Core is
//! unreachable, and the `cairn wallet seed` guard. No chain needed: the
//! node is pointed at a closed port.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cairn_node::admin_token::token_path;
use cairn_node::cli::support::admin::{AdminClient, AdminError};
use cairn_node::settings::bitcoin::{BitcoinNetwork, BitcoinSettings};
use clap::Parser;
use reqwest::StatusCode;

use crate::support::free_port;

#[derive(Parser)]
struct WalletCmd {
    #[command(flatten)]
    args: cairn_node::cli::wallet::WalletArgs,
}

async fn wallet(argv: &[&str]) -> Result<String> {
    let cmd = WalletCmd::try_parse_from(std::iter::once("wallet").chain(argv.iter().copied()))?;
    cairn_node::cli::wallet::execute(cmd.args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bitcoin_core_the_relay_runs_and_the_admin_api_says_why() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir()?;
        let mut settings = cairn_e2e::test_settings(dir.path().to_path_buf(), None);
        // Nothing listens there: Bitcoin Core is "down".
        let closed = free_port()?;
        settings.bitcoin = BitcoinSettings {
            network: BitcoinNetwork::Regtest,
            rpc_url: format!("http://{closed}"),
            rpc_user: "u".into(),
            rpc_password: "not-in-any-answer".into(),
        };
        settings.payments.enabled = true;
        settings.payments.lightning_listen = free_port()?;
        let node = cairn_node::start(settings).await?;
        assert!(node.payments().is_none());

        // The token file: created, private, 64 hex digits.
        let path = token_path(dir.path());
        let token = std::fs::read_to_string(&path)?.trim().to_owned();
        ensure!(token.len() == 64 && token.chars().all(|c| c.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path)?.permissions().mode() & 0o777,
                0o600
            );
        }

        // The relay still answers (NIP-11).
        let http = reqwest::Client::new();
        let nip11 = http
            .get(node.http_url())
            .header("Accept", "application/nostr+json")
            .send()
            .await?;
        assert_eq!(nip11.status(), StatusCode::OK);

        // No token, a wrong one, and the Bearer scheme missing: 401.
        let status_url = format!("{}/admin/v1/status", node.http_url());
        let r = http.get(&status_url).send().await?;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = http
            .get(&status_url)
            .bearer_auth("0".repeat(64))
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let body = r.text().await?;
        assert!(!body.contains(&token), "the token is never echoed");
        let r = http
            .get(&status_url)
            .header("Authorization", &token)
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

        // The right token: 503 and why, without the RPC password.
        let admin = AdminClient::new(&node.http_url(), &token)?;
        let err = admin
            .get::<serde_json::Value>("/admin/v1/wallet/balance")
            .await
            .unwrap_err();
        let err = err.downcast_ref::<AdminError>().context("an API error")?;
        assert_eq!(err.status, 503);
        assert!(
            err.message.starts_with("payments are not running:"),
            "{}",
            err.message
        );
        assert!(err.message.contains("is unreachable"), "{}", err.message);
        assert!(!err.message.contains("not-in-any-answer"));

        // Nothing was created while Bitcoin Core was unreachable (a seed made
        // now would later need a scan from genesis).
        let dir_arg = dir.path().to_str().context("utf-8 path")?;
        let none = wallet(&["seed", "--data-dir", dir_arg])
            .await
            .unwrap_err()
            .to_string();
        assert!(none.contains("no seed"), "{none}");

        // `cairn wallet seed` (offline): the words need the explicit flag.
        cairn_bitcoin::Seed::load_or_create(dir.path())?;
        let out = wallet(&["seed", "--data-dir", dir_arg]).await?;
        assert!(out.contains("seed file:"), "{out}");
        let refused = wallet(&["seed", "--show", "--data-dir", dir_arg])
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("refusing"), "{refused}");
        let words = wallet(&[
            "seed",
            "--show",
            "--i-understand-this-reveals-my-seed",
            "--data-dir",
            dir_arg,
        ])
        .await?;
        let file = std::fs::read_to_string(dir.path().join("seed"))?;
        let expected: Vec<&str> = file.split_whitespace().collect();
        assert_eq!(expected.len(), 24);
        for (i, w) in expected.iter().enumerate() {
            assert!(
                words.contains(&format!("{:>2}. {w}\n", i + 1))
                    || words.ends_with(&format!("{:>2}. {w}", i + 1)),
                "word {} missing from the output",
                i + 1
            );
        }

        node.shutdown().await?;
        Ok(())
    })
    .await
    .context("test timed out")?
}

/// Forwards every connection to `127.0.0.1:to` from `listener`: Bitcoin Core
/// "coming up" on the address the node was configured with.
async fn forward(listener: tokio::net::TcpListener, to: u16) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_start_once_bitcoin_core_comes_up() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let chain = cairn_testchain::TestChain::start().await?;
        let dir = tempfile::tempdir()?;
        let rpc = free_port()?;
        let mut settings = crate::support::payments_settings(dir.path(), &chain)?;
        settings.bitcoin.rpc_url = format!("http://{rpc}");
        let node = cairn_node::start(settings).await?;
        assert!(node.payments().is_none(), "nothing listens at {rpc} yet");
        let token = std::fs::read_to_string(token_path(dir.path()))?;
        let admin = AdminClient::new(&node.http_url(), token.trim())?;
        let err = admin
            .get::<serde_json::Value>("/admin/v1/status")
            .await
            .unwrap_err();
        assert_eq!(
            err.downcast_ref::<AdminError>().map(|e| e.status),
            Some(503)
        );

        let proxy = tokio::spawn(forward(
            tokio::net::TcpListener::bind(rpc).await?,
            chain.rpc_port(),
        ));
        // Retried every second (start_retry_interval_secs = 1).
        let start = std::time::Instant::now();
        let status = loop {
            match admin.get::<serde_json::Value>("/admin/v1/status").await {
                Ok(v) => break v,
                Err(_) if start.elapsed() < crate::support::WAIT => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.context("payments never started")),
            }
        };
        assert_eq!(status["payments"], "running");
        let ln_payments = node.payments().context("the slot is filled")?;
        let ln = ln_payments.lightning();
        assert_eq!(status["node_id"], ln.node_id().to_string());
        node.shutdown().await?;
        proxy.abort();
        chain.stop().await?;
        Ok(())
    })
    .await
    .context("test timed out")?
}
