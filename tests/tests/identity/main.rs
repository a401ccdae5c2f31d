//! End-to-end tests of the identity service: a real `cairn` node with
//! `[identity] enabled`, anchoring on `testchain` (or a real bitcoind when
//! `BITCOIND_EXE` is set), checking proof posts on a local fake X.

mod cli;
mod fake_x;
mod flow;
mod limits;
mod mirror;
mod support;
mod two_nodes;
