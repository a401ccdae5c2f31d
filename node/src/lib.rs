//! The Cairn node, in three sections: [`settings`] (what `cairn.toml` and
//! `CAIRN_*` say), [`server`] (the HTTP/WebSocket server that mounts the
//! relay, its routes and runtimes, background jobs and shutdown) and [`cli`]
//! (the `cairn` commands other than `serve`); [`web`] holds the pages the
//! server shows browsers; [`sync`] reconciles with other relays (NIP-77), for
//! `cairn sync` and the scheduled `[[sync]]` runs; [`mirror`] follows other
//! identity witnesses. [`redact`] and [`admin_token`]
//! are shared by the server and the CLI; [`db`] migrates the node's own
//! tables. The `cairn` binary is a thin clap
//! layer over this.

pub mod admin_token;
pub mod cli;
pub mod db;
pub mod mirror;
pub mod outbox;
pub mod redact;
pub mod server;
pub mod settings;
pub mod sync;
pub mod web;

pub use server::{start, RunningNode};
pub use settings::Settings;
