//! The admin HTTP listener: `/healthz` (the process answers), `/readyz` (synced and both
//! APIs recently fine, 503 with a one-line reason otherwise), `/metrics` (OpenMetrics
//! text) and `/status` (JSON for `crowdsec-cloudflare-iplist-bouncer status`).
//! It has no authentication: keep it on loopback or a private network.
//!
//! Slow or idle clients cannot starve it (see [`Limits`]): request headers must arrive
//! within a few seconds, connections that start no request are closed, handlers are
//! timed out, and at most [`Limits::max_connections`] connections are held, so that
//! file descriptors are left for the bouncer's own calls. At the cap, a new connection
//! takes the place of the one that has waited longest without a request in a handler:
//! a probe that connects and asks at once is answered while slow connections hold
//! every slot.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::telemetry::{Snapshot, StatusReport, Telemetry};

/// Takes a snapshot of the running bouncer.
pub type SnapshotFn = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// One Cloudflare account as the admin routes see it.
#[derive(Clone)]
pub struct AccountView {
    /// Its label; `None` when it is the only account (nothing is labelled then).
    pub name: Option<String>,
    pub telemetry: Arc<Telemetry>,
    pub snapshot: SnapshotFn,
}

#[derive(Clone)]
struct AdminState {
    accounts: Arc<[AccountView]>,
}

/// The admin routes of a bouncer with one account, for serving or for tests.
pub fn router(telemetry: Arc<Telemetry>, snapshot: SnapshotFn) -> Router {
    router_for(vec![AccountView {
        name: None,
        telemetry,
        snapshot,
    }])
}

/// The admin routes over every account: alive and ready only if each is; metrics and
/// status per account (labelled `account` when there are several).
pub fn router_for(accounts: Vec<AccountView>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(AdminState {
            accounts: accounts.into(),
        })
}

/// `reason`, naming the account when there are several.
fn of_account(view: &AccountView, reason: String) -> String {
    match &view.name {
        Some(name) => format!("account {name}: {reason}"),
        None => reason,
    }
}

/// How the admin listener protects itself from slow, idle or numerous clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A connection is closed when it has not sent complete request headers within
    /// this, counted from its opening or from the end of its previous response (so it
    /// also bounds how long a keep-alive connection may wait for its next request).
    pub header_read_timeout: Duration,
    /// A connection is closed when no request has started or ended on it for this long
    /// and none is in a handler: it catches what the header timeout does not see, such
    /// as a client that never reads its response.
    pub idle_timeout: Duration,
    /// A handler that has not answered within this is answered 503 instead.
    pub request_timeout: Duration,
    /// Connections held at once. At the cap, a new connection replaces the held one
    /// that has gone longest without activity and has no request in a handler; when
    /// every held connection is in a handler, the new one is closed at once.
    pub max_connections: usize,
    /// After cancellation: how long requests in handlers may go on (idle connections
    /// are closed at once).
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            max_connections: 64,
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

/// How long a new connection at the cap waits for the slot of the one it replaces.
const REPLACE_WAIT: Duration = Duration::from_millis(250);
/// The pause after an accept error that is not the client's (out of file descriptors,
/// of memory): the condition needs time to pass, and an immediate retry would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Accept errors are logged at most this often.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves the admin routes on `listener` until `token` is cancelled, with the default
/// [`Limits`].
///
/// # Errors
/// None in practice: accept errors are logged and waited out.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    token: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, token, Limits::default()).await
}

/// Serves the admin routes on `listener` until `token` is cancelled, within `limits`.
/// On cancellation it stops accepting, closes idle connections, lets requests in
/// handlers go on for [`Limits::shutdown_grace`], and returns.
///
/// # Errors
/// None in practice: accept errors are logged and waited out.
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    token: CancellationToken,
    limits: Limits,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let server = Arc::new(Server {
        builder,
        service: TowerToHyperService::new(router),
        limits,
        token: token.clone(),
        held: Registry::default(),
    });
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tasks = TaskTracker::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        let stream = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    if accept_errors.note(&err) {
                        tokio::select! {
                            () = token.cancelled() => break,
                            () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                        }
                    }
                    continue;
                }
            },
        };
        let Some(permit) = slot(&permits, &server.held).await else {
            debug!("admin connection closed at once: at the cap, and no held one made room");
            continue;
        };
        let server = server.clone();
        tasks.spawn(async move { server.connection(stream, permit).await });
    }
    drop(listener);
    tasks.close();
    // Each connection ends by itself within the grace; this bounds a stuck one too.
    let _ = tokio::time::timeout(limits.shutdown_grace * 2, tasks.wait()).await;
    Ok(())
}

/// A free slot, or the slot of the held connection that replacing frees.
async fn slot(permits: &Arc<Semaphore>, held: &Registry) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    if !held.close_idlest() {
        return None;
    }
    tokio::time::timeout(REPLACE_WAIT, permits.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
}

struct Server {
    builder: http1::Builder,
    service: TowerToHyperService<Router>,
    limits: Limits,
    token: CancellationToken,
    held: Registry,
}

impl Server {
    /// Serves one connection until it ends, is replaced, goes idle, or shutdown's grace
    /// is over. The permit is released only once the socket is closed.
    async fn connection(self: Arc<Self>, stream: TcpStream, permit: OwnedSemaphorePermit) {
        let (id, held) = self.held.insert();
        let service = {
            let (service, held, timeout) = (
                self.service.clone(),
                held.clone(),
                self.limits.request_timeout,
            );
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let (service, held) = (service.clone(), held.clone());
                async move {
                    let _busy = held.busy();
                    let answer = tokio::time::timeout(
                        timeout,
                        hyper::service::Service::call(&service, request),
                    )
                    .await;
                    Ok::<_, Infallible>(match answer {
                        Ok(Ok(response)) => response,
                        Ok(Err(never)) => match never {},
                        Err(_) => {
                            (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response()
                        }
                    })
                }
            })
        };
        // Boxed, not pinned on the stack, so that dropping it closes the socket before the
        // permit is released.
        let mut connection = Box::pin(self.builder.serve_connection(TokioIo::new(stream), service));
        let idle = held.idle_out(self.limits.idle_timeout);
        tokio::pin!(idle);
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        let mut shutting_down = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        debug!(error = %err, "admin connection ended");
                    }
                    break;
                }
                () = held.replaced.cancelled() => {
                    debug!("admin connection replaced by a newer one at the cap");
                    break;
                }
                () = &mut idle => {
                    debug!("admin connection closed for idleness");
                    break;
                }
                () = self.token.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    connection.as_mut().graceful_shutdown();
                    grace.as_mut().reset(tokio::time::Instant::now() + self.limits.shutdown_grace);
                }
                () = &mut grace, if shutting_down => break,
            }
        }
        self.held.remove(id);
        drop(connection);
        drop(permit);
    }
}

/// The held connections, for replacing the idlest at the cap.
#[derive(Default)]
struct Registry {
    next: AtomicU64,
    held: Mutex<HashMap<u64, Arc<Held>>>,
}

impl Registry {
    fn insert(&self) -> (u64, Arc<Held>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let held = Arc::new(Held {
            in_handler: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
            replaced: CancellationToken::new(),
        });
        self.lock().insert(id, held.clone());
        (id, held)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Tells the connection that has gone longest without activity, and has no request
    /// in a handler, to close; false when there is none.
    fn close_idlest(&self) -> bool {
        let mut held = self.lock();
        let idlest = held
            .iter()
            .filter(|(_, conn)| conn.in_handler.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, conn)| conn.last_active())
            .map(|(id, _)| *id);
        let Some(conn) = idlest.and_then(|id| held.remove(&id)) else {
            return false;
        };
        conn.replaced.cancel();
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Held>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One held connection.
struct Held {
    /// Requests in a handler (one at most over HTTP/1.1 without pipelining).
    in_handler: AtomicUsize,
    /// When a request last started or ended, or when the connection opened.
    last_active: Mutex<Instant>,
    /// Cancelled when a newer connection takes its slot.
    replaced: CancellationToken,
}

impl Held {
    fn last_active(&self) -> Instant {
        *self
            .last_active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn touch(&self) {
        *self
            .last_active
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// Marks a request in a handler until the guard is dropped.
    fn busy(self: &Arc<Self>) -> Busy {
        self.in_handler.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Busy(self.clone())
    }

    /// Resolves once the connection has had no activity for `timeout` with no request
    /// in a handler.
    async fn idle_out(&self, timeout: Duration) {
        loop {
            let quiet = self.last_active().elapsed();
            if quiet >= timeout && self.in_handler.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::time::sleep(
                timeout
                    .saturating_sub(quiet)
                    .max(Duration::from_millis(100)),
            )
            .await;
        }
    }
}

struct Busy(Arc<Held>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_handler.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accept errors: which ones call for a pause, and logging them without flooding.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    /// Notes `err`; true when the loop should pause before accepting again.
    fn note(&mut self, err: &std::io::Error) -> bool {
        use std::io::ErrorKind;
        // The client's trouble, gone with its connection: accept the next one.
        if matches!(
            err.kind(),
            ErrorKind::ConnectionAborted
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionRefused
                | ErrorKind::Interrupted
        ) {
            debug!(error = %err, "admin accept failed for one connection");
            return false;
        }
        let now = Instant::now();
        if self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_EVERY)
        {
            warn!(
                error = %err,
                not_logged_since = self.unlogged,
                "the admin listener cannot accept connections; retrying"
            );
            self.last_logged = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        true
    }
}

/// Alive unless the writer is wedged (then 503, so a supervisor restarts the bouncer).
async fn healthz(State(state): State<AdminState>) -> Response {
    let now = std::time::Instant::now();
    let live = (state.accounts.iter()).try_for_each(|view| {
        let live = view.telemetry.health().liveness(now);
        live.map_err(|why| of_account(view, why))
    });
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
    let ready = (state.accounts.iter())
        .try_for_each(|view| (view.snapshot)().ready.map_err(|why| of_account(view, why)));
    match ready {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let text = match &state.accounts[..] {
        [view] => view.telemetry.metrics.render(&(view.snapshot)()),
        views => {
            let parts: Vec<(String, String)> = (views.iter())
                .map(|view| {
                    let text = view.telemetry.metrics.render(&(view.snapshot)());
                    (view.name.clone().unwrap_or_default(), text)
                })
                .collect();
            crate::telemetry::label_accounts(&parts)
        }
    };
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
    match &state.accounts[..] {
        [view] => Json(StatusReport::from(&(view.snapshot)())),
        views => {
            let parts = (views.iter())
                .map(|view| {
                    let report = StatusReport::from(&(view.snapshot)());
                    (view.name.clone().unwrap_or_default(), report)
                })
                .collect();
            Json(StatusReport::combine(parts))
        }
    }
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
    if let Some(ha) = &report.ha {
        let holder = ha.holder.as_deref().unwrap_or("nobody");
        let mut line = format!(
            "high availability: {} is the {}; the Lease is held by {holder}",
            ha.identity, ha.role
        );
        if let Some(err) = &ha.lease_error {
            line.push_str(&format!(" (Lease API: {err})"));
        }
        lines.push(line);
    }
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
    for account in &report.accounts {
        let r = &account.report;
        let state = if r.ready {
            "ready".to_owned()
        } else {
            format!("NOT READY: {}", r.reason.as_deref().unwrap_or("unknown"))
        };
        lines.push(format!(
            "account {}: {state}; on the list {}  pending +{} -{}  left out {}  last Cloudflare write {}",
            account.name,
            r.listed_items,
            r.pending_adds,
            r.pending_removes,
            r.left_out,
            ago(r.last_cloudflare_write_seconds_ago)
        ));
        if let Some(error) = &r.cloudflare_error {
            lines.push(format!(
                "account {}: last Cloudflare error: {error}",
                account.name
            ));
        }
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    #[test]
    fn several_accounts_are_reported_each_and_together() {
        let account = |listed, ready: bool, error: Option<&str>| StatusReport {
            ready,
            reason: (!ready).then(|| "Cloudflare failing: HTTP 403".into()),
            decisions: 3,
            desired_items: listed,
            listed_items: listed,
            last_cloudflare_write_seconds_ago: Some(listed as u64),
            cloudflare_error: error.map(Into::into),
            ..StatusReport::default()
        };
        let report = StatusReport::combine(vec![
            ("main".into(), account(2, true, None)),
            ("second".into(), account(5, false, Some("HTTP 403"))),
        ]);
        assert!(!report.ready);
        assert_eq!(
            report.reason.as_deref(),
            Some("account second: Cloudflare failing: HTTP 403")
        );
        assert_eq!((report.decisions, report.listed_items), (3, 7));
        assert_eq!(report.last_cloudflare_write_seconds_ago, Some(5));
        assert_eq!(
            report.cloudflare_error.as_deref(),
            Some("account second: HTTP 403")
        );
        let names: Vec<&str> = report.accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["main", "second"]);
        // The JSON keeps each account's fields, flat, beside its name.
        let json = serde_json::to_value(&report).expect("serialises");
        assert_eq!(json["accounts"][1]["name"], "second");
        assert_eq!(json["accounts"][1]["listed_items"], 5);
        let back: StatusReport = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, report);
        let text = super::render_status(&report);
        assert!(
            text.contains("account main: ready; on the list 2"),
            "{text}"
        );
        assert!(
            text.contains("account second: last Cloudflare error: HTTP 403"),
            "{text}"
        );
    }

    #[test]
    fn status_names_the_holder_under_high_availability() {
        let report = StatusReport {
            version: "0.1.0".into(),
            ready: true,
            reason: None,
            uptime_seconds: 5,
            decisions: 1,
            desired_items: 1,
            listed_items: 0,
            pending_adds: 0,
            pending_removes: 0,
            left_out: 0,
            removals_held: 0,
            removals_awaiting_confirmation: 0,
            quarantined: 0,
            decisions_refused: 0,
            last_lapi_poll_seconds_ago: Some(1),
            last_cloudflare_write_seconds_ago: None,
            last_reconcile_seconds_ago: None,
            lapi_error: None,
            cloudflare_error: None,
            foreign_writer: None,
            ha: Some(crate::telemetry::HaReport {
                identity: "lapi-1".into(),
                role: "standby".into(),
                holder: Some("lapi-0".into()),
                lease_error: None,
            }),
            accounts: Vec::new(),
        };
        let text = super::render_status(&report);
        assert!(
            text.contains("high availability: lapi-1 is the standby; the Lease is held by lapi-0"),
            "{text}"
        );
        let json = serde_json::to_string(&report).unwrap();
        let back: StatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        let without = StatusReport { ha: None, ..report };
        assert!(!super::render_status(&without).contains("high availability"));
        assert!(!serde_json::to_string(&without).unwrap().contains("\"ha\""));
    }

    use super::*;

    /// Routes for the limits: an instant one, a slow one, one that never answers, and a
    /// body larger than the socket buffers.
    fn routes() -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    "slow\n"
                }),
            )
            .route(
                "/forever",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "never\n"
                }),
            )
            .route("/big", get(|| async { vec![b'x'; BIG] }))
    }

    const BIG: usize = 32 << 20;

    struct Served {
        addr: SocketAddr,
        token: CancellationToken,
        handle: JoinHandle<std::io::Result<()>>,
    }

    async fn start(limits: Limits) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let token = CancellationToken::new();
        let handle = tokio::spawn(serve_with(listener, routes(), token.clone(), limits));
        Served {
            addr,
            token,
            handle,
        }
    }

    async fn send(addr: SocketAddr, path: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
            .await
            .expect("write");
        stream
    }

    /// Reads until the server closes, or `limit`: what was read and whether it closed.
    async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let closed = tokio::time::timeout(limit, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .is_ok();
        (String::from_utf8_lossy(&got).into_owned(), closed)
    }

    /// Reads one whole answer (headers and a body of `Content-Length`).
    async fn answer(stream: &mut TcpStream, limit: Duration) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        tokio::time::timeout(limit, async {
            loop {
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|n| n.trim().parse::<usize>().ok());
                    if length.is_some_and(|n| body.len() >= n) {
                        return text;
                    }
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return text,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("an answer in time")
    }

    #[tokio::test]
    async fn healthz_fails_only_when_the_writer_is_wedged() {
        let telemetry = Arc::new(Telemetry::default());
        let state = AdminState {
            accounts: vec![AccountView {
                name: None,
                telemetry: telemetry.clone(),
                snapshot: Arc::new(|| unreachable!("/healthz takes no snapshot")),
            }]
            .into(),
        };
        let status = |state: AdminState| async move { healthz(State(state)).await.status() };
        // Idle (nothing due), and a wait still within its promise: alive.
        assert_eq!(status(state.clone()).await, StatusCode::OK);
        telemetry.health().writer_due = Some(Instant::now() + Duration::from_secs(60));
        assert_eq!(status(state.clone()).await, StatusCode::OK);
        // Past the promise: wedged.
        telemetry.health().writer_due = Some(Instant::now() - Duration::from_secs(1));
        assert_eq!(status(state.clone()).await, StatusCode::SERVICE_UNAVAILABLE);
        let why = telemetry
            .health()
            .liveness(Instant::now())
            .expect_err("wedged");
        assert!(why.contains("has not turned"), "{why}");
    }

    #[tokio::test]
    async fn a_handler_past_the_request_timeout_is_answered_503() {
        let served = start(Limits {
            request_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let started = Instant::now();
        let mut stream = send(served.addr, "/forever").await;
        let text = answer(&mut stream, Duration::from_secs(3)).await;
        assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        assert!(text.ends_with("request timed out\n"), "{text}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        // The connection stays usable.
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .expect("write");
        let text = answer(&mut stream, Duration::from_secs(2)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }

    #[tokio::test]
    async fn at_the_cap_with_every_connection_in_a_handler_a_new_one_is_closed_at_once() {
        let served = start(Limits {
            max_connections: 2,
            ..Limits::default()
        })
        .await;
        let mut first = send(served.addr, "/slow").await;
        let mut second = send(served.addr, "/slow").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = send(served.addr, "/healthz").await;
        let (text, closed) = read_until_closed(&mut third, Duration::from_millis(300)).await;
        assert!(closed, "the connection past the cap is closed at once");
        assert_eq!(text, "", "and is not answered");
        for stream in [&mut first, &mut second] {
            let text = answer(stream, Duration::from_secs(3)).await;
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        }
        // Once they are idle again, a new connection takes the place of the idlest: the
        // first, since the second has just been used again.
        second
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .expect("write");
        let text = answer(&mut second, Duration::from_secs(2)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let mut fourth = send(served.addr, "/healthz").await;
        let text = answer(&mut fourth, Duration::from_secs(2)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let (_, closed) = read_until_closed(&mut first, Duration::from_secs(1)).await;
        assert!(closed, "the idlest connection made room");
        let (_, closed) = read_until_closed(&mut second, Duration::from_millis(300)).await;
        assert!(!closed, "the recently used one stays");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_its_answer_is_closed_after_the_idle_timeout() {
        let served = start(Limits {
            idle_timeout: Duration::from_millis(500),
            ..Limits::default()
        })
        .await;
        let mut stream = send(served.addr, "/big").await;
        // Not reading: the answer fills the socket buffers and the server's write stalls.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (text, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(closed, "the stalled connection was closed");
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "{}",
            &text[..text.len().min(200)]
        );
        assert!(
            text.len() < BIG,
            "the answer was cut short ({} bytes of {BIG})",
            text.len()
        );
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_lets_short_requests_finish_and_is_bounded() {
        let served = start(Limits {
            shutdown_grace: Duration::from_millis(800),
            ..Limits::default()
        })
        .await;
        let mut idle = TcpStream::connect(served.addr).await.expect("connect");
        let mut slow = send(served.addr, "/slow").await;
        let mut forever = send(served.addr, "/forever").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cancelled = Instant::now();
        served.token.cancel();
        let (_, idle_closed) = read_until_closed(&mut idle, Duration::from_millis(500)).await;
        assert!(idle_closed, "an idle connection is closed at once");
        let text = answer(&mut slow, Duration::from_secs(2)).await;
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "a request in a handler finishes: {text}"
        );
        tokio::time::timeout(Duration::from_secs(3), served.handle)
            .await
            .expect("serve returns after the grace")
            .expect("no panic")
            .expect("no error");
        let took = cancelled.elapsed();
        assert!(took < Duration::from_millis(2000), "{took:?}");
        let (_, closed) = read_until_closed(&mut forever, Duration::from_millis(500)).await;
        assert!(closed, "a request past the grace is cut");
        assert!(
            TcpStream::connect(served.addr).await.is_err(),
            "nothing listens after shutdown"
        );
    }

    #[test]
    fn accept_errors_of_one_client_are_not_waited_out_and_running_out_is() {
        let mut errors = AcceptErrors::default();
        let aborted = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert!(!errors.note(&aborted));
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(errors.note(&emfile));
        assert!(errors.note(&emfile), "every time, logged or not");
        assert_eq!(
            errors.unlogged, 1,
            "the second within the period is counted, not logged"
        );
    }
}
