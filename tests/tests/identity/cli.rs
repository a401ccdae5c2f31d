//! The `cairn identity …` and `cairn verify …` commands, through their library
//! functions (`cairn_node::cli`): challenge → post → bind → anchor, then the
//! bundle verified by the CLI itself against the chain's RPC and against a
//! headers file, saved to files and verified offline, and tampered with.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use bitcoin::hex::FromHex;
use bitcoin::Network;
use cairn_e2e::within;
use cairn_identity::binding::Status;
use cairn_identity::bundle::BundleError;
use cairn_node::cli::{
    self, BindRequest, BundleFormat, ChainOp, ChainSource, ExportedHeaders, HeaderRange,
    NodeClient, Subject,
};
use cairn_testchain::TestChain;
use nostr::{Keys, ToBech32};
use serde_json::json;

use crate::fake_x::{FakeX, Post};
use crate::support::*;

const CAROL_UID: u64 = 1_300_000_000_000_000_001;

/// The chain's headers from genesis to `last`, built by hand from
/// `getblockheader` to cross-check `cairn identity headers`.
async fn headers_file(chain: &TestChain, last: u32) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity((last as usize + 1) * 80);
    for height in 0..=last {
        let hash = chain.rpc("getblockhash", vec![json!(height)]).await?;
        let header = chain
            .rpc("getblockheader", vec![hash, json!(false)])
            .await?;
        let bytes = Vec::<u8>::from_hex(header.as_str().context("header hex")?)?;
        ensure!(bytes.len() == 80, "a header is 80 bytes");
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// `cairn identity headers --rpc-url … --out FILE` against the test chain.
async fn export(chain: &TestChain, range: HeaderRange, out: &Path) -> Result<ExportedHeaders> {
    within(
        "export headers",
        cli::export_headers(
            chain.rpc_url(),
            chain.rpc_user(),
            chain.rpc_password(),
            range,
            out,
        ),
    )
    .await?
}

fn options(chain: ChainSource, witness: nostr::PublicKey) -> cli::VerifyOptions {
    cli::VerifyOptions {
        chain,
        network: Network::Regtest,
        min_confirmations: CONFIRMATIONS,
        trusted_witnesses: vec![witness],
    }
}

fn rpc_source(chain: &TestChain) -> ChainSource {
    ChainSource::Rpc {
        url: chain.rpc_url().to_owned(),
        user: chain.rpc_user().to_owned(),
        password: chain.rpc_password().to_owned(),
    }
}

fn headers_source(path: &Path) -> ChainSource {
    ChainSource::HeadersFile {
        path: path.to_owned(),
        checkpoint: None,
    }
}

fn bundle_error(e: &anyhow::Error) -> Option<&BundleError> {
    e.chain().find_map(|c| c.downcast_ref::<BundleError>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_binds_and_verifies_by_rpc_headers_and_files() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let node = IdNode::start(&chain, &x, false).await?;
        node.fund(&chain, 200_000).await?;
        let witness = node.service().witness_public_key();
        let files = tempfile::tempdir()?;

        // The user's key, in a file only they can read.
        let keys = Keys::generate();
        let key_file = files.path().join("carol.nsec");
        std::fs::write(&key_file, keys.secret_key().to_bech32()?)?;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
        let loaded = cli::load_keys(Some(&key_file))?;
        assert_eq!(loaded.public_key(), keys.public_key());

        // `cairn identity challenge`: the text to post names the key and nonce.
        let client = NodeClient::new(&node.base)?;
        let challenge = within(
            "challenge",
            cli::request_challenge(&client, &loaded.public_key()),
        )
        .await??;
        let printed = cli::render_challenge(&challenge);
        assert!(printed.contains(&challenge.text), "{printed}");
        assert!(challenge.text.contains(&keys.public_key().to_bech32()?));

        // The user posts it on X, then `cairn identity bind` with the post's URL.
        let post = Post::new(CAROL_UID, "carol_cli", &challenge.text, unix_now(), 7);
        x.publish(&post);
        // The printed next step does not ask for the numeric id users do not know.
        assert!(!printed.contains("--x-uid"), "{printed}");
        // The node names the post's author from X's syndication answer.
        let author = within("post author", cli::identity::post_author(&client, post.id)).await??;
        assert_eq!(
            (author.x_uid, author.handle.as_str()),
            (CAROL_UID, "carol_cli")
        );
        // A given --x-uid is a cross-check: a wrong one is refused before signing.
        let wrong = BindRequest {
            handle: "@Carol_CLI".into(),
            x_uid: Some(CAROL_UID + 1),
            post_id: post.id,
            challenge: challenge.nonce.clone(),
            recover: false,
            chain_position: None,
        };
        let err = within(
            "bind with a wrong x_uid",
            cli::bind(&client, &loaded, &wrong),
        )
        .await?
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("--x-uid") && text.contains(&CAROL_UID.to_string()),
            "{text}"
        );
        let wrong_handle = BindRequest {
            handle: "@someone_else".into(),
            x_uid: None,
            ..wrong.clone()
        };
        let err = within(
            "bind with another handle",
            cli::bind(&client, &loaded, &wrong_handle),
        )
        .await?
        .unwrap_err();
        assert!(format!("{err:#}").contains("@carol_cli"), "{err:#}");
        // Without --x-uid: taken from the post.
        let request = BindRequest {
            handle: "@Carol_CLI".into(),
            x_uid: None,
            post_id: cli::parse_post_id(&format!(
                "https://x.com/carol_cli/status/{}?s=20",
                post.id
            ))?,
            challenge: challenge.nonce.clone(),
            recover: false,
            chain_position: None,
        };
        let receipt = within("bind", cli::bind(&client, &loaded, &request)).await??;
        assert_eq!(receipt.status, "accepted");
        assert_eq!(receipt.op, "bind");
        assert_eq!(receipt.seq, 0);
        assert_eq!(receipt.x_uid, CAROL_UID.to_string());

        // A second bind of the same account is refused before signing anything.
        let again = within("bind again", cli::bind(&client, &loaded, &request))
            .await?
            .unwrap_err();
        assert!(format!("{again:#}").contains("already bound"), "{again:#}");

        // `cairn identity status`, by handle and by key.
        let by_handle = Subject::parse("@carol_cli")?;
        let by_key = Subject::parse(&keys.public_key().to_bech32()?)?;
        let v = within("status", cli::status(&client, &by_handle)).await??;
        assert_eq!(cli::status_label(&v), "pending");
        assert!(v.bundle.is_none());
        let no_bundle = within("bundle", cli::fetch_bundle(&client, &by_handle))
            .await?
            .unwrap_err();
        assert!(format!("{no_bundle:#}").contains("no proof bundle"));
        let unknown = within(
            "status unknown",
            cli::status(&client, &Subject::parse("@nobody_here")?),
        )
        .await?
        .unwrap_err();
        assert_eq!(
            unknown.downcast_ref::<cli::NodeError>().map(|e| e.status),
            Some(404),
            "{unknown:#}"
        );

        // Anchored with one confirmation: the CLI refuses it at CONFIRMATIONS.
        node.close_epoch().await?;
        mine(&chain, 1).await?;
        node.sync().await?;
        let v = within("status", cli::status(&client, &by_key)).await??;
        assert_eq!(cli::status_label(&v), "anchored (1 conf)");
        let early = within(
            "verify early",
            cli::verify_subject(&client, &by_handle, &options(rpc_source(&chain), witness)),
        )
        .await?
        .unwrap_err();
        assert!(
            matches!(
                bundle_error(&early),
                Some(BundleError::InsufficientConfirmations {
                    confirmations: 1,
                    ..
                })
            ),
            "{early:#}"
        );
        assert!(cli::is_verification_failure(&early));

        mine(&chain, CONFIRMATIONS - 1).await?;
        node.sync().await?;
        let v = within("status", cli::status(&client, &by_handle)).await??;
        assert_eq!(
            cli::status_label(&v),
            format!("final ({CONFIRMATIONS} conf)")
        );
        let text = cli::render_status(&v);
        assert!(text.contains("@carol_cli") && text.contains(&CAROL_UID.to_string()));

        // `cairn verify @carol_cli --rpc-url …`.
        let (by_rpc, node_view) = within(
            "verify by rpc",
            cli::verify_subject(&client, &by_handle, &options(rpc_source(&chain), witness)),
        )
        .await??;
        assert_eq!(by_rpc.x_uid, CAROL_UID);
        assert_eq!(by_rpc.handle, "carol_cli");
        assert_eq!(by_rpc.key, Some(keys.public_key()));
        assert_eq!(by_rpc.status, Status::Bound);
        assert_eq!(by_rpc.head.to_hex(), receipt.event_id);
        assert_eq!(by_rpc.confirmations, CONFIRMATIONS);
        assert_eq!(by_rpc.witnesses, vec![witness]);
        assert_eq!(node_view.anchor_txid, Some(by_rpc.anchor_txid.to_string()));
        let printed = cli::render_verified(&by_rpc, CONFIRMATIONS);
        for needle in [
            "VERIFIED @carol_cli".to_owned(),
            CAROL_UID.to_string(),
            keys.public_key().to_bech32()?,
            by_rpc.anchor_txid.to_string(),
            format!("block:         {}", by_rpc.block_height),
            format!("confirmations: {CONFIRMATIONS} (required {CONFIRMATIONS})"),
        ] {
            assert!(printed.contains(&needle), "{needle} missing in:\n{printed}");
        }

        // `cairn verify --absent ID --node …`: an id nobody bound is proven
        // absent from the same anchored epoch; a bound id is not.
        let stranger = CAROL_UID + 7;
        let absent = within(
            "verify absent",
            cli::verify_absent(&client, stranger, &options(rpc_source(&chain), witness)),
        )
        .await??;
        assert_eq!(absent.x_uid, stranger);
        assert_eq!(absent.epoch.epoch, by_rpc.epoch.epoch);
        assert_eq!(absent.anchor_txid, by_rpc.anchor_txid);
        let printed = cli::render_absent(&absent, CONFIRMATIONS);
        assert!(
            printed.contains(&format!("VERIFIED ABSENT: X user id {stranger}")),
            "{printed}"
        );
        let bound = within(
            "verify absent for a bound id",
            cli::verify_absent(&client, CAROL_UID, &options(rpc_source(&chain), witness)),
        )
        .await?
        .unwrap_err();
        assert_eq!(
            bound.downcast_ref::<cli::NodeError>().map(|e| e.status),
            Some(409),
            "{bound:#}"
        );
        // Saved to a file, it verifies offline; with its id changed to
        // Carol's, the state proof no longer holds.
        let saved: serde_json::Value = within(
            "fetch the absence bundle",
            reqwest::get(format!("{}/identity/v1/absence/{stranger}", node.base)),
        )
        .await??
        .error_for_status()?
        .json()
        .await?;
        let absence_file = files.path().join("absent.json");
        std::fs::write(&absence_file, serde_json::to_vec(&saved)?)?;
        let from_file = cli::verify_absence_bundle(
            &cli::read_absence_bundle(&absence_file)?,
            &options(rpc_source(&chain), witness),
        )?;
        assert_eq!(from_file, absent);
        let mut forged = saved.clone();
        forged["x_uid"] = json!(CAROL_UID.to_string());
        std::fs::write(&absence_file, serde_json::to_vec(&forged)?)?;
        let err = cli::verify_absence_bundle(
            &cli::read_absence_bundle(&absence_file)?,
            &options(rpc_source(&chain), witness),
        )
        .unwrap_err();
        assert!(
            matches!(bundle_error(&err), Some(BundleError::StateProof(_))),
            "{err:#}"
        );
        assert!(cli::is_verification_failure(&err));

        // The same through the key, and against a witness we do not trust.
        let (by_npub, _) = within(
            "verify by key",
            cli::verify_subject(&client, &by_key, &options(rpc_source(&chain), witness)),
        )
        .await??;
        assert_eq!(by_npub, by_rpc);
        let untrusted = within(
            "verify untrusted",
            cli::verify_subject(
                &client,
                &by_handle,
                &options(rpc_source(&chain), Keys::generate().public_key()),
            ),
        )
        .await?
        .unwrap_err();
        assert!(
            matches!(
                bundle_error(&untrusted),
                Some(BundleError::UntrustedWitness { .. })
            ),
            "{untrusted:#}"
        );

        // Without --network, the network comes from the chain view; a wrong
        // --network is named as such, not reported as a forged bundle.
        assert_eq!(
            cli::verify::chain_network_async(rpc_source(&chain)).await?,
            Network::Regtest
        );
        let mut mainnet = options(rpc_source(&chain), witness);
        mainnet.network = Network::Bitcoin;
        let err = within(
            "verify on the wrong network",
            cli::verify_subject(&client, &by_handle, &mainnet),
        )
        .await?
        .unwrap_err();
        assert!(!cli::is_verification_failure(&err), "{err:#}");
        assert!(
            err.chain().any(|c| c.is::<cli::verify::NetworkMismatch>()),
            "{err:#}"
        );
        let text = format!("{err:#}");
        assert!(
            text.contains("bitcoin") && text.contains("regtest"),
            "{text}"
        );

        // `cairn verify @carol_cli --headers FILE`: the same result from headers alone.
        // The file comes from `cairn identity headers`, and holds exactly the
        // chain's headers as Bitcoin Core serializes them.
        let tip = chain.tip().await?.height;
        let headers = files.path().join("headers.bin");
        let exported = export(&chain, HeaderRange::default(), &headers).await?;
        assert_eq!(exported.first.height, 0);
        assert_eq!(exported.last_height, tip);
        assert_eq!(std::fs::read(&headers)?, headers_file(&chain, tip).await?);
        let (by_headers, _) = within(
            "verify by headers",
            cli::verify_subject(
                &client,
                &by_handle,
                &options(headers_source(&headers), witness),
            ),
        )
        .await??;
        assert_eq!(by_headers, by_rpc);
        assert_eq!(
            cli::verify::chain_network_async(headers_source(&headers)).await?,
            Network::Regtest,
            "a headers file from genesis names its network"
        );

        // Headers that stop before the anchor block do not show it.
        let short = files.path().join("short.bin");
        let range = HeaderRange {
            from: 0,
            to: Some(by_rpc.block_height - 1),
        };
        export(&chain, range, &short).await?;
        let missing = within(
            "verify short headers",
            cli::verify_subject(
                &client,
                &by_handle,
                &options(headers_source(&short), witness),
            ),
        )
        .await?
        .unwrap_err();
        assert!(
            matches!(bundle_error(&missing), Some(BundleError::NotOnChain(_))),
            "{missing:#}"
        );

        // Headers from a checkpoint below the anchor block, not from genesis.
        let recent = files.path().join("recent.bin");
        let range = HeaderRange {
            from: by_rpc.block_height - 1,
            to: None,
        };
        let exported = export(&chain, range, &recent).await?;
        let printed = cli::render_exported(&exported, &recent);
        let checkpoint = format!("{}:{}", exported.first.height, exported.first.hash);
        assert!(
            printed.contains(&format!("--checkpoint {checkpoint} --network regtest")),
            "{printed}"
        );
        let from_checkpoint = ChainSource::HeadersFile {
            path: recent.clone(),
            checkpoint: Some(cli::parse_checkpoint(&checkpoint)?),
        };
        let (by_recent, _) = within(
            "verify by checkpointed headers",
            cli::verify_subject(&client, &by_handle, &options(from_checkpoint, witness)),
        )
        .await??;
        assert_eq!(by_recent, by_rpc);
        // Without the checkpoint the file is refused: it does not start at genesis.
        let refused = within(
            "verify without checkpoint",
            cli::verify_subject(
                &client,
                &by_handle,
                &options(headers_source(&recent), witness),
            ),
        )
        .await?
        .unwrap_err();
        assert!(!cli::is_verification_failure(&refused), "{refused:#}");
        assert!(format!("{refused:#}").contains("refused"), "{refused:#}");
        // Heights beyond the tip are refused before anything is written.
        let beyond = HeaderRange {
            from: 0,
            to: Some(tip + 100),
        };
        assert!(export(&chain, beyond, &files.path().join("beyond.bin"))
            .await
            .is_err());
        assert!(!files.path().join("beyond.bin").exists());

        // `cairn identity bundle --out FILE`, binary and JSON, then
        // `cairn verify --bundle FILE` offline.
        let bundle = within("fetch bundle", cli::fetch_bundle(&client, &by_handle)).await??;
        let bin = files.path().join("carol.bundle");
        let json_file = files.path().join("carol.json");
        let bin_len = cli::write_bundle(&bin, &bundle, BundleFormat::Binary)?;
        cli::write_bundle(&json_file, &bundle, BundleFormat::Json)?;
        assert!(bin_len <= 4096, "bundle is {bin_len} bytes");
        for file in [&bin, &json_file] {
            let read = cli::read_bundle(file)?;
            assert_eq!(read, bundle);
            let offline = within(
                "verify file",
                cli::verify_bundle_async(read, options(headers_source(&headers), witness)),
            )
            .await??;
            assert_eq!(offline, by_rpc);
        }

        // A tampered bundle file fails, wherever the changed byte is.
        let original = std::fs::read(&bin)?;
        let tampered = files.path().join("tampered.bundle");
        let step = (original.len() / 40).max(1);
        let mut tried = 0;
        for pos in (0..original.len()).step_by(step) {
            let mut bytes = original.clone();
            bytes[pos] ^= 0x01;
            std::fs::write(&tampered, &bytes)?;
            let outcome = match cli::read_bundle(&tampered) {
                Err(e) => Err(e),
                Ok(b) => {
                    within(
                        "verify tampered",
                        cli::verify_bundle_async(b, options(headers_source(&headers), witness)),
                    )
                    .await?
                }
            };
            let err = match outcome {
                Ok(v) => anyhow::bail!("byte {pos} flipped, still verified: {v:?}"),
                Err(e) => e,
            };
            assert!(
                cli::is_verification_failure(&err),
                "byte {pos}: not reported as a bad bundle: {err:#}"
            );
            tried += 1;
        }
        assert!(tried >= 40, "flipped {tried} bytes");

        // A tampered JSON bundle (another handle in a signed event) fails too.
        let mut value: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_file)?)?;
        let tags = value["ops"][0]["tags"]
            .as_array_mut()
            .context("ops[0].tags")?;
        let i_tag = tags
            .iter_mut()
            .find(|t| t[0] == "i")
            .context("the bind's i tag")?;
        i_tag[1] = json!("twitter:mallory");
        std::fs::write(&tampered, serde_json::to_vec(&value)?)?;
        let err = match cli::read_bundle(&tampered) {
            Err(e) => e,
            Ok(b) => within(
                "verify tampered json",
                cli::verify_bundle_async(b, options(headers_source(&headers), witness)),
            )
            .await?
            .unwrap_err(),
        };
        assert!(cli::is_verification_failure(&err), "{err:#}");

        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}

const DAVE_UID: u64 = 1_300_000_000_000_000_002;

/// Writes `keys`' secret to a mode-0600 file, as a user would keep it.
fn key_file(dir: &Path, name: &str, keys: &Keys) -> Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, keys.secret_key().to_bech32()?)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// Closes the open epoch, which must hold an operation and get an anchor.
async fn close(node: &IdNode, epoch: u64) -> Result<()> {
    match node.close_epoch().await? {
        cairn_identity::service::EpochClose::Closed {
            epoch: e,
            txid: Some(_),
            queued: None,
        } if e == epoch => Ok(()),
        other => anyhow::bail!("expected epoch {epoch} closed and anchored, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_rotates_vetoes_and_revokes() -> Result<()> {
    case(async {
        let chain = TestChain::start().await?;
        let x = FakeX::start().await?;
        let node = IdNode::start(&chain, &x, false).await?;
        node.fund(&chain, 200_000).await?;
        let witness = node.service().witness_public_key();
        let files = tempfile::tempdir()?;
        let client = NodeClient::new(&node.base)?;
        let by_handle = Subject::parse("@dave_cli")?;

        let dave = User::new(DAVE_UID, "dave_cli");
        bind(&node, &x, &dave, 1).await?;
        close(&node, 0).await?;

        // `cairn identity rotate --key-file CUR --new-key-file NEW --handle @dave_cli`.
        let current = cli::load_keys(Some(&key_file(files.path(), "cur", &dave.keys)?))?;
        let new_keys = Keys::generate();
        let next = cli::load_keys(Some(&key_file(files.path(), "new", &new_keys)?))?;
        let stranger = Keys::generate();
        let err = within(
            "rotate by a stranger",
            cli::chain_op(
                &client,
                &stranger,
                "@dave_cli",
                &ChainOp::Rotate {
                    new_keys: next.clone(),
                },
            ),
        )
        .await?
        .unwrap_err();
        assert!(format!("{err:#}").contains("not to the key"), "{err:#}");
        let err = within(
            "veto with nothing pending",
            cli::chain_op(
                &client,
                &current,
                "@dave_cli",
                &ChainOp::Veto { recover_id: None },
            ),
        )
        .await?
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("no pending recovery"),
            "{err:#}"
        );

        let rotated = within(
            "rotate",
            cli::chain_op(
                &client,
                &current,
                "@Dave_CLI",
                &ChainOp::Rotate {
                    new_keys: next.clone(),
                },
            ),
        )
        .await??;
        assert_eq!((rotated.op.as_str(), rotated.seq), ("rotate", 1));
        let v = within("status", cli::status(&client, &by_handle)).await??;
        assert_eq!(v.npub, Some(new_keys.public_key().to_bech32()?));
        assert_eq!(v.binding, "bound");
        assert_eq!(v.head, rotated.event_id);
        let old = within(
            "status of the old key",
            cli::status(&client, &Subject::Key(dave.keys.public_key())),
        )
        .await??;
        assert_eq!(
            cli::status_label(&old),
            "revoked (this key was rotated away)"
        );
        // The old key can no longer act for the account.
        let err = within(
            "revoke by the old key",
            cli::chain_op(&client, &current, "@dave_cli", &ChainOp::Revoke),
        )
        .await?
        .unwrap_err();
        assert!(format!("{err:#}").contains("not to the key"), "{err:#}");
        close(&node, 1).await?;

        // Someone holding the X account starts a recovery (`bind --recover`)…
        let thief = User {
            keys: Keys::generate(),
            x_uid: DAVE_UID,
            handle: "dave_cli".into(),
        };
        let (nonce, post) = challenge_and_post(&node, &x, &thief, 2).await?;
        let request = BindRequest {
            handle: "dave_cli".into(),
            x_uid: Some(DAVE_UID),
            post_id: post.id,
            challenge: nonce,
            recover: true,
            chain_position: None,
        };
        let recover = within("recover", cli::bind(&client, &thief.keys, &request)).await??;
        assert_eq!((recover.op.as_str(), recover.seq), ("recover", 2));
        let v = within("status", cli::status(&client, &by_handle)).await??;
        assert_eq!(v.binding, "recovery_pending");
        close(&node, 2).await?;

        // …and `cairn identity veto` with the current key cancels it.
        let veto = within(
            "veto",
            cli::chain_op(
                &client,
                &next,
                "@dave_cli",
                &ChainOp::Veto { recover_id: None },
            ),
        )
        .await??;
        assert_eq!((veto.op.as_str(), veto.seq), ("veto", 3));
        let v = within("status", cli::status(&client, &by_handle)).await??;
        assert_eq!(v.binding, "bound");
        assert_eq!(v.npub, Some(new_keys.public_key().to_bech32()?));
        close(&node, 3).await?;

        // `cairn identity revoke`: the account has no key any more.
        let revoked = within(
            "revoke",
            cli::chain_op(&client, &next, "@dave_cli", &ChainOp::Revoke),
        )
        .await??;
        assert_eq!((revoked.op.as_str(), revoked.seq), ("revoke", 4));
        let v = within("status", cli::status(&client, &by_handle)).await??;
        assert_eq!(cli::status_label(&v), "revoked");
        assert_eq!(v.npub, None);
        assert_eq!(v.reflects, "pending", "the revocation is not anchored yet");
        // The key that was revoked is revoked, not "rotated away".
        let by_revoked_key = Subject::Key(new_keys.public_key());
        let v = within(
            "status of the revoked key",
            cli::status(&client, &by_revoked_key),
        )
        .await??;
        assert_eq!(v.binding, "revoked");
        assert_eq!(cli::status_label(&v), "revoked");
        let text = cli::render_status(&v);
        assert!(!text.contains("rotated"), "{text}");
        assert!(text.contains("revoked"), "{text}");
        let err = within(
            "revoke again",
            cli::chain_op(&client, &next, "@dave_cli", &ChainOp::Revoke),
        )
        .await?
        .unwrap_err();
        assert!(format!("{err:#}").contains("is revoked"), "{err:#}");
        close(&node, 4).await?;

        // The revocation is anchored and verifies from exported headers.
        mine(&chain, CONFIRMATIONS).await?;
        node.sync().await?;
        let headers = files.path().join("headers.bin");
        export(&chain, HeaderRange::default(), &headers).await?;
        let (verified, view) = within(
            "verify revoked",
            cli::verify_subject(
                &client,
                &by_handle,
                &options(headers_source(&headers), witness),
            ),
        )
        .await??;
        assert_eq!(verified.status, Status::Revoked);
        assert_eq!(verified.key, None);
        assert_eq!(verified.seq, 4);
        assert_eq!(verified.head.to_hex(), revoked.event_id);
        assert_eq!(view.status, "revoked");

        node.finish().await?;
        chain.stop().await?;
        Ok(())
    })
    .await
}
