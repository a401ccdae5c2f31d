//! `/health` and `/ready`: 200 with every part's state when the node can
//! work, 503 naming the part that cannot.

use anyhow::{Context as _, Result};
use cairn_e2e::{backend_tests, Backend, TestNode};
use cairn_node::settings::bitcoin::{BitcoinNetwork, BitcoinSettings};
use reqwest::StatusCode;
use serde_json::Value;

use crate::free_addr;

async fn get(url: String) -> Result<(StatusCode, Value)> {
    let r = cairn_e2e::within("GET", reqwest::get(&url)).await??;
    let status = r.status();
    let body = r.json::<Value>().await.context("a JSON body")?;
    Ok((status, body))
}

async fn a_serving_node_is_healthy_and_ready(backend: Backend) -> Result<()> {
    let node = TestNode::start(&backend).await?;
    let (status, body) = get(format!("{}/health", node.http_url())).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");

    let (status, body) = get(format!("{}/ready", node.http_url())).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["database"]["ok"], true, "{body}");
    assert_eq!(body["writer"]["ok"], true, "{body}");
    assert_eq!(body["identity"]["enabled"], false, "{body}");
    assert_eq!(body["payments"]["enabled"], false, "{body}");
    node.finish().await
}

/// Postgres only: SQLite is a file the process holds open, which nothing
/// outside can take away mid-run (the payments case covers 503 on SQLite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_refuses_connections_makes_the_node_unready() {
    match Backend::postgres_from_env() {
        Some(backend) => {
            cairn_e2e::run_case(
                "a_database_that_refuses_connections_makes_the_node_unready",
                backend,
                database_refuses_connections,
            )
            .await
        }
        None => {
            cairn_e2e::skip_postgres("a_database_that_refuses_connections_makes_the_node_unready")
        }
    }
}

async fn database_refuses_connections(backend: Backend) -> Result<()> {
    let node = TestNode::start(&backend).await?;
    let pg = node.pg().context("postgres")?;
    allow_connections(&pg.name, false).await?;
    pg.terminate_connections().await?;
    let (status, body) = get(format!("{}/ready", node.http_url())).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["database"]["ok"], false, "{body}");
    assert!(body["database"]["error"].is_string(), "{body}");
    // /health says only that the process is up.
    let (status, _) = get(format!("{}/health", node.http_url())).await?;
    assert_eq!(status, StatusCode::OK);
    allow_connections(&pg.name, true).await?;
    let (status, body) = get(format!("{}/ready", node.http_url())).await?;
    assert_eq!(
        status,
        StatusCode::OK,
        "ready again once it is back: {body}"
    );
    node.finish().await
}

/// `ALTER DATABASE … ALLOW_CONNECTIONS`, through the admin URL.
async fn allow_connections(database: &str, allow: bool) -> Result<()> {
    use sqlx::{Connection as _, Executor as _};
    let admin_url = std::env::var(cairn_e2e::POSTGRES_ENV)?;
    let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
    admin
        .execute(format!("ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS {allow}").as_str())
        .await?;
    let _ = admin.close().await;
    Ok(())
}

backend_tests!(a_serving_node_is_healthy_and_ready);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_that_cannot_start_make_the_node_unready_and_say_why() -> Result<()> {
    tokio::time::timeout(cairn_e2e::CASE_TIMEOUT, async {
        let node = TestNode::start_with(&Backend::Sqlite, |s| {
            // Nothing listens there: Bitcoin Core is "down".
            let closed = free_addr().expect("a free port");
            s.bitcoin = BitcoinSettings {
                network: BitcoinNetwork::Regtest,
                rpc_url: format!("http://{closed}"),
                rpc_user: "u".into(),
                rpc_password: "not-in-any-answer".into(),
            };
            s.payments.enabled = true;
            s.payments.lightning_listen = free_addr().expect("a free port");
        })
        .await?;
        let (status, body) = get(format!("{}/ready", node.http_url())).await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["ready"], false, "{body}");
        assert_eq!(body["database"]["ok"], true, "{body}");
        assert_eq!(body["payments"]["enabled"], true, "{body}");
        assert_eq!(body["payments"]["ok"], false, "{body}");
        let error = body["payments"]["error"].as_str().unwrap_or_default();
        assert!(error.contains("is unreachable"), "{body}");
        assert!(!body.to_string().contains("not-in-any-answer"), "{body}");
        node.finish().await
    })
    .await
    .context("timed out")?
}
