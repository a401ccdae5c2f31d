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

/// Two nodes on one Postgres database: an event published on A reaches a
/// live subscriber on B, and B's `/metrics` shows the cross-process fan-out
/// lag (a histogram with a plausible mean), and the slow-reader and pacing
/// counters from the first scrape.
async fn cluster_fan_out_lag_is_measured(backend: Backend) -> Result<()> {
    let metrics_on = |s: &mut cairn_node::Settings| {
        s.metrics.bind = Some("127.0.0.1:0".parse().expect("an address"));
    };
    let a = TestNode::start_with(&backend, metrics_on).await?;
    let url = a.pg().context("a Postgres database")?.url.clone();
    let b = TestNode::start_with(&Backend::Sqlite, |s| {
        metrics_on(s);
        s.database_url = Some(url);
    })
    .await?;
    let first = scrape(&b).await?;
    for name in [
        "cairn_slow_readers_dropped_total",
        "cairn_cluster_pacing_stalls_total",
    ] {
        assert!(
            first.lines().any(|l| l.starts_with(name)),
            "{name} from the first scrape: {first}"
        );
    }
    // B's LISTEN connection comes up in the background: an event published
    // before it is up reaches B by catch-up (no lag measured, not "notify").
    // Probe until one arrives by notification, then take the baseline.
    let mut publisher = a.connect().await?;
    let notified = |text: &str| sample(text, "cairn_cluster_events_total", &["via=\"notify\""]);
    let probe_keys = Keys::generate();
    let deadline = std::time::Instant::now() + cairn_e2e::WAIT;
    let before = loop {
        publisher
            .publish(&note(&probe_keys, "probe"))
            .await?
            .assert_accepted("a probe on A");
        let scraped = scrape(&b).await?;
        if notified(&scraped) >= 1.0 {
            break scraped;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "B never received an event by notification: {scraped}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let keys = Keys::generate();
    let mut subscriber = b.connect().await?;
    subscriber
        .req(
            "live",
            &[json!({"authors": [keys.public_key().to_hex()], "limit": 0})],
        )
        .await?
        .eose("live");
    let sent = note(&keys, "across processes");
    publisher.publish(&sent).await?.assert_accepted("on A");
    let got = subscriber.next_event("live").await?;
    assert_eq!(got.id, sent.id);
    let after = scrape(&b).await?;
    let moved = |name: &str| sample(&after, name, &[]) - sample(&before, name, &[]);
    let count = moved("cairn_cluster_fanout_lag_seconds_count");
    let sum = moved("cairn_cluster_fanout_lag_seconds_sum");
    assert!(count >= 1.0, "the event was measured: {after}");
    let mean = sum / count;
    assert!(
        (0.0..30.0).contains(&mean),
        "a plausible lag (same machine): {mean} s"
    );
    assert!(
        after.contains("cairn_cluster_fanout_lag_seconds_bucket{le=\"0.1\"}"),
        "a histogram: {after}"
    );
    assert!(
        notified(&after) - notified(&before) >= 1.0,
        "the event came by notification: {after}"
    );
    subscriber.close().await;
    publisher.close().await;
    b.finish().await?;
    a.finish().await
}

backend_tests!(metrics_are_off_by_default, counters_move_with_traffic);

/// Postgres only: on SQLite nothing crosses processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cluster_fan_out_lag_is_measured() {
    match Backend::postgres_from_env() {
        Some(backend) => {
            cairn_e2e::run_case(
                "cluster_fan_out_lag_is_measured",
                backend,
                cluster_fan_out_lag_is_measured,
            )
            .await
        }
        None => cairn_e2e::skip_postgres("cluster_fan_out_lag_is_measured"),
    }
}
