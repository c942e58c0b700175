//! The v4 response envelope (docs/cloudflare-lists.md §1) and the error codes the emulator answers
//! with (docs/cloudflare-lists.md §7).
//!
//! Every API response, success or failure, goes through [`success`], [`success_with_info`] or
//! [`ApiError`], so the envelope shape is written exactly once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Numeric `errors[].code` values. Each says where it comes from (docs/cloudflare-lists.md §7);
/// several are invented because the docs found none (docs/cloudflare-lists.md §12), and say so.
pub(crate) mod code {
    /// `Authentication error` (observed, HTTP 403).
    pub const AUTHENTICATION: u32 = 10000;
    /// Injected 5xx fault. Invented: no code is documented for Cloudflare-side failures.
    pub const INTERNAL: u32 = 10001;
    /// `could not find entrypoint ruleset in the <phase> phase`, HTTP 404. Observed for the
    /// `http_request_firewall_managed` phase (ibm-mas/ansible-devops PR #2403), not in docs.
    pub const ENTRYPOINT_NOT_FOUND: u32 = 10003;
    /// List, item or operation not found. Invented: the 404 body is unverified
    /// (docs/cloudflare-lists.md §2.2).
    pub const NOT_FOUND: u32 = 10006;
    /// List name already used in the account. Invented.
    pub const DUPLICATE_LIST_NAME: u32 = 10014;
    /// Malformed JSON body, wrong body shape, bad query parameter, bad list name or
    /// description, comment too long. Invented.
    pub const INVALID_REQUEST: u32 = 10026;
    /// `The add list items operation contains duplicate items` (verified,
    /// docs/cloudflare-lists.md §6.4).
    pub const DUPLICATE_ITEMS: u32 = 10028;
    /// `filters.api.ip_list_in_use`: deleting a list a rule references (observed,
    /// docs/cloudflare-lists.md §7).
    pub const LIST_IN_USE: u32 = 10031;
    /// `invalid value for ip at position N…` (observed, docs/cloudflare-lists.md §6.1).
    pub const INVALID_IP: u32 = 10035;
    /// `you have been ratelimited please wait and try again` (observed; that it is the body of
    /// the one-pending-operation 429 is unverified, docs/cloudflare-lists.md §3).
    pub const LIST_RATE_LIMITED: u32 = 10040;
    /// Different item kinds in one request (verified meaning, docs/cloudflare-lists.md §6.4).
    pub const MIXED_ITEM_KINDS: u32 = 10056;
    /// Items incompatible with the list kind (verified meaning, docs/cloudflare-lists.md §6.4).
    pub const INCOMPATIBLE_ITEMS: u32 = 10058;
    /// Account item quota exceeded at submit time ([`super::super::CapacityError::Sync`]).
    /// Invented: the real error is unverified (docs/cloudflare-lists.md §4.1, §12).
    pub const CAPACITY_EXCEEDED: u32 = 10061;
    /// Creating a zone ruleset for a phase whose entry point already exists. Invented.
    pub const ENTRYPOINT_EXISTS: u32 = 20070;
    /// A rule with a bad action or expression (empty, over 4096 chars). Invented.
    pub const INVALID_RULE: u32 = 20071;
    /// A rule expression referencing `$name` while no list has that name. Invented: the real API
    /// refuses it (docs/cloudflare-lists.md §9: the list must exist first), with an unknown code.
    pub const UNKNOWN_LIST: u32 = 20072;
    /// A zone id that is not 32 lowercase hex chars, HTTP 404. From real responses
    /// (`Could not route to …, perhaps your object identifier is invalid?`), not the docs.
    pub const INVALID_OBJECT_ID: u32 = 7003;
    /// Global 1200/300 s limit. 971 is "commonly cited", unverified
    /// (docs/cloudflare-lists.md §4.4).
    pub const GLOBAL_RATE_LIMITED: u32 = 971;
    /// Unknown route. Cloudflare's generic `No route for that URI`; not from the docs.
    pub const NO_ROUTE: u32 = 7000;
    /// Known route, wrong method. Invented for the emulator.
    pub const METHOD_NOT_ALLOWED: u32 = 7001;
}

/// A failed API call: HTTP status plus one `errors[]` entry.
#[derive(Clone, Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 only).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(code: u32, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::bad_request(code::INVALID_REQUEST, message)
    }

    pub(crate) fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            code::NOT_FOUND,
            format!("{what} not found"),
        )
    }

    pub(crate) fn authentication() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            code::AUTHENTICATION,
            "Authentication error",
        )
    }

    pub(crate) fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "success": false,
            "errors": [{"code": self.code, "message": self.message}],
            "messages": [],
            "result": null,
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// `200 {"success": true, "errors": [], "messages": [], "result": result}`.
pub(crate) fn success(result: Value) -> Response {
    let body = json!({"success": true, "errors": [], "messages": [], "result": result});
    Json(body).into_response()
}

/// Like [`success`] plus `result_info` (paginated endpoints, docs/cloudflare-lists.md §2.3).
pub(crate) fn success_with_info(result: Value, result_info: Value) -> Response {
    let body = json!({
        "success": true, "errors": [], "messages": [],
        "result": result, "result_info": result_info,
    });
    Json(body).into_response()
}
