//! The axum router: API routes under `/client/v4`, the gate every API request passes
//! (counting, lazy advancing, global rate limit, injected faults, authentication and
//! permissions), and the admin surface under `/__emulator` (see `admin.rs`), which bypasses
//! the gate.

use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tokio::sync::watch;
use tokio::time::Instant;

use super::conn::KillSwitch;
use super::envelope::{code, ApiError};
use super::faults::{self, RequestFault};
use super::limits::{self, Verdict};
use super::state::{lock, Shared};
use super::{admin, handlers, zone_handlers, Permissions, Settings};

const API_PREFIX: &str = "/client/v4";
/// How long a response is held when its connection cannot be killed ("lost" for a test).
const LOST: Duration = Duration::from_secs(3600);

/// Builds the full emulator app (API + admin) over `shared`.
pub(crate) fn router(shared: Shared) -> Router {
    let lists = "/client/v4/accounts/{account_id}/rules/lists";
    let rulesets = "/client/v4/zones/{zone_id}/rulesets";
    let api = Router::new()
        .route(lists, get(handlers::list_lists).post(handlers::create_list))
        .route(
            &format!("{lists}/bulk_operations/{{operation_id}}"),
            get(handlers::get_operation),
        )
        .route(
            &format!("{lists}/{{list_id}}"),
            get(handlers::get_list)
                .put(handlers::update_list)
                .delete(handlers::delete_list),
        )
        .route(
            &format!("{lists}/{{list_id}}/items"),
            get(handlers::get_items)
                .post(handlers::post_items)
                .put(handlers::put_items)
                .delete(handlers::delete_items),
        )
        .route(
            &format!("{lists}/{{list_id}}/items/{{item_id}}"),
            get(handlers::get_item),
        )
        .route(
            rulesets,
            get(zone_handlers::list_rulesets).post(zone_handlers::create_ruleset),
        )
        .route(
            &format!("{rulesets}/phases/{{phase}}/entrypoint"),
            get(zone_handlers::get_entrypoint).put(zone_handlers::put_entrypoint),
        )
        .route(
            &format!("{rulesets}/{{ruleset_id}}"),
            get(zone_handlers::get_ruleset),
        )
        .route(
            &format!("{rulesets}/{{ruleset_id}}/rules"),
            post(zone_handlers::add_rule),
        )
        .route(
            &format!("{rulesets}/{{ruleset_id}}/rules/{{rule_id}}"),
            delete(zone_handlers::delete_rule).patch(zone_handlers::update_rule),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared.clone());
    api.merge(admin::router(shared))
}

/// What the gate decided under the lock, acted upon after releasing it.
enum Admission {
    /// Rate limited, or not authorised.
    Refused(ApiError),
    Fault(RequestFault),
    Pass,
}

/// Everything the gate takes out of the state before acting.
struct Decision {
    admission: Admission,
    /// `(limit, window in seconds, verdict)` for the rate-limit headers; `None` when the
    /// limit is off or the headers are switched off.
    limit: Option<(u32, u64, Verdict)>,
    /// Ends holds early when the server stops.
    stopping: watch::Receiver<bool>,
}

/// Runs before every API request (and the API fallbacks).
async fn gate(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    tracing::debug!(method = %request.method(), uri = %request.uri(), "api request");
    let kill = request.extensions().get::<ConnectInfo<KillSwitch>>();
    let kill = kill.map(|ConnectInfo(kill)| kill.clone());
    let item_write = is_item_write(&request);
    let Decision {
        admission,
        limit,
        stopping,
    } = decide(&shared, &request, Instant::now());
    let mut response = match admission {
        Admission::Refused(error) => error.into_response(),
        Admission::Pass => next.run(request).await,
        Admission::Fault(RequestFault::Status(status)) => faults::failure(status),
        Admission::Fault(RequestFault::Malformed) => faults::malformed(),
        Admission::Fault(RequestFault::Reset) => return drop_connection(kill, stopping).await,
        Admission::Fault(RequestFault::Slow(delay)) => {
            // The handler runs first: a write creates its operation even if the client
            // gives up waiting.
            let response = next.run(request).await;
            hold(delay, stopping.clone()).await;
            response
        }
    };
    if item_write && response.status().is_success() && take_lost_response(&shared) {
        return drop_connection(kill, stopping).await;
    }
    if let Some((limit, window_secs, verdict)) = limit {
        limits::add_headers(response.headers_mut(), limit, window_secs, verdict);
    }
    tracing::debug!(status = response.status().as_u16(), "api response");
    response
}

/// Counts the request, then in order: global rate limit, injected fault, authentication.
fn decide(shared: &Shared, request: &Request, now: Instant) -> Decision {
    let mut state = lock(shared);
    state.counters.requests += 1;
    state.advance(now);
    let token = presented_token(request).unwrap_or_default();
    let headers = state.settings.rate_limit_headers;
    let limit = state.limiter.as_mut().map(|limiter| {
        let verdict = limiter.check(token, now);
        (limiter.limit(), limiter.window_secs(), verdict, headers)
    });
    let admission = match limit {
        Some((limit, window_secs, Verdict::Limited { retry_after }, _)) => {
            state.counters.rate_limited += 1;
            Admission::Refused(rate_limited(limit, window_secs, retry_after))
        }
        _ => match state.faults.take_request_fault() {
            Some(fault) => {
                tracing::debug!(?fault, "injected request fault");
                state.counters.faults_injected += 1;
                Admission::Fault(fault)
            }
            None => authorize(request, &state.settings),
        },
    };
    let stopping = state.stopping.subscribe();
    Decision {
        admission,
        limit: limit
            .filter(|&(_, _, _, headers)| headers)
            .map(|(limit, window_secs, verdict, _)| (limit, window_secs, verdict)),
        stopping,
    }
}

/// POST/PUT/DELETE on `…/rules/lists/{list_id}/items`.
fn is_item_write(request: &Request) -> bool {
    let method = request.method();
    let write = *method == Method::POST || *method == Method::PUT || *method == Method::DELETE;
    let segments: Vec<&str> = request.uri().path().split('/').collect();
    write
        && matches!(
            segments.as_slice(),
            [
                "",
                "client",
                "v4",
                "accounts",
                _,
                "rules",
                "lists",
                _,
                "items"
            ]
        )
}

/// Takes one armed lost-response fault after an accepted item write.
fn take_lost_response(shared: &Shared) -> bool {
    let mut state = lock(shared);
    let lost = state.faults.lost_write_responses.take().is_some();
    state.counters.faults_injected += u64::from(lost);
    lost
}

/// Makes sure the client gets no response: kills the connection, or, for a router served
/// without the listener of `conn.rs` (no kill switch), holds the response for an hour.
async fn drop_connection(kill: Option<KillSwitch>, stopping: watch::Receiver<bool>) -> Response {
    match kill {
        Some(kill) => kill.kill(),
        None => hold(LOST, stopping).await,
    }
    let status = axum::http::StatusCode::BAD_GATEWAY;
    ApiError::new(status, code::INTERNAL, "emulated failure: connection lost").into_response()
}

/// Sleeps for `delay`, or until the server stops.
async fn hold(delay: Duration, mut stopping: watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = stopping.wait_for(|stopping| *stopping) => {}
    }
}

fn rate_limited(limit: u32, window_secs: u64, retry_after: u64) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        code::GLOBAL_RATE_LIMITED,
        limits::limited_message(limit, window_secs),
    )
    .with_retry_after(retry_after)
}

/// `Authorization: Bearer <token>` must match (docs/cloudflare-lists.md §1), the account in the
/// path must be the emulated one, and the token's permissions must allow the method
/// (docs/cloudflare-lists.md §8). Each refusal is 403/10000: a real token is simply not authorised
/// for an account it does not belong to, or for an action it lacks the permission for, which is
/// what Cloudflare reports.
fn authorize(request: &Request, settings: &Settings) -> Admission {
    if presented_token(request) != Some(settings.api_token.as_str()) {
        return Admission::Refused(ApiError::authentication());
    }
    let account_in_path = request
        .uri()
        .path()
        .strip_prefix(API_PREFIX)
        .and_then(|rest| rest.strip_prefix("/accounts/"))
        .and_then(|rest| rest.split('/').next());
    if account_in_path.is_some_and(|account| account != settings.account_id) {
        return Admission::Refused(ApiError::authentication());
    }
    let read = *request.method() == Method::GET || *request.method() == Method::HEAD;
    match settings.permissions {
        Permissions::Edit => Admission::Pass,
        Permissions::Read if read => Admission::Pass,
        Permissions::Read | Permissions::None => Admission::Refused(ApiError::authentication()),
    }
}

/// The token of `Authorization: Bearer <token>`, if any.
fn presented_token(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

async fn no_route(State(shared): State<Shared>) -> Response {
    lock(&shared).counters.other += 1;
    let status = axum::http::StatusCode::NOT_FOUND;
    ApiError::new(status, code::NO_ROUTE, "No route for that URI").into_response()
}

async fn method_not_allowed(State(shared): State<Shared>) -> Response {
    lock(&shared).counters.other += 1;
    let status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    ApiError::new(status, code::METHOD_NOT_ALLOWED, "Method not allowed").into_response()
}
