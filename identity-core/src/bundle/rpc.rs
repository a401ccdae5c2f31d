//! [`ChainView`] over Bitcoin Core's JSON-RPC (`getblockcount`, `getblockhash`,
//! `getblockheader`). Calls block; in async code run verification on a
//! blocking thread.

use std::time::Duration;

use bitcoin::{block::Header, BlockHash};
use cairn_bitcoin::{RpcClient, RpcConfig};

use super::chain::{ChainView, ChainViewError};

/// The verifier's own Bitcoin Core node as its chain view.
#[derive(Debug)]
pub struct RpcChainView {
    client: RpcClient,
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
        let config = RpcConfig::new(url, user, password).with_timeout(timeout);
        Ok(Self {
            client: RpcClient::new(&config).map_err(ChainViewError::new)?,
        })
    }
}

impl ChainView for RpcChainView {
    fn header_at(&self, height: u32) -> Result<Option<Header>, ChainViewError> {
        let Some(hash) = self
            .client
            .block_hash(height)
            .map_err(ChainViewError::new)?
        else {
            return Ok(None);
        };
        self.client
            .header(&hash)
            .map(Some)
            .map_err(ChainViewError::new)
    }

    fn height_of(&self, hash: &BlockHash) -> Result<Option<u32>, ChainViewError> {
        self.client.active_height(hash).map_err(ChainViewError::new)
    }

    fn tip_height(&self) -> Result<u32, ChainViewError> {
        self.client.tip_height().map_err(ChainViewError::new)
    }
}
