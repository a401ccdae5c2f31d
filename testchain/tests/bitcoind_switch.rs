#![cfg(unix)]
//! The real-bitcoind backend, as far as it can be checked without bitcoind:
//! the command line it runs and how it fails when the process does not come up.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use cairn_testchain::{HarnessError, TestChain};

fn fake_bitcoind(dir: &Path, args_file: &Path) -> Result<std::path::PathBuf> {
    let exe = dir.join("bitcoind");
    // Records its arguments and whether the datadir exists, then exits like a failed start.
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > {out}\nfor a in \"$@\"; do case \"$a\" in -datadir=*) [ -d \"${{a#-datadir=}}\" ] && echo DATADIR_EXISTS >> {out};; esac; done\nexit 3\n",
        out = args_file.display()
    );
    std::fs::write(&exe, script)?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
    Ok(exe)
}

#[tokio::test]
async fn runs_regtest_with_expected_flags_and_reports_early_exit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let args_file = dir.path().join("args.txt");
    let exe = fake_bitcoind(dir.path(), &args_file)?;
    let res =
        tokio::time::timeout(Duration::from_secs(20), TestChain::start_bitcoind(&exe)).await?;
    match res {
        Err(HarnessError::Bitcoind(msg)) => assert!(msg.contains("exited"), "{msg}"),
        other => panic!("expected a bitcoind error, got {other:?}"),
    }
    let args = std::fs::read_to_string(&args_file)?;
    let args: Vec<&str> = args.lines().collect();
    for expected in [
        "-regtest",
        "-txindex=1",
        "-disablewallet=1",
        "-rpcbind=127.0.0.1",
        "-rpcuser=testchain",
        "DATADIR_EXISTS",
    ] {
        assert!(args.contains(&expected), "missing {expected} in {args:?}");
    }
    let port = |prefix: &str| -> u16 {
        args.iter()
            .find_map(|a| a.strip_prefix(prefix))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    };
    assert!(port("-rpcport=") > 0);
    assert!(args.iter().any(|a| a.starts_with("-bind=127.0.0.1:")));
    assert!(args
        .iter()
        .any(|a| a.starts_with("-rpcpassword=") && a.len() > "-rpcpassword=".len() + 16));
    // The temporary datadir is gone once the start failed.
    let datadir = args
        .iter()
        .find_map(|a| a.strip_prefix("-datadir="))
        .unwrap();
    assert!(!Path::new(datadir).exists());
    Ok(())
}

#[tokio::test]
async fn missing_binary_is_a_clear_error() -> Result<()> {
    let res = TestChain::start_bitcoind(Path::new("/nonexistent/bitcoind")).await;
    match res {
        Err(HarnessError::Bitcoind(msg)) => assert!(msg.contains("/nonexistent/bitcoind"), "{msg}"),
        other => panic!("expected a bitcoind error, got {other:?}"),
    }
    Ok(())
}
