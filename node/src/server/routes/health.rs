//! `GET /health` and `GET /ready`, for load balancers and orchestrators.
//!
//! - `/health` answers `200 {"status":"ok"}` whenever the process serves
//!   HTTP at all (a liveness probe: restart the process when it fails).
//! - `/ready` answers `200` only when the node can do its work: the database
//!   answers a cheap query within [`READY_CHECK_TIMEOUT`], the group-commit
//!   writer task is running, and every enabled part (identity, payments) is
//!   up; otherwise `503`. The body is the same JSON either way, so an operator
//!   sees which part is not ready:
//!
//! ```json
//! {"ready":true,
//!  "database":{"ok":true},
//!  "writer":{"ok":true},
//!  "identity":{"enabled":true,"ok":true,"open_epoch":3,"log_size":12,
//!              "anchoring":"ok","queued_epochs":0,"unconfirmed_epochs":1},
//!  "payments":{"enabled":false},
//!  "leases":{"expiration":true,"identity":true}}
//! ```
//!
//! `leases` says which once-only jobs run in this process (see
//! [`crate::server::lease`]): with several processes on one Postgres
//! database, each job is `true` on exactly one of them; it is information,
//! not a condition of readiness (a standby is ready). `sync` lists the
//! scheduled `[[sync]]` entries (see [`crate::sync::scheduled`]): relay,
//! direction, runs, failures in a row, last error and report, next run, and
//! `held` (this process runs it); also information only. `mirrors` lists
//! each followed witness's [`crate::mirror::MirrorStatus`] (`following` or
//! `stopped`, with the reason and a split view's evidence): a stopped
//! mirror is reported, not a reason to take the node out of service.
//!
//! Invariants: no check waits longer than [`READY_CHECK_TIMEOUT`] (a probe
//! must not hang on a stuck database); error texts come from errors that
//! never carry secrets (database errors, the payments start error, which
//! names what failed but no key or password). Identity's anchoring health
//! is reported but does not make the node unready: a wallet waiting for
//! funds still serves bindings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use cairn_identity::service::IdentityService;
use cairn_relay::Relay;
use serde_json::{json, Value};

use crate::server::lease::LeaseState;
use crate::server::runtimes::payments::PaymentsSlot;
use crate::sync::scheduled::ScheduledSync;

/// Longest time one readiness check may take before it counts as failed.
pub const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/ready` looks at.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// The relay, for its store.
    pub relay: Arc<Relay>,
    /// False once the group-commit writer task has ended.
    pub writer_running: Arc<AtomicBool>,
    /// The identity service, when enabled.
    pub identity: Option<Arc<IdentityService>>,
    /// The payments slot, when payments are enabled.
    pub payments: Option<Arc<PaymentsSlot>>,
    /// The once-only jobs and whether this process holds their lease.
    pub leases: Vec<LeaseState>,
    /// The scheduled `[[sync]]` entries.
    pub syncs: Vec<ScheduledSync>,
    /// The `[[identity.mirror]]` witnesses followed.
    pub mirrors: Vec<Arc<crate::mirror::MirrorHandle>>,
}

/// The `/health` and `/ready` routes.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(Arc::new(readiness))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(r): State<Arc<Readiness>>) -> (StatusCode, Json<Value>) {
    let (status, body) = r.check().await;
    (status, Json(body))
}

impl Readiness {
    /// The readiness status and the JSON body `/ready` answers.
    pub async fn check(&self) -> (StatusCode, Value) {
        let database =
            match tokio::time::timeout(READY_CHECK_TIMEOUT, self.relay.store().ping()).await {
                Ok(Ok(())) => json!({"ok": true}),
                Ok(Err(e)) => {
                    // The detail (it may name the database host or user) goes
                    // to the log, not to whoever asks the public port.
                    tracing::warn!(error = %e, "readiness: database check failed");
                    json!({"ok": false, "error": "database check failed (see the log)"})
                }
                Err(_) => json!({"ok": false, "error": "no answer within 2 s"}),
            };
        let writer = json!({"ok": self.writer_running.load(Ordering::Acquire)});
        let identity = match &self.identity {
            None => json!({"enabled": false}),
            Some(service) => identity_state(service).await,
        };
        let payments = match &self.payments {
            None => json!({"enabled": false}),
            // A standby is ready: another process holds the payments lease.
            Some(slot) if slot.standby() => json!({"enabled": true, "ok": true, "standby": true}),
            Some(slot) => match slot.running() {
                Ok(_) => json!({"enabled": true, "ok": true}),
                Err(reason) => json!({"enabled": true, "ok": false, "error": reason}),
            },
        };
        let leases: serde_json::Map<String, Value> = self
            .leases
            .iter()
            .map(|l| (l.job.name().into_owned(), Value::Bool(l.held())))
            .collect();
        let ok = |v: &Value| v["ok"].as_bool().unwrap_or(false);
        let enabled_ok = |v: &Value| v["enabled"] == json!(false) || ok(v);
        let ready = ok(&database) && ok(&writer) && enabled_ok(&identity) && enabled_ok(&payments);
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (
            status,
            json!({
                "ready": ready,
                "database": database,
                "writer": writer,
                "identity": identity,
                "payments": payments,
                "leases": leases,
                "sync": self.syncs.iter().map(ScheduledSync::json).collect::<Vec<_>>(),
                "mirrors": self.mirrors.iter().map(|m| m.status()).collect::<Vec<_>>(),
            }),
        )
    }
}

async fn identity_state(service: &IdentityService) -> Value {
    match tokio::time::timeout(READY_CHECK_TIMEOUT, service.status()).await {
        Ok(Ok(s)) => json!({
            "enabled": true,
            "ok": true,
            "open_epoch": s.open_epoch,
            "log_size": s.log_size,
            "anchoring": s.anchoring.health,
            "queued_epochs": s.anchoring.queued_epochs.len(),
            "unconfirmed_epochs": s.anchoring.unconfirmed_epochs.len(),
        }),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: identity check failed");
            json!({"enabled": true, "ok": false, "error": "identity check failed (see the log)"})
        }
        Err(_) => json!({"enabled": true, "ok": false, "error": "no answer within 2 s"}),
    }
}
