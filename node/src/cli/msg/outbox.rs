//! `msg send` through the node's outbox, and `msg outbox`: the gift wraps
//! are built here (the sender's key never leaves the CLI), handed to the
//! node's admin API (`POST /admin/v1/outbox`), which commits them with one
//! row per destination relay and delivers them until each relay accepts
//! them (see `crate::outbox`). `send` waits a little for the first tries
//! only to report them; delivery goes on in the node either way.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nostr::{EventBuilder, Keys, PublicKey, UnsignedEvent};
use serde::Deserialize;
use serde_json::{json, Value};

use super::lnurl::http_client;
use crate::cli::support::admin::AdminClient;
use crate::cli::support::keys::npub;
use crate::cli::support::time::format_unix;
use crate::outbox::{ItemView, Totals};

/// How long `msg send` waits for the first tries before it reports.
pub const DEFAULT_SEND_WAIT: Duration = Duration::from_secs(10);

/// The relays `handle`'s NIP-05 answer on `node_url` lists for `key`
/// (`relays` in `nostr.json`); empty when there are none or it cannot be read.
/// Only `ws(s)://` URLs, deduplicated, at most
/// [`crate::outbox::MAX_DESTINATIONS`]: the answer is the recipient's node's.
pub async fn nip05_relays(node_url: &str, handle: &str, key: &PublicKey) -> Vec<String> {
    let url = format!(
        "{}/.well-known/nostr.json?name={handle}",
        node_url.trim_end_matches('/')
    );
    let Ok(http) = http_client() else {
        return Vec::new();
    };
    let answer: Option<Value> = async {
        let resp = http.get(&url).send().await.ok()?;
        resp.json().await.ok()
    }
    .await;
    answer
        .as_ref()
        .and_then(|v| v.pointer(&format!("/relays/{}", key.to_hex())))
        .and_then(Value::as_array)
        .map(|a| crate::outbox::capped(a.iter().filter_map(Value::as_str)))
        .unwrap_or_default()
}

/// Gift-wraps `rumor` for `recipient` and for the sender and queues both in
/// the node's outbox; then waits up to `wait` until every destination was
/// tried once, and returns the items as the node then shows them.
pub async fn queue_message(
    admin: &AdminClient,
    keys: &Keys,
    recipient: PublicKey,
    rumor: UnsignedEvent,
    hints: &[String],
    fallback: &str,
    wait: Duration,
) -> Result<Vec<ItemView>> {
    let rumor_id = rumor.id.expect("build_rumor sets the id");
    let wrap = EventBuilder::gift_wrap(keys, &recipient, rumor.clone(), [])
        .await
        .context("cannot gift-wrap the message")?;
    let copy = EventBuilder::gift_wrap(keys, &keys.public_key(), rumor, [])
        .await
        .context("cannot gift-wrap the copy to self")?;
    let body = json!({ "events": [
        { "event": wrap, "role": "message", "rumor_id": rumor_id,
          "hints": hints, "fallback": fallback },
        { "event": copy, "role": "copy", "rumor_id": rumor_id },
    ]});
    let _: Value = admin.post("/admin/v1/outbox", &body).await.context(
        "your node did not queue the message (is `cairn serve` running, with \
             `[outbox] enabled = true`, the default?)",
    )?;
    let start = Instant::now();
    loop {
        let page: OutboxPage = admin
            .get(&format!("/admin/v1/outbox?rumor={}", rumor_id.to_hex()))
            .await?;
        let tried = page
            .items
            .iter()
            .flat_map(|i| &i.deliveries)
            .all(|d| d.state != "queued");
        if tried || start.elapsed() >= wait {
            return Ok(page.items);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET /admin/v1/outbox`.
#[derive(Debug, Clone, Deserialize)]
pub struct OutboxPage {
    /// Deliveries by state, over the whole outbox.
    pub totals: Totals,
    /// The newest items.
    pub items: Vec<ItemView>,
}

/// `cairn msg outbox`: the newest `limit` items, as JSON.
pub async fn outbox(admin: &AdminClient, limit: usize) -> Result<Value> {
    admin.get(&format!("/admin/v1/outbox?limit={limit}")).await
}

/// One delivery, as a line: `relay  state …`.
pub fn render_delivery(d: &crate::outbox::DeliveryView) -> String {
    let detail = match d.state.as_str() {
        "delivered" => {
            let mut s = format!(
                "delivered {}",
                d.delivered_at.map(format_unix).unwrap_or_default()
            );
            if let Some(m) = d.ok_message.as_deref().filter(|m| !m.is_empty()) {
                s.push_str(&format!(" ({m})"));
            }
            s
        }
        "retrying" => format!(
            "retrying: try {} failed, next try {}, last error: {}",
            d.attempts,
            d.next_attempt_at.map(format_unix).unwrap_or_default(),
            d.last_error.as_deref().unwrap_or("?")
        ),
        "queued" => "queued".to_owned(),
        "failed" => format!(
            "failed (refused for good): {}",
            d.last_error.as_deref().unwrap_or("?")
        ),
        "expired" => match &d.last_error {
            Some(e) => format!("expired after {} tries, last error: {e}", d.attempts),
            None => "expired".to_owned(),
        },
        other => other.to_owned(),
    };
    format!("{}  {detail}", d.relay)
}

/// What an item is, for people.
fn describe(item: &ItemView) -> String {
    let to = PublicKey::parse(&item.recipient)
        .map(|k| npub(&k))
        .unwrap_or_else(|_| item.recipient.clone());
    match item.role.as_str() {
        "message" => format!("message to {to}"),
        "copy" => "copy to self".to_owned(),
        "inbox-list" => "your inbox relay list (kind 10050)".to_owned(),
        other => other.to_owned(),
    }
}

/// The text of `cairn msg outbox`: items newest first, grouped by message.
pub fn render_outbox(page: &OutboxPage) -> String {
    let t = &page.totals;
    let mut out = format!(
        "outbox: {} delivered, {} queued, {} retrying, {} failed, {} expired",
        t.delivered, t.queued, t.retrying, t.failed, t.expired
    );
    let mut last_rumor: Option<&str> = None;
    for item in &page.items {
        if let Some(r) = item.rumor_id.as_deref() {
            if last_rumor != Some(r) {
                out.push_str(&format!("\n\nmessage {r}"));
            }
            last_rumor = Some(r);
        } else {
            out.push('\n');
            last_rumor = None;
        }
        out.push_str(&format!(
            "\n  {} (wrap {}), queued {}, tried until {}",
            describe(item),
            item.event_id,
            format_unix(item.created_at),
            format_unix(item.expires_at)
        ));
        for d in &item.deliveries {
            out.push_str(&format!("\n    {}", render_delivery(d)));
        }
    }
    if page.items.is_empty() {
        out.push_str("\n(nothing sent yet)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::DeliveryView;

    #[test]
    fn outbox_text_names_each_state() {
        let d = |state: &str| DeliveryView {
            relay: "wss://r.example".into(),
            state: state.into(),
            attempts: 3,
            next_attempt_at: (state == "retrying").then_some(86_400),
            last_error: (state != "delivered").then(|| "cannot connect: refused".into()),
            delivered_at: (state == "delivered").then_some(0),
            ok_message: None,
        };
        let page = OutboxPage {
            totals: Totals {
                delivered: 1,
                ..Totals::default()
            },
            items: vec![ItemView {
                id: 1,
                event_id: "ab".repeat(32),
                role: "message".into(),
                recipient: Keys::generate().public_key().to_hex(),
                rumor_id: Some("cd".repeat(32)),
                created_at: 0,
                expires_at: 604_800,
                deliveries: vec![d("delivered"), d("retrying"), d("expired"), d("failed")],
            }],
        };
        let text = render_outbox(&page);
        assert!(text.contains("1 delivered"), "{text}");
        assert!(text.contains("delivered 1970-01-01T00:00:00Z"), "{text}");
        assert!(
            text.contains("retrying: try 3 failed, next try 1970-01-02T00:00:00Z"),
            "{text}"
        );
        assert!(text.contains("expired after 3 tries"), "{text}");
        assert!(text.contains("failed (refused for good)"), "{text}");
        assert!(
            text.contains(&format!("message {}", "cd".repeat(32))),
            "{text}"
        );
    }
}
