//! Loopback ports for listeners that a test names before they open.
//!
//! `bind(127.0.0.1:0)` then closing the socket (the usual "free port") races:
//! the kernel hands the same port to the next `bind(0)` anywhere on the
//! machine — another test's server, a client's ephemeral port — before the
//! child process that was told to listen on it gets there. A node whose
//! Lightning listener lost that race fails to start until the test gives up.
//! So these ports come from below the kernel's ephemeral range (Linux'
//! default is 32768–60999), which `bind(0)` never hands out, and are checked
//! free when handed over. Within one process no port is handed out twice.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};

/// The ports handed out: `FIRST..FIRST + SPAN`, below the ephemeral range.
const FIRST: u16 = 20_000;
const SPAN: u16 = 12_000;

/// Next candidate offset; starts at a per-process place so that two test
/// binaries running at once try different ports first.
static NEXT: AtomicU16 = AtomicU16::new(u16::MAX);

/// A loopback TCP port that is free now and that no `bind(0)` will take.
pub fn reserved_port() -> std::io::Result<u16> {
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    let _ = NEXT.compare_exchange(u16::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = FIRST + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free loopback port below the ephemeral range",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_free_and_outside_the_ephemeral_range() {
        let a = reserved_port().unwrap();
        let b = reserved_port().unwrap();
        assert_ne!(a, b);
        for p in [a, b] {
            assert!((FIRST..FIRST + SPAN).contains(&p), "{p}");
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
