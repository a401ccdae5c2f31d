//! The node's HTTP routes besides the relay: the identity API
//! (`/identity/v1`, NIP-05), the admin API (`/admin/v1`), name payments
//! (LNURL-pay, zaps, on-chain addresses) and the probes (`/health`, `/ready`).

pub mod admin;
pub mod health;
pub mod identity;
pub mod outbox;
pub mod zaps;
