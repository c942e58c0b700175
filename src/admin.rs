//! The admin HTTP listener: `/healthz` (the process answers), `/readyz` (synced and both
//! APIs recently fine, 503 with a one-line reason otherwise), `/metrics` (OpenMetrics
//! text) and `/status` (JSON for `crowdsec-cloudflare-iplist-bouncer status`).
//! It has no authentication: keep it on loopback or a private network.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{Snapshot, StatusReport, Telemetry};

/// Takes a snapshot of the running bouncer.
pub type SnapshotFn = Arc<dyn Fn() -> Snapshot + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    telemetry: Arc<Telemetry>,
    snapshot: SnapshotFn,
}

/// The admin routes, for serving or for tests.
pub fn router(telemetry: Arc<Telemetry>, snapshot: SnapshotFn) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(AdminState {
            telemetry,
            snapshot,
        })
}

/// Serves the admin routes on `listener` until `token` is cancelled.
///
/// # Errors
/// The server's IO error.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(token.cancelled_owned())
        .await
}

/// Alive unless the writer is wedged (then 503, so a supervisor restarts the bouncer).
async fn healthz(State(state): State<AdminState>) -> Response {
    let live = state.telemetry.health().liveness(std::time::Instant::now());
    match live {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not live: {reason}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match (state.snapshot)().ready {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let text = state.telemetry.metrics.render(&(state.snapshot)());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Json<StatusReport> {
    Json(StatusReport::from(&(state.snapshot)()))
}

/// Renders a status report for a person (the `status` command).
pub fn render_status(report: &StatusReport) -> String {
    let ago = |secs: Option<u64>| secs.map_or_else(|| "never".to_owned(), |s| format!("{s}s ago"));
    let mut lines = vec![
        format!(
            "{} (version {}, up {}s)",
            if report.ready {
                "ready".to_owned()
            } else {
                format!(
                    "NOT READY: {}",
                    report.reason.as_deref().unwrap_or("unknown")
                )
            },
            report.version,
            report.uptime_seconds
        ),
        format!(
            "decisions {}  desired items {}  on the list {}  pending +{} -{}",
            report.decisions,
            report.desired_items,
            report.listed_items,
            report.pending_adds,
            report.pending_removes
        ),
        format!(
            "last LAPI poll {}  last Cloudflare write {}  last reconcile {}",
            ago(report.last_lapi_poll_seconds_ago),
            ago(report.last_cloudflare_write_seconds_ago),
            ago(report.last_reconcile_seconds_ago)
        ),
    ];
    if report.left_out > 0 {
        lines.push(format!("left out for capacity: {}", report.left_out));
    }
    if report.removals_held > 0 {
        lines.push(format!(
            "removals held by the mass-removal guard: {}",
            report.removals_held
        ));
    }
    if report.removals_awaiting_confirmation > 0 {
        lines.push(format!(
            "removals waiting for LAPI to confirm them: {}",
            report.removals_awaiting_confirmation
        ));
    }
    if let Some(why) = &report.foreign_writer {
        lines.push(format!(
            "ANOTHER WRITER SUSPECTED ({why}): removals are paused; check that only one bouncer writes to this account"
        ));
    }
    if report.quarantined > 0 {
        lines.push(format!(
            "items Cloudflare refused (retried at the next reconcile): {}",
            report.quarantined
        ));
    }
    if report.decisions_refused > 0 {
        lines.push(format!(
            "decisions refused by the rails (allowlist, broad ranges, never-a-client addresses): {}",
            report.decisions_refused
        ));
    }
    if let Some(error) = &report.lapi_error {
        lines.push(format!("last LAPI error: {error}"));
    }
    if let Some(error) = &report.cloudflare_error {
        lines.push(format!("last Cloudflare error: {error}"));
    }
    lines.join("\n") + "\n"
}
