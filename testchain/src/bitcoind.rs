//! A real `bitcoind -regtest` child process in a temporary data directory.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::harness::HarnessError;

/// The running process; killed and its data directory deleted on drop.
#[derive(Debug)]
pub struct Bitcoind {
    child: parking_lot::Mutex<Child>,
    rpc_port: u16,
    // Deleted on drop.
    _datadir: TempDir,
}

impl Bitcoind {
    /// Starts `exe -regtest` on random 127.0.0.1 ports.
    pub fn spawn(exe: &Path, user: &str, password: &str) -> Result<Self, HarnessError> {
        let datadir = tempfile::tempdir()?;
        let rpc_port = crate::ports::reserved_port()?;
        let p2p_port = crate::ports::reserved_port()?;
        let log = std::fs::File::create(datadir.path().join("stderr.log"))?;
        let child = Command::new(exe)
            .arg("-regtest")
            .arg(format!("-datadir={}", datadir.path().display()))
            .arg(format!("-rpcport={rpc_port}"))
            .arg("-rpcbind=127.0.0.1")
            .arg("-rpcallowip=127.0.0.1")
            .arg(format!("-port={p2p_port}"))
            .arg(format!("-bind=127.0.0.1:{p2p_port}"))
            .arg(format!("-rpcuser={user}"))
            .arg(format!("-rpcpassword={password}"))
            .arg("-server=1")
            .arg("-txindex=1")
            .arg("-blockfilterindex=1")
            // The harness pays from its own key, so it works with a Core
            // built without a wallet; disabling it here keeps a wallet build
            // from hiding a dependency on one.
            .arg("-disablewallet=1")
            .arg("-dnsseed=0")
            .arg("-fixedseeds=0")
            .arg("-listenonion=0")
            .arg("-printtoconsole=0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| HarnessError::Bitcoind(format!("cannot run {}: {e}", exe.display())))?;
        Ok(Self {
            child: parking_lot::Mutex::new(child),
            rpc_port,
            _datadir: datadir,
        })
    }

    /// The RPC port.
    pub fn rpc_port(&self) -> u16 {
        self.rpc_port
    }

    /// Fails if the process has already exited (e.g. bad arguments, port clash).
    pub fn check_running(&self) -> Result<(), HarnessError> {
        match self.child.lock().try_wait()? {
            None => Ok(()),
            Some(status) => Err(HarnessError::Bitcoind(format!(
                "exited with {status}; see {}",
                self._datadir.path().join("stderr.log").display()
            ))),
        }
    }

    /// Waits for the process to exit after an RPC `stop`, killing it after `timeout`.
    pub async fn wait_or_kill(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.child.lock().try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut child = self.child.lock();
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Bitcoind {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        if let Ok(None) = child.try_wait() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
