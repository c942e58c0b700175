//! The admin surface under `/__emulator`: no auth, not counted in `requests`, not rate
//! limited, not subject to injected faults. Used by the demo and by scripts to inspect the
//! completed state, to read the timeline of every bulk operation, and to flip fault
//! switches while the emulator runs as a binary.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use ipnet::IpNet;

use super::canonical::parse_item_ip;
use super::state::{lock, Shared, State as EmulatorState};
use super::Permissions;

pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/__emulator/state", get(get_state))
        .route("/__emulator/faults", post(post_faults))
        .route("/__emulator/operations", get(get_operations))
        .with_state(shared)
}

/// `{"account_id", "lists": [{"id", "name", "kind", "items": [...]}], "zones": {zone_id:
/// ruleset}, "counters", "operation_pending", "operation_count"}`. The items of an ASN list
/// are `{"id", "asn", "comment"}`.
pub(crate) fn snapshot(state: &EmulatorState) -> Value {
    let lists: Vec<Value> = state
        .store
        .lists
        .iter()
        .map(|list| {
            let items = if list.kind == "asn" {
                json!(list.stored_asn_items())
            } else {
                json!(list.stored_items())
            };
            json!({"id": list.id, "name": list.name, "kind": list.kind, "items": items})
        })
        .collect();
    let zones: serde_json::Map<String, Value> = state
        .zones
        .entrypoints
        .iter()
        .map(|(zone_id, ruleset)| (zone_id.clone(), ruleset.json()))
        .collect();
    json!({
        "account_id": state.settings.account_id,
        "lists": lists,
        "zones": zones,
        "counters": state.counters,
        "operation_pending": state.ops.busy(),
        "operation_count": state.ops.count(),
    })
}

async fn get_state(State(shared): State<Shared>) -> Response {
    let mut state = lock(&shared);
    state.advance(Instant::now());
    Json(snapshot(&state)).into_response()
}

/// `{"operations": [...]}`: every bulk operation's timeline (`Operations::timeline`),
/// for a benchmark to tell where a change's time went.
async fn get_operations(State(shared): State<Shared>) -> Response {
    let mut state = lock(&shared);
    state.advance(Instant::now());
    Json(json!({"operations": state.ops.timeline(&state.clock)})).into_response()
}

/// The body of `POST /__emulator/faults`: every field optional, each one a switch of the
/// same name on the handle. Durations are in milliseconds (`window_secs` in seconds).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsBody {
    fail_next_requests: Option<FailRequests>,
    fail_next_operations: Option<FailOperations>,
    op_latency_ms: Option<(u64, u64)>,
    /// Added per item to each new operation's latency, in microseconds.
    op_item_cost_us: Option<u64>,
    /// `Ratelimit` and `Ratelimit-Policy` on every answer, or not.
    rate_limit_headers: Option<bool>,
    slow_next_requests: Option<SlowRequests>,
    lose_next_write_responses: Option<Count>,
    malformed_next_requests: Option<Count>,
    reset_next_connections: Option<Count>,
    reset_next_requests: Option<Count>,
    stick_next_operations: Option<StickOperations>,
    /// Applied after `clear_poison` when both are present.
    fail_operations_containing: Option<String>,
    #[serde(default)]
    clear_poison: bool,
    permissions: Option<Permissions>,
    rate_limit: Option<RateLimitBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailRequests {
    n: u32,
    status: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailOperations {
    n: u32,
    message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Count {
    n: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlowRequests {
    n: u32,
    delay_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StickOperations {
    n: u32,
    duration_ms: u64,
}

/// `limit: null` (or absent) turns the limit off; `window_secs` absent keeps the window.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitBody {
    limit: Option<u32>,
    window_secs: Option<u64>,
}

/// Applies every switch present in the body; all are validated before any is applied.
async fn post_faults(State(shared): State<Shared>, body: Bytes) -> Response {
    let body: FaultsBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => return admin_error(format!("invalid faults body: {err}")),
    };
    let mut state = lock(&shared);
    match validate(&body, &state) {
        Ok(checked) => apply(body, checked, &mut state),
        Err(message) => return admin_error(message),
    }
    Json(json!({"ok": true})).into_response()
}

/// What validation computed on the way.
struct Checked {
    status: Option<StatusCode>,
    poison: Option<IpNet>,
}

fn validate(body: &FaultsBody, state: &EmulatorState) -> Result<Checked, String> {
    let status = match &body.fail_next_requests {
        None => None,
        Some(FailRequests { status, .. }) => Some(
            StatusCode::from_u16(*status).map_err(|_| format!("invalid HTTP status {status}"))?,
        ),
    };
    if let Some((min, max)) = body.op_latency_ms {
        if min > max {
            return Err(format!("op_latency_ms: min {min} > max {max}"));
        }
    }
    let poison = match &body.fail_operations_containing {
        None => None,
        Some(ip) => Some(
            parse_item_ip(ip, state.settings.ip_rules())
                .map_err(|err| format!("fail_operations_containing: {}", err.message(0)))?,
        ),
    };
    let rate_limit = body.rate_limit.as_ref();
    if rate_limit.is_some_and(|body| body.limit == Some(0) || body.window_secs == Some(0)) {
        return Err("rate_limit: limit and window_secs must be positive".to_owned());
    }
    Ok(Checked { status, poison })
}

fn apply(body: FaultsBody, checked: Checked, state: &mut EmulatorState) {
    let faults = &mut state.faults;
    if let (Some(FailRequests { n, .. }), Some(status)) = (body.fail_next_requests, checked.status)
    {
        faults.fail_next_requests(n, status);
    }
    if let Some(FailOperations { n, message }) = body.fail_next_operations {
        faults.fail_next_operations(n, &message);
    }
    if let Some(SlowRequests { n, delay_ms }) = body.slow_next_requests {
        faults.slow_next_requests(n, Duration::from_millis(delay_ms));
    }
    if let Some(StickOperations { n, duration_ms }) = body.stick_next_operations {
        faults.stick_next_operations(n, Duration::from_millis(duration_ms));
    }
    if let Some(Count { n }) = body.lose_next_write_responses {
        faults.lose_next_write_responses(n);
    }
    if let Some(Count { n }) = body.malformed_next_requests {
        faults.malformed_next_requests(n);
    }
    if let Some(Count { n }) = body.reset_next_connections {
        faults.reset_next_connections(n);
    }
    if let Some(Count { n }) = body.reset_next_requests {
        faults.reset_next_requests(n);
    }
    if body.clear_poison {
        faults.clear_poison();
    }
    if let Some(net) = checked.poison {
        faults.poison(net);
    }
    if let Some((min, max)) = body.op_latency_ms {
        state.settings.op_latency = (Duration::from_millis(min), Duration::from_millis(max));
    }
    if let Some(us) = body.op_item_cost_us {
        state.settings.op_item_cost = Duration::from_micros(us);
    }
    if let Some(on) = body.rate_limit_headers {
        state.settings.rate_limit_headers = on;
    }
    if let Some(permissions) = body.permissions {
        state.settings.permissions = permissions;
    }
    if let Some(RateLimitBody { limit, window_secs }) = body.rate_limit {
        let window = window_secs.map_or(state.settings.rate_limit_window, Duration::from_secs);
        state.set_rate_limit(limit, window);
    }
}

fn admin_error(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"ok": false, "error": message})),
    )
        .into_response()
}
