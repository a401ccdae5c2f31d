//! The HTTP/WebSocket server: [`start`] mounts the relay at `/` (WebSocket,
//! NIP-11 and a text page, served by `cairn_relay::ws`) and the [`routes`]
//! (identity, admin, zaps, health) and the web pages ([`crate::web`]: HTML at
//! `/` for browsers, `/@handle`), opens the payments and zaps [`runtimes`], runs
//! the background jobs, and [`RunningNode::shutdown`] stops it all.
//! [`own_relay`] is how the payments services reach this relay in-process.
//! Jobs that must run on one process at a time when several share a Postgres
//! database (expiration and retention purges, identity's epochs) run under
//! a [`lease`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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

pub mod lease;
pub mod metrics;
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
    /// The metrics listener's address, when `[metrics] bind` is set.
    pub metrics_addr: Option<SocketAddr>,
    relay: Arc<Relay>,
    server: JoinHandle<std::io::Result<()>>,
    connections: TaskTracker,
    writer: JoinHandle<()>,
    jobs: Vec<JoinHandle<()>>,
    identity: Option<Arc<cairn_identity::service::IdentityService>>,
    payments: Option<runtimes::payments::PaymentsRuntime>,
    zaps: Option<Arc<runtimes::zaps::ZapsRuntime>>,
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
    /// and they are running in this process (see [`runtimes::payments`]).
    pub fn payments(&self) -> Option<Arc<runtimes::payments::Payments>> {
        self.payments.as_ref().and_then(|p| p.slot().get())
    }

    /// The payments slot, when `[payments] enabled`: filled once payments run,
    /// also after a start that succeeded only on a retry.
    pub fn payments_slot(&self) -> Option<&Arc<runtimes::payments::PaymentsSlot>> {
        self.payments.as_ref().map(|p| p.slot())
    }

    /// The zap service, when name payments are served and it runs here.
    pub fn zaps(
        &self,
    ) -> Option<Arc<cairn_payments::zap::ZapService<cairn_payments::lightning::LightningNode>>>
    {
        self.zaps.as_ref().and_then(|z| z.get())
    }

    /// Stop payments (NWC leaves the relay while it still runs), stop
    /// accepting, let connections finish in-flight writes and close, commit
    /// queued writes, and close the database.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let Self {
            addr: _,
            metrics_addr: _,
            relay,
            server,
            connections,
            writer,
            jobs,
            identity,
            payments,
            zaps: _,
        } = self;
        // Stops zaps first (they use the Lightning node), then payments.
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
        // Background jobs (the outbox worker among them) stop on the
        // shutdown signal; a stuck one does not hold shutdown past the grace.
        let joined = async {
            for job in jobs {
                let _ = job.await;
            }
        };
        if tokio::time::timeout(DEFAULT_SHUTDOWN_GRACE, joined)
            .await
            .is_err()
        {
            tracing::warn!("background jobs did not stop within the grace period");
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
    let metrics_listener = match settings.metrics.bind {
        Some(bind) => Some(metrics::bind(bind).await?),
        None => None,
    };
    let public_url = settings
        .relay
        .public_url
        .clone()
        .unwrap_or_else(|| format!("ws://{addr}"));
    let (relay, writer) = Relay::new(settings.relay.clone(), &public_url, store);
    let (writer, writer_running) = watch_writer(writer);

    tracing::info!(
        "cairn {} relay listening on ws://{addr} (NIP-11 at http://{addr}/), public URL {}",
        env!("CARGO_PKG_VERSION"),
        relay.public_url()
    );
    tracing::info!("storage: {}", describe_database(&database_url));

    // Postgres: the once-only jobs wait for their lease (see `lease`).
    let lease_pool = match relay.store().database() {
        Some(cairn_relay::store::Database::Postgres(pool)) => Some(pool),
        _ => None,
    };
    let mut leases = Vec::new();
    let mut jobs = Vec::new();
    let mut under_lease = |job, work| {
        let (task, state) = lease::spawn(
            job,
            lease_pool.clone(),
            relay.shutdown_token().clone(),
            work,
        );
        jobs.push(task);
        leases.push(state);
    };
    {
        let relay = Arc::clone(&relay);
        let every = Duration::from_secs(settings.expiration_purge_interval_secs.max(1));
        under_lease(
            lease::Job::Expiration,
            Box::new(move |stop| {
                Box::pin(purge_expired_events(Arc::clone(&relay), every, stop)) as lease::BoxedWork
            }) as lease::WorkFn,
        );
    }
    let retention = &settings.relay.retention;
    if retention.is_active() {
        cairn_relay::retention::check_supported(&**relay.store(), retention)
            .await
            .map_err(anyhow::Error::msg)?;
        let store = Arc::clone(relay.store());
        let retention = retention.clone();
        under_lease(
            lease::Job::Retention,
            Box::new(move |stop| {
                Box::pin(cairn_relay::retention::run(
                    Arc::clone(&store),
                    retention.clone(),
                    stop,
                )) as lease::BoxedWork
            }),
        );
    }
    let identity = if settings.identity.enabled {
        let service = routes::identity::open_service(&settings, &relay).await?;
        let for_job = Arc::clone(&service);
        under_lease(
            lease::Job::Identity,
            Box::new(move |stop: tokio_util::sync::CancellationToken| {
                Box::pin(Arc::clone(&for_job).run(stop.cancelled_owned())) as lease::BoxedWork
            }),
        );
        // Every process follows the anchors the lease holder records
        // (Postgres; on SQLite it returns at once).
        jobs.push(tokio::spawn(
            Arc::clone(&service).follow(relay.shutdown_token().clone().cancelled_owned()),
        ));
        tracing::info!("identity service enabled at http://{addr}/identity/v1/");
        Some(service)
    } else {
        None
    };
    // `[[sync]]`: each entry under its own lease.
    let (sync_jobs, syncs) = crate::sync::scheduled::spawn_all(
        &settings,
        &relay,
        lease_pool.clone(),
        relay.shutdown_token(),
    )?;
    jobs.extend(sync_jobs);
    let connections = TaskTracker::new();
    let mut app = cairn_relay::ws::router(Arc::clone(&relay), connections.clone());
    // `[[identity.mirror]]`: other witnesses followed and served.
    let (mirrors, mirror_jobs) = crate::mirror::spawn_all(&settings, relay.shutdown_token())?;
    jobs.extend(mirror_jobs);
    let mirror_handles = mirrors.handles().to_vec();
    if !mirrors.is_empty() {
        app = app.merge(crate::mirror::routes::router(mirrors, identity.is_none()));
    }
    if let Some(service) = &identity {
        app = app.merge(routes::identity::router(
            Arc::clone(service),
            &settings.identity,
            &settings.relay.network,
            crate::outbox::owner_inboxes(&settings, &relay)?,
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
    // Payments to verified names (LNURL-pay, zaps): a wallet and names.
    let (zap_routes, zaps) = match (settings.payments.enabled, &identity) {
        (true, Some(_)) => match routes::zaps::mount(&settings, &own_relay)? {
            Some((routes, zaps)) => (Some(routes), Some(zaps)),
            None => (None, None),
        },
        _ => (None, None),
    };
    let payments = if settings.payments.enabled {
        let token = crate::admin_token::AdminToken::load_or_create(&settings.data_dir)?;
        // Postgres: under the payments lease, zaps with them.
        let runtime = runtimes::payments::PaymentsRuntime::start(
            &settings,
            &nwc_relay_url,
            &own_relay,
            lease_pool.clone(),
            zaps.clone(),
        )
        .await;
        leases.push(runtime.lease().clone());
        app = app.merge(routes::admin::router(Arc::clone(runtime.slot()), token));
        tracing::info!("admin API at http://{addr}/admin/v1/ (token in the data directory)");
        Some(runtime)
    } else {
        None
    };
    let mut outbox = None;
    if settings.outbox.enabled {
        let (routes, job, handle) = crate::outbox::serve_with_handle(&settings, &relay).await?;
        outbox = Some(handle);
        app = app.merge(routes);
        jobs.push(job);
        tracing::info!("outbox at http://{addr}/admin/v1/outbox (token in the data directory)");
    }
    let zaps = match (zap_routes, &payments, &identity) {
        (Some(routes), Some(runtime), Some(service)) => {
            app = app.merge(routes(Arc::clone(service), Arc::clone(runtime.slot())));
            tracing::info!("LNURL-pay and zaps at http://{addr}/.well-known/lnurlp/<name>");
            zaps
        }
        _ => None,
    };
    app = app.merge(routes::health::router(routes::health::Readiness {
        relay: Arc::clone(&relay),
        writer_running,
        identity: identity.clone(),
        payments: payments.as_ref().map(|p| Arc::clone(p.slot())),
        leases,
        syncs,
        mirrors: mirror_handles,
    }));
    // Last, so that its `/` layer sees every route (see `crate::web`).
    let lightning_names = match &zaps {
        Some(_) => settings.zaps.names.clone(),
        None => Vec::new(),
    };
    app = crate::web::mount(
        app,
        crate::web::Web::new(
            Arc::clone(&relay),
            identity
                .as_ref()
                .map(|s| (Arc::clone(s), settings.identity.confirmations)),
            lightning_names,
        )
        .with_app(
            crate::web::App::new(
                &settings,
                &relay,
                crate::admin_token::AdminToken::load_or_create(&settings.data_dir)?,
                outbox,
            )
            .await?
            .with_payments(payments.as_ref().map(|p| Arc::clone(p.slot()))),
        ),
    );
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let bound = listener.local_addr()?;
            let sources = metrics::Sources {
                relay: Arc::clone(&relay),
                sqlite_file: database_url
                    .strip_prefix("sqlite://")
                    .map(std::path::PathBuf::from),
                identity: identity.clone(),
                payments: payments.as_ref().map(|p| Arc::clone(p.slot())),
            };
            jobs.push(metrics::serve(
                listener,
                sources,
                relay.shutdown_token().clone(),
            )?);
            tracing::info!("Prometheus metrics at http://{bound}/metrics");
            Some(bound)
        }
        None => None,
    };
    let shutdown = relay.shutdown_token().clone();
    let server = cairn_relay::ws::serve(listener, app, settings.relay.network.clone(), shutdown);
    Ok(RunningNode {
        addr,
        metrics_addr,
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

/// The writer's task, wrapped so that `/ready` can tell whether it still
/// runs: the flag turns false when it ends (a panic included, which is logged).
fn watch_writer(writer: JoinHandle<()>) -> (JoinHandle<()>, Arc<AtomicBool>) {
    let running = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&running);
    let handle = tokio::spawn(async move {
        if let Err(e) = writer.await {
            tracing::error!(error = %e, "the writer task failed");
        }
        flag.store(false, Ordering::Release);
    });
    (handle, running)
}

fn create_data_dir(settings: &Settings) -> anyhow::Result<()> {
    let dir = &settings.data_dir;
    let existed = dir.exists();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    #[cfg(unix)]
    restrict_data_dir(dir, existed)?;
    Ok(())
}

/// The data directory will hold keys and the database: owner only. A
/// directory that others may read, write or enter is set to 0700; when the
/// user made it (it existed before), a warning says so. One that is already
/// owner-only is left as it is.
#[cfg(unix)]
fn restrict_data_dir(dir: &std::path::Path, existed: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read data directory {}", dir.display()))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| data_dir_permission_error(dir, meta.uid(), mode, e))?;
    if existed {
        tracing::warn!(
            "data directory {} had mode {mode:04o} (others could reach it); set it to 0700, \
             as it holds keys and the database",
            dir.display()
        );
    }
    Ok(())
}

/// Why the data directory's mode could not be set: EPERM from chmod means
/// the directory belongs to someone else, which the plain OS error hides.
#[cfg(unix)]
fn data_dir_permission_error(
    dir: &std::path::Path,
    owner_uid: u32,
    mode: u32,
    e: std::io::Error,
) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        anyhow::anyhow!(
            "data directory {} belongs to another user (uid {owner_uid}), so cairn cannot make \
             it owner-only (it is mode {mode:04o}, and it will hold keys): run cairn as that \
             user, give the directory to the user running cairn (chown), or choose another \
             --data-dir",
            dir.display()
        )
    } else {
        anyhow::Error::new(e).context(format!(
            "cannot restrict permissions of data directory {}",
            dir.display()
        ))
    }
}

async fn purge_expired_events(
    relay: Arc<Relay>,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
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

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_data_dir_of_another_user_is_named_as_such() {
        let e = data_dir_permission_error(
            std::path::Path::new("/srv/cairn"),
            1234,
            0o755,
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        let text = format!("{e:#}");
        assert!(
            text.contains("/srv/cairn belongs to another user (uid 1234)"),
            "{text}"
        );
        assert!(text.contains("--data-dir"), "{text}");
        assert!(!text.contains("cannot restrict permissions"), "{text}");
    }

    #[test]
    fn an_open_data_dir_is_restricted_and_an_owner_only_one_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        restrict_data_dir(&open, true).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&open), 0o700);

        let private = tmp.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o500)).unwrap();
        restrict_data_dir(&private, true).unwrap();
        assert_eq!(
            mode(&private),
            0o500,
            "an owner-only directory keeps its mode"
        );
    }
}
