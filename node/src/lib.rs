//! The Cairn node: settings, the HTTP/WebSocket server that mounts the relay,
//! background jobs and shutdown. The `cairn` binary is a thin CLI over this.

pub mod cli;
pub mod identity_routes;
pub mod identity_settings;
pub mod server;
pub mod settings;

pub use server::{start, RunningNode};
pub use settings::Settings;
