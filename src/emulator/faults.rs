//! Injected faults: the switches tests flip to make the emulator misbehave on purpose.
//!
//! To add a fault kind (timeouts, malformed bodies, connection resets…), add a
//! [`RequestFault`] variant, a way to queue it (a handle method and an admin field), and its
//! effect in [`RequestFault::respond`]. The gate middleware takes at most one fault per API
//! request out of the queue while holding the state lock, then acts on it after releasing the
//! lock, so a fault that needs to `.await` (a delay) fits without changes elsewhere.

use std::collections::VecDeque;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::envelope::{code, ApiError};

/// What to do instead of serving one API request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RequestFault {
    /// Answer with this status and a generic error envelope; the request has no effect.
    Status(StatusCode),
}

impl RequestFault {
    /// The response that replaces the real one.
    pub(crate) async fn respond(self) -> Response {
        match self {
            RequestFault::Status(status) => {
                let message = format!("emulated failure: injected HTTP {}", status.as_u16());
                ApiError::new(status, code::INTERNAL, message).into_response()
            }
        }
    }
}

/// Faults queued for upcoming requests and operations.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    requests: VecDeque<RequestFault>,
    /// Error messages for the next operations submitted; each ends `failed`, nothing applied.
    operations: VecDeque<String>,
}

impl Faults {
    /// Replaces the request-fault queue with `n` copies of `fault`; `n = 0` clears it.
    pub(crate) fn fail_next_requests(&mut self, n: u32, fault: RequestFault) {
        self.requests = std::iter::repeat_n(fault, n as usize).collect();
    }

    /// Replaces the operation-fault queue with `n` copies of `message`; `n = 0` clears it.
    pub(crate) fn fail_next_operations(&mut self, n: u32, message: &str) {
        self.operations = std::iter::repeat_n(message.to_owned(), n as usize).collect();
    }

    pub(crate) fn take_request_fault(&mut self) -> Option<RequestFault> {
        self.requests.pop_front()
    }

    /// Decided at submission: the next `n` operations *created* fail.
    pub(crate) fn take_operation_fault(&mut self) -> Option<String> {
        self.operations.pop_front()
    }
}
