//! End-to-end tests of what an operator runs a node with: the `/health` and
//! `/ready` probes, Prometheus metrics, backups and restores, and retention.

mod backup;
mod health;
mod metrics;
mod retention;

use std::net::SocketAddr;

/// A loopback address nothing listens on (bound, then released).
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
