//! `cairn backup` and `cairn restore` as a user runs them: against a
//! serving `cairn serve`, results on stdout, refusals with exit code 2.

use std::process::{Command, Output, Stdio};

mod common;
use common::{text, Serve, CAIRN};

fn cairn(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(CAIRN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("cairn runs")
}

#[test]
fn backup_of_a_serving_node_and_restore_into_an_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let serve = Serve::start(common::serve_command(None, &data));

    let archive = tmp.path().join("backup.tar");
    let out = cairn(&[
        "backup".as_ref(),
        "--out".as_ref(),
        archive.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    serve.kill();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("wrote "), "{stdout}");
    assert!(stdout.contains("files"), "{stdout}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // Never over an existing archive: exit 2, the reason on stderr.
    let again = cairn(&[
        "backup".as_ref(),
        "--out".as_ref(),
        archive.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );

    let fresh = tmp.path().join("fresh");
    let restored = cairn(&[
        "restore".as_ref(),
        archive.as_os_str(),
        "--data-dir".as_ref(),
        fresh.as_os_str(),
    ]);
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    assert!(
        text(&restored.stdout).starts_with("restored "),
        "{}",
        text(&restored.stdout)
    );
    assert!(fresh.join("cairn.db").is_file());

    // Into a directory that now holds a node: refused.
    let refused = cairn(&[
        "restore".as_ref(),
        archive.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("not empty"),
        "{}",
        text(&refused.stderr)
    );
}
