//! bdk wallets on the node's seed (`wallet` feature): opening one from its
//! SQLite file, and bringing it up to Bitcoin Core's chain through
//! `bdk_bitcoind_rpc::Emitter` — the one copy both the anchor wallet and the
//! payments wallet use.

use std::sync::Arc;

use bdk_bitcoind_rpc::Emitter;
use bdk_wallet::rusqlite::Connection;
use bdk_wallet::{KeychainKind, PersistedWallet, Wallet};
use bitcoin::{Network, Transaction};

use crate::rpc::{ChainError, RpcClient};

/// Why [`open`] failed; each wallet maps these to its own error type.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The database holds a wallet of another seed, account or network.
    #[error("the wallet database belongs to another seed or network")]
    Mismatch,
    /// Reading the stored wallet failed.
    #[error("loading: {0}")]
    Load(String),
    /// Creating the wallet's tables failed.
    #[error("creating: {0}")]
    Create(String),
}

/// Loads the wallet of `descriptors` (external, change) stored in `conn`, or
/// creates it there when the database holds none yet. Returns the wallet and
/// whether it was created just now (the caller then decides where its first
/// sync starts). The descriptors hold private keys: they are never part of
/// an error.
pub fn open(
    conn: &mut Connection,
    descriptors: (String, String),
    network: Network,
) -> Result<(PersistedWallet<Connection>, bool), OpenError> {
    let (external, internal) = descriptors;
    let loaded = Wallet::load()
        .descriptor(KeychainKind::External, Some(external.clone()))
        .descriptor(KeychainKind::Internal, Some(internal.clone()))
        .extract_keys()
        .check_network(network)
        .load_wallet(conn)
        .map_err(|e| match e {
            bdk_wallet::LoadWithPersistError::InvalidChangeSet(
                bdk_wallet::LoadError::Mismatch(_),
            ) => OpenError::Mismatch,
            other => OpenError::Load(other.to_string()),
        })?;
    if let Some(wallet) = loaded {
        return Ok((wallet, false));
    }
    let wallet = Wallet::create(external, internal)
        .network(network)
        .create_wallet(conn)
        .map_err(|e| match e {
            bdk_wallet::CreateWithPersistError::Persist(p) => OpenError::Create(p.to_string()),
            // The other variant quotes the descriptor: keep it out.
            _ => OpenError::Create("cannot create the wallet".into()),
        })?;
    Ok((wallet, true))
}

/// Brings `wallet` up to Core's best chain (blocks from `start_height` when
/// the wallet has never synced) and its mempool, observed at logical time
/// `now`. Blocking. The caller persists the wallet.
///
/// `now` must grow strictly between calls: bdk decides between conflicting
/// unconfirmed transactions by when they were seen, so a replacement must
/// always look newer than what it replaces.
pub fn sync_from_core(
    client: &RpcClient,
    wallet: &mut Wallet,
    start_height: u32,
    now: u64,
) -> Result<(), ChainError> {
    // Tell the emitter which unconfirmed transactions the wallet believes
    // in, so that it reports those that left the mempool as evicted.
    let expected: Vec<Arc<Transaction>> = wallet
        .transactions()
        .filter(|t| !t.chain_position.is_confirmed())
        .map(|t| t.tx_node.tx.clone())
        .collect();
    let mut emitter = Emitter::new(
        client.inner(),
        wallet.latest_checkpoint(),
        start_height,
        expected,
    );
    while let Some(ev) = emitter.next_block()? {
        wallet
            .apply_block_connected_to(&ev.block, ev.block_height(), ev.connected_to())
            .map_err(|e| ChainError::Other(format!("block does not connect: {e}")))?;
    }
    let mempool = emitter.mempool_at(now)?;
    wallet.apply_evicted_txs(mempool.evicted);
    wallet.apply_unconfirmed_txs(mempool.update);
    Ok(())
}
