//! `/metrics`: off unless `[metrics] bind` is set, then Prometheus text on
//! its own listener whose counters move with the traffic.

use anyhow::{Context as _, Result};
use cairn_e2e::{backend_tests, note, within, Backend, TestNode};
use nostr::Keys;
use serde_json::json;

/// The value of the sample `name{labels}` (labels as rendered, e.g.
/// `type="EVENT"`; several are matched in any order), 0 when absent.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| {
            let (metric, rest) = key.split_once('{').unwrap_or((key, ""));
            metric == name && labels.iter().all(|label| rest.contains(label))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

async fn scrape(node: &TestNode) -> Result<String> {
    let addr = node.metrics_addr().context("metrics are on")?;
    let r = within("scrape", reqwest::get(format!("http://{addr}/metrics"))).await??;
    anyhow::ensure!(r.status().is_success(), "scrape answered {}", r.status());
    Ok(r.text().await?)
}

async fn metrics_are_off_by_default(backend: Backend) -> Result<()> {
    let node = TestNode::start(&backend).await?;
    assert!(node.metrics_addr().is_none());
    // Nor are they on the public port.
    let r = within(
        "GET /metrics",
        reqwest::get(format!("{}/metrics", node.http_url())),
    )
    .await??;
    assert_ne!(r.status(), reqwest::StatusCode::OK);
    node.finish().await
}

async fn counters_move_with_traffic(backend: Backend) -> Result<()> {
    let node = TestNode::start_with(&backend, |s| {
        s.metrics.bind = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await?;
    let before = scrape(&node).await?;
    let mut client = node.connect().await?;
    let keys = Keys::generate();
    let first = note(&keys, "counted");
    client.publish(&first).await?.assert_accepted("first");
    client.publish(&first).await?; // duplicate
    let mut bad = serde_json::to_value(note(&keys, "bad signature"))?;
    bad["sig"] = json!("00".repeat(64));
    client.publish_json(&bad).await?;
    let got = client
        .query("q", &[json!({"authors": [keys.public_key().to_hex()]})])
        .await?;
    assert_eq!(got.len(), 1);
    let after = scrape(&node).await?;

    let moved =
        |name: &str, labels: &[&str]| sample(&after, name, labels) - sample(&before, name, labels);
    // Other nodes in this test process share the recorder: at least ours.
    assert!(
        moved("cairn_messages_received_total", &["type=\"EVENT\""]) >= 3.0,
        "{after}"
    );
    assert!(
        moved("cairn_messages_received_total", &["type=\"REQ\""]) >= 1.0,
        "{after}"
    );
    assert!(
        moved("cairn_messages_sent_total", &["type=\"OK\""]) >= 3.0,
        "{after}"
    );
    assert!(
        moved("cairn_messages_sent_total", &["type=\"EOSE\""]) >= 1.0,
        "{after}"
    );
    assert!(
        moved(
            "cairn_events_total",
            &["accepted=\"true\"", "reason=\"stored\""]
        ) >= 1.0,
        "{after}"
    );
    assert!(
        moved(
            "cairn_events_total",
            &["accepted=\"true\"", "reason=\"duplicate\""]
        ) >= 1.0,
        "{after}"
    );
    assert!(
        moved(
            "cairn_events_total",
            &["accepted=\"false\"", "reason=\"invalid\""]
        ) >= 1.0,
        "{after}"
    );
    assert!(
        moved("cairn_writer_commits_total", &["result=\"ok\""]) >= 1.0,
        "{after}"
    );
    assert!(
        moved("cairn_writer_batch_events_count", &[]) >= 1.0,
        "{after}"
    );
    assert!(
        moved("cairn_writer_commit_seconds_count", &[]) >= 1.0,
        "{after}"
    );
    assert!(
        after.contains("cairn_writer_commit_seconds_bucket{le=\"0.001\"}"),
        "a histogram, not a summary: {after}"
    );
    assert!(
        moved("cairn_query_seconds_count", &["shape=\"authors\""]) >= 1.0,
        "{after}"
    );
    assert!(sample(&after, "cairn_connections", &[]) >= 1.0, "{after}");
    assert!(sample(&after, "cairn_database_bytes", &[]) > 0.0, "{after}");
    assert!(after.contains("# HELP cairn_events_total"), "{after}");
    client.close().await;
    node.finish().await
}

backend_tests!(metrics_are_off_by_default, counters_move_with_traffic);
