//! Nostr event kinds used by Cairn's identity protocol.
//!
//! All four are *regular* kinds (1000–9999): every operation, attestation and
//! epoch is an immutable record that must be kept, never replaced. The numbers
//! were picked from the unused 3000–3999 block after checking the kind table of
//! the NIPs repository and the `Kind` enums of rust-nostr 0.44/0.45.

/// A binding operation signed by the user's key (`bind`, `rotate`, `revoke`, `recover`, `veto`).
pub const BINDING: u16 = 3470;

/// A witness attestation signed by a node's key: what it saw on X, and when.
pub const WITNESS_ATTESTATION: u16 = 3471;

/// An epoch header published by a node, with its anchor txid once known.
pub const EPOCH_HEADER: u16 = 3472;

/// A log segment published by a node at each epoch close: the epoch's
/// operations in log order, with their heights (see [`crate::segment`]).
pub const LOG_SEGMENT: u16 = 3473;
