//! The zap service of a node that serves name payments: opened on the
//! Lightning node once payments run (which may be only after a retry, see
//! [`super::payments`]), stopped before payments stop.

use std::sync::{Arc, OnceLock};

use cairn_payments::lightning::{LightningNode, DEFAULT_INVOICE_EXPIRY_SECS};
use cairn_payments::zap::{RetryPolicy, ZapService, ZapServiceConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::payments::PaymentsSlot;
use crate::server::own_relay::OwnRelay;
use crate::settings::Settings;

/// The zap service, once open.
pub type ZapCell = Arc<OnceLock<Arc<ZapService<LightningNode>>>>;

/// Opens and starts the zap service when payments run; stops it.
#[derive(Debug)]
pub struct ZapsRuntime {
    cell: ZapCell,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ZapsRuntime {
    /// Starts waiting for payments in `slot`; receipts also go to `own_relay`.
    pub fn start(settings: &Settings, slot: Arc<PaymentsSlot>, own_relay: &OwnRelay) -> Self {
        let cell: ZapCell = Arc::default();
        let stop = CancellationToken::new();
        let config = ZapServiceConfig {
            data_dir: settings.data_dir.clone(),
            own_relay_url: own_relay.url().to_owned(),
            invoice_expiry_secs: DEFAULT_INVOICE_EXPIRY_SECS,
            allow_private_relays: settings.zaps.allow_private_relays,
            max_pending: settings.zaps.max_pending_zaps,
            retry: RetryPolicy::default(),
        };
        let own_link = Arc::new(own_relay.clone());
        let task = tokio::spawn({
            let cell = Arc::clone(&cell);
            let stop = stop.clone();
            async move {
                let payments = tokio::select! {
                    _ = stop.cancelled() => return,
                    payments = slot.wait() => payments,
                };
                let lightning = Arc::clone(payments.lightning());
                // Subscribe before the catch-up sweep inside `start`, so a
                // payment arriving in between is not missed.
                let events = lightning.subscribe();
                match ZapService::open(&config, lightning, own_link) {
                    Ok(service) => {
                        service.start(events);
                        let _ = cell.set(Arc::new(service));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "zap service could not start; zaps are off")
                    }
                }
            }
        });
        Self { cell, stop, task }
    }

    /// Where the routes find the service.
    pub fn cell(&self) -> &ZapCell {
        &self.cell
    }

    /// Stops waiting, and the service if it runs.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        if let Some(service) = self.cell.get() {
            service.stop().await;
        }
    }
}
