//! End-to-end tests of the relay over real sockets. Every case runs against
//! SQLite, and against Postgres when `CAIRN_TEST_POSTGRES_URL` is set.

mod auth;
mod bad_input;
mod deletion_expiration;
mod edge_cases;
mod filters;
mod kinds;
mod limits;
mod negentropy;
mod nip11;
mod persistence;
mod privacy;
mod rate_limits;
mod sdk_client;
