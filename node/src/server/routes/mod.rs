//! The node's HTTP routes besides the relay: the identity API
//! (`/identity/v1`, NIP-05), the admin API (`/admin/v1`) and name payments
//! (LNURL-pay, zaps, on-chain addresses).

pub mod admin;
pub mod identity;
pub mod zaps;
