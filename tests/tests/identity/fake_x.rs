//! The fake X server of the identity crate ([`cairn_identity::x::fake`],
//! feature `fake-x`): one implementation shared with `identity/tests/x_proof.rs`.
//! This module only keeps the `crate::fake_x` path the tests import from.

pub use cairn_identity::x::fake::{FakeX, Post};
