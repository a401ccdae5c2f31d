//! Bringing a bdk wallet up to the chain (`wallet` feature): from Bitcoin
//! Core through `bdk_bitcoind_rpc::Emitter`, the one copy both the anchor
//! wallet and the payments wallet use.

use std::sync::Arc;

use bdk_bitcoind_rpc::Emitter;
use bdk_wallet::Wallet;
use bitcoin::Transaction;

use crate::rpc::{ChainError, RpcClient};

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
