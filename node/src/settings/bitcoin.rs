//! The `[bitcoin]` settings section: the network and the Bitcoin Core node
//! that identity anchoring and the payments wallets share.

use bitcoin::Network;
use serde::{Deserialize, Serialize};

/// Bitcoin network of the node's wallets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BitcoinNetwork {
    /// Bitcoin mainnet.
    Bitcoin,
    /// Testnet3.
    Testnet,
    /// Signet.
    Signet,
    /// Regtest.
    Regtest,
}

impl From<BitcoinNetwork> for Network {
    fn from(n: BitcoinNetwork) -> Self {
        match n {
            BitcoinNetwork::Bitcoin => Network::Bitcoin,
            BitcoinNetwork::Testnet => Network::Testnet,
            BitcoinNetwork::Signet => Network::Signet,
            BitcoinNetwork::Regtest => Network::Regtest,
        }
    }
}

/// Which Bitcoin network, and how to reach a Bitcoin Core node's JSON-RPC.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BitcoinSettings {
    /// Network of every wallet of the node.
    pub network: BitcoinNetwork,
    /// Bitcoin Core JSON-RPC URL.
    pub rpc_url: String,
    /// Bitcoin Core RPC user.
    pub rpc_user: String,
    /// Bitcoin Core RPC password (never logged or shown).
    pub rpc_password: String,
}

impl Default for BitcoinSettings {
    fn default() -> Self {
        Self {
            network: BitcoinNetwork::Bitcoin,
            rpc_url: "http://127.0.0.1:8332".to_owned(),
            rpc_user: String::new(),
            rpc_password: String::new(),
        }
    }
}

impl std::fmt::Debug for BitcoinSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitcoinSettings")
            .field("network", &self.network)
            .field("rpc_url", &self.rpc_url)
            .field("rpc_user", &self.rpc_user)
            .field("rpc_password", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let s = BitcoinSettings {
            rpc_password: "hunter2".into(),
            ..BitcoinSettings::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
