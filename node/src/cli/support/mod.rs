//! What several commands share: the user's keys, the node's identity API,
//! proof bundles, the admin API client, amounts, times, the output
//! writer and the Bitcoin Core login flags.

use std::time::Duration;

pub mod admin;
pub mod amounts;
pub mod bundle;
pub mod keys;
pub mod node;
pub mod output;
pub mod rpc;
pub mod time;

/// Bound on each HTTP request to the node and each Bitcoin Core RPC call.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
