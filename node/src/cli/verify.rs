//! `cairn verify`: check a handle's proof bundle yourself. The node is only
//! used to *fetch* the bundle, which is then checked with
//! [`cairn_identity_core::bundle::verify`] against the user's own chain view (a
//! Bitcoin Core RPC or a headers file).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bitcoin::{BlockHash, Network};
use cairn_identity::service::Standing;
use cairn_identity_core::bundle::{
    verify, verify_absence, AbsenceBundle, BundleError, ChainView, Checkpoint, HeaderChain,
    ProofBundle, RpcChainView, VerifiedAbsence, VerifiedIdentity, VerifyPolicy,
    DEFAULT_MIN_CONFIRMATIONS,
};
use nostr::PublicKey;

use super::support::bundle::{fetch_bundle_with_status, read_bundle, MalformedBundle};
use super::support::keys::{npub, parse_public_key};
use super::support::node::{status_label, NodeClient, StatusView, Subject};
use super::support::output::outln;
use super::support::rpc::RpcLoginArgs;
use super::support::REQUEST_TIMEOUT;

/// `cairn verify`: check a proof bundle yourself.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("source")
        .required(true)
        .args(["subject", "bundle", "absent", "absence_bundle"])
))]
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
    /// Check that this X user id (the numeric id, not the handle) has no
    /// binding: the absence bundle is fetched from --node and checked here.
    #[arg(long, value_name = "X_USER_ID", requires = "node")]
    absent: Option<u64>,
    /// Verify a saved absence bundle (JSON, from /identity/v1/absence/ID).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["subject", "node"])]
    absence_bundle: Option<PathBuf>,
    /// Your Bitcoin Core node's RPC URL, e.g. http://127.0.0.1:8332
    #[arg(long, value_name = "URL")]
    rpc_url: Option<String>,
    #[command(flatten)]
    rpc_login: RpcLoginArgs,
    /// A headers file: 80-byte block headers, concatenated, from the genesis
    /// block (or from --checkpoint). Checked for linkage and proof of work.
    #[arg(long, value_name = "FILE", conflicts_with = "rpc_url")]
    headers: Option<PathBuf>,
    /// The headers file starts at this trusted block instead of genesis.
    #[arg(long, value_name = "HEIGHT:HASH", requires = "headers")]
    checkpoint: Option<String>,
    /// The Bitcoin network: bitcoin, testnet, testnet4, signet or regtest.
    /// Default: the one your chain view is on (the RPC node's
    /// genesis block, or the headers file's first header); given, it
    /// must agree with it. A headers file from --checkpoint cannot name its
    /// network: there the default is bitcoin.
    #[arg(long)]
    network: Option<String>,
    /// Confirmations the anchor needs in your chain.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_CONFIRMATIONS)]
    min_confirmations: u32,
    /// Accept only attestations from this witness key (hex or npub; repeat for
    /// several). Without it any witness is accepted and its key is printed.
    #[arg(long = "witness", value_name = "PUBKEY")]
    witnesses: Vec<String>,
}

/// Runs `cairn verify …`, printing what was verified; fails on any broken link.
pub async fn run_verify(args: VerifyArgs) -> Result<()> {
    let mut options = VerifyOptions::from_args(&args)?;
    if args.network.is_none() {
        options.network = chain_network_async(options.chain.clone()).await?;
    }
    if let Some(path) = &args.absence_bundle {
        let bundle = read_absence_bundle(path)?;
        let verified = verify_absence_async(bundle, options.clone()).await?;
        outln!("{}", render_absent(&verified, options.min_confirmations))?;
        return Ok(());
    }
    if let (Some(x_uid), Some(node)) = (args.absent, &args.node) {
        let node = NodeClient::new(node)?;
        let verified = verify_absent(&node, x_uid, &options).await?;
        outln!("{}", render_absent(&verified, options.min_confirmations))?;
        return Ok(());
    }
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
    outln!("{}", render_verified(&verified, options.min_confirmations))?;
    if let Some(view) = node_view {
        if matches!(view.status, Standing::Moved | Standing::Revoked) {
            // The proof cannot show a later move; the node's word is worth passing on.
            outln!("The node reports: {}", status_label(&view))?;
        }
    }
    Ok(())
}

/// Whether `e` says the bundle is bad (as opposed to "could not check it").
pub fn is_verification_failure(e: &anyhow::Error) -> bool {
    use cairn_identity_core::bundle::{BundleError, DecodeError};
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
    /// The network whose rules the anchor block follows. It must be the
    /// chain view's (checked, see [`chain_network`]); `cairn verify` without
    /// `--network` takes the chain view's.
    pub network: Network,
    /// Confirmations required in the chain view.
    pub min_confirmations: u32,
    /// Accepted witness keys; empty accepts any (and reports it).
    pub trusted_witnesses: Vec<PublicKey>,
}

impl VerifyOptions {
    fn from_args(a: &VerifyArgs) -> Result<Self> {
        // Without --network, run_verify asks the chain view.
        let network = match a.network.as_deref() {
            Some(n) => Network::from_str(n).map_err(|_| {
                anyhow!("unknown network `{n}`: bitcoin, testnet, testnet4, signet or regtest")
            })?,
            None => Network::Bitcoin,
        };
        let chain = match (&a.rpc_url, &a.headers) {
            (Some(url), None) => {
                let (user, password) = a.rpc_login.credentials()?;
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
/// The error is the failing link ([`cairn_identity_core::bundle::BundleError`],
/// reachable with `downcast_ref`) or why the chain view could not be set up.
pub fn verify_bundle(bundle: &ProofBundle, options: &VerifyOptions) -> Result<VerifiedIdentity> {
    with_chain_view(options, |view, policy| verify(bundle, view, policy))
}

/// Verifies an absence bundle like [`verify_bundle`] a proof bundle. Blocks.
pub fn verify_absence_bundle(
    bundle: &AbsenceBundle,
    options: &VerifyOptions,
) -> Result<VerifiedAbsence> {
    with_chain_view(options, |view, policy| verify_absence(bundle, view, policy))
}

/// Runs `check` against the chain view and policy `options` describe.
fn with_chain_view<T>(
    options: &VerifyOptions,
    check: impl FnOnce(&dyn ChainView, &VerifyPolicy) -> Result<T, BundleError>,
) -> Result<T> {
    let network = chain_network(&options.chain, Some(options.network))?;
    let policy = VerifyPolicy {
        network,
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
            check(&view, &policy)?
        }
        ChainSource::HeadersFile { path, checkpoint } => {
            let view = HeaderChain::load(path, network, *checkpoint)
                .with_context(|| format!("headers file {} refused", path.display()))?;
            check(&view, &policy)?
        }
    };
    Ok(verified)
}

/// A chain view on another network than `--network` says. Not a verdict on
/// the bundle: it was not checked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetworkMismatch(String);

/// The network to verify on: the chain view's own, checked against `given`
/// (`--network`). The RPC node names it by its genesis block (`getblockhash 0`); a headers
/// file from genesis names it by its first header. A headers file from a
/// checkpoint cannot, so `given` (default bitcoin) is taken, checked only
/// against the network's proof-of-work limit. Blocks (RPC, file read).
pub fn chain_network(chain: &ChainSource, given: Option<Network>) -> Result<Network> {
    let (found, from) = match chain {
        ChainSource::Rpc {
            url,
            user,
            password,
        } => {
            let cfg = cairn_bitcoin::RpcConfig::new(url.as_str(), user.as_str(), password.as_str())
                .with_timeout(REQUEST_TIMEOUT);
            let rpc = cairn_bitcoin::RpcClient::new(&cfg)
                .context("cannot set up the Bitcoin Core RPC client")?;
            let network = rpc_network(&rpc)
                .with_context(|| format!("asking the Bitcoin node at {url} for its network"))?;
            (network, format!("the Bitcoin node at {url}"))
        }
        ChainSource::HeadersFile { path, checkpoint } => {
            let first = first_header(path)?;
            match checkpoint {
                None => {
                    let hash = first.block_hash();
                    let network = network_of_genesis(&hash).ok_or_else(|| {
                        anyhow!(
                            "headers file {} refused: it does not start at a genesis block (its \
                                 first header is {hash}); if it starts later, pass \
                                 --checkpoint HEIGHT:HASH (printed by `cairn identity headers`)",
                            path.display()
                        )
                    })?;
                    (network, format!("the headers file {}", path.display()))
                }
                Some(_) => {
                    let network = given.unwrap_or(Network::Bitcoin);
                    let limit = bitcoin::params::Params::new(network).max_attainable_target;
                    if first.target() > limit {
                        return Err(NetworkMismatch(format!(
                            "the headers file {} has less proof of work than {network} allows: \
                             it is from another network; pass --network (the one \
                             `cairn identity headers` printed)",
                            path.display()
                        ))
                        .into());
                    }
                    return Ok(network);
                }
            }
        }
    };
    match given {
        Some(n) if n != found => Err(NetworkMismatch(format!(
            "--network {n} does not match {from}, which is on {found}; drop --network or \
             use a {n} chain view"
        ))
        .into()),
        _ => Ok(found),
    }
}

/// [`chain_network`] without `--network`, on a blocking thread.
pub async fn chain_network_async(chain: ChainSource) -> Result<Network> {
    tokio::task::spawn_blocking(move || chain_network(&chain, None))
        .await
        .context("the network lookup failed")?
}

/// Every network a chain view may be on, for genesis detection.
const NETWORKS: [Network; 5] = [
    Network::Bitcoin,
    Network::Testnet,
    Network::Testnet4,
    Network::Signet,
    Network::Regtest,
];

/// The network whose genesis block is `hash`.
fn network_of_genesis(hash: &BlockHash) -> Option<Network> {
    NETWORKS
        .into_iter()
        .find(|n| bitcoin::constants::genesis_block(*n).block_hash() == *hash)
}

/// The network a Bitcoin Core node is on, by its genesis block (every Core
/// version answers `getblockhash 0` alike).
pub fn rpc_network(rpc: &cairn_bitcoin::RpcClient) -> Result<Network> {
    let genesis = rpc
        .block_hash(0)?
        .ok_or_else(|| anyhow!("the node has no block at height 0"))?;
    network_of_genesis(&genesis)
        .ok_or_else(|| anyhow!("the node's genesis block {genesis} is no known network's"))
}

fn first_header(path: &Path) -> Result<bitcoin::block::Header> {
    use std::io::Read;
    let mut bytes = [0u8; 80];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .with_context(|| format!("cannot read a header from {}", path.display()))?;
    bitcoin::consensus::deserialize(&bytes)
        .with_context(|| format!("{} does not start with a block header", path.display()))
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

/// [`verify_absence_bundle`] on a blocking thread.
pub async fn verify_absence_async(
    bundle: AbsenceBundle,
    options: VerifyOptions,
) -> Result<VerifiedAbsence> {
    tokio::task::spawn_blocking(move || verify_absence_bundle(&bundle, &options))
        .await
        .context("the verification task failed")?
}

/// Fetches the absence bundle for `x_uid` from `node` and verifies it,
/// checking that it is about `x_uid` (the node could answer with another
/// id's). A node that knows a binding for the id answers 409: that is
/// reported as the node's answer, not as a verdict.
pub async fn verify_absent(
    node: &NodeClient,
    x_uid: u64,
    options: &VerifyOptions,
) -> Result<VerifiedAbsence> {
    let bundle: serde_json::Value = node
        .get(
            &format!("/identity/v1/absence/{x_uid}"),
            &format!("asking for the absence proof of X user id {x_uid}"),
        )
        .await?;
    let bundle: AbsenceBundle = serde_json::from_value(bundle).map_err(|e| {
        MalformedBundle(format!("the node's absence bundle is not a valid one: {e}"))
    })?;
    let verified = verify_absence_async(bundle, options.clone()).await?;
    if verified.x_uid != x_uid {
        return Err(SubjectMismatch(format!(
            "the absence bundle verifies, but for X user id {}, not {x_uid}",
            verified.x_uid
        ))
        .into());
    }
    Ok(verified)
}

/// Reads a saved absence bundle (its JSON form).
pub fn read_absence_bundle(path: &Path) -> Result<AbsenceBundle> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        meta.len() <= 4 * cairn_identity_core::bundle::MAX_BUNDLE_LEN as u64,
        "{} is too large to be an absence bundle",
        path.display()
    );
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| MalformedBundle(format!("{} is not an absence bundle: {e}", path.display())))
        .map_err(Into::into)
}

/// The text `cairn verify --absent` prints on success.
pub fn render_absent(v: &VerifiedAbsence, min_confirmations: u32) -> String {
    format!(
        "VERIFIED ABSENT: X user id {x_uid} has no binding\n\
         epoch:         {epoch} (header hash {header_hash})\n\
         anchor txid:   {txid}\n\
         block:         {height} ({block})\n\
         confirmations: {conf} (required {min_confirmations})\n\
         Not covered by the proof: a binding made after epoch {epoch}.",
        x_uid = v.x_uid,
        epoch = v.epoch.epoch,
        header_hash = hex_lower(&v.header_hash),
        txid = v.anchor_txid,
        height = v.block_height,
        block = v.block_hash,
        conf = v.confirmations,
    )
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
    use cairn_identity_core::binding::Status;
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
    use nostr::Keys;

    use super::*;

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

    fn headers_file(dir: &Path, network: Network) -> PathBuf {
        let path = dir.join(format!("{network}.headers"));
        let genesis = bitcoin::constants::genesis_block(network).header;
        std::fs::write(&path, bitcoin::consensus::serialize(&genesis)).unwrap();
        path
    }

    #[test]
    fn the_network_comes_from_the_headers_file_and_a_mismatch_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let regtest = headers_file(dir.path(), Network::Regtest);
        let from_genesis = ChainSource::HeadersFile {
            path: regtest.clone(),
            checkpoint: None,
        };
        assert_eq!(
            chain_network(&from_genesis, None).unwrap(),
            Network::Regtest
        );
        assert_eq!(
            chain_network(&from_genesis, Some(Network::Regtest)).unwrap(),
            Network::Regtest
        );
        let err = chain_network(&from_genesis, Some(Network::Bitcoin)).unwrap_err();
        assert!(err.is::<NetworkMismatch>(), "{err:#}");
        let text = err.to_string();
        assert!(
            text.contains("bitcoin") && text.contains("regtest"),
            "{text}"
        );
        assert!(
            !is_verification_failure(&err),
            "not a verdict on the bundle"
        );

        // From a checkpoint: no genesis to go by, but regtest's easy proof
        // of work is not bitcoin's.
        let from_checkpoint = ChainSource::HeadersFile {
            path: regtest,
            checkpoint: Some(Checkpoint {
                height: 5,
                hash: BlockHash::from_str(&"01".repeat(32)).unwrap(),
            }),
        };
        let err = chain_network(&from_checkpoint, None).unwrap_err();
        assert!(err.is::<NetworkMismatch>(), "{err:#}");
        assert!(err.to_string().contains("--network"), "{err}");
        assert_eq!(
            chain_network(&from_checkpoint, Some(Network::Regtest)).unwrap(),
            Network::Regtest
        );

        let mainnet = ChainSource::HeadersFile {
            path: headers_file(dir.path(), Network::Bitcoin),
            checkpoint: None,
        };
        assert_eq!(chain_network(&mainnet, None).unwrap(), Network::Bitcoin);
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, [7u8; 80]).unwrap();
        let err = chain_network(
            &ChainSource::HeadersFile {
                path: garbage,
                checkpoint: None,
            },
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("--checkpoint"), "{err}");
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
