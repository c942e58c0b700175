//! The admin surface under `/__emulator`: no auth, not counted in `requests`, not rate
//! limited, not subject to injected faults. Used by the demo and by scripts to inspect the
//! completed state and to flip fault switches while the emulator runs as a binary.

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

use super::faults::RequestFault;
use super::state::{lock, Shared, State as EmulatorState};

pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/__emulator/state", get(get_state))
        .route("/__emulator/faults", post(post_faults))
        .with_state(shared)
}

/// `{"account_id", "lists": [{"id", "name", "items": [...]}], "counters", "operation_pending"}`.
pub(crate) fn snapshot(state: &EmulatorState) -> Value {
    let lists: Vec<Value> = state
        .store
        .lists
        .iter()
        .map(|list| json!({"id": list.id, "name": list.name, "items": list.stored_items()}))
        .collect();
    json!({
        "account_id": state.settings.account_id,
        "lists": lists,
        "counters": state.counters,
        "operation_pending": state.ops.busy(),
    })
}

async fn get_state(State(shared): State<Shared>) -> Response {
    let mut state = lock(&shared);
    state.advance(Instant::now());
    Json(snapshot(&state)).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsBody {
    fail_next_requests: Option<FailRequests>,
    fail_next_operations: Option<FailOperations>,
    op_latency_ms: Option<(u64, u64)>,
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

/// Applies every switch present in the body; all are validated before any is applied.
async fn post_faults(State(shared): State<Shared>, body: Bytes) -> Response {
    let body: FaultsBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => return admin_error(format!("invalid faults body: {err}")),
    };
    let request_fault = match body.fail_next_requests {
        None => None,
        Some(FailRequests { n, status }) => match StatusCode::from_u16(status) {
            Ok(status) => Some((n, RequestFault::Status(status))),
            Err(_) => return admin_error(format!("invalid HTTP status {status}")),
        },
    };
    if let Some((min, max)) = body.op_latency_ms {
        if min > max {
            return admin_error(format!("op_latency_ms: min {min} > max {max}"));
        }
    }
    let mut state = lock(&shared);
    if let Some((n, fault)) = request_fault {
        state.faults.fail_next_requests(n, fault);
    }
    if let Some(FailOperations { n, message }) = body.fail_next_operations {
        state.faults.fail_next_operations(n, &message);
    }
    if let Some((min, max)) = body.op_latency_ms {
        state.settings.op_latency = (Duration::from_millis(min), Duration::from_millis(max));
    }
    Json(json!({"ok": true})).into_response()
}

fn admin_error(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"ok": false, "error": message})),
    )
        .into_response()
}
