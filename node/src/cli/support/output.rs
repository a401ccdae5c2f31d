//! Where every command's result goes: stdout, written with `writeln!` to a
//! locked handle, never with `println!` (which panics when the reader has
//! gone, e.g. `cairn ln info | head -1`). A write error comes back as an
//! error; [`crate::cli::exit_with`] ends the process quietly with 0 when it
//! is a closed pipe ([`is_closed_pipe`]).
//!
//! Logs go to stderr (see `main.rs`), so stdout holds only results.

use std::fmt::Display;
use std::io::Write as _;

use anyhow::{Context as _, Result};

/// Writes `text` and a newline to stdout and flushes it.
pub fn print(text: impl Display) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .context("cannot write the output")
}

/// Whether `e` (or one of its causes) is a write to a pipe whose reader
/// has gone: the reader wanted no more, so it is not a failure.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
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
    fn a_closed_pipe_is_recognised_through_context() {
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("cannot write the output")
            .context("ln info");
        assert!(is_closed_pipe(&e));
        let other = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::StorageFull))
            .context("cannot write the output");
        assert!(!is_closed_pipe(&other));
        assert!(!is_closed_pipe(&anyhow::anyhow!("broken pipe")));
    }
}
