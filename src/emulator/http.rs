//! The axum router: API routes under `/client/v4`, the gate every API request passes
//! (counting, lazy advancing, global rate limit, injected faults, authentication), and the
//! admin surface under `/__emulator` (see `admin.rs`), which bypasses the gate.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::time::Instant;

use super::envelope::{code, ApiError};
use super::handlers;
use super::limits::{self, Verdict};
use super::state::{lock, Shared};
use super::{admin, faults::RequestFault};

const API_PREFIX: &str = "/client/v4";

/// Builds the full emulator app (API + admin) over `shared`.
pub(crate) fn router(shared: Shared) -> Router {
    let lists = "/client/v4/accounts/{account_id}/rules/lists";
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
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared.clone());
    api.merge(admin::router(shared))
}

/// What the gate decided under the lock, acted upon after releasing it.
enum Admission {
    RateLimited(ApiError),
    Fault(RequestFault),
    Denied(ApiError),
    Pass,
}

/// Runs before every API request (and the API fallbacks).
async fn gate(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    let now = Instant::now();
    tracing::debug!(method = %request.method(), uri = %request.uri(), "api request");
    let (admission, limit) = {
        let mut state = lock(&shared);
        state.counters.requests += 1;
        state.advance(now);
        let verdict = state.limiter.as_mut().map(|limiter| limiter.check(now));
        let limit = state.limiter.as_ref().map(|limiter| limiter.limit());
        let admission = match verdict {
            Some(Verdict::Limited { retry_after }) => {
                state.counters.rate_limited += 1;
                Admission::RateLimited(rate_limited(limit.unwrap_or(0), retry_after))
            }
            _ => match state.faults.take_request_fault() {
                Some(fault) => Admission::Fault(fault),
                None => authenticate(
                    &request,
                    &state.settings.api_token,
                    &state.settings.account_id,
                ),
            },
        };
        (admission, limit.zip(verdict))
    };
    let mut response = match admission {
        Admission::RateLimited(error) | Admission::Denied(error) => error.into_response(),
        Admission::Fault(fault) => fault.respond().await,
        Admission::Pass => next.run(request).await,
    };
    if let Some((limit, verdict)) = limit {
        limits::add_headers(response.headers_mut(), limit, verdict);
    }
    tracing::debug!(status = response.status().as_u16(), "api response");
    response
}

fn rate_limited(limit: u32, retry_after: u64) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        code::GLOBAL_RATE_LIMITED,
        limits::limited_message(limit),
    )
    .with_retry_after(retry_after)
}

/// `Authorization: Bearer <token>` must match (docs §1), and the account in the path must be
/// the emulated one. An unknown account also gets 403/10000: a real token is simply not
/// authorised for an account it does not belong to, which is what Cloudflare reports.
fn authenticate(request: &Request, token: &str, account_id: &str) -> Admission {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if presented != Some(token) {
        return Admission::Denied(ApiError::authentication());
    }
    let account_in_path = request
        .uri()
        .path()
        .strip_prefix(API_PREFIX)
        .and_then(|rest| rest.strip_prefix("/accounts/"))
        .and_then(|rest| rest.split('/').next());
    match account_in_path {
        Some(account) if account != account_id => Admission::Denied(ApiError::authentication()),
        _ => Admission::Pass,
    }
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
