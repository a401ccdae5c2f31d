//! Lightning zaps (NIP-57) for the names this node serves.
//!
//! - [`ZapRequest::validate`] checks a kind-9734 zap request as an LNURL
//!   server must (NIP-57 Appendix D) and gives the description hash the
//!   invoice commits to: SHA-256 of the request JSON exactly as received.
//! - [`build_receipt`] makes the kind-9735 zap receipt, signed by the
//!   node's zapper key (`<data_dir>/zap.key`, 0600, the `nostrPubkey` of the
//!   LNURL-pay endpoint).
//! - [`ZapService`] issues zap invoices, remembers them in
//!   `<data_dir>/zaps.sqlite`, and publishes each receipt once the invoice is
//!   paid — to the relays the request names (over WebSockets) and the node's
//!   own relay (in-process, through a [`crate::relay_link::RelayLink`]), once
//!   per payment hash, also across restarts. [`ReceiptPublisher`] records
//!   each relay's delivery and retries the ones that missed it (same event).
//! - [`RelayPolicy`] keeps strangers' relay URLs from making the node
//!   connect to loopback, private, link-local or any other special-purpose
//!   address ([`is_special_purpose`]); a receipt goes to the very address
//!   that was checked (one resolution per attempt, no DNS rebinding).

mod delivery;
mod receipt;
mod relay_filter;
mod request;
mod service;
mod store;

pub use delivery::{ReceiptPublisher, RetryPolicy};
pub use receipt::build_receipt;
pub use relay_filter::{is_special_purpose, RelayPolicy, Resolver, SystemResolver};
pub use request::{ZapRequest, ZapRequestError, MAX_RECEIPT_RELAYS, MAX_ZAP_REQUEST_LEN};
pub use service::{
    ZapService, ZapServiceConfig, ZAP_KEY_FILE_NAME, ZAP_RECEIPTS_PENDING, ZAP_STORE_FILE_NAME,
};
pub use store::{Delivery, DeliveryOutcome, PendingZap, ZapState, ZapStore};

use std::path::PathBuf;

/// Zap failures (outside request validation, see [`ZapRequestError`]).
#[derive(Debug, thiserror::Error)]
pub enum ZapError {
    /// The zapper key file could not be read or created.
    #[error(transparent)]
    Key(#[from] crate::keyfile::KeyFileError),
    /// A file could not be opened or secured.
    #[error("zap storage {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A SQLite statement failed.
    #[error("zap store: {0}")]
    Sqlite(#[from] bdk_wallet::rusqlite::Error),
    /// The stored or given zap request is not a valid event.
    #[error("zap request: {0}")]
    Request(#[from] ZapRequestError),
    /// Signing the receipt failed.
    #[error("building the zap receipt: {0}")]
    Event(#[from] nostr::event::builder::Error),
    /// The node's own relay URL is not valid.
    #[error("invalid relay URL {0:?}")]
    RelayUrl(String),
    /// Too many zap invoices are outstanding (unpaid, unexpired).
    #[error("too many unpaid zap invoices; try again in {retry_after_secs} s")]
    TooManyPending {
        /// Seconds until the first outstanding invoice expires.
        retry_after_secs: u64,
    },
    /// The wallet could not issue the invoice.
    #[error("wallet: {0}")]
    Wallet(#[from] crate::wallet_backend::BackendError),
}
