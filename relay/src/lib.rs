//! Cairn's relay engine: NIP-01 messages, filters and subscriptions, private
//! message policy, NIP-42 AUTH, rate limits, fan-out, and storage behind the
//! [`store::Store`] trait with SQLite and Postgres backends.
//!
//! The engine does not know about HTTP: a WebSocket server asks
//! [`Relay::admit`] for a slot and hands the socket to
//! [`connection::serve_connection`]. The one such server is `ws` (feature
//! `ws`, an axum router the node mounts; `testing`, feature `test-relay`,
//! serves it to other crates' tests). Services in the same process publish
//! and subscribe without a socket ([`local`]); both paths take an event
//! through the same rules ([`accept`]). NIP-77 set reconciliation is in
//! [`negentropy`].

#![warn(missing_docs)]

pub mod accept;
pub mod auth;
pub mod config;
pub mod connection;
pub mod kinds;
pub mod local;
pub mod matching;
pub mod message;
pub mod metrics;
pub mod negentropy;
pub mod net;
pub mod nip11;
mod outbound;
pub mod privacy;
pub mod ratelimit;
pub mod relay;
pub mod retention;
pub mod store;
#[cfg(feature = "test-relay")]
pub mod testing;
pub mod verify;
#[cfg(feature = "ws")]
pub mod ws;

pub use accept::{Accepted, Refused};
pub use connection::{serve_connection, Incoming, Outgoing};
pub use local::{Subscription, SubscriptionError};
pub use relay::{AdmitError, ConnectionPermit, LiveEvent, Relay};
