//! End-to-end tests of what an operator runs a node with: the `/health` and
//! `/ready` probes, Prometheus metrics, backups and restores, and retention.

mod backup;
// The backup of a witness with both wallets reuses the identity and payments
// tests' own helpers (node, fake X, bind flow; payments settings, ports).
#[path = "../identity/fake_x.rs"]
#[allow(dead_code)]
mod fake_x;
mod health;
#[path = "../identity/support.rs"]
#[allow(dead_code)]
mod id_support;
#[path = "../../../payments/tests/support/mod.rs"]
mod ln_support;
mod metrics;
#[path = "../payments/support.rs"]
// Its re-exports of the Lightning helpers are for the payments tests.
#[allow(dead_code, unused_imports)]
mod pay_support;
mod retention;

use std::net::SocketAddr;

/// A loopback address nothing listens on (bound, then released).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
