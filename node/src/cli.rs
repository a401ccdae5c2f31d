//! The identity commands of the `cairn` binary: `cairn identity
//! challenge|bind|status|bundle|rotate|revoke|veto|headers` and `cairn verify`.
//!
//! Everything the commands do is a library function here, so tests drive the
//! same code as the binary without spawning it. Verification never trusts the
//! node: `cairn verify` only uses the node to *fetch* a proof bundle, then
//! checks it with [`cairn_identity::bundle::verify`] against the user's own
//! chain view (a Bitcoin Core RPC or a headers file).
//!
//! The user's secret key is read from a file (refused when others can read
//! it) or from `CAIRN_NSEC`; it is never printed, logged, or quoted in errors.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bitcoin::{BlockHash, Network};
use cairn_bitcoin::private_file;
use cairn_identity::binding::{normalize_handle, proof_post_op, revoke_op, rotate_op, veto_op};
use cairn_identity::bundle::{
    verify, ChainView, Checkpoint, HeaderChain, ProofBundle, RpcChainView, VerifiedIdentity,
    VerifyPolicy, BUNDLE_MAGIC, DEFAULT_MIN_CONFIRMATIONS, MAX_BUNDLE_LEN,
};
use cairn_identity::service::{
    BindingReceipt, BindingState, IdentityView, IssuedChallenge, Standing,
};
use nostr::nips::nip19::{FromBech32, ToBech32};
use nostr::{Event, EventId, Keys, PublicKey, SecretKey};
use serde_json::{json, Value};

/// Environment variable holding the user's secret key when no key file is given.
pub const NSEC_ENV: &str = "CAIRN_NSEC";

/// Bound on each HTTP request to the node and each Bitcoin Core RPC call.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Command-line arguments (parsed by the binary, run here).

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
    /// The node fetches your post from X, checks that its author is --x-uid
    /// and --handle and that it quotes your npub and the challenge, and logs
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
    /// RPC user (with --rpc-password-file).
    #[arg(long, value_name = "USER", requires = "rpc_password_file")]
    rpc_user: Option<String>,
    /// File holding the RPC password (with --rpc-user).
    #[arg(long, value_name = "FILE", requires = "rpc_user")]
    rpc_password_file: Option<PathBuf>,
    /// Bitcoin Core's .cookie file, instead of --rpc-user and --rpc-password-file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["rpc_user", "rpc_password_file"])]
    rpc_cookie_file: Option<PathBuf>,
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

/// Where the user's secret key comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// File holding your secret key (nsec1… or 64 hex digits), mode 0600.
    /// Without it, the key is read from the CAIRN_NSEC environment variable.
    #[arg(long, visible_alias = "nsec-file", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
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
    /// Your X account's numeric user id (it stays the same when the handle changes).
    #[arg(long, value_name = "N")]
    x_uid: u64,
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

/// `cairn verify`: check a proof bundle yourself.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["subject", "bundle"])))]
#[command(group(clap::ArgGroup::new("chain").required(true).args(["rpc_url", "headers"])))]
pub struct VerifyArgs {
    /// A handle (@alice) or key (npub1…) whose bundle is fetched from --node.
    #[arg(requires = "node")]
    subject: Option<String>,
    /// The Cairn node to fetch the bundle from. It is not trusted: the bundle
    /// is checked here against your own chain view.
    #[arg(long, value_name = "URL")]
    node: Option<String>,
    /// Verify a saved bundle file (binary or JSON) instead of asking a node.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["subject", "node"])]
    bundle: Option<PathBuf>,
    /// Your Bitcoin Core node's RPC URL, e.g. http://127.0.0.1:8332
    #[arg(long, value_name = "URL")]
    rpc_url: Option<String>,
    /// RPC user (with --rpc-password-file).
    #[arg(long, value_name = "USER", requires = "rpc_password_file")]
    rpc_user: Option<String>,
    /// File holding the RPC password (with --rpc-user).
    #[arg(long, value_name = "FILE", requires = "rpc_user")]
    rpc_password_file: Option<PathBuf>,
    /// Bitcoin Core's .cookie file, instead of --rpc-user and --rpc-password-file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["rpc_user", "rpc_password_file"])]
    rpc_cookie_file: Option<PathBuf>,
    /// A headers file: 80-byte block headers, concatenated, from the genesis
    /// block (or from --checkpoint). Checked for linkage and proof of work.
    #[arg(long, value_name = "FILE", conflicts_with = "rpc_url")]
    headers: Option<PathBuf>,
    /// The headers file starts at this trusted block instead of genesis.
    #[arg(long, value_name = "HEIGHT:HASH", requires = "headers")]
    checkpoint: Option<String>,
    /// The Bitcoin network: bitcoin, testnet, testnet4, signet or regtest.
    #[arg(long, default_value = "bitcoin")]
    network: String,
    /// Confirmations the anchor needs in your chain.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_CONFIRMATIONS)]
    min_confirmations: u32,
    /// Accept only attestations from this witness key (hex or npub; repeat for
    /// several). Without it any witness is accepted and its key is printed.
    #[arg(long = "witness", value_name = "PUBKEY")]
    witnesses: Vec<String>,
}

/// Runs `cairn identity …`, printing to stdout.
pub async fn run_identity(args: IdentityArgs) -> Result<()> {
    match args.command {
        IdentityCommand::Challenge(a) => {
            let keys = load_keys(a.key.key_file.as_deref())?;
            let node = NodeClient::new(&a.node)?;
            let c = request_challenge(&node, &keys.public_key()).await?;
            println!("{}", render_challenge(&c));
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
            println!("{}", render_receipt(&receipt));
        }
        IdentityCommand::Status(a) => {
            let node = NodeClient::new(&a.node)?;
            let view = status(&node, &Subject::parse(&a.subject)?).await?;
            println!("{}", render_status(&view));
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
            println!(
                "saved the proof bundle for {subject} to {} ({len} bytes)",
                a.out.display()
            );
        }
        IdentityCommand::Rotate(a) => {
            let keys = load_keys(a.op.key.key_file.as_deref())?;
            let new_keys = load_keys(Some(&a.new_key_file)).context("--new-key-file")?;
            let node = NodeClient::new(&a.op.node)?;
            let receipt =
                chain_op(&node, &keys, &a.op.handle, &ChainOp::Rotate { new_keys }).await?;
            println!("{}", render_receipt(&receipt));
        }
        IdentityCommand::Revoke(a) => {
            let keys = load_keys(a.key.key_file.as_deref())?;
            let node = NodeClient::new(&a.node)?;
            let receipt = chain_op(&node, &keys, &a.handle, &ChainOp::Revoke).await?;
            println!("{}", render_receipt(&receipt));
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
            println!("{}", render_receipt(&receipt));
        }
        IdentityCommand::Headers(a) => {
            let (user, password) =
                rpc_credentials(&a.rpc_user, &a.rpc_password_file, &a.rpc_cookie_file)?;
            let range = HeaderRange {
                from: a.from,
                to: a.to,
            };
            let exported = export_headers(&a.rpc_url, &user, &password, range, &a.out).await?;
            println!("{}", render_exported(&exported, &a.out));
        }
    }
    Ok(())
}

/// Runs `cairn verify …`, printing what was verified; fails on any broken link.
pub async fn run_verify(args: VerifyArgs) -> Result<()> {
    let options = VerifyOptions::from_args(&args)?;
    let (verified, node_view) = match (&args.bundle, &args.subject, &args.node) {
        (Some(path), _, _) => {
            let bundle = read_bundle(path)?;
            (verify_bundle_async(bundle, options.clone()).await?, None)
        }
        (None, Some(subject), Some(node)) => {
            let node = NodeClient::new(node)?;
            let (v, view) = verify_subject(&node, &Subject::parse(subject)?, &options).await?;
            (v, Some(view))
        }
        _ => bail!("give a handle and --node, or --bundle FILE"),
    };
    println!("{}", render_verified(&verified, options.min_confirmations));
    if let Some(view) = node_view {
        if matches!(view.status, Standing::Moved | Standing::Revoked) {
            // The proof cannot show a later move; the node's word is worth passing on.
            println!("The node reports: {}", status_label(&view));
        }
    }
    Ok(())
}

/// Ends a CLI command: on error, prints it (with its causes) to stderr and
/// exits with 1 when a bundle did not verify, 2 for any other failure.
pub fn exit_with(result: Result<()>) -> anyhow::Result<()> {
    let Err(e) = result else {
        return Ok(());
    };
    if is_verification_failure(&e) {
        eprintln!("NOT VERIFIED: {}", render_error(&e));
        std::process::exit(1);
    }
    eprintln!("error: {}", render_error(&e));
    std::process::exit(2);
}

/// `e` with its causes, `: `-separated, skipping causes that the message
/// before already quotes (many library errors print their source too).
pub fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Whether `e` says the bundle is bad (as opposed to "could not check it").
pub fn is_verification_failure(e: &anyhow::Error) -> bool {
    use cairn_identity::bundle::{BundleError, DecodeError};
    e.chain().any(|c| {
        (c.is::<BundleError>() && !matches!(c.downcast_ref(), Some(BundleError::ChainView(_))))
            || c.is::<DecodeError>()
            || c.is::<SubjectMismatch>()
            || c.is::<MalformedBundle>()
    })
}

/// A bundle that verifies but is about another handle or key than asked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SubjectMismatch(String);

// ---------------------------------------------------------------------------
// Keys.

/// Loads the user's secret key from `key_file`, or from `CAIRN_NSEC` when no
/// file is given. The file must not be readable by group or others.
pub fn load_keys(key_file: Option<&Path>) -> Result<Keys> {
    let text = match key_file {
        Some(path) => private_file::read_secret(path)
            .map_err(|e| anyhow!("key file {e}"))?
            .ok_or_else(|| anyhow!("key file {} does not exist", path.display()))?,
        None => std::env::var(NSEC_ENV)
            .map_err(|_| anyhow!("no secret key: pass --key-file FILE or set {NSEC_ENV}"))?,
    };
    parse_secret_key(&text)
}

/// Parses `nsec1…` or 64 hex digits. Errors never quote the input.
pub fn parse_secret_key(text: &str) -> Result<Keys> {
    let text = text.trim();
    let secret = if text.starts_with("nsec1") {
        SecretKey::from_bech32(text).ok()
    } else {
        SecretKey::from_hex(text).ok()
    };
    secret
        .map(Keys::new)
        .ok_or_else(|| anyhow!("the secret key is not an nsec1… or 64-hex-digit key"))
}

fn parse_public_key(s: &str) -> Result<PublicKey> {
    PublicKey::from_bech32(s)
        .or_else(|_| PublicKey::from_hex(s))
        .map_err(|_| anyhow!("`{s}` is not an npub or a 64-hex-digit public key"))
}

/// `npub1…` of `key` (hex if encoding fails).
pub fn npub(key: &PublicKey) -> String {
    key.to_bech32().unwrap_or_else(|_| key.to_hex())
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

// ---------------------------------------------------------------------------
// Talking to a node.

/// An HTTP client for one node's identity API.
#[derive(Debug, Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    base: String,
}

/// What the node answers for a handle or key (`GET /identity/v1/handles|keys/…`).
/// The bundle stays raw JSON so that a malformed one is reported as such
/// (see [`MalformedBundle`]) rather than failing the whole lookup.
pub type StatusView = IdentityView<Value>;

/// `POST /identity/v1/challenges` answer.
pub type Challenge = IssuedChallenge;

/// `POST /identity/v1/bindings` answer.
pub type Receipt = BindingReceipt;

/// What a lookup is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An X handle, normalized (lowercase, no `@`).
    Handle(String),
    /// A Nostr key.
    Key(PublicKey),
}

impl Subject {
    /// `npub1…` or 64 hex digits is a key; anything else must be a handle.
    pub fn parse(input: &str) -> Result<Self> {
        let input = input.trim();
        if input.starts_with("npub1") || (input.len() == 64 && !input.starts_with('@')) {
            return Ok(Self::Key(parse_public_key(input)?));
        }
        normalize_handle(input)
            .map(Self::Handle)
            .map_err(|e| anyhow!("`{input}` is neither a key nor an X handle: {e}"))
    }

    fn path(&self) -> String {
        match self {
            Self::Handle(h) => format!("/identity/v1/handles/{h}"),
            Self::Key(k) => format!("/identity/v1/keys/{}", k.to_hex()),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Handle(h) => write!(f, "@{h}"),
            Self::Key(k) => f.write_str(&npub(k)),
        }
    }
}

/// A non-success answer from the node, with its error code.
#[derive(Debug, thiserror::Error)]
#[error("the node answered {status} {code}: {message}")]
pub struct NodeError {
    /// HTTP status.
    pub status: u16,
    /// The API's error code (`not_found`, `refused`, …).
    pub code: String,
    /// Its message.
    pub message: String,
}

impl NodeClient {
    /// A client for the node at `base` (`http(s)://host[:port]`); no request yet.
    pub fn new(base: &str) -> Result<Self> {
        let url = url::Url::parse(base).with_context(|| format!("invalid node URL `{base}`"))?;
        ensure!(
            matches!(url.scheme(), "http" | "https"),
            "the node URL must be http:// or https://"
        );
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T> {
        let resp = request
            .send()
            .await
            .with_context(|| format!("{what}: cannot reach the node at {}", self.base))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{what}: reading the node's answer"))?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(NodeError {
                status: status.as_u16(),
                code: v["error"].as_str().unwrap_or("unknown").to_owned(),
                message: v["message"].as_str().unwrap_or_default().to_owned(),
            })
            .context(what.to_owned());
        }
        serde_json::from_slice(&body).with_context(|| format!("{what}: unexpected answer"))
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
        self.call(self.http.get(format!("{}{path}", self.base)), what)
            .await
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        what: &str,
    ) -> Result<T> {
        self.call(
            self.http.post(format!("{}{path}", self.base)).json(body),
            what,
        )
        .await
    }
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
         nonce:   {}\nkey:     {}\nexpires: {} (unix seconds)\n\n\
         Then run: cairn identity bind --challenge {} --handle @<handle> --x-uid <id> --post-id <post id or URL> …",
        c.text, c.nonce, c.npub, c.expires_at, c.nonce
    )
}

/// What `bind` signs and submits.
#[derive(Debug, Clone)]
pub struct BindRequest {
    /// The X handle (with or without `@`, any case).
    pub handle: String,
    /// The X numeric user id.
    pub x_uid: u64,
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

/// Signs the `bind` (or `recover`) event with `keys` and submits it.
pub async fn bind(node: &NodeClient, keys: &Keys, request: &BindRequest) -> Result<Receipt> {
    let handle = normalize_handle(&request.handle).context("invalid --handle")?;
    let (seq, prev) = match &request.chain_position {
        Some(p) => *p,
        None => next_position(node, &handle, request.x_uid, request.recover).await?,
    };
    let event: Event = proof_post_op(
        request.recover,
        request.x_uid,
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
}

/// Writes the headers `range` of the Bitcoin Core node at `url` to `out` as a
/// headers file: 80-byte consensus-encoded headers, concatenated, in height
/// order (the format [`HeaderChain::load`] reads).
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
    let out = out.to_owned();
    tokio::task::spawn_blocking(move || export_headers_blocking(&view, range, &out))
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
    if e.first.height > 0 {
        text.push_str(&format!(
            " --checkpoint {}:{}",
            e.first.height, e.first.hash
        ));
    }
    text
}

/// The node's record for a handle or key.
pub async fn status(node: &NodeClient, subject: &Subject) -> Result<StatusView> {
    node.get(&subject.path(), &format!("looking up {subject}"))
        .await
}

/// `pending`, `anchored (n conf)`, `final`, `moved (to x_uid …)` or `revoked`.
pub fn status_label(v: &StatusView) -> String {
    match v.status {
        Standing::Anchored => format!("anchored ({} conf)", v.confirmations),
        Standing::Final => format!("final ({} conf)", v.confirmations),
        Standing::Moved => match &v.moved_to {
            Some(to) => format!("moved (the handle now belongs to x_uid {to})"),
            None => "moved".into(),
        },
        Standing::Revoked if v.binding == BindingState::Rotated => {
            "revoked (this key was rotated away)".into()
        }
        other => other.as_str().to_owned(),
    }
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

/// Fetches the proof bundle for `subject`; fails when there is none yet.
pub async fn fetch_bundle(node: &NodeClient, subject: &Subject) -> Result<ProofBundle> {
    Ok(fetch_bundle_with_status(node, subject).await?.1)
}

async fn fetch_bundle_with_status(
    node: &NodeClient,
    subject: &Subject,
) -> Result<(StatusView, ProofBundle)> {
    let mut v = status(node, subject).await?;
    let bundle = v.bundle.take().ok_or_else(|| {
        anyhow!(
            "the node has no proof bundle for {subject} yet (status {}): its epoch is not anchored in a block",
            v.status
        )
    })?;
    let bundle = serde_json::from_value(bundle)
        .map_err(|e| MalformedBundle(format!("the node's bundle is not a valid bundle: {e}")))?;
    Ok((v, bundle))
}

// ---------------------------------------------------------------------------
// Bundle files.

/// How a bundle file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleFormat {
    /// The canonical binary encoding (protocol §11.2).
    Binary,
    /// The JSON form.
    Json,
}

/// Writes `bundle` to `path`; returns the number of bytes written.
pub fn write_bundle(path: &Path, bundle: &ProofBundle, format: BundleFormat) -> Result<usize> {
    let bytes = match format {
        BundleFormat::Binary => bundle.to_bytes().context("cannot encode the bundle")?,
        BundleFormat::Json => {
            let mut b = serde_json::to_vec_pretty(bundle).context("cannot encode the bundle")?;
            b.push(b'\n');
            b
        }
    };
    std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(bytes.len())
}

/// Reads a bundle file, binary (starts with the `CRNP` magic) or JSON.
pub fn read_bundle(path: &Path) -> Result<ProofBundle> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    // JSON is about twice the binary size; anything far beyond is not a bundle.
    ensure!(
        meta.len() <= 4 * MAX_BUNDLE_LEN as u64,
        "{} is too large to be a bundle",
        path.display()
    );
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_bundle(&bytes).with_context(|| format!("{} is not a valid bundle", path.display()))
}

/// Bytes that are not a bundle in either format.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedBundle(String);

/// Decodes bundle bytes, binary or JSON (detected by the magic).
pub fn parse_bundle(bytes: &[u8]) -> Result<ProofBundle> {
    if bytes.starts_with(BUNDLE_MAGIC) {
        return Ok(ProofBundle::from_bytes(bytes)?);
    }
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(bytes)
            .map_err(|e| MalformedBundle(format!("JSON bundle: {e}")).into()),
        _ => {
            Err(MalformedBundle("neither a binary bundle (CRNP…) nor a JSON bundle".into()).into())
        }
    }
}

// ---------------------------------------------------------------------------
// Verification.

/// The verifier's chain view.
#[derive(Clone)]
pub enum ChainSource {
    /// The user's Bitcoin Core node.
    Rpc {
        /// `http://host:port`.
        url: String,
        /// RPC user.
        user: String,
        /// RPC password.
        password: String,
    },
    /// A headers file (80-byte headers from genesis or `checkpoint`).
    HeadersFile {
        /// The file.
        path: PathBuf,
        /// Trusted first block, when the file does not start at genesis.
        checkpoint: Option<Checkpoint>,
    },
}

impl std::fmt::Debug for ChainSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The password stays out of debug output.
            Self::Rpc { url, .. } => f
                .debug_struct("Rpc")
                .field("url", url)
                .finish_non_exhaustive(),
            Self::HeadersFile { path, checkpoint } => f
                .debug_struct("HeadersFile")
                .field("path", path)
                .field("checkpoint", checkpoint)
                .finish(),
        }
    }
}

/// Everything verification needs besides the bundle.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The chain view.
    pub chain: ChainSource,
    /// The network whose rules the anchor block follows.
    pub network: Network,
    /// Confirmations required in the chain view.
    pub min_confirmations: u32,
    /// Accepted witness keys; empty accepts any (and reports it).
    pub trusted_witnesses: Vec<PublicKey>,
}

impl VerifyOptions {
    fn from_args(a: &VerifyArgs) -> Result<Self> {
        let network = Network::from_str(&a.network).map_err(|_| {
            anyhow!(
                "unknown network `{}`: bitcoin, testnet, testnet4, signet or regtest",
                a.network
            )
        })?;
        let chain = match (&a.rpc_url, &a.headers) {
            (Some(url), None) => {
                let (user, password) =
                    rpc_credentials(&a.rpc_user, &a.rpc_password_file, &a.rpc_cookie_file)?;
                ChainSource::Rpc {
                    url: url.clone(),
                    user,
                    password,
                }
            }
            (None, Some(path)) => ChainSource::HeadersFile {
                path: path.clone(),
                checkpoint: a.checkpoint.as_deref().map(parse_checkpoint).transpose()?,
            },
            _ => bail!("give one chain view: --rpc-url … or --headers FILE"),
        };
        let trusted_witnesses = a
            .witnesses
            .iter()
            .map(|w| parse_public_key(w).context("--witness"))
            .collect::<Result<_>>()?;
        Ok(Self {
            chain,
            network,
            min_confirmations: a.min_confirmations,
            trusted_witnesses,
        })
    }
}

/// RPC user and password from `--rpc-user` with `--rpc-password-file`, or
/// from a `.cookie` file.
pub fn rpc_credentials(
    user: &Option<String>,
    password_file: &Option<PathBuf>,
    cookie_file: &Option<PathBuf>,
) -> Result<(String, String)> {
    Ok(match (user, password_file, cookie_file) {
        (Some(user), Some(file), None) => (user.clone(), read_secret_file(file)?),
        (None, None, Some(cookie)) => {
            let text = read_secret_file(cookie)?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| anyhow!("{} is not a cookie file", cookie.display()))?;
            (u.to_owned(), p.to_owned())
        }
        _ => bail!("--rpc-url needs --rpc-user with --rpc-password-file, or --rpc-cookie-file"),
    })
}

fn read_secret_file(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// Parses `HEIGHT:HASH`.
pub fn parse_checkpoint(s: &str) -> Result<Checkpoint> {
    let (height, hash) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("--checkpoint must be HEIGHT:HASH"))?;
    Ok(Checkpoint {
        height: height.parse().context("--checkpoint height")?,
        hash: BlockHash::from_str(hash).context("--checkpoint hash")?,
    })
}

/// Verifies `bundle` against the chain view in `options`. Blocks (RPC calls,
/// file reads): in async code use [`verify_bundle_async`].
///
/// The error is the failing link ([`cairn_identity::bundle::BundleError`],
/// reachable with `downcast_ref`) or why the chain view could not be set up.
pub fn verify_bundle(bundle: &ProofBundle, options: &VerifyOptions) -> Result<VerifiedIdentity> {
    let policy = VerifyPolicy {
        network: options.network,
        min_confirmations: options.min_confirmations,
        trusted_witnesses: options.trusted_witnesses.clone(),
    };
    let verified = match &options.chain {
        ChainSource::Rpc {
            url,
            user,
            password,
        } => {
            let view = RpcChainView::new(url, user, password, REQUEST_TIMEOUT)
                .context("cannot set up the Bitcoin Core RPC client")?;
            verify(bundle, &view, &policy)?
        }
        ChainSource::HeadersFile { path, checkpoint } => {
            let view = HeaderChain::load(path, options.network, *checkpoint)
                .with_context(|| format!("headers file {} refused", path.display()))?;
            verify(bundle, &view, &policy)?
        }
    };
    Ok(verified)
}

/// [`verify_bundle`] on a blocking thread.
pub async fn verify_bundle_async(
    bundle: ProofBundle,
    options: VerifyOptions,
) -> Result<VerifiedIdentity> {
    tokio::task::spawn_blocking(move || verify_bundle(&bundle, &options))
        .await
        .context("the verification task failed")?
}

/// Fetches `subject`'s bundle from `node` and verifies it, checking that it is
/// about what was asked (the node could answer with another identity's bundle).
///
/// Also returns the node's own answer, whose status (moved, revoked) a bundle
/// cannot prove either way.
pub async fn verify_subject(
    node: &NodeClient,
    subject: &Subject,
    options: &VerifyOptions,
) -> Result<(VerifiedIdentity, StatusView)> {
    let (view, bundle) = fetch_bundle_with_status(node, subject).await?;
    let verified = verify_bundle_async(bundle, options.clone()).await?;
    let mismatch = match subject {
        Subject::Handle(h) => (&verified.handle != h).then(|| {
            format!(
                "the bundle verifies, but for @{} (x_uid {}), not @{h}",
                verified.handle, verified.x_uid
            )
        }),
        Subject::Key(k) => (verified.key.as_ref() != Some(k)).then(|| {
            format!(
                "the bundle verifies, but binds @{} to {}, not {}",
                verified.handle,
                verified.key.map_or_else(|| "no key".into(), |k| npub(&k)),
                npub(k)
            )
        }),
    };
    if let Some(m) = mismatch {
        return Err(SubjectMismatch(m).into());
    }
    Ok((verified, view))
}

/// The text `cairn verify` prints on success.
pub fn render_verified(v: &VerifiedIdentity, min_confirmations: u32) -> String {
    use cairn_identity::binding::Status;
    let status = match &v.status {
        Status::Bound => "bound".to_owned(),
        Status::RecoveryPending(p) => format!(
            "bound, recovery pending to {} (recover event {}, effective at block {})",
            npub(&p.new_key),
            p.recover_id,
            p.effective_height
        ),
        Status::Revoked => "revoked".to_owned(),
    };
    let witnesses = v.witnesses.iter().map(npub).collect::<Vec<_>>().join(", ");
    format!(
        "VERIFIED @{handle}\n\
         x_uid:         {x_uid}\n\
         key:           {key}\n\
         status:        {status}\n\
         seq:           {seq} (head {head})\n\
         witnesses:     {witnesses}\n\
         epoch:         {epoch} (header hash {header_hash})\n\
         anchor txid:   {txid}\n\
         block:         {height} ({block})\n\
         confirmations: {conf} (required {min_confirmations})\n\
         Not covered by the proof: whether the handle has since moved to another X account, \
         and whether a newer epoch exists.",
        handle = v.handle,
        x_uid = v.x_uid,
        key = v
            .key
            .as_ref()
            .map_or_else(|| "none (revoked)".to_owned(), npub),
        seq = v.seq,
        head = v.head,
        epoch = v.epoch.epoch,
        header_hash = hex_lower(&v.header_hash),
        txid = v.anchor_txid,
        height = v.block_height,
        block = v.block_hash,
        conf = v.confirmations,
    )
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn subjects() {
        let keys = Keys::generate();
        let pk = keys.public_key();
        assert_eq!(Subject::parse(&npub(&pk)).unwrap(), Subject::Key(pk));
        assert_eq!(Subject::parse(&pk.to_hex()).unwrap(), Subject::Key(pk));
        assert_eq!(
            Subject::parse("@Alice_1").unwrap(),
            Subject::Handle("alice_1".into())
        );
        assert!(Subject::parse("@not a handle").is_err());
    }

    #[test]
    fn secret_keys_parse_and_errors_do_not_echo_them() {
        let keys = Keys::generate();
        let hex = keys.secret_key().to_secret_hex();
        let nsec = keys.secret_key().to_bech32().unwrap();
        assert_eq!(
            parse_secret_key(&format!("{hex}\n")).unwrap().public_key(),
            keys.public_key()
        );
        assert_eq!(
            parse_secret_key(&nsec).unwrap().public_key(),
            keys.public_key()
        );
        let bad = format!("{}zz", &hex[..62]);
        let err = parse_secret_key(&bad).unwrap_err().to_string();
        assert!(!err.contains(&hex[..62]), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nsec");
        let keys = Keys::generate();
        std::fs::write(&path, keys.secret_key().to_secret_hex()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_keys(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("readable by others"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            load_keys(Some(&path)).unwrap().public_key(),
            keys.public_key()
        );
    }

    #[test]
    fn bundle_bytes_of_neither_format_are_refused() {
        assert!(parse_bundle(b"hello").is_err());
        assert!(parse_bundle(b"CRNP\x01").is_err());
        assert!(parse_bundle(b"  {\"version\": 1}").is_err());
    }

    #[test]
    fn checkpoints() {
        let c = parse_checkpoint(
            "100:000000000000000000000000000000000000000000000000000000000000abcd",
        )
        .unwrap();
        assert_eq!(c.height, 100);
        assert!(parse_checkpoint("100").is_err());
        assert!(parse_checkpoint("x:00").is_err());
    }

    /// A chain view over headers in memory.
    struct Headers(Vec<bitcoin::block::Header>);

    impl ChainView for Headers {
        fn header_at(
            &self,
            height: u32,
        ) -> Result<Option<bitcoin::block::Header>, cairn_identity::bundle::ChainViewError>
        {
            Ok(self.0.get(height as usize).copied())
        }

        fn height_of(
            &self,
            hash: &BlockHash,
        ) -> Result<Option<u32>, cairn_identity::bundle::ChainViewError> {
            Ok(self
                .0
                .iter()
                .position(|h| h.block_hash() == *hash)
                .map(|p| p as u32))
        }

        fn tip_height(&self) -> Result<u32, cairn_identity::bundle::ChainViewError> {
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

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        verify: VerifyArgs,
    }

    fn verify_args(args: &[&str]) -> Result<VerifyArgs, clap::Error> {
        use clap::Parser;
        Wrap::try_parse_from(std::iter::once("verify").chain(args.iter().copied()))
            .map(|w| w.verify)
    }

    #[test]
    fn verify_flags_become_options() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let witness = Keys::generate().public_key();
        let a = verify_args(&[
            "@alice",
            "--node",
            "http://127.0.0.1:1",
            "--rpc-url",
            "http://127.0.0.1:18443",
            "--rpc-user",
            "u",
            "--rpc-password-file",
            pw.to_str().unwrap(),
            "--network",
            "regtest",
            "--min-confirmations",
            "2",
            "--witness",
            &npub(&witness),
        ])
        .unwrap();
        let o = VerifyOptions::from_args(&a).unwrap();
        assert_eq!(o.network, Network::Regtest);
        assert_eq!(o.min_confirmations, 2);
        assert_eq!(o.trusted_witnesses, vec![witness]);
        match &o.chain {
            ChainSource::Rpc { user, password, .. } => {
                assert_eq!((user.as_str(), password.as_str()), ("u", "s3cret"));
            }
            other => panic!("{other:?}"),
        }
        // The password never shows in debug output.
        assert!(!format!("{o:?}").contains("s3cret"));

        let a = verify_args(&["--bundle", "b", "--headers", "h"]).unwrap();
        let o = VerifyOptions::from_args(&a).unwrap();
        assert_eq!(o.network, Network::Bitcoin);
        assert_eq!(o.min_confirmations, DEFAULT_MIN_CONFIRMATIONS);
        assert!(matches!(
            o.chain,
            ChainSource::HeadersFile {
                checkpoint: None,
                ..
            }
        ));

        // One source of the bundle and one chain view, no more, no less.
        assert!(verify_args(&["--bundle", "b"]).is_err());
        assert!(
            verify_args(&["@alice", "--headers", "h"]).is_err(),
            "needs --node"
        );
        assert!(verify_args(&["--bundle", "b", "--headers", "h", "--rpc-url", "u"]).is_err());
        assert!(verify_args(&["--bundle", "b", "--rpc-url", "u", "--rpc-user", "x"]).is_err());
        let a = verify_args(&["--bundle", "b", "--headers", "h", "--network", "mars"]).unwrap();
        assert!(VerifyOptions::from_args(&a).is_err());
    }
}
