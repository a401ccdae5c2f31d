//! The HTTP/WebSocket server: [`start`] mounts the relay at `/` (WebSocket,
//! NIP-11 and a text page, served by `cairn_relay::ws`) and the [`routes`]
//! (identity, admin, zaps), opens the payments and zaps [`runtimes`], runs
//! the background jobs, and [`RunningNode::shutdown`] stops it all.
//! [`own_relay`] is how the payments services reach this relay in-process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_relay::store::Store;
use cairn_relay::Relay;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::redact::redact_url;
use crate::settings::Settings;

pub mod own_relay;
pub mod routes;
pub mod runtimes;

/// How long shutdown waits for connections to finish their in-flight work.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A node running in this process.
#[derive(Debug)]
pub struct RunningNode {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    relay: Arc<Relay>,
    server: JoinHandle<std::io::Result<()>>,
    connections: TaskTracker,
    writer: JoinHandle<()>,
    jobs: Vec<JoinHandle<()>>,
    identity: Option<Arc<cairn_identity::service::IdentityService>>,
    payments: Option<runtimes::payments::PaymentsRuntime>,
    zaps: Option<runtimes::zaps::ZapsRuntime>,
}

impl RunningNode {
    /// `ws://ADDR` for clients.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://ADDR`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The relay engine (for tests and in-process publishing).
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// The identity service, when `[identity] enabled`.
    pub fn identity(&self) -> Option<&Arc<cairn_identity::service::IdentityService>> {
        self.identity.as_ref()
    }

    /// The wallet, Lightning node and NWC service, when `[payments] enabled`
    /// and they are running (see [`runtimes::payments`]).
    pub fn payments(&self) -> Option<&Arc<runtimes::payments::Payments>> {
        self.payments.as_ref().and_then(|p| p.slot().get())
    }

    /// The payments slot, when `[payments] enabled`: filled once payments run,
    /// also after a start that succeeded only on a retry.
    pub fn payments_slot(&self) -> Option<&Arc<runtimes::payments::PaymentsSlot>> {
        self.payments.as_ref().map(|p| p.slot())
    }

    /// The zap service, when name payments are served and it runs.
    pub fn zaps(
        &self,
    ) -> Option<&Arc<cairn_payments::zap::ZapService<cairn_payments::lightning::LightningNode>>>
    {
        self.zaps.as_ref().and_then(|z| z.cell().get())
    }

    /// Stop payments (NWC leaves the relay while it still runs), stop
    /// accepting, let connections finish in-flight writes and close, commit
    /// queued writes, and close the database.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let Self {
            addr: _,
            relay,
            server,
            connections,
            writer,
            jobs,
            identity,
            payments,
            zaps,
        } = self;
        // Zaps use the Lightning node: stop them first.
        if let Some(zaps) = zaps {
            zaps.stop().await;
        }
        if let Some(payments) = payments {
            payments.stop().await;
        }
        relay.begin_shutdown();
        server
            .await
            .context("server task panicked")?
            .context("server failed")?;
        connections.close();
        if tokio::time::timeout(DEFAULT_SHUTDOWN_GRACE, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections did not close within the grace period");
        }
        for job in jobs {
            let _ = job.await;
        }
        drop(identity);
        let store: Arc<dyn Store> = Arc::clone(relay.store());
        // The writer drains its queue and stops once the last handle to the
        // relay is gone.
        drop(relay);
        if tokio::time::timeout(DEFAULT_SHUTDOWN_GRACE, writer)
            .await
            .is_err()
        {
            tracing::warn!("writes still queued after the grace period");
        }
        store.close().await;
        tracing::info!("cairn stopped");
        Ok(())
    }
}

/// Open the database (running migrations), bind, and serve in the background.
pub async fn start(settings: Settings) -> anyhow::Result<RunningNode> {
    routes::zaps::check_settings(&settings)?;
    create_data_dir(&settings)?;
    let database_url = settings.database_url();
    let store = cairn_relay::store::open(&database_url)
        .await
        .with_context(|| format!("cannot open database {}", redact_url(&database_url)))?;
    let listener = TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("cannot listen on {}", settings.bind))?;
    let addr = listener.local_addr()?;
    let public_url = settings
        .relay
        .public_url
        .clone()
        .unwrap_or_else(|| format!("ws://{addr}"));
    let (relay, writer) = Relay::new(settings.relay.clone(), &public_url, store);

    tracing::info!(
        "cairn {} relay listening on ws://{addr} (NIP-11 at http://{addr}/), public URL {}",
        env!("CARGO_PKG_VERSION"),
        relay.public_url()
    );
    tracing::info!("storage: {}", describe_database(&database_url));

    let mut jobs = vec![tokio::spawn(purge_expired_events(
        Arc::clone(&relay),
        Duration::from_secs(settings.expiration_purge_interval_secs.max(1)),
    ))];
    let identity = if settings.identity.enabled {
        let service = routes::identity::open_service(&settings, &relay).await?;
        let stop = relay.shutdown_token().clone().cancelled_owned();
        jobs.push(tokio::spawn(Arc::clone(&service).run(stop)));
        tracing::info!("identity service enabled at http://{addr}/identity/v1/");
        Some(service)
    } else {
        None
    };
    let connections = TaskTracker::new();
    let mut app = cairn_relay::ws::router(Arc::clone(&relay), connections.clone());
    if let Some(service) = &identity {
        app = app.merge(routes::identity::router(
            Arc::clone(service),
            &settings.identity,
        ));
    }
    let nwc_relay_url = settings
        .payments
        .nwc_relay_url
        .clone()
        .unwrap_or_else(|| relay.public_url().to_owned());
    // NWC and zap receipts reach the relay in-process: they need not wait
    // for the server to listen.
    let own_relay = own_relay::OwnRelay::new(&relay);
    let payments = if settings.payments.enabled {
        let token = crate::admin_token::AdminToken::load_or_create(&settings.data_dir)?;
        let runtime =
            runtimes::payments::PaymentsRuntime::open(&settings, &nwc_relay_url, &own_relay).await;
        app = app.merge(routes::admin::router(Arc::clone(runtime.slot()), token));
        tracing::info!("admin API at http://{addr}/admin/v1/ (token in the data directory)");
        Some(runtime)
    } else {
        None
    };
    // Payments to verified names (LNURL-pay, zaps): a wallet and names.
    let zaps = match (&payments, &identity) {
        (Some(runtime), Some(service)) => routes::zaps::mount(
            &settings,
            &own_relay,
            Arc::clone(service),
            Arc::clone(runtime.slot()),
        )?
        .map(|(routes, zaps)| {
            app = std::mem::take(&mut app).merge(routes);
            tracing::info!("LNURL-pay and zaps at http://{addr}/.well-known/lnurlp/<name>");
            zaps
        }),
        _ => None,
    };
    let shutdown = relay.shutdown_token().clone();
    let server = cairn_relay::ws::serve(listener, app, shutdown);
    Ok(RunningNode {
        addr,
        relay,
        server,
        connections,
        writer,
        jobs,
        identity,
        payments,
        zaps,
    })
}

fn create_data_dir(settings: &Settings) -> anyhow::Result<()> {
    let dir = &settings.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The data directory will hold keys and the database: owner only.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict permissions of {}", dir.display()))?;
    }
    Ok(())
}

async fn purge_expired_events(relay: Arc<Relay>, every: Duration) {
    let shutdown = relay.shutdown_token().clone();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = nostr::Timestamp::now().as_secs();
        match relay.store().purge_expired(now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "purged expired events"),
            Err(err) => tracing::warn!(error = %err, "could not purge expired events"),
        }
    }
}

fn describe_database(url: &str) -> String {
    match url.strip_prefix("sqlite://") {
        Some(path) => format!("SQLite at {path}"),
        None => format!("Postgres at {}", redact_url(url)),
    }
}
