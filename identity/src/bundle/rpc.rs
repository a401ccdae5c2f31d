//! [`ChainView`] over Bitcoin Core's JSON-RPC (`getblockcount`, `getblockhash`,
//! `getblockheader`). Calls block; in async code run verification on a
//! blocking thread.

use std::time::Duration;

use bdk_bitcoind_rpc::bitcoincore_rpc::{jsonrpc, Client, RpcApi};
use bitcoin::{block::Header, BlockHash};

use super::chain::{ChainView, ChainViewError};

/// Bitcoin Core's code for an unknown block or a height out of range.
const RPC_INVALID_PARAMETER: i32 = -8;
/// Bitcoin Core's code for "Block not found".
const RPC_INVALID_ADDRESS_OR_KEY: i32 = -5;

/// The verifier's own Bitcoin Core node as its chain view.
pub struct RpcChainView {
    client: Client,
}

impl std::fmt::Debug for RpcChainView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the RPC password; never print it.
        f.debug_struct("RpcChainView").finish_non_exhaustive()
    }
}

impl RpcChainView {
    /// A view over the node at `url` (`http://host:port`) with basic-auth
    /// credentials; `timeout` bounds each call. No request is made yet.
    pub fn new(
        url: &str,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<Self, ChainViewError> {
        let transport = jsonrpc::simple_http::SimpleHttpTransport::builder()
            .url(url)
            .map_err(ChainViewError::new)?
            .auth(user, Some(password))
            .timeout(timeout)
            .build();
        Ok(Self {
            client: Client::from_jsonrpc(jsonrpc::Client::with_transport(transport)),
        })
    }
}

fn is_not_found(e: &bdk_bitcoind_rpc::bitcoincore_rpc::Error) -> bool {
    matches!(
        e,
        bdk_bitcoind_rpc::bitcoincore_rpc::Error::JsonRpc(jsonrpc::Error::Rpc(r))
            if r.code == RPC_INVALID_PARAMETER || r.code == RPC_INVALID_ADDRESS_OR_KEY
    )
}

impl ChainView for RpcChainView {
    fn header_at(&self, height: u32) -> Result<Option<Header>, ChainViewError> {
        let hash = match self.client.get_block_hash(u64::from(height)) {
            Ok(h) => h,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(ChainViewError::new(e)),
        };
        self.client
            .get_block_header(&hash)
            .map(Some)
            .map_err(ChainViewError::new)
    }

    fn height_of(&self, hash: &BlockHash) -> Result<Option<u32>, ChainViewError> {
        let info = match self.client.get_block_header_info(hash) {
            Ok(i) => i,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(ChainViewError::new(e)),
        };
        // Core reports -1 confirmations for a block off the active chain.
        if info.confirmations < 0 {
            return Ok(None);
        }
        u32::try_from(info.height)
            .map(Some)
            .map_err(ChainViewError::new)
    }

    fn tip_height(&self) -> Result<u32, ChainViewError> {
        let n = self.client.get_block_count().map_err(ChainViewError::new)?;
        u32::try_from(n).map_err(ChainViewError::new)
    }
}
