//! Whether a message's payment reached the user: asked of the user's own
//! node (its admin API, and its Bitcoin Core for an on-chain payment's
//! outputs), never taken from the message.

use anyhow::{anyhow, ensure, Result};
use bitcoin::{Address, Network, Txid};
use cairn_bitcoin::{ChainError, RpcClient, RpcConfig};
use cairn_payments::message_payment::{
    parse_preimage, LightningLookup, LightningState, MessagePayment, NodeReport, OnchainRequest,
    PaymentRequest, TxOutputs, Verification, WalletTxLookup,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::lnurl::node_network;
use crate::cli::support::admin::{AdminClient, AdminError};
use crate::redact::redact_url;
use crate::settings::Settings;

/// A Bitcoin Core JSON-RPC endpoint.
#[derive(Clone)]
pub struct BitcoinRpc {
    /// `http://host:port`.
    pub url: String,
    /// RPC user.
    pub user: String,
    /// RPC password (never shown).
    pub password: String,
}

impl std::fmt::Debug for BitcoinRpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitcoinRpc")
            .field("url", &redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

impl BitcoinRpc {
    /// The `[bitcoin]` settings' RPC.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            url: settings.bitcoin.rpc_url.clone(),
            user: settings.bitcoin.rpc_user.clone(),
            password: settings.bitcoin.rpc_password.clone(),
        }
    }

    /// Runs `f` against Core; errors name the (redacted) URL, never the password.
    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&RpcClient) -> Result<T, ChainError> + Send + 'static,
    ) -> Result<T> {
        let config = RpcConfig::new(&self.url, &self.user, &self.password);
        let shown = redact_url(&self.url);
        let client = RpcClient::new(&config).map_err(|e| anyhow!("{what}: {shown}: {e}"))?;
        client.run(f).await.map_err(|e| match e {
            ChainError::Unreachable(e) => {
                anyhow!("{what}: cannot reach Bitcoin Core at {shown}: {e}")
            }
            other => anyhow!("{what}: {other}"),
        })
    }

    /// The chain's height.
    async fn tip(&self) -> Result<u32> {
        self.run("getblockcount", |c| c.tip_height()).await
    }

    /// The outputs of transaction `txid` (confirmed at `height`, or in the
    /// mempool), split by whether they pay `address`.
    async fn outputs(
        &self,
        txid: &Txid,
        height: Option<u32>,
        address: &Address,
    ) -> Result<TxOutputs> {
        let id = *txid;
        let tx = self
            .run("getrawtransaction", move |c| {
                // Without -txindex Bitcoin Core finds a confirmed transaction only in its block.
                let block = match height {
                    Some(h) => c.block_hash(h)?,
                    None => None,
                };
                c.transaction(&id, block.as_ref())
            })
            .await?;
        ensure!(
            tx.compute_txid() == *txid,
            "getrawtransaction: another transaction"
        );
        let script = address.script_pubkey();
        let (to, others): (Vec<_>, Vec<_>) =
            tx.output.iter().partition(|o| o.script_pubkey == script);
        Ok(TxOutputs {
            // Consensus caps every output (and so their sum) at 21M BTC.
            to_address_sat: to.iter().map(|o| o.value.to_sat()).sum(),
            others_sat: others.iter().map(|o| o.value.to_sat()).collect(),
        })
    }
}

/// Asks the user's node about payments.
pub(super) struct PaymentChecker<'a> {
    admin: Option<&'a AdminClient>,
    unavailable: String,
    pub(super) network: Network,
    wallet: Option<Vec<WalletTx>>,
    tip: Option<u32>,
    bitcoin: Option<&'a BitcoinRpc>,
    lnurl_metadata: &'a [String],
}

#[derive(Debug, Deserialize)]
struct WalletTx {
    txid: String,
    received_sat: u64,
    sent_sat: u64,
    confirmation_height: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct LnPayment {
    direction: String,
    status: String,
    amount_msat: Option<u64>,
    preimage: Option<String>,
}

impl<'a> PaymentChecker<'a> {
    /// A checker asking `admin` (or, when it is `None`, reporting
    /// `admin_unavailable`), expecting payments on `network` unless the node
    /// says otherwise.
    pub(super) async fn new(
        admin: Option<&'a AdminClient>,
        admin_unavailable: Option<&str>,
        network: Network,
        bitcoin: Option<&'a BitcoinRpc>,
        lnurl_metadata: &'a [String],
    ) -> Result<Self> {
        let mut checker = Self {
            admin: None,
            unavailable: admin_unavailable
                .map(str::to_owned)
                .unwrap_or_else(|| "no admin API configured".to_owned()),
            network,
            wallet: None,
            tip: None,
            bitcoin,
            lnurl_metadata,
        };
        let Some(admin) = admin else {
            return Ok(checker);
        };
        match node_network(admin).await {
            Ok(n) => {
                checker.network = n;
                checker.admin = Some(admin);
            }
            Err(e) => checker.unavailable = format!("{e:#}"),
        }
        Ok(checker)
    }

    pub(super) async fn verify(&mut self, p: &MessagePayment) -> Verification {
        let report = match self.admin {
            None => NodeReport::Unavailable(self.unavailable.clone()),
            Some(admin) => match &p.request {
                PaymentRequest::Lightning(_) => self.lightning_report(admin, p).await,
                PaymentRequest::Onchain(r) => self.onchain_report(admin, p, r).await,
            },
        };
        p.verify_inbound(self.network, self.lnurl_metadata, &report)
    }

    async fn lightning_report(&self, admin: &AdminClient, p: &MessagePayment) -> NodeReport {
        let Some(hash) = p.payment_hash() else {
            return NodeReport::Lightning(None);
        };
        match admin
            .get::<LnPayment>(&format!("/admin/v1/lightning/payments/{hash}"))
            .await
        {
            Ok(l) => NodeReport::Lightning(Some(LightningLookup {
                inbound: l.direction == "inbound",
                state: match l.status.as_str() {
                    "succeeded" => LightningState::Succeeded,
                    "failed" => LightningState::Failed,
                    _ => LightningState::Pending,
                },
                amount_msat: l.amount_msat,
                preimage: l.preimage.as_deref().and_then(|h| parse_preimage(h).ok()),
            })),
            Err(e)
                if e.downcast_ref::<AdminError>()
                    .is_some_and(|a| a.status == 404) =>
            {
                NodeReport::Lightning(None)
            }
            Err(e) => NodeReport::Unavailable(format!("{e:#}")),
        }
    }

    async fn onchain_report(
        &mut self,
        admin: &AdminClient,
        p: &MessagePayment,
        request: &OnchainRequest,
    ) -> NodeReport {
        let Some(txid) = p.txid() else {
            return NodeReport::Onchain(None);
        };
        if self.wallet.is_none() {
            // The wallet learns of new transactions when it syncs.
            let _ = admin.post::<Value>("/admin/v1/sync", &json!({})).await;
            match admin
                .get::<Vec<WalletTx>>("/admin/v1/wallet/transactions")
                .await
            {
                Ok(list) => self.wallet = Some(list),
                Err(e) => return NodeReport::Unavailable(format!("{e:#}")),
            }
            self.tip = match self.bitcoin {
                Some(rpc) => rpc.tip().await.ok(),
                None => None,
            };
            if self.tip.is_none() {
                // Without a chain source, the newest block the wallet has a
                // transaction in: a lower bound on the tip.
                self.tip = self
                    .wallet
                    .iter()
                    .flatten()
                    .filter_map(|t| t.confirmation_height)
                    .max();
            }
        }
        let txid_text = txid.to_string();
        let Some(tx) = self.wallet.iter().flatten().find(|t| t.txid == txid_text) else {
            return NodeReport::Onchain(None);
        };
        let confirmations = match (tx.confirmation_height, self.tip) {
            (Some(h), Some(tip)) => tip.saturating_sub(h) + 1,
            _ => 0,
        };
        // The wallet's total could come from another of its addresses; the
        // transaction's outputs tell whether it pays the address of the URI.
        let outputs = match (self.bitcoin, request.address(self.network)) {
            (Some(rpc), Ok(address)) => rpc
                .outputs(&txid, tx.confirmation_height, &address)
                .await
                .map_err(|e| tracing::warn!("cannot read transaction {txid}: {e:#}"))
                .ok(),
            _ => None,
        };
        NodeReport::Onchain(Some(WalletTxLookup {
            received_sat: tx.received_sat,
            sent_sat: tx.sent_sat,
            confirmations,
            outputs,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bitcoin_rpc_errors_do_not_show_the_password() {
        let rpc = BitcoinRpc {
            url: "http://rpcuser:hunter2@127.0.0.1:9".into(),
            user: "rpcuser".into(),
            password: "hunter2".into(),
        };
        let err = format!("{:#}", rpc.tip().await.unwrap_err());
        assert!(err.contains("cannot reach Bitcoin Core"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(!format!("{rpc:?}").contains("hunter2"));
    }
}
