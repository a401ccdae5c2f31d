//! Which Bitcoin Core release the in-process node answers like.
//!
//! Core's RPC results change between releases: fields are dropped (kept for
//! a while behind `-deprecatedrpc=<name>`) or change type. A client that
//! parses only one release's shape breaks on the others, as the anchor wallet
//! did when current Core stopped sending `bip125-replaceable`. Tests run the
//! same calls against several dialects so such a dependency shows up here and
//! not on a user's node.

use std::collections::BTreeSet;

/// A Bitcoin Core release whose RPC shapes testchain can imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum CoreVersion {
    /// Core 25: `warnings` is a string; `getmempoolentry` always carries
    /// `bip125-replaceable`.
    V25,
    /// Core 28, the release the shape fixtures follow: `warnings` is an
    /// array, and `bip125-replaceable` is sent only with
    /// `-deprecatedrpc=bip125`.
    V28,
    /// Current Core (a v31 development build), the default: like 28, plus
    /// the `target` field that Core 29 added to block headers and
    /// `getblockchaininfo`, `reject-details` in `testmempoolaccept` (29),
    /// script failures as `mempool-script-verify-flag-failed` naming the
    /// input, a 100 sat/kvB minimum relay and incremental fee and any number
    /// of OP_RETURN outputs (30), and the cluster mempool's replacement
    /// rules (31: fees first, then the feerate diagram).
    #[default]
    V31,
}

impl CoreVersion {
    /// `getnetworkinfo`'s `version` (Core's `CLIENT_VERSION`).
    pub fn client_version(self) -> u32 {
        match self {
            Self::V25 => 250_000,
            Self::V28 => 280_000,
            Self::V31 => 309_900,
        }
    }

    /// `getnetworkinfo`'s `subversion`.
    pub fn subversion(self) -> &'static str {
        match self {
            Self::V25 => "/Satoshi:25.0.0(testchain)/",
            Self::V28 => "/Satoshi:28.0.0(testchain)/",
            Self::V31 => "/Satoshi:30.99.0(testchain)/",
        }
    }

    /// Default `-minrelaytxfee` and `-incrementalrelayfee`, in sat/kvB:
    /// Core 30 lowered both from 1000 to 100.
    pub fn min_relay_fee_sat_per_kvb(self) -> u64 {
        if self >= Self::V31 {
            100
        } else {
            1_000
        }
    }

    /// Whether `testmempoolaccept` sends `reject-details` (Core 29+).
    pub fn sends_reject_details(self) -> bool {
        self >= Self::V31
    }

    /// Whether a failed input script is reported as
    /// `mempool-script-verify-flag-failed (…), input N of TXID (wtxid …),
    /// spending PREV:N` (Core 30+) rather than Core 28's
    /// `mandatory-script-verify-flag-failed (…)`.
    pub fn names_failed_input(self) -> bool {
        self >= Self::V31
    }

    /// Whether several OP_RETURN outputs of any size (up to
    /// `-datacarriersize`, 100000 bytes in all) are standard (Core 30+),
    /// rather than one of at most 83 bytes.
    pub fn relaxed_op_return(self) -> bool {
        self >= Self::V31
    }

    /// Whether replacements follow the cluster mempool (Core 31): the
    /// absolute-fee rules come first and a lower feerate fails as
    /// `replacement-failed` (the feerate diagram) instead of Core 28's
    /// `insufficient fee …; new feerate … <= old feerate …` check up front.
    pub fn cluster_mempool_rbf(self) -> bool {
        self >= Self::V31
    }
}

/// The RPC dialect: a release plus the `-deprecatedrpc` options it was started with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dialect {
    /// The release imitated.
    pub version: CoreVersion,
    /// `-deprecatedrpc=<name>` options, e.g. `bip125`, `warnings`.
    pub deprecated_rpc: BTreeSet<String>,
}

impl Dialect {
    /// `version` without deprecated fields.
    pub fn new(version: CoreVersion) -> Self {
        Self {
            version,
            deprecated_rpc: BTreeSet::new(),
        }
    }

    /// The same dialect with `-deprecatedrpc=<name>` added.
    pub fn with_deprecated_rpc(mut self, name: &str) -> Self {
        self.deprecated_rpc.insert(name.to_owned());
        self
    }

    fn deprecated(&self, name: &str) -> bool {
        self.deprecated_rpc.contains(name)
    }

    /// Whether mempool entries carry `bip125-replaceable`.
    pub fn sends_bip125_replaceable(&self) -> bool {
        self.version < CoreVersion::V28 || self.deprecated("bip125")
    }

    /// Whether `warnings` is a string (Core before 28, or
    /// `-deprecatedrpc=warnings`) rather than an array of strings.
    pub fn warnings_as_string(&self) -> bool {
        self.version < CoreVersion::V28 || self.deprecated("warnings")
    }

    /// Whether block headers and `getblockchaininfo` carry `target`, and
    /// `getblockchaininfo` the tip's `bits` (Core 29+).
    pub fn sends_target(&self) -> bool {
        self.version >= CoreVersion::V31
    }

    /// Whether `getblock` carries `coinbase_tx` (Core 30+).
    pub fn sends_coinbase_tx(&self) -> bool {
        self.version >= CoreVersion::V31
    }

    /// Whether `getmempoolinfo` and `getmempoolentry` answer in the cluster
    /// mempool's terms (Core 31): `chunkweight` and `fees.chunk` per
    /// entry; `limitclustercount`, `limitclustersize` and `optimal`, with
    /// `permitbaremultisig` and `maxdatacarriersize`, and without Core 28's
    /// `fullrbf`.
    pub fn cluster_mempool_fields(&self) -> bool {
        self.version >= CoreVersion::V31
    }

    /// Every dialect the shape tests run against: the oldest and newest
    /// supported releases, the fixtures' release, and current Core with the
    /// deprecated fields switched back on.
    pub fn all() -> Vec<Dialect> {
        vec![
            Dialect::new(CoreVersion::V25),
            Dialect::new(CoreVersion::V28),
            Dialect::new(CoreVersion::V31),
            Dialect::new(CoreVersion::V31)
                .with_deprecated_rpc("bip125")
                .with_deprecated_rpc("warnings"),
        ]
    }
}
