//! The zap service of a node that serves name payments: opened on the
//! Lightning node each time payments start in this process (which may be
//! only after a retry, or after this process took the payments lease over
//! from another, see [`super::payments`]), and stopped before payments stop.

use std::sync::{Arc, Mutex};

use cairn_payments::lightning::{LightningNode, DEFAULT_INVOICE_EXPIRY_SECS};
use cairn_payments::relay_link::RelayLink;
use cairn_payments::zap::{RetryPolicy, ZapService, ZapServiceConfig};

use super::payments::Payments;
use crate::server::own_relay::OwnRelay;
use crate::settings::Settings;

/// The zap service while it runs in this process.
pub type ZapCell = Arc<Mutex<Option<Arc<ZapService<LightningNode>>>>>;

/// Opens and starts the zap service on running payments; stops it.
pub struct ZapsRuntime {
    cell: ZapCell,
    config: ZapServiceConfig,
    own_link: Arc<dyn RelayLink>,
}

impl std::fmt::Debug for ZapsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZapsRuntime").finish_non_exhaustive()
    }
}

impl ZapsRuntime {
    /// The zap service's settings; receipts also go to `own_relay`.
    pub fn new(settings: &Settings, own_relay: &OwnRelay) -> Self {
        let config = ZapServiceConfig {
            data_dir: settings.data_dir.clone(),
            own_relay_url: own_relay.url().to_owned(),
            invoice_expiry_secs: DEFAULT_INVOICE_EXPIRY_SECS,
            allow_private_relays: settings.zaps.allow_private_relays,
            max_pending: settings.zaps.max_pending_zaps,
            retry: RetryPolicy::default(),
        };
        Self {
            cell: Arc::default(),
            config,
            own_link: Arc::new(own_relay.clone()),
        }
    }

    /// Where the routes find the service.
    pub fn cell(&self) -> &ZapCell {
        &self.cell
    }

    /// The running service, if any.
    pub fn get(&self) -> Option<Arc<ZapService<LightningNode>>> {
        self.cell.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Opens and starts the service on `payments`' Lightning node (its
    /// catch-up sweep settles zaps paid while no process ran it). A failure
    /// is logged: zaps are off, payments run on.
    pub(crate) fn start_on(&self, payments: &Payments) {
        let lightning = Arc::clone(payments.lightning());
        // Subscribe before the catch-up sweep inside `start`, so a payment
        // arriving in between is not missed.
        let events = lightning.subscribe();
        match ZapService::open(&self.config, lightning, Arc::clone(&self.own_link)) {
            Ok(service) => {
                service.start(events);
                *self.cell.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(service));
            }
            Err(e) => tracing::error!(error = %e, "zap service could not start; zaps are off"),
        }
    }

    /// Stops the service if it runs.
    pub(crate) async fn stop_service(&self) {
        let running = self.cell.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(service) = running {
            service.stop().await;
        }
    }
}
