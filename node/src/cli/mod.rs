//! The `cairn` commands other than `serve`, one module per command group:
//! `identity`, `key`, `verify`, `wallet`, `ln`, `nwc`, `msg`, `sync` and `backup` (with restore). What several of
//! them use (keys, the node's identity API, proof bundles, the admin API
//! client, amounts) is in [`support`].
//!
//! Every command is a library function, so tests drive the same code as the
//! binary without spawning it. The identity and verify functions are also
//! re-exported here (`cli::bind`, `cli::verify_subject`, …).

use std::io::Write as _;

use anyhow::Result;

pub mod backup;
pub mod identity;
pub mod key;
pub mod ln;
pub mod msg;
pub mod nwc;
pub mod support;
pub mod sync;
pub mod verify;
pub mod wallet;

pub use identity::{
    bind, chain_op, export_headers, parse_post_id, render_challenge, render_exported,
    render_receipt, render_status, request_challenge, run_identity, BindRequest, ChainOp,
    Challenge, ExportedHeaders, HeaderRange, IdentityArgs, Receipt,
};
pub use support::bundle::{
    fetch_bundle, parse_bundle, read_bundle, write_bundle, BundleFormat, MalformedBundle,
};
pub use support::keys::{load_keys, npub, parse_secret_key, KeyArgs, NSEC_ENV};
pub use support::node::{status, status_label, NodeClient, NodeError, StatusView, Subject};
pub use verify::{
    is_verification_failure, parse_checkpoint, read_absence_bundle, render_absent, render_verified,
    run_verify, verify_absence_bundle, verify_absent, verify_bundle, verify_bundle_async,
    verify_subject, ChainSource, SubjectMismatch, VerifyArgs, VerifyOptions,
};

/// Ends a CLI command: on error, prints it (with its causes) to stderr and
/// exits with 1 when a bundle did not verify, 2 for any other failure. A
/// result cut short because its reader closed the pipe (`| head`) is a
/// normal end: exit 0, nothing printed.
pub fn exit_with(result: Result<()>) -> anyhow::Result<()> {
    let Err(e) = result else {
        return Ok(());
    };
    if support::output::is_closed_pipe(&e) {
        std::process::exit(0);
    }
    // Not eprintln!: it panics when stderr is a closed pipe too.
    let mut stderr = std::io::stderr().lock();
    if is_verification_failure(&e) {
        let _ = writeln!(stderr, "NOT VERIFIED: {}", render_error(&e));
        std::process::exit(1);
    }
    let _ = writeln!(stderr, "error: {}", render_error(&e));
    std::process::exit(2);
}

/// `e` with its causes, `: `-separated, skipping causes that the message
/// before already quotes (many library errors print their source too).
pub fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
