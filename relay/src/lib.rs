//! Cairn's relay engine: NIP-01 messages, filters and subscriptions, private
//! message policy, NIP-42 AUTH, rate limits, fan-out, and storage behind the
//! [`store::Store`] trait with SQLite and Postgres backends.
//!
//! The engine does not know about HTTP: the node accepts WebSockets, asks
//! [`Relay::admit`] for a slot, and hands the socket to
//! [`connection::serve_connection`]. Services in the same process publish
//! and subscribe without a socket ([`local`]); both paths take an event
//! through the same rules ([`accept`]).

#![warn(missing_docs)]

pub mod accept;
pub mod auth;
pub mod config;
pub mod connection;
pub mod kinds;
pub mod local;
pub mod message;
pub mod nip11;
pub mod privacy;
pub mod ratelimit;
pub mod relay;
pub mod store;
pub mod verify;

pub use accept::{Accepted, Refused};
pub use connection::{serve_connection, Incoming, Outgoing};
pub use local::{Subscription, SubscriptionError};
pub use relay::{AdmitError, ConnectionPermit, LiveEvent, Relay};
