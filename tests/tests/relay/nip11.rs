//! NIP-11 relay information document.

use cairn_e2e::serde_json::Value;
use cairn_e2e::*;

cairn_e2e::backend_tests!(relay_information_document, cors_preflight);

async fn relay_information_document(backend: Backend) -> anyhow::Result<()> {
    let operator = nostr::Keys::generate().public_key().to_hex();
    let op = operator.clone();
    let node = TestNode::start_with(&backend, move |s| {
        s.relay.name = "e2e relay".into();
        s.relay.description = "testing".into();
        s.relay.contact = Some("mailto:ops@example.com".into());
        s.relay.pubkey = Some(op);
        let l = &mut s.relay.limits;
        // Unusual values, so defaults or hard-coded numbers cannot pass.
        l.max_message_length = 123_457;
        l.max_event_length = 65_431;
        l.max_event_tags = 777;
        l.max_deletion_targets = 97;
        l.max_content_length = 54_321;
        l.max_subscriptions = 21;
        l.max_filters = 13;
        l.max_limit = 333;
        l.max_subid_length = 44;
        l.created_at_upper_limit = 901;
        l.created_at_lower_limit = Some(86_401);
    })
    .await?;

    let http = reqwest::Client::new();
    let resp = within(
        "NIP-11 GET",
        http.get(node.http_url())
            .header("Accept", "application/nostr+json")
            .send(),
    )
    .await??;
    assert!(resp.status().is_success(), "status {}", resp.status());
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/nostr+json")
            || content_type.starts_with("application/json"),
        "content-type {content_type:?}"
    );
    let cors = resp
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(cors, "*", "NIP-11 requires Access-Control-Allow-Origin: *");
    for name in [
        "access-control-allow-headers",
        "access-control-allow-methods",
    ] {
        assert!(
            resp.headers().contains_key(name),
            "NIP-11 requires {name} on the document"
        );
    }
    let doc: Value = within("NIP-11 body", resp.json()).await??;

    assert_eq!(doc["name"], "e2e relay", "{doc}");
    assert_eq!(doc["description"], "testing", "{doc}");
    assert_eq!(doc["contact"], "mailto:ops@example.com", "{doc}");
    assert_eq!(doc["pubkey"], Value::String(operator), "{doc}");
    assert!(doc["software"].is_string(), "software: {doc}");
    assert!(doc["version"].is_string(), "version: {doc}");
    let nips: Vec<u64> = doc["supported_nips"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    for nip in [1, 9, 11, 40, 42, 45, 70] {
        assert!(nips.contains(&nip), "supported_nips {nips:?} lacks {nip}");
    }
    // Only what is implemented (and exercised by this suite) may be claimed:
    // e.g. no NIP-50 search or NIP-13 PoW. NIP-77 is `relay::negentropy`.
    let exercised = [1, 4, 9, 11, 17, 40, 42, 44, 45, 59, 70, 77];
    for nip in &nips {
        assert!(
            exercised.contains(nip),
            "supported_nips claims NIP-{nip}, which this relay does not implement"
        );
    }

    let lim = &doc["limitation"];
    for (key, value) in [
        ("max_message_length", 123_457u64),
        ("max_subscriptions", 21),
        ("max_limit", 333),
        ("max_subid_length", 44),
        ("max_event_tags", 777),
        ("max_content_length", 54_321),
        ("created_at_upper_limit", 901),
        ("created_at_lower_limit", 86_401),
    ] {
        assert_eq!(lim[key].as_u64(), Some(value), "limitation.{key} in {lim}");
    }
    // Limits without a standard NIP-11 key must still be advertised somewhere.
    let text = lim.to_string();
    assert_eq!(
        lim["max_deletion_targets"].as_u64(),
        Some(97),
        "limitation.max_deletion_targets in {lim}"
    );
    for (what, value) in [("max_filters", "13"), ("max_event_length", "65431")] {
        assert!(
            text.contains(value),
            "limitation does not advertise {what} = {value}: {lim}"
        );
    }
    // NIP-42 is supported but not required for everything.
    assert_ne!(lim["auth_required"], Value::Bool(true), "{lim}");

    // The WebSocket works on the same port.
    node.connect().await?;
    node.finish().await
}

/// NIP-11: "Relays MUST accept CORS requests by sending
/// Access-Control-Allow-Origin, Access-Control-Allow-Headers, and
/// Access-Control-Allow-Methods headers" - the last two belong to the answer
/// to a browser's preflight.
async fn cors_preflight(backend: Backend) -> anyhow::Result<()> {
    let node = TestNode::start(&backend).await?;
    let http = reqwest::Client::new();
    // NIP-11: relays MUST accept CORS requests (browser clients send a
    // preflight because of the Accept header).
    let preflight = within(
        "CORS preflight",
        http.request(reqwest::Method::OPTIONS, node.http_url())
            .header("Origin", "https://client.example")
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "accept")
            .send(),
    )
    .await??;
    let header = |name: &str| {
        preflight
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert!(
        preflight.status().is_success(),
        "preflight status {}",
        preflight.status()
    );
    let origin = header("access-control-allow-origin");
    assert!(
        origin == "*" || origin == "https://client.example",
        "preflight Access-Control-Allow-Origin: {origin:?}"
    );
    let methods = header("access-control-allow-methods");
    assert!(
        methods == "*" || methods.contains("get"),
        "preflight Access-Control-Allow-Methods: {methods:?}"
    );
    let headers = header("access-control-allow-headers");
    assert!(
        headers == "*" || headers.contains("accept"),
        "preflight Access-Control-Allow-Headers: {headers:?}"
    );

    node.finish().await
}
