//! `cairn serve` and the CLI as the integration tests run them: the real
//! binary, on loopback, with its stderr read to the end (so the server never
//! blocks on, or writes into, a closed pipe) and kept for assertions and
//! failure messages. Every wait here has a deadline.
//!
//! Each test file takes what it needs (`mod common;`), so an item unused by
//! one binary is not dead code in the crate: hence the `allow`.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// What `cairn serve` logs once its relay listens (with the address).
pub const LISTENING: &str = "listening on ws://";
/// What it logs once its outbox (and the admin token) is ready.
pub const OUTBOX_READY: &str = "outbox at http://";

/// How long a `cairn serve` may take to say it is up.
pub const START_WAIT: Duration = Duration::from_secs(90);

/// `cairn serve --bind 127.0.0.1:0 [--config FILE] --data-dir DIR`, with
/// stdin closed, stdout discarded, stderr piped and `RUST_LOG` unset (the
/// caller may set it, or pipe stdout, before starting).
pub fn serve_command(config: Option<&Path>, data_dir: &Path) -> Command {
    let mut cmd = Command::new(CAIRN);
    cmd.args(["serve", "--bind", "127.0.0.1:0"]);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.arg("--data-dir").arg(data_dir);
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A running `cairn serve`, killed (SIGKILL) when dropped.
pub struct Serve {
    child: Child,
    /// `host:port` from the "listening on" line, once it was logged.
    addr: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    /// Starts `cmd` (a [`serve_command`]) and waits until it logs that its
    /// relay listens; panics with what it logged if that does not come
    /// within [`START_WAIT`].
    pub fn start(cmd: Command) -> Serve {
        match Serve::spawn(cmd, LISTENING, Instant::now() + START_WAIT) {
            Ok(serve) => serve,
            Err(lines) => panic!(
                "cairn serve did not say where it listens; it logged:\n{}",
                lines.join("\n")
            ),
        }
    }

    /// Starts `cmd` and waits until a stderr line contains `ready`. When
    /// the process ends or `deadline` passes first, it is killed and what it
    /// logged is the error.
    pub fn spawn(mut cmd: Command, ready: &str, deadline: Instant) -> Result<Serve, Vec<String>> {
        let mut child = cmd.spawn().expect("cairn serve starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((_, rest)) = line.split_once(LISTENING) {
                        addr = rest.split_whitespace().next().map(str::to_owned);
                    }
                    if line.contains(ready) {
                        break;
                    }
                }
                // Timed out, or stderr closed: the process is ending.
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let lines = log.lock().unwrap().clone();
                    return Err(lines);
                }
            }
        }
        Ok(Serve { child, addr, log })
    }

    /// `host:port` of the relay (and of its HTTP routes).
    pub fn addr(&self) -> &str {
        self.addr
            .as_deref()
            .expect("cairn serve logged no listening address")
    }

    pub fn ws(&self) -> String {
        format!("ws://{}", self.addr())
    }

    pub fn http(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `kB` field of its `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }

    /// Everything it logged so far, one line each.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Kills it and waits for it to end.
    pub fn kill(mut self) {
        self.stop_child();
    }

    /// Kills it; its whole stdout (when piped) and stderr.
    pub fn stop(mut self) -> (String, String) {
        let _ = self.child.kill();
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_string(&mut out).unwrap();
        }
        let _ = self.child.wait();
        // The reader thread ends with the pipe; give it a moment to push
        // the last lines.
        let deadline = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&self.log) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        (out, self.log())
    }

    fn stop_child(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop_child();
    }
}

/// Runs `cmd` to its end, capturing stdout and stderr; panics (after
/// killing it) when it takes longer than `limit`.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("cairn ran"),
        Err(_) => {
            // Only the child this test started, by its id.
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

/// Output bytes as text, for assertions and messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh Postgres database on `CAIRN_TEST_POSTGRES_URL` for one test,
/// dropped by [`PgDatabase::drop_now`].
pub struct PgDatabase {
    /// `CAIRN_TEST_POSTGRES_URL`: where it was created from.
    pub admin_url: String,
    /// Its name (letters, digits and underscores only).
    pub name: String,
    /// Its URL, for `CAIRN_DATABASE_URL`.
    pub url: String,
}

impl PgDatabase {
    /// Creates it; `None` (saying so) when `CAIRN_TEST_POSTGRES_URL` is
    /// not set. `prefix` names the test (letters and underscores).
    pub async fn create(prefix: &str) -> Option<PgDatabase> {
        use sqlx::Connection as _;
        let Ok(admin_url) = std::env::var("CAIRN_TEST_POSTGRES_URL") else {
            eprintln!("skipping a Postgres test: CAIRN_TEST_POSTGRES_URL not set");
            return None;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        // Letters, digits and underscores only: safe in the statement.
        let name = format!("{prefix}_{}_{nanos}", std::process::id());
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to CAIRN_TEST_POSTGRES_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        let mut url = url::Url::parse(&admin_url).expect("a URL");
        url.set_path(&name);
        Some(PgDatabase {
            admin_url,
            name,
            url: url.to_string(),
        })
    }

    /// Drops it (forcing off whatever is still connected).
    pub async fn drop_now(self) {
        use sqlx::Connection as _;
        let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await else {
            return;
        };
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await;
        let _ = admin.close().await;
    }
}
