//! `cairn identity challenge|bind|status|bundle|rotate|revoke|veto|headers`:
//! bind an X account to a Nostr key through a Cairn node, operate on the
//! binding, and export block headers for `cairn verify --headers`.
//!
//! Everything the commands do is a library function here, so tests drive the
//! same code as the binary without spawning it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bitcoin::BlockHash;
use cairn_identity::service::{BindingReceipt, BindingState, IssuedChallenge, Standing};
use cairn_identity::x::PostAuthor;
use cairn_identity_core::binding::{
    normalize_handle, proof_post_op, revoke_op, rotate_op, veto_op,
};
use cairn_identity_core::bundle::{ChainView, Checkpoint, RpcChainView};
use nostr::{Event, EventId, Keys, PublicKey};
use serde_json::json;

use super::support::bundle::{fetch_bundle, write_bundle, BundleFormat};
use super::support::keys::{load_keys, npub, KeyArgs};
use super::support::node::{status, status_label, NodeClient, NodeError, StatusView, Subject};
use super::support::output::outln;
use super::support::rpc::RpcLoginArgs;
use super::support::time::format_unix;
use super::support::REQUEST_TIMEOUT;

/// `POST /identity/v1/challenges` answer.
pub type Challenge = IssuedChallenge;

/// `POST /identity/v1/bindings` answer.
pub type Receipt = BindingReceipt;

/// `cairn identity …`
#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    #[command(subcommand)]
    command: IdentityCommand,
}

#[derive(Debug, clap::Subcommand)]
enum IdentityCommand {
    /// Step 1 of binding an X account: get the exact text to post on X.
    ///
    /// Asks the node for a challenge for your key and prints the text to post,
    /// from the X account being bound, before it expires. Then run
    /// `cairn identity bind` with the printed nonce and the post's id.
    Challenge(ChallengeArgs),
    /// Step 2: sign a `bind` event with your key and submit it to the node.
    ///
    /// Your numeric X user id is taken from the post (X's answer names its
    /// author); --x-uid, if given, must match it. The node fetches your post
    /// from X, checks its author and --handle and that it quotes your npub
    /// and the challenge, and logs
    /// the binding; it is anchored on Bitcoin when the epoch closes. Prints the
    /// node's receipt. With --recover, claims the account for a new key
    /// after losing the old one (takes effect after the node's recovery delay
    /// unless the old key vetoes).
    Bind(BindArgs),
    /// Show what a node says about a handle or key: pending, anchored (n
    /// conf), final, moved or revoked. This is the node's word; use
    /// `cairn verify` to check it yourself.
    Status(StatusArgs),
    /// Save a handle's proof bundle to a file, for `cairn verify --bundle` later.
    Bundle(BundleArgs),
    /// Move the binding to a new key. Signed by the current key (--key-file)
    /// and the new one (--new-key-file); the old key stops being valid once
    /// the node accepts it.
    Rotate(RotateArgs),
    /// End the binding: afterwards no key speaks for the X account until it
    /// is bound again with a fresh proof post. Signed by the current key.
    Revoke(OpArgs),
    /// Cancel a pending recovery of your account (someone, maybe you, posted
    /// a recovery for another key). Signed by the current key, before the
    /// recovery's effective block.
    Veto(VetoArgs),
    /// Export block headers from your Bitcoin Core node to a headers file, for
    /// `cairn verify --headers FILE` on a machine without the node.
    Headers(HeadersArgs),
    /// Print the address that funds the node's anchoring wallet (each epoch's
    /// anchor transaction pays a fee from it), with its balance and health.
    ///
    /// Read from the node's public `/identity/v1/status`: a receiving
    /// address is not a secret, and anyone may pay for anchoring.
    FundingAddress(FundingAddressArgs),
}

#[derive(Debug, clap::Args)]
struct FundingAddressArgs {
    /// The Cairn node's base URL.
    #[arg(long, value_name = "URL")]
    node: String,
}

/// The arguments shared by the operations on an existing binding.
#[derive(Debug, clap::Args)]
struct OpArgs {
    /// The Cairn node's base URL; the next `seq` and `prev` come from its record.
    #[arg(long, value_name = "URL")]
    node: String,
    /// The key now bound to the handle.
    #[command(flatten)]
    key: KeyArgs,
    /// The bound X handle (with or without @).
    #[arg(long)]
    handle: String,
}

#[derive(Debug, clap::Args)]
struct RotateArgs {
    #[command(flatten)]
    op: OpArgs,
    /// File holding the new secret key (nsec1… or 64 hex digits), mode 0600.
    #[arg(long, value_name = "FILE")]
    new_key_file: PathBuf,
}

#[derive(Debug, clap::Args)]
struct VetoArgs {
    #[command(flatten)]
    op: OpArgs,
    /// Id of the `recover` event to veto. Default: the pending recovery the
    /// node reports for the handle.
    #[arg(long, value_name = "EVENT_ID")]
    recover_id: Option<String>,
}

#[derive(Debug, clap::Args)]
struct HeadersArgs {
    /// Your Bitcoin Core node's RPC URL, e.g. http://127.0.0.1:8332
    #[arg(long, value_name = "URL")]
    rpc_url: String,
    #[command(flatten)]
    rpc_login: RpcLoginArgs,
    /// First height to export. Above 0, verify with the printed --checkpoint.
    #[arg(long, value_name = "HEIGHT", default_value_t = 0)]
    from: u32,
    /// Last height to export. Default: the node's tip.
    #[arg(long, value_name = "HEIGHT")]
    to: Option<u32>,
    /// Where to write the headers.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ChallengeArgs {
    /// The Cairn node's base URL, e.g. https://cairn.example.org
    #[arg(long, value_name = "URL")]
    node: String,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(Debug, clap::Args)]
struct BindArgs {
    /// The Cairn node's base URL (the one that issued the challenge).
    #[arg(long, value_name = "URL")]
    node: String,
    #[command(flatten)]
    key: KeyArgs,
    /// Your X handle (with or without @).
    #[arg(long)]
    handle: String,
    /// Your X account's numeric user id (it stays the same when the handle
    /// changes). Default: the post's author as X reports it; if given, it
    /// must match that author.
    #[arg(long, value_name = "N")]
    x_uid: Option<u64>,
    /// The proof post: its numeric id or its URL (https://x.com/<handle>/status/<id>).
    #[arg(long, value_name = "ID|URL")]
    post_id: String,
    /// The nonce printed by `cairn identity challenge`.
    #[arg(long, value_name = "NONCE")]
    challenge: String,
    /// Recover the account for this key (the old key was lost) instead of binding it.
    #[arg(long)]
    recover: bool,
    /// Position in the identity's operation chain. Default: 0 for a first
    /// binding, else the next one after the node's latest for this account.
    #[arg(long, value_name = "N", requires = "prev")]
    seq: Option<u64>,
    /// Id of the identity's latest operation (with --seq).
    #[arg(long, value_name = "EVENT_ID", requires = "seq")]
    prev: Option<String>,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The Cairn node's base URL.
    #[arg(long, value_name = "URL")]
    node: String,
    /// An X handle (@alice) or a key (npub1… or hex).
    subject: String,
}

#[derive(Debug, clap::Args)]
struct BundleArgs {
    /// The Cairn node's base URL.
    #[arg(long, value_name = "URL")]
    node: String,
    /// An X handle (@alice) or a key (npub1… or hex).
    subject: String,
    /// Where to write the bundle.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Write the JSON form instead of the canonical binary one.
    #[arg(long)]
    json: bool,
}

/// Runs `cairn identity …`, printing to stdout.
pub async fn run_identity(args: IdentityArgs) -> Result<()> {
    match args.command {
        IdentityCommand::Challenge(a) => {
            let keys = load_keys(a.key.key_file.as_deref())?;
            let node = NodeClient::new(&a.node)?;
            let c = request_challenge(&node, &keys.public_key()).await?;
            outln!("{}", render_challenge(&c))?;
        }
        IdentityCommand::Bind(a) => {
            let keys = load_keys(a.key.key_file.as_deref())?;
            let node = NodeClient::new(&a.node)?;
            let chain_pos = match (a.seq, a.prev) {
                (Some(seq), Some(prev)) => Some((
                    seq,
                    Some(EventId::from_hex(&prev).context("--prev is not an event id")?),
                )),
                _ => None,
            };
            let request = BindRequest {
                handle: a.handle,
                x_uid: a.x_uid,
                post_id: parse_post_id(&a.post_id)?,
                challenge: a.challenge,
                recover: a.recover,
                chain_position: chain_pos,
            };
            let receipt = bind(&node, &keys, &request).await?;
            outln!("{}", render_receipt(&receipt))?;
        }
        IdentityCommand::Status(a) => {
            let node = NodeClient::new(&a.node)?;
            let view = status(&node, &Subject::parse(&a.subject)?).await?;
            outln!("{}", render_status(&view))?;
        }
        IdentityCommand::Bundle(a) => {
            let node = NodeClient::new(&a.node)?;
            let subject = Subject::parse(&a.subject)?;
            let bundle = fetch_bundle(&node, &subject).await?;
            let format = if a.json {
                BundleFormat::Json
            } else {
                BundleFormat::Binary
            };
            let len = write_bundle(&a.out, &bundle, format)?;
            outln!(
                "saved the proof bundle for {subject} to {} ({len} bytes)",
                a.out.display()
            )?;
        }
        IdentityCommand::Rotate(a) => {
            let keys = load_keys(a.op.key.key_file.as_deref())?;
            let new_keys = load_keys(Some(&a.new_key_file)).context("--new-key-file")?;
            let node = NodeClient::new(&a.op.node)?;
            let receipt =
                chain_op(&node, &keys, &a.op.handle, &ChainOp::Rotate { new_keys }).await?;
            outln!("{}", render_receipt(&receipt))?;
        }
        IdentityCommand::Revoke(a) => {
            let keys = load_keys(a.key.key_file.as_deref())?;
            let node = NodeClient::new(&a.node)?;
            let receipt = chain_op(&node, &keys, &a.handle, &ChainOp::Revoke).await?;
            outln!("{}", render_receipt(&receipt))?;
        }
        IdentityCommand::Veto(a) => {
            let keys = load_keys(a.op.key.key_file.as_deref())?;
            let node = NodeClient::new(&a.op.node)?;
            let recover_id = a
                .recover_id
                .as_deref()
                .map(EventId::from_hex)
                .transpose()
                .context("--recover-id is not an event id")?;
            let receipt =
                chain_op(&node, &keys, &a.op.handle, &ChainOp::Veto { recover_id }).await?;
            outln!("{}", render_receipt(&receipt))?;
        }
        IdentityCommand::FundingAddress(a) => {
            let node = NodeClient::new(&a.node)?;
            let funding = funding_address(&node).await?;
            outln!("{}", render_funding(&funding))?;
        }
        IdentityCommand::Headers(a) => {
            let (user, password) = a.rpc_login.credentials()?;
            let range = HeaderRange {
                from: a.from,
                to: a.to,
            };
            let exported = export_headers(&a.rpc_url, &user, &password, range, &a.out).await?;
            outln!("{}", render_exported(&exported, &a.out))?;
        }
    }
    Ok(())
}

/// A post id, or the id at the end of a post URL (`…/status/<id>[?…]`).
pub fn parse_post_id(input: &str) -> Result<u64> {
    let input = input.trim();
    let id = match input.rsplit_once("/status/") {
        Some((_, rest)) => rest.split(['?', '#', '/']).next().unwrap_or_default(),
        None => input,
    };
    id.parse()
        .map_err(|_| anyhow!("`{input}` is not a post id or a post URL"))
}

/// Asks the node for a challenge for `key`.
pub async fn request_challenge(node: &NodeClient, key: &PublicKey) -> Result<Challenge> {
    let c: Challenge = node
        .post(
            "/identity/v1/challenges",
            &json!({ "npub": npub(key) }),
            "requesting a challenge",
        )
        .await?;
    // The text is what X will show; it must name this key, or the post proves nothing.
    ensure!(
        c.text.contains(&npub(key)) && c.text.contains(&c.nonce),
        "the node's challenge text does not quote this key and its nonce"
    );
    Ok(c)
}

/// The text the `challenge` command prints.
pub fn render_challenge(c: &Challenge) -> String {
    format!(
        "Post exactly this text on X, from the account you are binding:\n\n{}\n\n\
         nonce:   {}\nkey:     {}\nexpires: {}\n\n\
         Then run: cairn identity bind --challenge {} --handle @<handle> --post-id <post id or URL> …",
        c.text,
        c.nonce,
        c.npub,
        format_unix(c.expires_at),
        c.nonce
    )
}

/// What `bind` signs and submits.
#[derive(Debug, Clone)]
pub struct BindRequest {
    /// The X handle (with or without `@`, any case).
    pub handle: String,
    /// The X numeric user id the user expects; `None` takes the post's
    /// author. Either way it must be the post's author.
    pub x_uid: Option<u64>,
    /// The proof post's id.
    pub post_id: u64,
    /// The challenge nonce.
    pub challenge: String,
    /// `recover` instead of `bind`.
    pub recover: bool,
    /// `seq` and `prev` to use; `None` derives them from the node's record.
    pub chain_position: Option<(u64, Option<EventId>)>,
}

/// Where the next operation for `x_uid` goes, from the node's record of
/// `handle`: seq 0 for an unknown identity, else after the latest operation.
async fn next_position(
    node: &NodeClient,
    handle: &str,
    x_uid: u64,
    recover: bool,
) -> Result<(u64, Option<EventId>)> {
    let found = match status(node, &Subject::Handle(handle.to_owned())).await {
        Ok(v) => Some(v),
        Err(e)
            if e.downcast_ref::<NodeError>()
                .is_some_and(|n| n.status == 404) =>
        {
            None
        }
        Err(e) => return Err(e),
    };
    match found {
        Some(v) if v.x_uid == x_uid.to_string() => {
            if !recover && v.binding != BindingState::Revoked {
                bail!(
                    "@{handle} (x_uid {x_uid}) is already bound ({}); use --recover if you lost the key",
                    v.binding
                );
            }
            let head = EventId::from_hex(&v.head).context("the node's head is not an event id")?;
            Ok((v.seq + 1, Some(head)))
        }
        _ if recover => bail!(
            "the node has no binding of @{handle} to x_uid {x_uid} to recover; pass --seq and --prev"
        ),
        _ => Ok((0, None)),
    }
}

/// Who wrote post `post_id`, as the node reads it from X.
pub async fn post_author(node: &NodeClient, post_id: u64) -> Result<PostAuthor> {
    let author: PostAuthor = node
        .get(
            &format!("/identity/v1/posts/{post_id}/author"),
            "asking the node who wrote the proof post",
        )
        .await?;
    ensure!(
        author.post_id == post_id,
        "the node answered for post {} instead of {post_id}",
        author.post_id
    );
    Ok(author)
}

/// The X user id to sign for: the proof post's author, checked against the
/// expected `x_uid` and `handle` before anything is signed.
async fn resolve_x_uid(node: &NodeClient, handle: &str, request: &BindRequest) -> Result<u64> {
    let author = post_author(node, request.post_id).await?;
    if let Some(expected) = request.x_uid {
        ensure!(
            expected == author.x_uid,
            "--x-uid {expected} does not match the post's author: post {} is by @{} (x_uid {})",
            request.post_id,
            author.handle,
            author.x_uid
        );
    }
    ensure!(
        author.handle.eq_ignore_ascii_case(handle),
        "post {} is by @{} (x_uid {}), not @{handle}",
        request.post_id,
        author.handle,
        author.x_uid
    );
    Ok(author.x_uid)
}

/// Signs the `bind` (or `recover`) event with `keys` and submits it.
pub async fn bind(node: &NodeClient, keys: &Keys, request: &BindRequest) -> Result<Receipt> {
    let handle = normalize_handle(&request.handle).context("invalid --handle")?;
    let x_uid = resolve_x_uid(node, &handle, request).await?;
    let (seq, prev) = match &request.chain_position {
        Some(p) => *p,
        None => next_position(node, &handle, x_uid, request.recover).await?,
    };
    let event: Event = proof_post_op(
        request.recover,
        x_uid,
        seq,
        prev.as_ref(),
        &handle,
        request.post_id,
        &request.challenge,
    )
    .sign_with_keys(keys)
    .context("cannot sign the binding event")?;
    node.post(
        "/identity/v1/bindings",
        &json!({ "event": event, "post_id": request.post_id.to_string() }),
        "submitting the binding",
    )
    .await
}

/// The text the `bind` command prints.
pub fn render_receipt(r: &Receipt) -> String {
    format!(
        "{}: {} of x_uid {} (seq {})\nevent:     {}\nepoch:     {} (anchored on Bitcoin when it closes)\nlog index: {}",
        r.status, r.op, r.x_uid, r.seq, r.event_id, r.epoch, r.log_index
    )
}

/// The anchoring wallet's funding details, from the node's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Funding {
    /// Where to send bitcoin.
    pub address: String,
    /// Wallet balance, satoshis.
    pub balance_sat: u64,
    /// Anchoring health (`ok`, `waiting_for_funds`, …).
    pub health: String,
    /// Why, when not `ok`.
    pub message: Option<String>,
}

/// Reads the anchoring wallet's funding address from `/identity/v1/status`.
pub async fn funding_address(node: &NodeClient) -> Result<Funding> {
    let status: serde_json::Value = node
        .get("/identity/v1/status", "reading the node's identity status")
        .await?;
    let anchoring = &status["anchoring"];
    let address = anchoring["funding_address"].as_str().ok_or_else(|| {
        anyhow!(
            "the node has no funding address yet (its anchoring wallet has not reached \
             its Bitcoin node: {}); try again later",
            anchoring["message"].as_str().unwrap_or("no reason given")
        )
    })?;
    Ok(Funding {
        address: address.to_owned(),
        balance_sat: anchoring["balance_sat"].as_u64().unwrap_or(0),
        health: anchoring["health"].as_str().unwrap_or("unknown").to_owned(),
        message: anchoring["message"].as_str().map(str::to_owned),
    })
}

/// The text `cairn identity funding-address` prints: the address first, alone
/// on its line, so `| head -1` gives just the address.
pub fn render_funding(f: &Funding) -> String {
    let mut out = format!(
        "{}
balance: {} sat
health:  {}",
        f.address, f.balance_sat, f.health
    );
    if let Some(m) = &f.message {
        out.push_str(&format!(" ({m})"));
    }
    out
}

/// An operation on an existing binding, signed by its current key.
#[derive(Debug, Clone)]
pub enum ChainOp {
    /// Move the binding to `new_keys` (which co-sign the rotation).
    Rotate {
        /// The key rotated to.
        new_keys: Keys,
    },
    /// End the binding.
    Revoke,
    /// Cancel a pending recovery: `recover_id`, or by default the one the
    /// node reports.
    Veto {
        /// The `recover` event to veto.
        recover_id: Option<EventId>,
    },
}

/// Signs `op` for `handle`'s identity with `keys` (its current key) and
/// submits it. `x_uid`, `seq` and `prev` come from the node's record of the
/// handle; the node re-checks them all, so a wrong record only gets the
/// operation refused, never misapplied.
pub async fn chain_op(
    node: &NodeClient,
    keys: &Keys,
    handle: &str,
    op: &ChainOp,
) -> Result<Receipt> {
    let handle = normalize_handle(handle).context("invalid --handle")?;
    let v = status(node, &Subject::Handle(handle.clone())).await?;
    let bound = v.npub.as_deref().ok_or_else(|| {
        anyhow!(
            "@{handle} (x_uid {}) is revoked: bind it again instead",
            v.x_uid
        )
    })?;
    let current = keys.public_key();
    ensure!(
        bound == npub(&current),
        "@{handle} is bound to {bound}, not to the key in --key-file ({})",
        npub(&current)
    );
    let x_uid: u64 = v
        .x_uid
        .parse()
        .context("the node's x_uid is not a number")?;
    let prev = EventId::from_hex(&v.head).context("the node's head is not an event id")?;
    let seq = v.seq + 1;
    let builder = match op {
        ChainOp::Rotate { new_keys } => {
            ensure!(
                new_keys.public_key() != current,
                "the new key is the current key"
            );
            rotate_op(&current, new_keys, x_uid, seq, &prev)
        }
        ChainOp::Revoke => revoke_op(x_uid, seq, &prev),
        ChainOp::Veto { recover_id } => {
            let target = match recover_id {
                Some(id) => *id,
                // A pending recovery is the identity's latest operation.
                None if v.binding == BindingState::RecoveryPending => prev,
                None => bail!("@{handle} has no pending recovery to veto"),
            };
            veto_op(x_uid, seq, &prev, &target)
        }
    };
    let event: Event = builder
        .sign_with_keys(keys)
        .context("cannot sign the operation")?;
    node.post(
        "/identity/v1/bindings",
        &json!({ "event": event }),
        "submitting the operation",
    )
    .await
}

/// Which heights `cairn identity headers` exports.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderRange {
    /// First height (0: genesis).
    pub from: u32,
    /// Last height; `None` is the tip when the export starts.
    pub to: Option<u32>,
}

/// What [`export_headers`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportedHeaders {
    /// The first header's block: the `--checkpoint` to verify with when it is not genesis.
    pub first: Checkpoint,
    /// Height of the last header written.
    pub last_height: u32,
    /// The node's network (`getblockchaininfo`), for the `--network` hint;
    /// `None` when it was not asked.
    pub network: Option<bitcoin::Network>,
}

/// Writes the headers `range` of the Bitcoin Core node at `url` to `out` as a
/// headers file: 80-byte consensus-encoded headers, concatenated, in height
/// order (the format [`cairn_identity_core::bundle::HeaderChain::load`] reads).
///
/// Linkage is checked while exporting, so a reorg during the export is an
/// error rather than a file that fails later. The file is written whole
/// (through a temporary file) or not at all.
pub async fn export_headers(
    url: &str,
    user: &str,
    password: &str,
    range: HeaderRange,
    out: &Path,
) -> Result<ExportedHeaders> {
    let view = RpcChainView::new(url, user, password, REQUEST_TIMEOUT)
        .context("cannot set up the Bitcoin Core RPC client")?;
    let cfg = cairn_bitcoin::RpcConfig::new(url, user, password).with_timeout(REQUEST_TIMEOUT);
    let rpc =
        cairn_bitcoin::RpcClient::new(&cfg).context("cannot set up the Bitcoin Core RPC client")?;
    let out = out.to_owned();
    tokio::task::spawn_blocking(move || {
        let network =
            super::verify::rpc_network(&rpc).context("asking the Bitcoin node for its network")?;
        let mut exported = export_headers_blocking(&view, range, &out)?;
        exported.network = Some(network);
        Ok(exported)
    })
    .await
    .context("the export task failed")?
}

fn export_headers_blocking(
    view: &impl ChainView,
    range: HeaderRange,
    out: &Path,
) -> Result<ExportedHeaders> {
    let tip = view.tip_height().context("asking the node for its tip")?;
    let last = range.to.unwrap_or(tip);
    ensure!(
        range.from <= last && last <= tip,
        "cannot export heights {}..={last}: the node's tip is {tip}",
        range.from
    );
    let mut bytes = Vec::with_capacity((last - range.from + 1) as usize * 80);
    let mut first = None;
    let mut prev_hash: Option<BlockHash> = None;
    for height in range.from..=last {
        let header = view
            .header_at(height)
            .with_context(|| format!("fetching the header at height {height}"))?
            .ok_or_else(|| {
                anyhow!("the node's chain got shorter than {height} during the export")
            })?;
        if let Some(prev) = prev_hash {
            ensure!(
                header.prev_blockhash == prev,
                "the node's chain changed at height {height} during the export (reorg); run it again"
            );
        }
        let hash = header.block_hash();
        first.get_or_insert(Checkpoint { height, hash });
        prev_hash = Some(hash);
        bytes.extend_from_slice(&bitcoin::consensus::serialize(&header));
    }
    let tmp = out.with_extension("partial");
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(ExportedHeaders {
        first: first.expect("the range is not empty"),
        last_height: last,
        network: None,
    })
}

/// The text `cairn identity headers` prints.
pub fn render_exported(e: &ExportedHeaders, out: &Path) -> String {
    let count = e.last_height - e.first.height + 1;
    let mut text = format!(
        "wrote {count} headers (heights {}..={}) to {}\nverify with: cairn verify … --headers {}",
        e.first.height,
        e.last_height,
        out.display(),
        out.display()
    );
    // From genesis, verify tells the network by the first header; from a
    // checkpoint it cannot, so the hint says it.
    if e.first.height > 0 {
        text.push_str(&format!(
            " --checkpoint {}:{}",
            e.first.height, e.first.hash
        ));
        if let Some(network) = e.network {
            text.push_str(&format!(" --network {network}"));
        }
    }
    text
}

/// The text the `status` command prints.
pub fn render_status(v: &StatusView) -> String {
    let mut out = format!(
        "status:  {}\nhandle:  @{}\nx_uid:   {}\nkey:     {}\nbinding: {}\nseq:     {} (head {})\nepoch:   {}",
        status_label(v),
        v.handle,
        v.x_uid,
        v.npub.as_deref().unwrap_or("none"),
        v.binding,
        v.seq,
        v.head,
        v.epoch,
    );
    out.push_str(&format!(
        "\nrecord:  {}",
        match v.reflects {
            Standing::Anchored => "anchored (in a block, not final yet)",
            Standing::Final => "final",
            // Pending: the latest operation (a bind, a rotation, a revocation…).
            _ => "pending (the latest operation is not anchored in a block yet)",
        }
    ));
    if let Some(txid) = &v.anchor_txid {
        out.push_str(&format!("\nanchor:  {txid}"));
    }
    if let Some(h) = v.recovery_effective_height {
        out.push_str(&format!("\nrecovery takes effect at block {h}"));
    }
    out.push_str(if v.bundle.is_some() {
        "\n(the node's word; run `cairn verify` to check the proof yourself)"
    } else {
        "\n(no proof bundle yet: the epoch is not anchored in a block)"
    });
    out
}

#[cfg(test)]
mod tests {
    use bitcoin::Network;

    use super::*;

    #[test]
    fn post_ids_from_ids_and_urls() {
        assert_eq!(parse_post_id("1234").unwrap(), 1234);
        assert_eq!(
            parse_post_id("https://x.com/alice/status/1790000000000000000?s=20").unwrap(),
            1_790_000_000_000_000_000
        );
        assert_eq!(
            parse_post_id("https://twitter.com/alice/status/42/photo/1").unwrap(),
            42
        );
        assert!(parse_post_id("https://x.com/alice").is_err());
        assert!(parse_post_id("-5").is_err());
    }

    /// A chain view over headers in memory.
    struct Headers(Vec<bitcoin::block::Header>);

    impl ChainView for Headers {
        fn header_at(
            &self,
            height: u32,
        ) -> Result<Option<bitcoin::block::Header>, cairn_identity_core::bundle::ChainViewError>
        {
            Ok(self.0.get(height as usize).copied())
        }

        fn height_of(
            &self,
            hash: &BlockHash,
        ) -> Result<Option<u32>, cairn_identity_core::bundle::ChainViewError> {
            Ok(self
                .0
                .iter()
                .position(|h| h.block_hash() == *hash)
                .map(|p| p as u32))
        }

        fn tip_height(&self) -> Result<u32, cairn_identity_core::bundle::ChainViewError> {
            Ok(self.0.len() as u32 - 1)
        }
    }

    fn linked_headers(n: u32) -> Vec<bitcoin::block::Header> {
        let mut headers = vec![bitcoin::constants::genesis_block(Network::Regtest).header];
        for i in 1..n {
            let mut h = headers[i as usize - 1];
            h.prev_blockhash = h.block_hash();
            h.nonce = i;
            headers.push(h);
        }
        headers
    }

    #[test]
    fn headers_export_writes_linked_80_byte_headers() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("headers.bin");
        let chain = Headers(linked_headers(4));
        let all = export_headers_blocking(&chain, HeaderRange::default(), &out).unwrap();
        assert_eq!(all.first.height, 0);
        assert_eq!(all.last_height, 3);
        let bytes = std::fs::read(&out).unwrap();
        let expected: Vec<u8> = chain
            .0
            .iter()
            .flat_map(bitcoin::consensus::serialize)
            .collect();
        assert_eq!(bytes, expected);
        assert_eq!(bytes.len(), 4 * 80);
        assert!(!render_exported(&all, &out).contains("--checkpoint"));

        let range = HeaderRange {
            from: 1,
            to: Some(2),
        };
        let part = export_headers_blocking(&chain, range, &out).unwrap();
        assert_eq!(part.first.hash, chain.0[1].block_hash());
        assert_eq!(std::fs::read(&out).unwrap(), expected[80..240]);
        let text = render_exported(&part, &out);
        assert!(
            text.contains(&format!("--checkpoint 1:{}", chain.0[1].block_hash())),
            "{text}"
        );

        let beyond = HeaderRange {
            from: 0,
            to: Some(4),
        };
        assert!(export_headers_blocking(&chain, beyond, &out).is_err());
    }

    #[test]
    fn headers_export_refuses_a_chain_that_changes_midway() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("headers.bin");
        let mut headers = linked_headers(3);
        headers[2].prev_blockhash = headers[0].block_hash();
        let err = export_headers_blocking(&Headers(headers), HeaderRange::default(), &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("height 2") && err.contains("reorg"), "{err}");
        assert!(!out.exists(), "nothing written");
    }

    #[derive(clap::Parser)]
    struct IdentityWrap {
        #[command(flatten)]
        identity: IdentityArgs,
    }

    #[test]
    fn operation_commands_parse() {
        use clap::{CommandFactory, Parser};
        IdentityWrap::command().debug_assert();
        let parse = |args: &[&str]| {
            IdentityWrap::try_parse_from(std::iter::once("identity").chain(args.iter().copied()))
                .map(|w| w.identity.command)
        };
        let common = ["--node", "http://n", "--key-file", "cur", "--handle", "@h"];
        let rotate = [&["rotate"][..], &common, &["--new-key-file", "new"]].concat();
        assert!(matches!(
            parse(&rotate).unwrap(),
            IdentityCommand::Rotate(RotateArgs { new_key_file, .. }) if new_key_file == Path::new("new")
        ));
        assert!(
            parse(&[&["rotate"][..], &common].concat()).is_err(),
            "needs the new key"
        );
        assert!(matches!(
            parse(&[&["revoke"][..], &common].concat()).unwrap(),
            IdentityCommand::Revoke(_)
        ));
        let veto = [&["veto"][..], &common, &["--recover-id", "ab"]].concat();
        assert!(matches!(
            parse(&veto).unwrap(),
            IdentityCommand::Veto(VetoArgs { recover_id: Some(id), .. }) if id == "ab"
        ));
        let headers = [
            "headers",
            "--rpc-url",
            "http://r",
            "--rpc-cookie-file",
            "c",
            "--out",
            "o",
            "--from",
            "5",
        ];
        assert!(matches!(
            parse(&headers).unwrap(),
            IdentityCommand::Headers(HeadersArgs {
                from: 5,
                to: None,
                ..
            })
        ));
        assert!(
            parse(&["headers", "--rpc-url", "http://r"]).is_err(),
            "needs --out"
        );
    }
}
