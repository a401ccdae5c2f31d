//! Where every command's result goes: stdout, written with `writeln!` to a
//! locked handle, never with `println!` (which panics when the reader has
//! gone, e.g. `cairn ln info | head -1`). A write error comes back as an
//! error; [`crate::cli::exit_with`] ends the process quietly with 0 when it
//! is a closed stdout ([`ClosedStdout`], see [`is_closed_pipe`]).
//!
//! Logs go to stderr (see `main.rs`), so stdout holds only results.

use std::fmt::Display;
use std::io::Write as _;

use anyhow::{Context as _, Result};

/// Stdout's reader has gone (`EPIPE`): it wanted no more output.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct ClosedStdout;

/// Writes `text` and a newline to stdout and flushes it. A closed pipe is
/// [`ClosedStdout`]; other write errors (a full disk, …) are errors.
pub fn print(text: impl Display) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ClosedStdout.into()),
        Err(e) => Err(e).context("cannot write the output"),
    }
}

/// Whether `e` (or one of its causes) is [`ClosedStdout`]: the reader
/// wanted no more, so it is not a failure. Only writes of results count: a
/// broken pipe elsewhere (e.g. a connection to the node) is an error.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.is::<ClosedStdout>())
}

/// `format!`-style [`print`]: `outln!("{}", render(&x))?`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::support::output::print(format_args!($($arg)*))
    };
}
pub(crate) use outln;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_counts_as_a_closed_pipe() {
        let e = anyhow::Error::new(ClosedStdout).context("ln info");
        assert!(is_closed_pipe(&e));
        // A broken pipe to the node is a failure, not the end of the output.
        let socket = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("talking to the node");
        assert!(!is_closed_pipe(&socket));
        assert!(!is_closed_pipe(&anyhow::anyhow!("broken pipe")));
    }
}
