//! The Cairn node, in three sections: [`settings`] (what `cairn.toml` and
//! `CAIRN_*` say), the server (the HTTP/WebSocket server that mounts the
//! relay, its routes, background jobs and shutdown) and [`cli`] (the `cairn`
//! commands other than `serve`). [`redact`] and [`admin_token`] are shared by
//! the server and the CLI. The `cairn` binary is a thin clap layer over this.

pub mod admin_routes;
pub mod admin_token;
pub mod cli;
pub mod identity_routes;
pub mod own_relay;
pub mod payments_runtime;
pub mod redact;
pub mod server;
pub mod settings;
pub mod zap_routes;
pub mod zaps_runtime;

// The settings modules' former paths, until the server files import the new ones.
#[doc(hidden)]
pub use settings::identity as identity_settings;
#[doc(hidden)]
pub use settings::payments as payments_settings;
#[doc(hidden)]
pub use settings::zaps as zap_settings;

pub use server::{start, RunningNode};
pub use settings::Settings;
