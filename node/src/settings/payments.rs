//! The `[payments]` settings section: the node's on-chain wallet, Lightning
//! node and Nostr Wallet Connect service, on the network and Bitcoin Core node
//! of `[bitcoin]`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context};
use bitcoin::FeeRate;
use cairn_bitcoin::{ChainSource, RpcConfig};
use cairn_payments::wallet::WalletConfig;
use serde::{Deserialize, Serialize};

use super::BitcoinSettings;

/// Default Lightning peer-to-peer listening address.
pub const DEFAULT_LIGHTNING_LISTEN: &str = "0.0.0.0:9735";
/// Bound on one Bitcoin Core RPC call of the on-chain wallet.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the payments wallets read the chain from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainSourceKind {
    /// The Bitcoin Core JSON-RPC of `[bitcoin]`.
    #[default]
    Bitcoind,
    /// An Esplora HTTP API at `esplora_url`.
    Esplora,
}

/// Payments (off by default: a plain relay holds no money).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsSettings {
    /// Run the wallet, the Lightning node, NWC and the admin API.
    pub enabled: bool,
    /// Address the Lightning node accepts peer connections on.
    pub lightning_listen: SocketAddr,
    /// Relay the NWC service listens on and names in connection URIs.
    /// Unset: this node's own relay (its `[relay] public_url`).
    pub nwc_relay_url: Option<String>,
    /// Seconds between syncs of the on-chain wallet with Bitcoin Core.
    pub wallet_sync_interval_secs: u64,
    /// Seconds between attempts to start payments when the first one failed
    /// (e.g. Bitcoin Core was unreachable).
    pub start_retry_interval_secs: u64,
    /// Feerate of on-chain sends that name none, sat/vB.
    pub default_fee_rate_sat_per_vb: u64,
    /// Chain source of the on-chain wallet and the Lightning node:
    /// `bitcoind` (the `[bitcoin]` RPC) or `esplora`. Identity anchoring
    /// always uses the RPC.
    pub chain_source: ChainSourceKind,
    /// Esplora API base URL (e.g. `https://blockstream.info/api`); required
    /// when `chain_source = "esplora"`.
    pub esplora_url: String,
}

impl Default for PaymentsSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            lightning_listen: DEFAULT_LIGHTNING_LISTEN
                .parse()
                .expect("valid default Lightning address"),
            nwc_relay_url: None,
            wallet_sync_interval_secs: 30,
            start_retry_interval_secs: 30,
            default_fee_rate_sat_per_vb: 2,
            chain_source: ChainSourceKind::Bitcoind,
            esplora_url: String::new(),
        }
    }
}

impl PaymentsSettings {
    /// The on-chain wallet's configuration (files under `data_dir`).
    pub fn wallet_config(&self, bitcoin: &BitcoinSettings, data_dir: &Path) -> WalletConfig {
        let mut rpc = RpcConfig::new(&bitcoin.rpc_url, &bitcoin.rpc_user, &bitcoin.rpc_password);
        rpc.timeout = RPC_TIMEOUT;
        WalletConfig {
            network: bitcoin.network.into(),
            data_dir: data_dir.to_path_buf(),
            rpc,
        }
    }

    /// The chain source of both payments wallets.
    pub fn chain_source(&self, bitcoin: &BitcoinSettings) -> anyhow::Result<ChainSource> {
        match self.chain_source {
            ChainSourceKind::Bitcoind => Ok(ChainSource::BitcoindRpc(self.bitcoind_rpc(bitcoin)?)),
            ChainSourceKind::Esplora => {
                ensure!(
                    !self.esplora_url.is_empty(),
                    "payments.esplora_url is required when chain_source = \"esplora\""
                );
                url::Url::parse(&self.esplora_url).context("payments.esplora_url is not a URL")?;
                Ok(ChainSource::esplora(&self.esplora_url))
            }
        }
    }

    /// `[bitcoin]`'s RPC, checked to be a plain `http://host:port` URL that
    /// ldk-node can take apart.
    fn bitcoind_rpc(&self, bitcoin: &BitcoinSettings) -> anyhow::Result<RpcConfig> {
        url::Url::parse(&bitcoin.rpc_url).context("bitcoin.rpc_url is not a URL")?;
        let rpc = RpcConfig::new(&bitcoin.rpc_url, &bitcoin.rpc_user, &bitcoin.rpc_password);
        rpc.host_port()
            .context("bitcoin.rpc_url must be http://host:port for the Lightning node")?;
        Ok(rpc)
    }

    /// The default feerate of on-chain sends.
    pub fn default_fee_rate(&self) -> anyhow::Result<FeeRate> {
        FeeRate::from_sat_per_vb(self.default_fee_rate_sat_per_vb.max(1))
            .context("payments.default_fee_rate_sat_per_vb is too large")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_chain_source_splits_the_rpc_url() {
        let bitcoin = BitcoinSettings {
            rpc_url: "http://10.0.0.5:18443/".into(),
            rpc_user: "u".into(),
            rpc_password: "p".into(),
            ..BitcoinSettings::default()
        };
        let ChainSource::BitcoindRpc(rpc) =
            PaymentsSettings::default().chain_source(&bitcoin).unwrap()
        else {
            panic!("expected the RPC chain source");
        };
        let (host, port) = rpc.host_port().unwrap();
        assert_eq!(host, "10.0.0.5");
        assert_eq!(port, 18443);
        let https = BitcoinSettings {
            rpc_url: "https://node".into(),
            ..BitcoinSettings::default()
        };
        assert!(PaymentsSettings::default().chain_source(&https).is_err());
    }

    #[test]
    fn esplora_needs_a_url_and_ignores_the_rpc_url() {
        let https = BitcoinSettings {
            rpc_url: "https://node".into(),
            ..BitcoinSettings::default()
        };
        let mut cfg = PaymentsSettings {
            chain_source: ChainSourceKind::Esplora,
            ..PaymentsSettings::default()
        };
        assert!(cfg.chain_source(&https).is_err());
        cfg.esplora_url = "not a url".into();
        assert!(cfg.chain_source(&https).is_err());
        cfg.esplora_url = "https://blockstream.info/api/".into();
        match cfg.chain_source(&https).unwrap() {
            ChainSource::Esplora { url } => assert_eq!(url, "https://blockstream.info/api"),
            other => panic!("expected Esplora, got {other:?}"),
        }
        assert!(matches!(
            PaymentsSettings::default()
                .chain_source(&BitcoinSettings::default())
                .unwrap(),
            ChainSource::BitcoindRpc(_)
        ));
    }
}
