//! Which message claimed which payment, kept across `cairn msg inbox` runs.
//!
//! One payment (a Lightning payment hash, or an on-chain address) proves one
//! message: the first gift wrap that claims it, in the order the wraps were
//! first seen by this user's inbox — never in the order of the rumor's
//! `created_at`, which the sender chooses. The file lives in the node's data
//! directory (mode 0600: it tells who paid whom) and is rewritten atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use cairn_bitcoin::private_file;
use nostr::EventId;
use serde::{Deserialize, Serialize};

/// The claims file's name in the data directory.
pub const CLAIMS_FILE: &str = "msg-claims.json";

/// The gift wrap (and its rumor) that first claimed a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The gift wrap's id.
    pub wrap: EventId,
    /// The rumor it carried: the same message re-wrapped keeps its claim.
    pub rumor: EventId,
}

/// The result of claiming a payment for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The payment is this message's (claimed now or by this message before).
    Ours,
    /// Another message claimed it first.
    Taken(Claim),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    /// Gift wrap id → when this inbox first processed it (Unix seconds).
    first_seen: BTreeMap<EventId, u64>,
    /// Claim key (`MessagePayment::claim_key`) → the first claim.
    claims: BTreeMap<String, Claim>,
}

/// The claims, loaded from (and saved to) `path`, or only in memory.
#[derive(Debug, Default)]
pub struct ClaimStore {
    path: Option<PathBuf>,
    stored: Stored,
    dirty: bool,
}

impl ClaimStore {
    /// Claims kept for this process only (tests, or no data directory).
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Loads `path` (missing: no claims yet).
    pub fn load(path: &Path) -> Result<Self> {
        let stored = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a claims file", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self {
            path: Some(path.to_owned()),
            stored,
            dirty: false,
        })
    }

    /// When `wrap` was first seen; records `now` for a wrap never seen before.
    pub fn first_seen(&mut self, wrap: EventId, now: u64) -> u64 {
        *self.stored.first_seen.entry(wrap).or_insert_with(|| {
            self.dirty = true;
            now
        })
    }

    /// Claims the payment `key` for `claim`, unless another message has it.
    pub fn claim(&mut self, key: &str, claim: Claim) -> ClaimOutcome {
        match self.stored.claims.get(key) {
            Some(first) if first.wrap == claim.wrap || first.rumor == claim.rumor => {
                ClaimOutcome::Ours
            }
            Some(first) => ClaimOutcome::Taken(*first),
            None => {
                self.stored.claims.insert(key.to_owned(), claim);
                self.dirty = true;
                ClaimOutcome::Ours
            }
        }
    }

    /// Writes the claims back (when anything changed), atomically and 0600
    /// ([`private_file::replace`]).
    pub fn save(&mut self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        private_file::replace(path, &serde_json::to_vec(&self.stored)?)
            .map_err(|e| anyhow!("writing the claims file: {e}"))?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> EventId {
        EventId::from_byte_array([b; 32])
    }

    #[test]
    fn first_claim_wins_across_runs_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLAIMS_FILE);
        let original = Claim {
            wrap: id(1),
            rumor: id(2),
        };
        let mut store = ClaimStore::load(&path).unwrap();
        assert_eq!(store.first_seen(id(1), 100), 100);
        assert_eq!(store.first_seen(id(1), 200), 100, "first sighting is kept");
        assert_eq!(store.claim("lightning:ab", original), ClaimOutcome::Ours);
        store.save().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // A later run: the replay (another wrap and rumor) is refused, the
        // original (even re-wrapped) keeps its claim.
        let mut store = ClaimStore::load(&path).unwrap();
        assert_eq!(store.first_seen(id(1), 300), 100);
        let replay = Claim {
            wrap: id(3),
            rumor: id(4),
        };
        assert_eq!(
            store.claim("lightning:ab", replay),
            ClaimOutcome::Taken(original)
        );
        let rewrapped = Claim {
            wrap: id(5),
            rumor: id(2),
        };
        assert_eq!(store.claim("lightning:ab", rewrapped), ClaimOutcome::Ours);
        assert_eq!(store.claim("onchain:bcrt1q", replay), ClaimOutcome::Ours);
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLAIMS_FILE);
        std::fs::write(&path, "not json").unwrap();
        assert!(ClaimStore::load(&path).is_err());
    }
}
