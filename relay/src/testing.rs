//! A real relay for other crates' tests (feature `test-relay`; only
//! dev-dependencies enable it): the engine on an SQLite file, served over
//! WebSockets on loopback by the same [`crate::ws::router`] the node uses.
//! It saves those tests from starting a whole node just to get a relay.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::config::RelayConfig;
use crate::relay::Relay;
use crate::store::{self, Store, StoreError};

/// How long [`TestRelay::shutdown`] waits for connections and queued writes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why a [`TestRelay`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum TestRelayError {
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The address could not be bound.
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
}

/// A relay serving `ws://ADDR` until [`Self::shutdown`].
#[derive(Debug)]
pub struct TestRelay {
    addr: SocketAddr,
    relay: Arc<Relay>,
    server: JoinHandle<std::io::Result<()>>,
    connections: TaskTracker,
    writer: JoinHandle<()>,
}

impl TestRelay {
    /// A relay with the default configuration on `bind` (port 0: any free
    /// port), storing into `data_dir/relay.sqlite`.
    pub async fn start(bind: SocketAddr, data_dir: &Path) -> Result<Self, TestRelayError> {
        let url = format!("sqlite://{}", data_dir.join("relay.sqlite").display());
        let store = store::open(&url).await?;
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (relay, writer) = Relay::new(RelayConfig::default(), &format!("ws://{addr}"), store);
        let connections = TaskTracker::new();
        let app = crate::ws::router(Arc::clone(&relay), connections.clone());
        let shutdown = relay.shutdown_token().clone();
        let server = crate::ws::serve(listener, app, relay.config().network.clone(), shutdown);
        Ok(Self {
            addr,
            relay,
            server,
            connections,
            writer,
        })
    }

    /// `ws://ADDR`, the relay's public URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The engine, for in-process publishing and for reading its store.
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// Closes the connections, commits queued writes and closes the store.
    pub async fn shutdown(self) {
        self.relay.begin_shutdown();
        let _ = self.server.await;
        self.connections.close();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.connections.wait()).await;
        let store: Arc<dyn Store> = Arc::clone(self.relay.store());
        // The writer stops once the last handle to the relay is gone.
        drop(self.relay);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.writer).await;
        store.close().await;
    }
}
