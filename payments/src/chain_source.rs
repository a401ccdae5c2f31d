//! Where the on-chain wallet and the Lightning node read the chain from:
//! Bitcoin Core's JSON-RPC (what self-hosters run; the default) or an Esplora
//! REST server (e.g. a self-hosted electrs/Esplora, or mempool.space's API).
//!
//! Both [`crate::wallet::OnchainWallet::open_on`] and
//! [`crate::lightning::LightningNode::build_on`] take a [`ChainSource`]; the
//! older entry points (`OnchainWallet::open`, `LightningNode::build`) keep
//! taking Bitcoin Core settings and mean [`ChainSource::BitcoindRpc`].

use std::time::Duration;

use bdk_esplora::esplora_client;
use cairn_identity::anchor::{ChainError, RpcConfig};

use crate::lightning::BitcoindRpc;

/// Timeout of one Esplora HTTP request made by the on-chain wallet.
pub const ESPLORA_TIMEOUT: Duration = Duration::from_secs(30);

/// The chain backend.
#[derive(Debug, Clone)]
pub enum ChainSource {
    /// Bitcoin Core's JSON-RPC.
    BitcoindRpc(BitcoindRpc),
    /// An Esplora REST API, by base URL (e.g. `https://blockstream.info/api`,
    /// `http://127.0.0.1:3002`), without a trailing slash.
    Esplora {
        /// Base URL.
        url: String,
    },
}

impl From<BitcoindRpc> for ChainSource {
    fn from(rpc: BitcoindRpc) -> Self {
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

impl BitcoindRpc {
    /// The same node as the on-chain wallet's RPC settings (default timeout).
    pub fn rpc_config(&self) -> RpcConfig {
        RpcConfig::new(
            format!("http://{}:{}", self.host, self.port),
            self.user.clone(),
            self.password.clone(),
        )
    }
}

/// An async Esplora client for the on-chain wallet.
pub(crate) fn esplora_client(url: &str) -> Result<esplora_client::AsyncClient, ChainError> {
    esplora_client::Builder::new(url)
        .timeout(ESPLORA_TIMEOUT.as_secs())
        .build_async()
        .map_err(|e| ChainError::Other(format!("bad Esplora URL: {e}")))
}

/// Esplora failures as the wallet's chain errors: transport failures are
/// "unreachable", answers with an error status (e.g. a rejected transaction)
/// carry the server's message.
pub(crate) fn esplora_error(e: &esplora_client::Error) -> ChainError {
    match e {
        esplora_client::Error::HttpResponse { status, message } => {
            ChainError::Other(format!("Esplora answered {status}: {message}"))
        }
        esplora_client::Error::Reqwest(e) => ChainError::Unreachable(e.to_string()),
        other => ChainError::Other(format!("Esplora: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esplora_url_loses_trailing_slash_and_rpc_becomes_url() {
        match ChainSource::esplora("http://127.0.0.1:3002/") {
            ChainSource::Esplora { url } => assert_eq!(url, "http://127.0.0.1:3002"),
            other => panic!("{other:?}"),
        }
        let rpc = BitcoindRpc {
            host: "127.0.0.1".into(),
            port: 18443,
            user: "u".into(),
            password: "p".into(),
        };
        assert_eq!(rpc.rpc_config().url, "http://127.0.0.1:18443");
        assert!(matches!(
            ChainSource::from(rpc),
            ChainSource::BitcoindRpc(_)
        ));
    }
}
