//! The Bitcoin Core login flags that `identity headers`, `verify` and `msg`
//! share (`--rpc-user` with `--rpc-password-file`, or `--rpc-cookie-file`),
//! and reading them. The password is read from a file, never taken on the
//! command line, where other users could see it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

/// How to log in to Bitcoin Core's RPC.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RpcLoginArgs {
    /// RPC user (with --rpc-password-file).
    #[arg(long, value_name = "USER", requires = "rpc_password_file")]
    pub rpc_user: Option<String>,
    /// File holding the RPC password (with --rpc-user).
    #[arg(long, value_name = "FILE", requires = "rpc_user")]
    pub rpc_password_file: Option<PathBuf>,
    /// Bitcoin Core's .cookie file, instead of --rpc-user and --rpc-password-file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["rpc_user", "rpc_password_file"])]
    pub rpc_cookie_file: Option<PathBuf>,
}

impl RpcLoginArgs {
    /// The user and password the flags name.
    pub fn credentials(&self) -> Result<(String, String)> {
        rpc_credentials(
            &self.rpc_user,
            &self.rpc_password_file,
            &self.rpc_cookie_file,
        )
    }
}

/// The user and password from `--rpc-user` with `--rpc-password-file`, or
/// from `--rpc-cookie-file`.
pub fn rpc_credentials(
    user: &Option<String>,
    password_file: &Option<PathBuf>,
    cookie_file: &Option<PathBuf>,
) -> Result<(String, String)> {
    Ok(match (user, password_file, cookie_file) {
        (Some(user), Some(file), None) => (user.clone(), read_secret_file(file)?),
        (None, None, Some(cookie)) => {
            let text = read_secret_file(cookie)?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| anyhow!("{} is not a cookie file", cookie.display()))?;
            (u.to_owned(), p.to_owned())
        }
        _ => bail!("--rpc-url needs --rpc-user with --rpc-password-file, or --rpc-cookie-file"),
    })
}

fn read_secret_file(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}
