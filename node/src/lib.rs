//! The Cairn node: settings, the HTTP/WebSocket server that mounts the relay,
//! background jobs and shutdown. The `cairn` binary is a thin CLI over this.

pub mod admin_client;
pub mod admin_routes;
pub mod admin_token;
pub mod bitcoin_settings;
pub mod cli;
pub mod cli_amounts;
pub mod identity_routes;
pub mod own_relay;
pub mod identity_settings;
pub mod ln_cli;
pub mod msg_claims;
pub mod msg_cli;
pub mod nwc_cli;
pub mod payments_runtime;
pub mod payments_settings;
pub mod server;
pub mod settings;
pub mod wallet_cli;
pub mod zap_routes;
pub mod zap_settings;
pub mod zaps_runtime;

pub use server::{start, RunningNode};
pub use settings::Settings;
