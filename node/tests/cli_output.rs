//! The real `cairn` binary as a user runs it, with stdout and stderr piped:
//! results alone on stdout, logs on stderr without colour codes, CLI
//! commands quiet unless `-v`, no panic when the reader of stdout has gone,
//! and a word in the log when an existing data directory is re-moded.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use nostr::{Keys, ToBech32 as _};

mod common;
use common::{text, Serve, CAIRN};

/// `cairn serve` on a free loopback port with stdout piped too (the test
/// checks that the server writes nothing there).
fn serve(data_dir: &Path) -> Serve {
    let mut cmd = common::serve_command(None, data_dir);
    cmd.stdout(Stdio::piped());
    Serve::start(cmd)
}

/// `cairn <args>` with a fresh key, no RUST_LOG, and stdout/stderr captured.
fn cairn(args: &[&str], nsec: &str) -> Output {
    Command::new(CAIRN)
        .args(args)
        .env_remove("RUST_LOG")
        .env("CAIRN_NSEC", nsec)
        .stdin(Stdio::null())
        .output()
        .expect("cairn runs")
}

fn assert_no_ansi(what: &str, s: &str) {
    assert!(
        !s.contains("\x1b["),
        "{what} holds ANSI escape codes: {s:?}"
    );
}

#[test]
fn results_go_alone_to_stdout_and_logs_to_stderr_without_colour() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = serve(&data);
    let node = server.http();
    let nsec = Keys::generate().secret_key().to_bech32().unwrap();
    let own = tmp.path().join("own");
    let own = own.to_str().unwrap();

    // `msg inbox` talks to the relay through nostr-sdk's relay pool, which
    // logs its connections at info: none of that may reach stdout, and by
    // default not stderr either.
    let inbox = ["msg", "inbox", "--node", &node, "--data-dir", own];
    let out = cairn(&inbox, &nsec);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim_end(), "no messages", "stdout: {stdout:?}");
    assert_no_ansi("stderr", &stderr);
    assert!(
        !stderr.contains(" INFO "),
        "a CLI command logs info only with -v: {stderr}"
    );

    // With -v the logs appear, on stderr only.
    let mut verbose = vec!["-v"];
    verbose.extend(inbox);
    let out = cairn(&verbose, &nsec);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim_end(), "no messages", "stdout: {stdout:?}");
    assert!(stderr.contains(" INFO "), "-v logs at info: {stderr}");
    assert_no_ansi("stderr", &stderr);

    // The server's logs went to stderr, uncoloured; its stdout stayed empty.
    let (stdout, stderr) = server.stop();
    assert_eq!(stdout, "", "serve wrote to stdout");
    assert!(stderr.contains(" INFO "), "{stderr}");
    assert_no_ansi("serve's stderr", &stderr);
}

#[test]
fn a_closed_stdout_ends_a_command_without_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(&tmp.path().join("data"));
    let node = server.http();
    let nsec = Keys::generate().secret_key().to_bech32().unwrap();
    let own = tmp.path().join("own");
    let mut child = Command::new(CAIRN)
        .args(["msg", "inbox", "--node", &node, "--data-dir"])
        .arg(&own)
        .env_remove("RUST_LOG")
        .env("CAIRN_NSEC", &nsec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command has its result (it first
    // talks to the relay), as `| head -1` does after its line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    server.stop();
}

#[cfg(unix)]
#[test]
fn an_existing_open_data_dir_is_restricted_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = serve(&data);
    let (_, stderr) = server.stop();
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(
        stderr.contains("had mode 0755") && stderr.contains("set it to 0700"),
        "{stderr}"
    );

    // A new one is made owner-only without a word.
    let fresh = tmp.path().join("fresh");
    let (_, stderr) = serve(&fresh).stop();
    assert_eq!(
        std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(!stderr.contains("had mode"), "{stderr}");
}
