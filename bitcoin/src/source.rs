//! Where a wallet reads the chain from: Bitcoin Core's JSON-RPC (what
//! self-hosters run; the default) or an Esplora REST server (a self-hosted
//! electrs/Esplora, or mempool.space's API). The on-chain payments wallet and
//! the Lightning node take one; the anchor wallet and the verifier always
//! use Core's RPC.

use crate::rpc::RpcConfig;

/// The chain backend.
#[derive(Debug, Clone)]
pub enum ChainSource {
    /// Bitcoin Core's JSON-RPC.
    BitcoindRpc(RpcConfig),
    /// An Esplora REST API, by base URL (e.g. `https://blockstream.info/api`,
    /// `http://127.0.0.1:3002`), without a trailing slash.
    Esplora {
        /// Base URL.
        url: String,
    },
}

impl From<RpcConfig> for ChainSource {
    fn from(rpc: RpcConfig) -> Self {
        Self::BitcoindRpc(rpc)
    }
}

impl ChainSource {
    /// An Esplora source; a trailing `/` is dropped (clients append `/blocks/…`).
    pub fn esplora(url: impl Into<String>) -> Self {
        let url: String = url.into();
        Self::Esplora {
            url: url.trim_end_matches('/').to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esplora_url_loses_trailing_slash() {
        match ChainSource::esplora("http://127.0.0.1:3002/") {
            ChainSource::Esplora { url } => assert_eq!(url, "http://127.0.0.1:3002"),
            other => panic!("{other:?}"),
        }
        let rpc = RpcConfig::new("http://127.0.0.1:18443", "u", "p");
        assert!(matches!(
            ChainSource::from(rpc),
            ChainSource::BitcoindRpc(_)
        ));
    }
}
