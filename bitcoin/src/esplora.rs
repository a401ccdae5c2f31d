//! An Esplora REST server as a chain source (`wallet` feature): one client
//! with the wallet's timeout, its errors as [`ChainError`]s, and its fee
//! estimates read the way ldk-node reads them.

use std::time::Duration;

use bdk_esplora::esplora_client::{self, AsyncClient};
use bitcoin::{FeeRate, Transaction, Txid};

use crate::rpc::ChainError;

/// Timeout of one Esplora HTTP request.
pub const ESPLORA_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of an Esplora server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Esplora {
    client: AsyncClient,
}

impl Esplora {
    /// A client of the server at `url` (no request is made yet).
    pub fn new(url: &str) -> Result<Self, ChainError> {
        let client = esplora_client::Builder::new(url)
            .timeout(ESPLORA_TIMEOUT.as_secs())
            .build_async()
            .map_err(|e| ChainError::Other(format!("bad Esplora URL: {e}")))?;
        Ok(Self { client })
    }

    /// The bdk client, for `EsploraAsyncExt` scans.
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Height of the server's best block.
    pub async fn tip_height(&self) -> Result<u32, ChainError> {
        self.client.get_height().await.map_err(|e| error(&e))
    }

    /// `/fee-estimates` (sat/vB by confirmation target) for `blocks`: the
    /// estimate of the largest target not above it, as ldk-node reads them;
    /// `None` when the server has none.
    pub async fn estimate_fee_rate(&self, blocks: u16) -> Result<Option<FeeRate>, ChainError> {
        let estimates = self
            .client
            .get_fee_estimates()
            .await
            .map_err(|e| error(&e))?;
        Ok(
            esplora_client::convert_fee_rate(usize::from(blocks), estimates).map(|sat_per_vb| {
                FeeRate::from_sat_per_kwu((f64::from(sat_per_vb) * 250.0) as u64)
            }),
        )
    }

    /// Broadcasts `tx`.
    pub async fn broadcast(&self, tx: &Transaction) -> Result<Txid, ChainError> {
        self.client.broadcast(tx).await.map_err(|e| error(&e))?;
        Ok(tx.compute_txid())
    }
}

/// Esplora failures as chain errors: transport failures are "unreachable",
/// answers with an error status (e.g. a rejected transaction) carry the
/// server's message.
pub fn error(e: &esplora_client::Error) -> ChainError {
    match e {
        esplora_client::Error::HttpResponse { status, message } => {
            ChainError::Other(format!("Esplora answered {status}: {message}"))
        }
        // reqwest's own text quotes the URL, which may hold credentials.
        esplora_client::Error::Reqwest(e) => {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            ChainError::Unreachable(match std::error::Error::source(e) {
                Some(cause) => format!("{what}: {cause}"),
                None => what.to_owned(),
            })
        }
        other => ChainError::Other(format!("Esplora: {other}")),
    }
}
