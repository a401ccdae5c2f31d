//! End-to-end tests of payments in the node: real `cairn` nodes with
//! `[payments] enabled` on `testchain` (or a real bitcoind when
//! `BITCOIND_EXE` is set), real ldk-node Lightning nodes between them, driven
//! through the admin API, the `cairn wallet|ln|nwc` command code, and the
//! off-the-shelf `nwc` client over the node's own relay.

// The Lightning test helpers (free ports, bounded waits on ldk-node events)
// are shared with the payments crate's own tests rather than copied.
#[path = "../../../payments/tests/support/mod.rs"]
mod ln_support;

mod admin;
mod esplora;
mod flow;
mod support;
// Issue 10: funding and withdrawing the Lightning wallet, clear answers.
mod withdraw;

// `cairn msg` with payments: Alice's node also runs the identity registry,
// so the identity tests' helpers (node, fake X, bind flow) are shared too.
#[allow(dead_code)]
#[path = "../identity/fake_x.rs"]
mod fake_x;
#[allow(dead_code)]
#[path = "../identity/support.rs"]
mod id_support;
mod messages;

// Zaps (NIP-57) and payments to verified names.
mod zaps;
