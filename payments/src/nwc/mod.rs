//! Nostr Wallet Connect (NIP-47) service.
//!
//! The node's wallet answers NIP-47 requests from apps it has handed a
//! `nostr+walletconnect://` URI to:
//!
//! - [`NwcService`] owns the wallet-service key (`<data_dir>/nwc_service.key`,
//!   0600), publishes the kind 13194 info event, answers kind 23194 requests
//!   with kind 23195 responses (NIP-44 v2, or NIP-04 when the request asks for
//!   it or names no encryption) and sends `payment_received` / `payment_sent`
//!   notifications (kind 23197 over NIP-44, and kind 23196 over NIP-04 for
//!   older clients). A notification goes only to the connection that issued
//!   the invoice (`payment_received`, needs `make_invoice`) or sent the
//!   payment (`payment_sent`, needs `pay_invoice`), never to other apps;
//!   likewise `lookup_invoice` and `list_transactions` show a connection its
//!   own invoices and payments only (see [`NwcConnection::notifications`]).
//! - A payment reserves its amount plus the most it may cost in routing fees
//!   ([`max_routing_fee_msat`]) against the budget, passes that cap to the
//!   router, and counts the fee actually paid once it settles.
//! - [`NwcStore`] keeps connections (permissions, budget with renewal period,
//!   per-payment maximum, expiry, revocation), budget reservations and every
//!   handled request id with its response, so a replayed request is answered
//!   with the stored response and never executed twice. Request ids are kept
//!   for [`REQUEST_RETENTION`]; older requests are refused as expired, so a
//!   pruned id cannot be replayed.
//! - A request cut short by a restart (seen, never answered) is resumed when
//!   it is replayed: the wallet's payment record says whether the invoice was
//!   already paid, so it is never paid twice (the rule is the Lightning
//!   node's, see [`crate::lightning`] on paying), and the reply carries the
//!   final outcome. On start, reservations left open are settled or released
//!   from that record.
//! - The wallet is reached through [`crate::wallet_backend::WalletBackend`],
//!   which the zap service shares.

mod service;
mod store;

use std::path::PathBuf;
use std::str::FromStr;

pub use service::{
    service_keys, NwcService, NwcServiceConfig, MAX_CLOCK_SKEW, NWC_REQUESTS, REQUEST_RETENTION,
    SERVICE_KEY_FILE_NAME, STORE_FILE_NAME,
};
pub use store::{IssuedInvoice, NwcStore, RequestState};

/// Methods this service implements, as NIP-47 names them.
pub const SUPPORTED_METHODS: [&str; 6] = [
    "pay_invoice",
    "make_invoice",
    "lookup_invoice",
    "list_transactions",
    "get_balance",
    "get_info",
];

/// NIP-47 `get_budget`: a connection's budget, what it has used of it and
/// when it renews. Not a permission: every connection may ask (one without a
/// budget gets `{}`, "no budget"). The info event lists it while an active
/// connection has a budget. `get_info` does not: nostr 0.44 clients (the
/// `nwc` crate) refuse a `get_info` answer naming a method they do not know.
pub const GET_BUDGET: &str = "get_budget";

/// Notification types this service sends.
pub const SUPPORTED_NOTIFICATIONS: [&str; 2] = ["payment_received", "payment_sent"];

/// Routing-fee cap of a payment through NWC, proportional part in parts
/// per million of the amount (10_000 = 1%).
pub const MAX_ROUTING_FEE_PPM: u64 = 10_000;
/// Routing-fee cap of a payment through NWC, fixed part (10 sat), so small
/// payments can still find a route.
pub const MAX_ROUTING_FEE_BASE_MSAT: u64 = 10_000;

/// The most a payment of `amount_msat` through NWC may cost in routing fees:
/// 1% of the amount (rounded up) plus 10 sat. Reserved against the budget
/// with the amount and passed to the router as its limit.
pub fn max_routing_fee_msat(amount_msat: u64) -> u64 {
    let proportional = (amount_msat as u128 * MAX_ROUTING_FEE_PPM as u128).div_ceil(1_000_000);
    u64::try_from(proportional)
        .unwrap_or(u64::MAX)
        .saturating_add(MAX_ROUTING_FEE_BASE_MSAT)
}

/// NWC failures (outside the NIP-47 error codes sent to apps).
#[derive(Debug, thiserror::Error)]
pub enum NwcError {
    /// A file could not be read, written or secured.
    #[error("NWC storage {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A SQLite statement failed.
    #[error("NWC store: {0}")]
    Sqlite(#[from] bdk_wallet::rusqlite::Error),
    /// The service key file does not hold a valid key.
    #[error("NWC service key file {0} is not a valid secret key")]
    BadServiceKey(PathBuf),
    /// The service key file could not be read or written, or others may
    /// read it.
    #[error("NWC service key: {0}")]
    ServiceKeyFile(#[from] cairn_bitcoin::private_file::PrivateFileError),
    /// A method name that NIP-47 does not define or this service does not implement.
    #[error("unsupported NWC method {0:?}")]
    UnknownMethod(String),
    /// The relay URL is not valid.
    #[error("invalid relay URL {0:?}")]
    RelayUrl(String),
    /// Talking to the relay failed.
    #[error("relay: {0}")]
    Relay(#[from] crate::relay_link::RelayLinkError),
    /// Signing an event failed.
    #[error("building an event: {0}")]
    Event(#[from] nostr::event::builder::Error),
    /// No connection with that id.
    #[error("no NWC connection {0}")]
    NoSuchConnection(i64),
}

/// When a connection's budget starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetRenewal {
    /// Every 24 hours from the connection's creation.
    Daily,
    /// Every 7 days.
    Weekly,
    /// Every 30 days.
    Monthly,
    /// Every 365 days.
    Yearly,
    /// The budget is for the connection's whole life.
    Never,
}

impl BudgetRenewal {
    /// The NIP-47 / CLI name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Yearly => "yearly",
            Self::Never => "never",
        }
    }

    fn period_secs(&self) -> Option<u64> {
        const DAY: u64 = 86_400;
        match self {
            Self::Daily => Some(DAY),
            Self::Weekly => Some(7 * DAY),
            Self::Monthly => Some(30 * DAY),
            Self::Yearly => Some(365 * DAY),
            Self::Never => None,
        }
    }

    /// When the budget window containing `now` ends and the budget starts
    /// over (`None`: it never renews).
    pub fn next_renewal(&self, created_at: u64, now: u64) -> Option<u64> {
        let p = self.period_secs()?;
        let windows = now.saturating_sub(created_at) / p + 1;
        Some(created_at.saturating_add(windows.saturating_mul(p)))
    }

    /// Start of the budget window containing `now`, for a connection created
    /// at `created_at`. Windows are fixed-length periods counted from creation,
    /// so renewal does not depend on time zones or month lengths.
    pub fn window_start(&self, created_at: u64, now: u64) -> u64 {
        match self.period_secs() {
            Some(p) if now > created_at => created_at + (now - created_at) / p * p,
            _ => 0,
        }
    }
}

impl FromStr for BudgetRenewal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "daily" | "day" => Self::Daily,
            "weekly" | "week" => Self::Weekly,
            "monthly" | "month" => Self::Monthly,
            "yearly" | "year" => Self::Yearly,
            "never" => Self::Never,
            other => return Err(format!("unknown budget renewal {other:?}")),
        })
    }
}

/// One app's connection to the wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NwcConnection {
    /// Row id.
    pub id: i64,
    /// Human name, e.g. the app's.
    pub name: String,
    /// The app's key: requests are signed by it.
    pub client_pubkey: nostr::PublicKey,
    /// Allowed NIP-47 methods.
    pub permissions: Vec<String>,
    /// Budget per renewal window, in millisatoshis (`None`: unlimited).
    pub budget_msat: Option<u64>,
    /// When the budget starts over.
    pub renewal: BudgetRenewal,
    /// Largest single payment, in millisatoshis (`None`: no limit).
    pub max_payment_msat: Option<u64>,
    /// Unix time after which the connection stops working.
    pub expires_at: Option<u64>,
    /// Revoked by the owner.
    pub revoked: bool,
    /// Unix time of creation.
    pub created_at: u64,
}

impl NwcConnection {
    /// Whether the connection may be used at unix time `now`.
    pub fn is_active(&self, now: u64) -> bool {
        !self.revoked && self.expires_at.is_none_or(|e| now < e)
    }

    /// Whether `method` is permitted.
    pub fn allows(&self, method: &str) -> bool {
        self.permissions.iter().any(|p| p == method)
    }

    /// The notifications this connection receives, about its own payments
    /// only: `payment_received` for invoices it issued (needs
    /// `make_invoice`), `payment_sent` for payments it sent (needs
    /// `pay_invoice`). NIP-47 has no separate notification permission; tying
    /// them to the method that creates the payment means an app never
    /// learns about a payment it could not have made itself.
    pub fn notifications(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.allows("make_invoice") {
            out.push("payment_received");
        }
        if self.allows("pay_invoice") {
            out.push("payment_sent");
        }
        out
    }
}

/// What a new connection may do.
#[derive(Debug, Clone)]
pub struct NewConnection {
    /// Human name.
    pub name: String,
    /// Allowed methods (NIP-47 names); each must be in [`SUPPORTED_METHODS`].
    pub permissions: Vec<String>,
    /// Budget per window in millisatoshis (`None`: unlimited).
    pub budget_msat: Option<u64>,
    /// Renewal period of the budget.
    pub renewal: BudgetRenewal,
    /// Per-payment maximum in millisatoshis.
    pub max_payment_msat: Option<u64>,
    /// Unix time of expiry.
    pub expires_at: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_windows_are_fixed_periods_from_creation() {
        let created = 1_000;
        assert_eq!(BudgetRenewal::Daily.window_start(created, 1_500), 1_000);
        assert_eq!(
            BudgetRenewal::Daily.window_start(created, 1_000 + 86_400 * 2 + 5),
            1_000 + 86_400 * 2
        );
        assert_eq!(BudgetRenewal::Never.window_start(created, 10_000_000), 0);
        assert_eq!(
            BudgetRenewal::Daily.next_renewal(created, 1_000 + 86_400 * 2 + 5),
            Some(1_000 + 86_400 * 3)
        );
        assert_eq!(
            BudgetRenewal::Daily.next_renewal(created, 1_000),
            Some(1_000 + 86_400)
        );
        assert_eq!(BudgetRenewal::Never.next_renewal(created, 10_000_000), None);
        assert_eq!("month".parse::<BudgetRenewal>(), Ok(BudgetRenewal::Monthly));
        assert!("fortnightly".parse::<BudgetRenewal>().is_err());
    }

    #[test]
    fn the_routing_fee_cap_is_one_percent_plus_ten_sat() {
        assert_eq!(max_routing_fee_msat(0), 10_000);
        assert_eq!(max_routing_fee_msat(1_000_000), 10_000 + 10_000);
        assert_eq!(max_routing_fee_msat(3_000_000), 30_000 + 10_000);
        // Rounded up, never below 1%.
        assert_eq!(max_routing_fee_msat(101), 2 + 10_000);
        assert!(
            max_routing_fee_msat(u64::MAX) > u64::MAX / 100,
            "no overflow"
        );
    }

    #[test]
    fn notifications_follow_the_methods_that_create_payments() {
        let mut c = NwcConnection {
            id: 1,
            name: "n".into(),
            client_pubkey: nostr::Keys::generate().public_key(),
            permissions: vec!["get_balance".into()],
            budget_msat: None,
            renewal: BudgetRenewal::Never,
            max_payment_msat: None,
            expires_at: None,
            revoked: false,
            created_at: 0,
        };
        assert!(c.notifications().is_empty());
        c.permissions.push("pay_invoice".into());
        assert_eq!(c.notifications(), vec!["payment_sent"]);
        c.permissions.push("make_invoice".into());
        assert_eq!(c.notifications(), vec!["payment_received", "payment_sent"]);
    }
}
