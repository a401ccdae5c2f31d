//! The wall clock, in the unix seconds that the NWC, zap and Lightning event
//! stores keep and Nostr timestamps use.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the unix epoch. A system clock set before 1970 reads as 0
/// instead of failing: the stores' times are bookkeeping, not a reason to stop.
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
