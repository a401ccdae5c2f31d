//! The public web pages in a real browser: headless Chromium (Debian's
//! `chromium`, driven over the DevTools protocol by [`cdp`]) against a real
//! node with the identity witness on `testchain` and the fake X, set up by
//! the identity tests' own helpers.
//!
//! Screenshots of every page land in `$CARGO_TARGET_DIR/screenshots/` (or
//! `target/screenshots/`). Without Chromium the tests fail, saying how to
//! install it: `.ci/run` installs it.

mod app;
mod cdp;
#[path = "../identity/fake_x.rs"]
#[allow(dead_code)]
mod fake_x;
mod identity;
mod pages;
// Issue 12: a Lightning payment attached to a message, between two nodes
// with a channel; the payments tests' helpers are shared, not copied.
#[path = "../../../payments/tests/support/mod.rs"]
mod ln_support;
mod pay;
#[path = "../payments/support.rs"]
#[allow(dead_code)]
mod pay_support;
#[path = "../identity/support.rs"]
#[allow(dead_code)]
mod support;
// Issue 12: the Wallet and Connections (NWC) pages, on a node with payments.
mod wallet;
