//! `/@{handle}`: where a handle stands on this node, its history, its
//! anchor, the node's own check against its Bitcoin node, the bundle to
//! download and the `cairn verify` command that checks it without trusting
//! this node. An unknown handle gets the absence answer: the state tree is
//! keyed by the X user id, so absence is proven for an id (`?x_uid=`), which
//! the page asks for.
//!
//! `/@{handle}/bundle`: the proof bundle in its canonical binary encoding
//! (what `cairn identity bundle --out` writes and `cairn verify --bundle`
//! reads).

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bitcoin::Network;
use cairn_identity::binding::normalize_handle;
use cairn_identity::service::{HistoryEntry, IdentityView, ServiceError, Standing};
use serde::Deserialize;

use super::check::{self, NodeCheck};
use super::{error_page, html, Frame, Identity, Web};
use crate::cli::support::time::format_unix;

/// The handle from the path, normalized (`Alice` → `alice`); `None` when
/// it is not one.
fn parse_handle(raw: &str) -> Option<String> {
    // The route already took the `@`; `/@@alice` is not a handle.
    if raw.starts_with('@') {
        return None;
    }
    normalize_handle(raw).ok()
}

fn not_a_handle(web: &Web) -> Response {
    error_page(
        web,
        StatusCode::BAD_REQUEST,
        "Not an X handle",
        "An X handle is 1 to 15 letters, digits or underscores.",
    )
}

fn no_witness(web: &Web) -> Response {
    error_page(
        web,
        StatusCode::NOT_FOUND,
        "No identity witness here",
        "This node does not run the identity witness, so it records no handles.",
    )
}

fn internal(web: &Web, e: &ServiceError) -> Response {
    tracing::error!(error = %e, "web: identity lookup failed");
    error_page(
        web,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The node could not answer; its log says why.",
    )
}

/// One row of the history table.
struct HistoryRow {
    op: &'static str,
    date: String,
    seq: u64,
    detail: String,
    signer: String,
    epoch: u64,
    anchoring: String,
}

impl HistoryRow {
    fn of(e: &HistoryEntry) -> Self {
        let detail = match e.op {
            "bind" | "recover" => format!(
                "proof post {} by @{}{}",
                e.post_id.as_deref().unwrap_or("?"),
                e.handle.as_deref().unwrap_or("?"),
                if e.attested {
                    ", attested by this witness"
                } else {
                    ""
                }
            ),
            "rotate" => format!("to {}", e.new_key.as_deref().unwrap_or("?")),
            "veto" => format!("vetoes recovery {}", e.vetoes.as_deref().unwrap_or("?")),
            _ => String::new(),
        };
        let anchoring = match (e.anchoring, e.block_height) {
            (Standing::Pending, _) => "pending (not in a block yet)".to_owned(),
            (s, Some(h)) => format!("{s}, block {h}"),
            (s, None) => s.to_string(),
        };
        Self {
            op: e.op,
            date: format_unix(e.created_at),
            seq: e.seq,
            detail,
            signer: e.signer.clone(),
            epoch: e.epoch,
            anchoring,
        }
    }
}

/// The anchor of the epoch holding the latest operation.
struct AnchorInfo {
    state: String,
    txid: Option<String>,
    block_height: Option<u32>,
    block_hash: Option<String>,
    confirmations: u32,
}

/// The `cairn verify` commands for this handle.
struct Commands {
    bundle_file: String,
    offline: String,
    online: String,
}

#[derive(Template)]
#[template(path = "handle.html")]
struct HandlePage {
    frame: Frame,
    handle: String,
    status: &'static str,
    status_text: String,
    x_uid: String,
    npub: Option<String>,
    pubkey: Option<String>,
    binding: &'static str,
    moved_to: Option<String>,
    recovery_effective_height: Option<u32>,
    epoch: u64,
    anchor: Option<AnchorInfo>,
    history: Vec<HistoryRow>,
    check: Option<NodeCheck>,
    bundle_size: Option<usize>,
    commands: Commands,
    witness: String,
    confirmations: u32,
}

#[derive(Template)]
#[template(path = "absent.html")]
struct AbsentPage {
    frame: Frame,
    handle: String,
    x_uid: Option<String>,
    outcome: Absence,
}

/// The answer for an unknown handle, by what was asked.
enum Absence {
    /// No X user id given yet: the page asks for one.
    AskForId,
    /// The id has a record on this node (under another handle).
    Known,
    /// No epoch is anchored in a block yet: nothing can be proven.
    NothingAnchored,
    /// The absence bundle and the node's check of it.
    Proven {
        // Boxed: a verified check is far larger than the other answers.
        check: Box<NodeCheck>,
        json_url: String,
        /// The `cairn verify --absent` command that checks it yourself.
        command: String,
    },
    /// The id is not a decimal, non-zero X user id.
    BadId,
}

#[derive(Deserialize)]
pub(super) struct HandleQuery {
    x_uid: Option<String>,
}

/// `GET /@{handle}[?x_uid=N]`.
pub(super) async fn page(
    State(web): State<Arc<Web>>,
    Path(raw): Path<String>,
    Query(query): Query<HandleQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(handle) = parse_handle(&raw) else {
        return not_a_handle(&web);
    };
    let Some(identity) = &web.identity else {
        return no_witness(&web);
    };
    match identity.service.lookup_handle(&handle).await {
        Ok(view) => found(&web, identity, handle, view, &headers).await,
        Err(ServiceError::NotFound(_)) => {
            absent(&web, identity, handle, query.x_uid, &headers).await
        }
        Err(e) => internal(&web, &e),
    }
}

async fn found(
    web: &Web,
    identity: &Identity,
    handle: String,
    view: IdentityView,
    headers: &HeaderMap,
) -> Response {
    let service = &identity.service;
    let history = match view.x_uid.parse::<u64>() {
        Ok(x_uid) => service.history(x_uid).await,
        Err(_) => Vec::new(),
    };
    let anchor = match service.epoch(view.epoch).await {
        Ok(epoch) => epoch.anchor.map(|a| AnchorInfo {
            state: a.state.to_owned(),
            txid: a.txid,
            block_height: a.block_height,
            block_hash: a.block_hash,
            confirmations: a.confirmations,
        }),
        // The latest operation's epoch is still open: no anchor yet.
        Err(ServiceError::NotFound(_)) => None,
        Err(e) => return internal(web, &e),
    };
    let bundle_size = view
        .bundle
        .as_ref()
        .and_then(|b| b.to_bytes().ok())
        .map(|b| b.len());
    let status_text = status_text(&view, identity.confirmations);
    let check = match view.bundle {
        Some(bundle) => Some(check::identity_bundle(identity, bundle).await),
        None => None,
    };
    let network = service.config().network;
    let commands = commands(
        &handle,
        &web.base_url(headers),
        network,
        identity.confirmations,
        &witness_npub(identity),
    );
    let page = HandlePage {
        frame: Frame::of(web),
        status: view.status.as_str(),
        status_text,
        x_uid: view.x_uid,
        npub: view.npub,
        pubkey: view.pubkey,
        binding: view.binding.as_str(),
        moved_to: view.moved_to,
        recovery_effective_height: view.recovery_effective_height,
        epoch: view.epoch,
        anchor,
        history: history.iter().map(HistoryRow::of).collect(),
        check,
        bundle_size,
        commands,
        witness: witness_npub(identity),
        confirmations: identity.confirmations,
        handle,
    };
    html(StatusCode::OK, page.render())
}

fn witness_npub(identity: &Identity) -> String {
    nostr::nips::nip19::ToBech32::to_bech32(&identity.service.witness_public_key())
        .unwrap_or_default()
}

/// The status line, in words.
fn status_text(view: &IdentityView, final_after: u32) -> String {
    let n = view.confirmations;
    let plural = if n == 1 { "" } else { "s" };
    match view.status {
        Standing::Pending => "Pending: accepted by this node, not yet anchored in a Bitcoin \
                              block. Until it is, this is the node's word only."
            .to_owned(),
        Standing::Anchored => format!(
            "Anchored: in a Bitcoin block, {n} confirmation{plural} (final at {final_after})."
        ),
        Standing::Final => format!("Final: anchored in a Bitcoin block, {n} confirmation{plural}."),
        Standing::Moved => format!(
            "Moved: @{} now belongs to another X account (user id {}). The key below is \
             the former account's.",
            view.handle,
            view.moved_to.as_deref().unwrap_or("?")
        ),
        Standing::Revoked => "Revoked: the key owner withdrew this binding.".to_owned(),
    }
}

/// Bitcoin Core's default RPC port and cookie file for `network`.
fn rpc_defaults(network: Network) -> (u16, &'static str) {
    match network {
        Network::Testnet => (18332, "~/.bitcoin/testnet3/.cookie"),
        Network::Testnet4 => (48332, "~/.bitcoin/testnet4/.cookie"),
        Network::Signet => (38332, "~/.bitcoin/signet/.cookie"),
        Network::Regtest => (18443, "~/.bitcoin/regtest/.cookie"),
        _ => (8332, "~/.bitcoin/.cookie"),
    }
}

/// The chain view and policy flags of the `cairn verify` commands.
fn verify_flags(network: Network, confirmations: u32, witness: &str) -> (String, String) {
    let (port, cookie) = rpc_defaults(network);
    (
        format!("--rpc-url http://127.0.0.1:{port} --rpc-cookie-file {cookie}"),
        format!("--min-confirmations {confirmations} --witness {witness}"),
    )
}

/// `cairn verify --absent`: the absence of `x_uid`, checked by the reader.
fn absent_command(
    x_uid: u64,
    base_url: &str,
    network: Network,
    confirmations: u32,
    witness: &str,
) -> String {
    let (chain, policy) = verify_flags(network, confirmations, witness);
    format!("cairn verify --absent {x_uid} --node {base_url} {chain} {policy}")
}

fn commands(
    handle: &str,
    base_url: &str,
    network: Network,
    confirmations: u32,
    witness: &str,
) -> Commands {
    let (chain, policy) = verify_flags(network, confirmations, witness);
    let bundle_file = format!("{handle}.cairn-bundle");
    Commands {
        offline: format!("cairn verify --bundle {bundle_file} {chain} {policy}"),
        online: format!("cairn verify @{handle} --node {base_url} {chain} {policy}"),
        bundle_file,
    }
}

async fn absent(
    web: &Web,
    identity: &Identity,
    handle: String,
    x_uid: Option<String>,
    headers: &HeaderMap,
) -> Response {
    let x_uid = x_uid.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let outcome = match x_uid.as_deref().map(str::parse::<u64>) {
        None => Absence::AskForId,
        Some(Err(_)) | Some(Ok(0)) => Absence::BadId,
        Some(Ok(id)) => match identity.service.absence(id).await {
            Ok(bundle) => Absence::Proven {
                check: Box::new(check::absence_bundle(identity, bundle).await),
                json_url: format!("/identity/v1/absence/{id}"),
                command: absent_command(
                    id,
                    &web.base_url(headers),
                    identity.service.config().network,
                    identity.confirmations,
                    &witness_npub(identity),
                ),
            },
            Err(ServiceError::Known(_)) => Absence::Known,
            Err(ServiceError::NotFound(_)) => Absence::NothingAnchored,
            Err(ServiceError::BadRequest(_)) => Absence::BadId,
            Err(e) => return internal(web, &e),
        },
    };
    let status = match outcome {
        Absence::BadId => StatusCode::BAD_REQUEST,
        _ => StatusCode::NOT_FOUND,
    };
    let page = AbsentPage {
        frame: Frame::of(web),
        handle,
        x_uid,
        outcome,
    };
    html(status, page.render())
}

/// `GET /@{handle}/bundle`: the proof bundle, binary, as a download.
pub(super) async fn bundle(State(web): State<Arc<Web>>, Path(raw): Path<String>) -> Response {
    let Some(handle) = parse_handle(&raw) else {
        return not_a_handle(&web);
    };
    let Some(identity) = &web.identity else {
        return no_witness(&web);
    };
    let view = match identity.service.lookup_handle(&handle).await {
        Ok(view) => view,
        Err(ServiceError::NotFound(_)) => {
            return error_page(
                &web,
                StatusCode::NOT_FOUND,
                "No binding",
                "This node has no binding for this handle, so there is no bundle.",
            )
        }
        Err(e) => return internal(&web, &e),
    };
    let Some(bytes) = view.bundle.and_then(|b| match b.to_bytes() {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::error!(error = %e, "web: cannot encode a bundle");
            None
        }
    }) else {
        return error_page(
            &web,
            StatusCode::NOT_FOUND,
            "No bundle yet",
            "The binding's epoch is not anchored in a Bitcoin block yet; the bundle exists \
             once it is.",
        );
    };
    let disposition = format!("attachment; filename=\"{handle}.cairn-bundle\"");
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        bytes,
    )
        .into_response();
    // A normalized handle is [a-z0-9_]: always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verify_commands_name_the_bundle_the_chain_and_this_witness() {
        let c = commands(
            "alice",
            "https://relay.example",
            Network::Bitcoin,
            6,
            "npub1w",
        );
        assert_eq!(
            c.offline,
            "cairn verify --bundle alice.cairn-bundle --rpc-url http://127.0.0.1:8332 \
             --rpc-cookie-file ~/.bitcoin/.cookie --min-confirmations 6 --witness npub1w"
        );
        assert_eq!(
            c.online,
            "cairn verify @alice --node https://relay.example --rpc-url http://127.0.0.1:8332 \
             --rpc-cookie-file ~/.bitcoin/.cookie --min-confirmations 6 --witness npub1w"
        );
        let regtest = commands(
            "bob",
            "http://127.0.0.1:7777",
            Network::Regtest,
            3,
            "npub1w",
        );
        assert!(regtest.offline.contains(
            "--rpc-url http://127.0.0.1:18443 --rpc-cookie-file ~/.bitcoin/regtest/.cookie"
        ));
    }
}
