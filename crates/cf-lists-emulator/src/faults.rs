//! Injected faults: the switches tests flip to make the emulator misbehave on purpose, and
//! the [`Emulator`] methods that flip them.
//!
//! Every switch is "the next n": a [`NextN`] counter handed out at most n times, then inert.
//! Where each kind fires:
//! - request faults ([`RequestFault`]): the gate in `http.rs` takes at most one per API
//!   request, under the state lock, in the order of [`Faults::take_request_fault`], then acts
//!   on it after releasing the lock (so a delay can `.await`);
//! - lost write responses: the gate, after an item write was accepted;
//! - connection resets: the listener in `conn.rs`, right after accept;
//! - operation faults (failed, stuck, poisoned): `State::submit_write`, when an operation is
//!   created.
//!
//! Each fault that fires adds one to `Counters::faults_injected`. To add a fault kind, add a
//! counter here, a handle method below, an admin field in `admin.rs` and its effect where it
//! fires.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use super::canonical::{ip_text, parse_item_ip};
use super::envelope::{code, ApiError};
use super::{Emulator, Permissions};

/// What the gate does instead of (or before) answering one API request normally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RequestFault {
    /// Abort the connection without a response; the handler does not run.
    Reset,
    /// Answer with this status and a generic error envelope; the handler does not run.
    Status(StatusCode),
    /// Answer 200 with a body that is not JSON; the handler does not run.
    Malformed,
    /// Run the handler, then hold its response for this long.
    Slow(Duration),
}

/// The body of [`RequestFault::Malformed`]: a success envelope cut short, served as JSON, so
/// that a client which checks the content type still has to cope with a decode error.
pub(crate) const MALFORMED_BODY: &str = r#"{"success":true,"errors":[],"messages":[],"result":{"#;

/// The response of [`RequestFault::Status`]: the status and a generic error envelope.
pub(crate) fn failure(status: StatusCode) -> Response {
    let message = format!("emulated failure: injected HTTP {}", status.as_u16());
    ApiError::new(status, code::INTERNAL, message).into_response()
}

/// The response of [`RequestFault::Malformed`].
pub(crate) fn malformed() -> Response {
    let mut response = MALFORMED_BODY.into_response();
    let json = HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

/// "The next n": `value` is handed out `left` more times.
#[derive(Debug, Default)]
pub(crate) struct NextN<T> {
    left: u32,
    value: T,
}

impl<T: Clone> NextN<T> {
    fn new(left: u32, value: T) -> NextN<T> {
        NextN { left, value }
    }

    pub(crate) fn take(&mut self) -> Option<T> {
        self.left = self.left.checked_sub(1)?;
        Some(self.value.clone())
    }
}

/// Faults armed for upcoming connections, requests and operations.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    reset_requests: NextN<()>,
    failed_requests: NextN<StatusCode>,
    malformed_requests: NextN<()>,
    slow_requests: NextN<Duration>,
    pub lost_write_responses: NextN<()>,
    pub reset_connections: NextN<()>,
    /// Error messages of the next operations created; each ends `failed`, nothing applied.
    pub failed_operations: NextN<String>,
    /// How long the next operations created stay pending/running.
    pub stuck_operations: NextN<Duration>,
    /// Operations whose items include one of these end `failed`, for as long as it is here.
    poison: BTreeSet<IpNet>,
}

impl Faults {
    /// One request fault, first armed kind wins: reset, status, malformed, slow.
    pub(crate) fn take_request_fault(&mut self) -> Option<RequestFault> {
        if self.reset_requests.take().is_some() {
            return Some(RequestFault::Reset);
        }
        if let Some(status) = self.failed_requests.take() {
            return Some(RequestFault::Status(status));
        }
        if self.malformed_requests.take().is_some() {
            return Some(RequestFault::Malformed);
        }
        self.slow_requests.take().map(RequestFault::Slow)
    }

    /// The error of an operation touching `nets`, if one of them is poisoned.
    pub(crate) fn poisoned(&self, nets: &[IpNet]) -> Option<String> {
        let net = nets.iter().find(|net| self.poison.contains(net))?;
        Some(format!("invalid item {}", ip_text(net)))
    }

    pub(crate) fn fail_next_requests(&mut self, n: u32, status: StatusCode) {
        self.failed_requests = NextN::new(n, status);
    }

    pub(crate) fn fail_next_operations(&mut self, n: u32, message: &str) {
        self.failed_operations = NextN::new(n, message.to_owned());
    }

    pub(crate) fn slow_next_requests(&mut self, n: u32, delay: Duration) {
        self.slow_requests = NextN::new(n, delay);
    }

    pub(crate) fn lose_next_write_responses(&mut self, n: u32) {
        self.lost_write_responses = NextN::new(n, ());
    }

    pub(crate) fn malformed_next_requests(&mut self, n: u32) {
        self.malformed_requests = NextN::new(n, ());
    }

    pub(crate) fn reset_next_connections(&mut self, n: u32) {
        self.reset_connections = NextN::new(n, ());
    }

    pub(crate) fn reset_next_requests(&mut self, n: u32) {
        self.reset_requests = NextN::new(n, ());
    }

    pub(crate) fn stick_next_operations(&mut self, n: u32, duration: Duration) {
        self.stuck_operations = NextN::new(n, duration);
    }

    pub(crate) fn poison(&mut self, net: IpNet) {
        self.poison.insert(net);
    }

    pub(crate) fn clear_poison(&mut self) {
        self.poison.clear();
    }
}

/// The fault switches of the handle. Each "next n" call replaces the previous count of the
/// same kind; `n = 0` disarms it. Request faults apply to API requests only (not `/__emulator`)
/// and at most one fires per request, in this order: reset, fail, malformed, slow.
impl Emulator {
    /// The next `n` API requests get `status` and an error envelope, with no effect.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code.
    pub fn fail_next_requests(&self, n: u32, status: u16) {
        let status = StatusCode::from_u16(status)
            .unwrap_or_else(|_| panic!("fail_next_requests: invalid status {status}"));
        self.state().faults.fail_next_requests(n, status);
    }

    /// The next `n` bulk operations created end `failed` with `message`, nothing applied.
    /// Takes precedence over [`Emulator::fail_operations_containing`].
    pub fn fail_next_operations(&self, n: u32, message: &str) {
        self.state().faults.fail_next_operations(n, message);
    }

    /// The next `n` API requests are handled normally (a write creates its operation) but
    /// answered only after `delay`, so that a client with a shorter timeout gives up.
    pub fn slow_next_requests(&self, n: u32, delay: Duration) {
        self.state().faults.slow_next_requests(n, delay);
    }

    /// The next `n` accepted item writes (POST/PUT/DELETE items answered 200) are applied
    /// normally, operation created and counted in `writes`, but their connection is closed
    /// without a response: "write accepted, response lost". Refused writes do not count.
    pub fn lose_next_write_responses(&self, n: u32) {
        self.state().faults.lose_next_write_responses(n);
    }

    /// The next `n` API requests get HTTP 200 with a truncated JSON body; nothing is applied.
    pub fn malformed_next_requests(&self, n: u32) {
        self.state().faults.malformed_next_requests(n);
    }

    /// The next `n` TCP connections are reset right after accept, before any request is read.
    /// A client reusing a keep-alive connection is not affected: see
    /// [`Emulator::reset_next_requests`].
    pub fn reset_next_connections(&self, n: u32) {
        self.state().faults.reset_next_connections(n);
    }

    /// The next `n` API requests have their connection reset instead of an answer; nothing
    /// is applied. Works on keep-alive connections too.
    pub fn reset_next_requests(&self, n: u32) {
        self.state().faults.reset_next_requests(n);
    }

    /// The next `n` bulk operations created stay pending, then running, for `duration` in
    /// total instead of the configured latency (an operation stuck far too long).
    pub fn stick_next_operations(&self, n: u32, duration: Duration) {
        self.state().faults.stick_next_operations(n, duration);
    }

    /// From now on, every bulk operation whose items include `ip` (compared in canonical
    /// form; for DELETE, the ip of each deleted id) ends `failed` with `invalid item <ip>`,
    /// nothing applied. Several ips can be poisoned; [`Emulator::clear_poison`] lifts all.
    ///
    /// # Panics
    /// If `ip` is not a valid item IP under the settings (test helper).
    pub fn fail_operations_containing(&self, ip: &str) {
        let mut state = self.state();
        let net = parse_item_ip(ip, state.settings.ip_rules())
            .unwrap_or_else(|err| panic!("fail_operations_containing: {}", err.message(0)));
        state.faults.poison(net);
    }

    pub fn clear_poison(&self) {
        self.state().faults.clear_poison();
    }

    /// What the API token may do from now on (docs/cloudflare-lists.md §8).
    pub fn set_token_permissions(&self, permissions: Permissions) {
        self.state().settings.permissions = permissions;
    }

    /// Replaces the global rate limit (`None`: off) and its window; a new window opens on
    /// the next request.
    pub fn set_rate_limit(&self, limit: Option<u32>, window: Duration) {
        self.state().set_rate_limit(limit, window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_n_fires_exactly_n_times() {
        let mut next = NextN::new(2, 7);
        assert_eq!(
            (next.take(), next.take(), next.take()),
            (Some(7), Some(7), None)
        );
        let mut faults = Faults::default();
        faults.malformed_next_requests(1);
        faults.fail_next_requests(1, StatusCode::BAD_GATEWAY);
        let taken = [(); 3].map(|()| faults.take_request_fault());
        let expected = [
            Some(RequestFault::Status(StatusCode::BAD_GATEWAY)),
            Some(RequestFault::Malformed),
            None,
        ];
        assert_eq!(taken, expected);
    }
}
