//! A fault-injecting HTTP proxy to put between the bouncer under test and a real LAPI.
//!
//! Tests flip a [`Fault`] on a [`FaultProxy`] to make the LAPI look down, failing, garbled or
//! slow, while the real LAPI behind it stays untouched. Requests are forwarded as they came
//! (method, path, query, headers, body) and answers are streamed back, so a 15 MB
//! `startup=true` body is never held in memory except for [`Fault::Truncated`] and the modes
//! that rewrite stream answers.
//!
//! The same faults make the 1.4.6 LAPI behind (the only one Debian ships) behave as the 1.6 and
//! 1.7 LAPIs operators run (docs/lapi.md §9): [`Fault::CutStartup`],
//! [`Fault::NewAddress`], [`Fault::UuidWholeSeconds`], [`Fault::Origins`] and
//! [`Fault::UsageMetrics`], alone or together in [`Fault::All`]. Each acts only on the requests
//! whose answer it changes and lets every other one through, so a test can run its whole
//! scenario in one of them with [`FaultProxy::set`].
//!
//! "No answer" ([`Fault::Down`], [`Fault::ForwardThenDrop`], an unreachable upstream) is made
//! at the connection level: every accepted socket carries a kill switch the handler can flip,
//! after which the socket fails every read and write. hyper then drops the connection before a
//! single byte of the answer is written, and the client sees "connection closed before message
//! completed", at once, on fresh and on pooled keep-alive connections alike.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The path whose requests [`FaultProxy::stream_requests`] records.
const STREAM_PATH: &str = "/v1/decisions/stream";
/// The live endpoint; unfiltered, it answers every active decision.
const SNAPSHOT_PATH: &str = "/v1/decisions";
/// The path [`Fault::UsageMetrics`] answers (LAPI 1.6.3+, docs/lapi.md §9.2).
const USAGE_METRICS_PATH: &str = "/v1/usage-metrics";
/// How many decisions LAPI 1.7.8 reads per database query of a stream (docs/lapi.md §9.1).
pub const LAPI_PAGE: usize = 30_000;
/// Decisions per chunk of a [`Fault::CutStartup`] body.
const CHUNK_DECISIONS: usize = 1_000;
/// The LAPI's exact 403 body for a bad key (docs/lapi.md §4.6).
const FORBIDDEN_BODY: &str = r#"{"message":"access forbidden"}"#;
/// Labelled JSON, so a client must fail in its decoder, not on a content-type check.
const GARBAGE_BODY: &str = "<html><body>fault proxy: this is not JSON</body></html>";
/// Request bodies are buffered before forwarding; bouncers send tiny ones or none.
const MAX_REQUEST_BODY: usize = 16 << 20;
/// Headers that describe one hop's connection, never forwarded in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// A fault-injecting HTTP proxy in front of an upstream (a real LAPI), on 127.0.0.1:<free port>.
/// Dropping it stops accepting connections.
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

/// What the proxy does to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward normally.
    None,
    /// "LAPI unreachable": the request is read, never forwarded, and the connection is closed
    /// without an answer.
    Down,
    /// Answer this status with a short text body (e.g. 500/502/503) without forwarding.
    Status(u16),
    /// Answer 403 `{"message":"access forbidden"}` as LAPI does for a bad key (docs/lapi.md §4.6).
    Forbidden,
    /// Answer 200 with a body that is not JSON (labelled `application/json`).
    Garbage,
    /// Forward, but cut the upstream body in half (valid HTTP framing, truncated JSON), 200.
    Truncated,
    /// Forward, but only after this delay.
    Slow(Duration),
    /// Forward the request to LAPI (so LAPI DOES advance this key's last_pull), read the whole
    /// answer, then drop the connection without answering: the "response lost" case.
    ForwardThenDrop,
    /// Reproduces LAPI 1.7 behaviour (docs/lapi.md §9.1): a `startup=true` pull whose
    /// database query fails part-way through `new`. LAPI 1.7 has already sent `200` and part of
    /// the body, so it closes the JSON with `], "deleted": []}`: the body is valid JSON, `new`
    /// holds only the first decisions by id, `deleted` is empty, and nothing tells the client.
    ///
    /// The proxy forwards the pull, sorts `new` by id, keeps what [`Cut`] says and answers 200
    /// `application/json`, chunked, `{"new": [...], "deleted": []}` framed exactly as 1.7
    /// writes it. A pull with no more decisions than the cut passes unchanged; [`FaultProxy::cut_pulls`]
    /// counts the pulls actually cut. Deltas pass unchanged. With [`FaultProxy::set`] every
    /// full pull is cut the same way; with [`FaultProxy::set_for`]`(.., k)` the next `k` full
    /// pulls. Unlike 1.7 (which keeps the old `last_pull` after a failed stream), the LAPI
    /// behind moves this key's `last_pull`, so the next delta starts from the cut pull.
    ///
    /// `proxy.set(Fault::CutStartup(Cut::Pages { pages: 1, page_size: 3_000 }))`
    CutStartup(Cut),
    /// Reproduces LAPI 1.6.5 behaviour (docs/lapi.md §9.2, bouncers identified by key and client
    /// address): the key is now used from another address, for which LAPI makes a new `name@ip`
    /// bouncer row whose `last_pull` is null, so the first delta returns every active decision in
    /// `new` and every expired one still in the database in `deleted`, as a start-up pull does. The
    /// proxy forwards a delta as `startup=true` (its other query parameters kept), which the LAPI
    /// behind answers in exactly that shape (docs/lapi.md §4.2, §9.3), and passes the answer back
    /// as the delta's. It applies to deltas only: `proxy.set_for(Fault::NewAddress, 1)` is "the
    /// next delta", whatever full pulls come first.
    NewAddress,
    /// Reproduces LAPI 1.6 and 1.6.3 behaviour (docs/lapi.md §9.2): in every stream
    /// answer, each decision carries a `uuid` (a random version-4 UUID per decision id, the
    /// same on every pull through this proxy) and its `duration` is rounded to whole seconds
    /// as 1.6.3+ does with Go's `Duration.Round(time.Second)`, halves away from zero (see
    /// [`whole_seconds`]): `3h59m54.447176566s` → `3h59m54s`, an expiring decision's
    /// `0.4s` → `0s`, a `deleted` entry's `-8.995662ms` → `0s` and `-1.6s` → `-2s`.
    ///
    /// `proxy.set(Fault::UuidWholeSeconds)`
    UuidWholeSeconds,
    /// Reproduces LAPI 1.6–1.7 behaviour (docs/lapi.md §9.2, new origins `console`,
    /// `cscli-import`, `remediation_sync`), which 1.4.6's cscli cannot produce: in every stream
    /// answer, a decision whose `value` is a key of the map gets the mapped `origin`. An
    /// `origins=` filter is applied by the proxy after the rewrite (the LAPI is asked without
    /// it), so `origins=console` gets exactly the decisions made to look like console ones.
    ///
    /// `proxy.set(Fault::origins(&[("1.2.3.4", "console"), ("5.6.7.8", "remediation_sync")]))`
    Origins(BTreeMap<String, String>),
    /// Reproduces LAPI 1.6.3 behaviour (docs/lapi.md §9.2, `POST /v1/usage-metrics`),
    /// an endpoint 1.4.6 answers 404: the proxy answers it itself, as 1.6.3+ does, `201` with
    /// an empty body for a valid payload and `422 {"message": "validation failure list:\n..."}`
    /// naming each missing field otherwise (see [`check_usage_metrics`] for the schema and the
    /// `400`s). The key is checked first by the LAPI behind (`HEAD /v1/decisions`, which moves
    /// nothing): a key it refuses gets its `403`. Accepted payloads are kept for
    /// [`FaultProxy::usage_metrics`]. Every other request passes unchanged.
    ///
    /// `proxy.set(Fault::UsageMetrics)`
    UsageMetrics,
    /// Several of the modes above that reproduce newer LAPIs, at once (the other faults and
    /// `All` itself are refused). Each acts on the requests it applies to, so `All` applies to a
    /// request when any of them does; on one answer, origins are rewritten (and filtered) first,
    /// then uuids and durations, then the cut.
    ///
    /// `proxy.set(Fault::All(vec![Fault::UuidWholeSeconds, Fault::UsageMetrics]))`
    All(Vec<Fault>),
}

/// Where [`Fault::CutStartup`] cuts a full pull's `new` array, decisions ordered by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Keep this many decisions.
    After(usize),
    /// Keep `pages` whole pages of `page_size` decisions: the query for the next page failed.
    /// LAPI 1.7.8 pages by [`LAPI_PAGE`]; a test with 10 000 decisions can cut at 3 000 with
    /// `Cut::Pages { pages: 1, page_size: 3_000 }`.
    Pages { pages: usize, page_size: usize },
}

impl Cut {
    /// How many decisions of `new` are kept.
    pub fn keep(self) -> usize {
        match self {
            Cut::After(n) => n,
            Cut::Pages { pages, page_size } => pages.saturating_mul(page_size),
        }
    }
}

impl Fault {
    /// [`Fault::Origins`] from `(value, origin)` pairs.
    pub fn origins(pairs: &[(&str, &str)]) -> Fault {
        let map = pairs
            .iter()
            .map(|(value, origin)| ((*value).to_string(), (*origin).to_string()));
        Fault::Origins(map.collect())
    }

    /// Whether this is one of the modes that reproduce newer LAPIs (the ones [`Fault::All`] takes).
    fn reproduces_newer_lapi(&self) -> bool {
        matches!(
            self,
            Fault::CutStartup(_)
                | Fault::NewAddress
                | Fault::UuidWholeSeconds
                | Fault::Origins(_)
                | Fault::UsageMetrics
        )
    }

    /// Whether this fault acts on a request to `target`: the modes that reproduce newer LAPIs
    /// only on the requests whose answer they change, every other fault on every request.
    fn applies_to(&self, target: Target) -> bool {
        match self {
            Fault::CutStartup(_) => target == Target::Startup,
            Fault::NewAddress => target == Target::Delta,
            Fault::UuidWholeSeconds | Fault::Origins(_) => {
                matches!(target, Target::Startup | Target::Delta)
            }
            Fault::UsageMetrics => target == Target::UsageMetrics,
            Fault::All(modes) => modes.iter().any(|mode| mode.applies_to(target)),
            _ => true,
        }
    }
}

/// What a request asks for, as far as the faults care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// `GET /v1/decisions/stream?startup=true` (only the exact `true` counts, docs/lapi.md §4.2).
    Startup,
    /// Any other `GET /v1/decisions/stream`.
    Delta,
    /// `POST /v1/usage-metrics`.
    UsageMetrics,
    Other,
}

impl Target {
    fn of(method: &Method, uri: &Uri) -> Target {
        match (method, uri.path()) {
            (&Method::GET, STREAM_PATH) => {
                // Go's `Query()["startup"][0]`: the first value, decoded.
                let startup = query_pairs(uri).into_iter().find(|(k, _)| k == "startup");
                if startup.is_some_and(|(_, v)| v == "true") {
                    Target::Startup
                } else {
                    Target::Delta
                }
            }
            (&Method::POST, USAGE_METRICS_PATH) => Target::UsageMetrics,
            _ => Target::Other,
        }
    }
}

/// State shared by the handle and every request.
struct Shared {
    /// Upstream base URL without its trailing `/`; the request's path and query are appended.
    upstream: String,
    http: reqwest::Client,
    state: Mutex<FaultState>,
    /// The `uuid` [`Fault::UuidWholeSeconds`] gave each decision id.
    uuids: Mutex<HashMap<i64, String>>,
}

struct FaultState {
    persistent: Fault,
    /// A [`FaultProxy::set_for`] fault and how many requests it still applies to (> 0).
    temporary: Option<(Fault, u32)>,
    requests: u64,
    faulted: u64,
    stream_requests: Vec<String>,
    /// `GET /v1/decisions` with no filter: every active decision (a snapshot pull).
    snapshots: u64,
    /// Full pulls [`Fault::CutStartup`] cut.
    cut_pulls: u64,
    /// Payloads [`Fault::UsageMetrics`] accepted.
    usage_metrics: Vec<Value>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (like `http://127.0.0.1:PORT/`), forwarding normally.
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy on a free loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: upstream_client(),
            state: Mutex::new(FaultState {
                persistent: Fault::None,
                temporary: None,
                requests: 0,
                faulted: 0,
                stream_requests: Vec::new(),
                snapshots: 0,
                cut_pulls: 0,
                usage_metrics: Vec::new(),
            }),
            uuids: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared))
            .into_make_service_with_connect_info::<KillSwitch>();
        let server = tokio::spawn(async move {
            axum::serve(KillableListener(listener), app)
                .await
                .expect("the fault proxy serve loop never fails");
        });
        FaultProxy {
            shared,
            addr,
            server,
        }
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Applies `fault` to every following request until changed; cancels any [`Self::set_for`].
    pub fn set(&self, fault: Fault) {
        check(&fault);
        let mut state = self.shared.state.lock().unwrap();
        state.persistent = fault;
        state.temporary = None;
    }

    /// Applies `fault` to the next `n` requests it applies to, then goes back to the persistent
    /// fault. The modes that reproduce newer LAPIs apply only to the requests whose answer
    /// they change (full pulls for [`Fault::CutStartup`], deltas for [`Fault::NewAddress`],
    /// ...); the others, on the way, get the persistent fault. Every other fault applies to
    /// every request. Replaces an earlier `set_for` that has not run out; `n == 0` just
    /// cancels that.
    pub fn set_for(&self, fault: Fault, n: u32) {
        check(&fault);
        self.shared.state.lock().unwrap().temporary = (n > 0).then_some((fault, n));
    }

    /// Requests received, faulted ones included.
    pub fn requests(&self) -> u64 {
        self.shared.state.lock().unwrap().requests
    }

    /// Requests a fault other than [`Fault::None`] was applied to.
    pub fn faulted(&self) -> u64 {
        self.shared.state.lock().unwrap().faulted
    }

    /// Full pulls [`Fault::CutStartup`] cut (not counting those it let through whole).
    pub fn cut_pulls(&self) -> u64 {
        self.shared.state.lock().unwrap().cut_pulls
    }

    /// The payloads [`Fault::UsageMetrics`] accepted (answered 201), in order.
    pub fn usage_metrics(&self) -> Vec<Value> {
        self.shared.state.lock().unwrap().usage_metrics.clone()
    }

    /// Path and query (`/v1/decisions/stream?startup=true`) of every stream request received,
    /// faulted ones included, in order.
    pub fn stream_requests(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().stream_requests.clone()
    }

    /// Unfiltered `GET /v1/decisions` requests received: full pulls read as a snapshot.
    pub fn snapshots(&self) -> u64 {
        self.shared.state.lock().unwrap().snapshots
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FaultState {
    /// Counts and records a request, and picks the fault it gets.
    fn admit(&mut self, uri: &Uri, target: Target) -> Fault {
        self.requests += 1;
        if uri.path() == STREAM_PATH {
            let pq = uri.path_and_query().map_or(STREAM_PATH, |pq| pq.as_str());
            self.stream_requests.push(pq.to_string());
        } else if uri.path() == SNAPSHOT_PATH && uri.query().is_none_or(str::is_empty) {
            self.snapshots += 1;
        }
        let fault = match self.temporary.take() {
            Some((fault, left)) if fault.applies_to(target) => {
                if left > 1 {
                    self.temporary = Some((fault.clone(), left - 1));
                }
                fault
            }
            temporary => {
                self.temporary = temporary;
                if self.persistent.applies_to(target) {
                    self.persistent.clone()
                } else {
                    Fault::None
                }
            }
        };
        if fault != Fault::None {
            self.faulted += 1;
        }
        fault
    }
}

/// Panics in the test that sets a fault the proxy could not apply.
fn check(fault: &Fault) {
    match fault {
        Fault::Status(code) => assert!(
            StatusCode::from_u16(*code).is_ok(),
            "Fault::Status({code}) is not an HTTP status"
        ),
        Fault::CutStartup(Cut::Pages { page_size, .. }) => {
            assert!(*page_size > 0, "Cut::Pages needs a page size above 0")
        }
        Fault::All(modes) => {
            assert!(!modes.is_empty(), "Fault::All needs at least one mode");
            for mode in modes {
                assert!(
                    mode.reproduces_newer_lapi(),
                    "Fault::All takes only the modes that reproduce newer LAPIs, not {mode:?}"
                );
                check(mode);
            }
        }
        _ => {}
    }
}

/// No redirects followed (the client must see them), no proxy from the environment, and no
/// User-Agent of its own: the client's is forwarded.
fn upstream_client() -> reqwest::Client {
    cfbouncer::install_tls_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("build the fault proxy's upstream client")
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<KillSwitch>,
    req: Request,
) -> Response {
    let target = Target::of(req.method(), req.uri());
    let fault = shared.state.lock().unwrap().admit(req.uri(), target);
    match fault {
        Fault::None => shared.relay(req, &conn).await,
        Fault::Down => conn.kill(),
        Fault::Status(code) => canned(
            code,
            "text/plain; charset=utf-8",
            format!("fault proxy: injected status {code}"),
        ),
        Fault::Forbidden => canned(403, "application/json; charset=utf-8", FORBIDDEN_BODY),
        Fault::Garbage => canned(200, "application/json; charset=utf-8", GARBAGE_BODY),
        Fault::Truncated => shared.truncated(req, &conn).await,
        Fault::Slow(delay) => {
            tokio::time::sleep(delay).await;
            shared.relay(req, &conn).await
        }
        Fault::ForwardThenDrop => {
            if let Ok(resp) = shared.forward(req).await {
                // The whole answer, so the LAPI has finished (and updated last_pull).
                let _ = resp.bytes().await;
            }
            conn.kill()
        }
        Fault::CutStartup(_)
        | Fault::NewAddress
        | Fault::UuidWholeSeconds
        | Fault::Origins(_)
        | Fault::UsageMetrics
        | Fault::All(_) => shared.newer_lapi(&fault, target, req, &conn).await,
    }
}

impl Shared {
    /// Forwards and streams the answer back as it comes.
    async fn relay(&self, req: Request, conn: &KillSwitch) -> Response {
        let Ok(resp) = self.forward(req).await else {
            return conn.kill();
        };
        let mut out = Response::new(Body::empty());
        *out.status_mut() = resp.status();
        // Content-Length stays: hyper then frames the streamed body exactly as upstream did.
        copy_end_to_end(resp.headers(), out.headers_mut(), &[]);
        *out.body_mut() = Body::new(reqwest::Body::from(resp));
        out
    }

    /// Forwards, reads the whole answer and sends back its first half as a 200.
    async fn truncated(&self, req: Request, conn: &KillSwitch) -> Response {
        let Ok(resp) = self.forward(req).await else {
            return conn.kill();
        };
        let headers = resp.headers().clone();
        let Ok(body) = resp.bytes().await else {
            return conn.kill();
        };
        buffered(StatusCode::OK, &headers, body.slice(..body.len() / 2))
    }

    /// Runs the modes of `fault` (several for [`Fault::All`]) that apply to this request.
    async fn newer_lapi(
        &self,
        fault: &Fault,
        target: Target,
        mut req: Request,
        conn: &KillSwitch,
    ) -> Response {
        let modes = match fault {
            Fault::All(modes) => modes.as_slice(),
            one => std::slice::from_ref(one),
        };
        let mut rewrite = Rewrite::default();
        for mode in modes.iter().filter(|mode| mode.applies_to(target)) {
            match mode {
                Fault::UsageMetrics => return self.usage_metrics(req, conn).await,
                Fault::NewAddress => rewrite.as_startup = true,
                Fault::Origins(map) => rewrite.origins = Some(map),
                Fault::UuidWholeSeconds => rewrite.uuids = true,
                Fault::CutStartup(cut) => rewrite.keep = Some(cut.keep()),
                _ => {}
            }
        }
        let mut pairs = query_pairs(req.uri());
        let mut changed = false;
        if rewrite.as_startup {
            pairs.retain(|(name, _)| name != "startup");
            pairs.push(("startup".into(), "true".into()));
            changed = true;
        }
        // LAPI reads the first `origins` and splits it on commas.
        let mut wanted = None;
        if rewrite.origins.is_some() {
            if let Some((_, origins)) = pairs.iter().find(|(name, _)| name == "origins") {
                wanted = Some(origins.split(',').map(str::to_string).collect::<Vec<_>>());
                pairs.retain(|(name, _)| name != "origins");
                changed = true;
            }
        }
        if changed {
            *req.uri_mut() = with_query(req.uri().path(), &pairs);
        }
        if rewrite.origins.is_none() && !rewrite.uuids && rewrite.keep.is_none() {
            return self.relay(req, conn).await;
        }
        let Ok(resp) = self.forward(req).await else {
            return conn.kill();
        };
        let (status, headers) = (resp.status(), resp.headers().clone());
        let Ok(body) = resp.bytes().await else {
            return conn.kill();
        };
        let parsed = (status == StatusCode::OK)
            .then(|| serde_json::from_slice::<Value>(&body).ok())
            .flatten();
        // Errors and bodies that are not a stream answer pass as they came.
        let Some(mut answer) = parsed.filter(Value::is_object) else {
            return buffered(status, &headers, body);
        };
        if let Some(map) = rewrite.origins {
            rewrite_origins(&mut answer, map, wanted.as_deref());
        }
        if rewrite.uuids {
            self.uuids_and_whole_seconds(&mut answer);
        }
        if let Some(keep) = rewrite.keep {
            if let Some(kept) = cut_new(&mut answer, keep) {
                self.state.lock().unwrap().cut_pulls += 1;
                return cut_answer(&kept);
            }
        }
        let body = serde_json::to_vec(&answer).expect("a JSON value serialises");
        buffered(status, &headers, body.into())
    }

    /// [`Fault::UuidWholeSeconds`] on one stream answer.
    fn uuids_and_whole_seconds(&self, answer: &mut Value) {
        let mut uuids = self.uuids.lock().unwrap();
        for list in ["new", "deleted"] {
            let decisions = answer.get_mut(list).and_then(Value::as_array_mut);
            for decision in decisions.into_iter().flatten() {
                let Some(decision) = decision.as_object_mut() else {
                    continue;
                };
                if let Some(id) = decision.get("id").and_then(Value::as_i64) {
                    let uuid = uuids.entry(id).or_insert_with(uuid_v4).clone();
                    decision.insert("uuid".into(), uuid.into());
                }
                let duration = decision.get("duration").and_then(Value::as_str);
                if let Some(rounded) = duration.and_then(whole_seconds) {
                    decision.insert("duration".into(), rounded.into());
                }
            }
        }
    }

    /// [`Fault::UsageMetrics`]: the key is checked by the LAPI, then the payload by
    /// [`check_usage_metrics`].
    async fn usage_metrics(&self, req: Request, conn: &KillSwitch) -> Response {
        let (parts, body) = req.into_parts();
        let mut headers = HeaderMap::new();
        let skip = [header::HOST, header::CONTENT_LENGTH, header::CONTENT_TYPE];
        // The client's User-Agent too: LAPI stores it on the bouncer row (docs/lapi.md §4.7).
        copy_end_to_end(&parts.headers, &mut headers, &skip);
        // A bouncer route that authenticates the key like any other; a HEAD answers before
        // `last_pull` is touched, and the value matches no decision.
        let url = format!("{}/v1/decisions?value=fault-proxy-key-check", self.upstream);
        match self.http.head(&url).headers(headers).send().await {
            Ok(resp) if resp.status() == StatusCode::OK => {}
            Ok(resp) if resp.status() == StatusCode::FORBIDDEN => {
                return canned(403, "application/json; charset=utf-8", FORBIDDEN_BODY);
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = format!("fault proxy: the key check got {status}");
                return canned(status, "text/plain; charset=utf-8", text);
            }
            Err(err) => {
                eprintln!("fault proxy: checking the key with {url} failed: {err}");
                return conn.kill();
            }
        }
        let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BODY).await else {
            return conn.kill();
        };
        match check_usage_metrics(&body) {
            Ok(payload) => {
                self.state.lock().unwrap().usage_metrics.push(payload);
                let mut out = Response::new(Body::empty());
                *out.status_mut() = StatusCode::CREATED;
                out
            }
            Err((status, message)) => canned(
                status,
                "application/json; charset=utf-8",
                json!({ "message": message }).to_string(),
            ),
        }
    }

    /// Sends `req` upstream as it came; the caller reads the answer. An upstream that cannot
    /// be reached is logged: the client then gets no answer either, as without the proxy.
    async fn forward(&self, req: Request) -> Result<reqwest::Response, BoxError> {
        let result = self.try_forward(req).await;
        if let Err(err) = &result {
            eprintln!("fault proxy: forwarding to {} failed: {err}", self.upstream);
        }
        result
    }

    async fn try_forward(&self, req: Request) -> Result<reqwest::Response, BoxError> {
        let (parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut headers = HeaderMap::new();
        let skip = [header::HOST, header::CONTENT_LENGTH];
        copy_end_to_end(&parts.headers, &mut headers, &skip);
        let mut upstream = self
            .http
            .request(parts.method, format!("{}{pq}", self.upstream))
            .headers(headers);
        let body = axum::body::to_bytes(body, MAX_REQUEST_BODY).await?;
        if !body.is_empty() {
            upstream = upstream.body(body);
        }
        Ok(upstream.send().await?)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the modes that apply to one request change.
#[derive(Default)]
struct Rewrite<'a> {
    /// [`Fault::NewAddress`]: forward the delta as `startup=true`.
    as_startup: bool,
    /// [`Fault::Origins`].
    origins: Option<&'a BTreeMap<String, String>>,
    /// [`Fault::UuidWholeSeconds`].
    uuids: bool,
    /// [`Fault::CutStartup`]: how many decisions of `new` to keep.
    keep: Option<usize>,
}

/// [`Fault::Origins`] on one stream answer: rewrites, then keeps only the `wanted` origins if the
/// client asked for some. A list left empty becomes `null`, as LAPI writes it (docs/lapi.md §4.1).
fn rewrite_origins(answer: &mut Value, map: &BTreeMap<String, String>, wanted: Option<&[String]>) {
    for list in ["new", "deleted"] {
        let Some(decisions) = answer.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for decision in decisions.iter_mut().filter_map(Value::as_object_mut) {
            let value = decision.get("value").and_then(Value::as_str);
            if let Some(origin) = value.and_then(|value| map.get(value)) {
                decision.insert("origin".into(), origin.as_str().into());
            }
        }
        let Some(wanted) = wanted else {
            continue;
        };
        decisions.retain(|decision| {
            let origin = decision.get("origin").and_then(Value::as_str);
            origin.is_some_and(|origin| wanted.iter().any(|w| w == origin))
        });
        if decisions.is_empty() {
            answer[list] = Value::Null;
        }
    }
}

/// [`Fault::CutStartup`]: the first `keep` decisions of `new` by id, or `None` when `new`
/// holds no more than that (nothing to cut).
fn cut_new(answer: &mut Value, keep: usize) -> Option<Vec<Value>> {
    let new = answer.get_mut("new")?.as_array_mut()?;
    if new.len() <= keep {
        return None;
    }
    let mut new = std::mem::take(new);
    new.sort_by_key(|decision| {
        decision
            .get("id")
            .and_then(Value::as_i64)
            .unwrap_or(i64::MAX)
    });
    new.truncate(keep);
    Some(new)
}

/// The answer LAPI 1.7 sends when the query for the next page of `new` fails (docs/lapi.md §9.1):
/// 200, `application/json`, chunked, `{"new": [` and the decisions written so far, then
/// `], "deleted": []}`.
fn cut_answer(decisions: &[Value]) -> Response {
    let mut chunks = vec![Bytes::from_static(br#"{"new": ["#)];
    for (page, decisions) in decisions.chunks(CHUNK_DECISIONS).enumerate() {
        let mut chunk = Vec::new();
        for (i, decision) in decisions.iter().enumerate() {
            if page > 0 || i > 0 {
                chunk.push(b',');
            }
            serde_json::to_writer(&mut chunk, decision).expect("a JSON value serialises");
        }
        chunks.push(chunk.into());
    }
    chunks.push(Bytes::from_static(br#"], "deleted": []}"#));
    let chunks = chunks.into_iter().map(Ok::<_, Infallible>);
    let mut out = Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    out
}

/// An answer read whole: upstream's status and headers (but its length) with `body`.
fn buffered(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response {
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    copy_end_to_end(headers, out.headers_mut(), &[header::CONTENT_LENGTH]);
    out
}

/// The decoded query pairs of `uri`, in order.
fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    let Some(query) = uri.query() else {
        return Vec::new();
    };
    let mut url = reqwest::Url::parse("http://fault-proxy.invalid/").expect("a valid URL");
    url.set_query(Some(query));
    url.query_pairs().into_owned().collect()
}

/// `path?query` with `pairs` encoded again (LAPI decodes them).
fn with_query(path: &str, pairs: &[(String, String)]) -> Uri {
    let mut url = reqwest::Url::parse("http://fault-proxy.invalid/").expect("a valid URL");
    url.set_path(path);
    if !pairs.is_empty() {
        url.query_pairs_mut().extend_pairs(pairs);
    }
    let pq = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    pq.parse().expect("the path and query of a parsed URL")
}

/// A random version-4 UUID, lower-case, as LAPI 1.6 gives each decision (`uuid.NewString()`).
fn uuid_v4() -> String {
    let high = (fastrand::u64(..) & !0xf000) | 0x4000;
    let low = (fastrand::u64(..) & !(0b11 << 62)) | (0b10 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
}

/// A Go duration rounded to whole seconds as LAPI 1.6.3+ writes it,
/// `Duration.Round(time.Second).String()`: halves away from zero, so anything under half a
/// second either way is `0s` (`-8.995662ms` → `0s`, `-1.6s` → `-2s`, `59m59.5s` → `1h0m0s`).
/// `None` if `go` is not a Go duration.
pub fn whole_seconds(go: &str) -> Option<String> {
    const SECOND: i128 = 1_000_000_000;
    let nanos = i128::from(cfbouncer::godur::parse_nanos(go).ok()?);
    let rest = nanos % SECOND;
    let mut seconds = (nanos - rest) / SECOND;
    if rest.abs() * 2 >= SECOND {
        seconds += rest.signum();
    }
    let sign = if seconds < 0 { "-" } else { "" };
    let abs = seconds.unsigned_abs();
    let (h, m, s) = (abs / 3600, abs / 60 % 60, abs % 60);
    Some(match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    })
}

/// The JSON types a usage-metrics field may have, as LAPI's Go model decodes them.
#[derive(Clone, Copy)]
enum Kind {
    /// A string of at most 255 characters (`maxLength: 255`).
    Short,
    /// A string of any length.
    Text,
    Integer,
    Number,
    Object,
    Array,
}

impl Kind {
    fn accepts(self, value: &Value) -> bool {
        match self {
            Kind::Short | Kind::Text => value.is_string(),
            Kind::Integer => value.as_i64().is_some(),
            Kind::Number => value.is_number(),
            Kind::Object => value.is_object(),
            Kind::Array => value.is_array(),
        }
    }

    fn go_type(self) -> &'static str {
        match self {
            Kind::Short | Kind::Text => "string",
            Kind::Integer => "int64",
            Kind::Number => "float64",
            Kind::Object => "object",
            Kind::Array => "array",
        }
    }
}

/// A usage-metrics refusal: status and LAPI's `message`.
type Refusal = (u16, String);

/// Checks a `POST /v1/usage-metrics` body from a bouncer as LAPI 1.6.3+ does (its
/// `models.AllMetrics` validation, then its controller), and returns it parsed. The fields,
/// where they sit (docs/lapi.md §9.2):
///
/// ```text
/// {"remediation_components": [{"version", "utc_startup_timestamp", "os": {"name", "version"},
///   "type", "name", "feature_flags": [], "metrics": [{"meta": {"window_size_seconds",
///   "utc_now_timestamp"}, "items": [{"name", "value", "unit", "labels": {}}]}]}]}
/// ```
///
/// `422`, `{path} in body is required` for each missing (or `null`) field, listed after
/// `validation failure list:` (the first failing component, metrics entry and item only, as
/// Go's validators stop there): a component's `version` and `utc_startup_timestamp`; `os`'s
/// `name` and `version` (LAPI takes a component without `os`, and an empty string anywhere);
/// each metrics entry's `meta` with `window_size_seconds` and `utc_now_timestamp`, and its
/// `items` (`[]` is fine), each with `name`, `value` and `unit`. Also `422` for `name`, `unit`
/// and `os` strings over 255 characters. `400`: a body that is not JSON, a field of the wrong
/// JSON type (`json: cannot unmarshal ...`), no remediation component or more than one.
pub fn check_usage_metrics(body: &[u8]) -> Result<Value, Refusal> {
    let payload: Value = serde_json::from_slice(body).map_err(|err| (400, err.to_string()))?;
    let count = {
        let top = object(&payload, "")?;
        let mut errors = Vec::new();
        let components = field(
            top,
            "",
            "remediation_components",
            Kind::Array,
            false,
            &mut errors,
        )?;
        let components = components
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for (i, component) in components.iter().enumerate() {
            check_component(
                component,
                &format!("remediation_components.{i}."),
                &mut errors,
            )?;
            if !errors.is_empty() {
                let list = errors.join("\n");
                return Err((422, format!("validation failure list:\n{list}")));
            }
        }
        components.len()
    };
    match count {
        0 => Err((400, "Missing remediation component data".into())),
        1 => Ok(payload),
        _ => Err((
            400,
            "Payload has more than one remediation component".into(),
        )),
    }
}

/// One remediation component at `path` (`remediation_components.0.`); findings go to `errors`.
fn check_component(component: &Value, path: &str, errors: &mut Vec<String>) -> Result<(), Refusal> {
    let component = object(component, path)?;
    for (name, kind) in [
        ("type", Kind::Text),
        ("name", Kind::Text),
        ("last_pull", Kind::Integer),
    ] {
        field(component, path, name, kind, false, errors)?;
    }
    if let Some(flags) = field(component, path, "feature_flags", Kind::Array, false, errors)? {
        let flags = flags.as_array().map_or(&[][..], Vec::as_slice);
        if let Some(flag) = flags.iter().find(|flag| !flag.is_string()) {
            let found = json_type(flag);
            return Err((
                400,
                format!("json: cannot unmarshal {found} into {path}feature_flags of type string"),
            ));
        }
    }
    let metrics = field(component, path, "metrics", Kind::Array, false, errors)?;
    let metrics = metrics
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    for (i, entry) in metrics
        .iter()
        .enumerate()
        .filter(|(_, entry)| !entry.is_null())
    {
        let path = format!("{path}metrics.{i}.");
        let entry = object(entry, &path)?;
        let mut found = Vec::new();
        let items = field(entry, &path, "items", Kind::Array, true, &mut found)?;
        let items = items
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for (j, item) in items.iter().enumerate().filter(|(_, item)| !item.is_null()) {
            let path = format!("{path}items.{j}.");
            let item = object(item, &path)?;
            let mut in_item = Vec::new();
            field(item, &path, "labels", Kind::Object, false, &mut in_item)?;
            field(item, &path, "name", Kind::Short, true, &mut in_item)?;
            field(item, &path, "unit", Kind::Short, true, &mut in_item)?;
            field(item, &path, "value", Kind::Number, true, &mut in_item)?;
            if !in_item.is_empty() {
                found.append(&mut in_item);
                break;
            }
        }
        if let Some(meta) = field(entry, &path, "meta", Kind::Object, true, &mut found)? {
            let (meta, path) = (object(meta, &path)?, format!("{path}meta."));
            field(
                meta,
                &path,
                "utc_now_timestamp",
                Kind::Integer,
                true,
                &mut found,
            )?;
            field(
                meta,
                &path,
                "window_size_seconds",
                Kind::Integer,
                true,
                &mut found,
            )?;
        }
        if !found.is_empty() {
            errors.append(&mut found);
            break;
        }
    }
    if let Some(os) = field(component, path, "os", Kind::Object, false, errors)? {
        let (os, path) = (object(os, path)?, format!("{path}os."));
        field(os, &path, "family", Kind::Short, false, errors)?;
        field(os, &path, "name", Kind::Short, true, errors)?;
        field(os, &path, "version", Kind::Short, true, errors)?;
    }
    field(
        component,
        path,
        "utc_startup_timestamp",
        Kind::Integer,
        true,
        errors,
    )?;
    field(component, path, "version", Kind::Text, true, errors)?;
    Ok(())
}

/// The field `name` of `object` (at `path`), `None` if missing or `null` (a finding if
/// `required`); `Err` (400) if of another JSON type.
fn field<'a>(
    object: &'a serde_json::Map<String, Value>,
    path: &str,
    name: &str,
    kind: Kind,
    required: bool,
    errors: &mut Vec<String>,
) -> Result<Option<&'a Value>, Refusal> {
    let Some(value) = object.get(name).filter(|value| !value.is_null()) else {
        if required {
            errors.push(format!("{path}{name} in body is required"));
        }
        return Ok(None);
    };
    if !kind.accepts(value) {
        let (found, want) = (json_type(value), kind.go_type());
        return Err((
            400,
            format!("json: cannot unmarshal {found} into {path}{name} of type {want}"),
        ));
    }
    if matches!(kind, Kind::Short) && value.as_str().is_some_and(|s| s.chars().count() > 255) {
        errors.push(format!(
            "{path}{name} in body should be at most 255 chars long"
        ));
    }
    Ok(Some(value))
}

/// `value` as an object, or the 400 Go's decoder gives for anything else at `path`.
fn object<'a>(value: &'a Value, path: &str) -> Result<&'a serde_json::Map<String, Value>, Refusal> {
    value.as_object().ok_or_else(|| {
        let at = path.trim_end_matches('.');
        let at = if at.is_empty() { "the payload" } else { at };
        (
            400,
            format!(
                "json: cannot unmarshal {} into {at} of type object",
                json_type(value)
            ),
        )
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Copies all headers except hop-by-hop ones, `Transfer-Encoding` and `skip`.
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap, skip: &[HeaderName]) {
    for (name, value) in from {
        let hop = HOP_BY_HOP.contains(&name.as_str()) || name == header::TRANSFER_ENCODING;
        if !hop && !skip.contains(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

fn canned(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut out = Response::new(Body::from(body.into()));
    *out.status_mut() = StatusCode::from_u16(status).expect("checked by FaultProxy::set");
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    out
}

/// `tokio::net::TcpListener` whose connections carry a [`KillSwitch`].
struct KillableListener(TcpListener);

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (KillableStream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    let killed = KillSwitch(Arc::new(AtomicBool::new(false)));
                    return (KillableStream { tcp, killed }, addr);
                }
                // Out of file descriptors and the like: wait, as axum's own listener does.
                Err(err) => {
                    eprintln!("fault proxy: accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Once flipped, the connection's socket fails every read and write.
#[derive(Clone)]
struct KillSwitch(Arc<AtomicBool>);

impl KillSwitch {
    /// Flips the switch and returns a response that will never be written: hyper fails to
    /// write its head and drops the connection.
    fn kill(&self) -> Response {
        self.0.store(true, Ordering::SeqCst);
        Response::new(Body::empty())
    }

    fn check(&self) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            let msg = "fault proxy dropped the connection";
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, msg));
        }
        Ok(())
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for KillSwitch {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.io().killed.clone()
    }
}

struct KillableStream {
    tcp: TcpStream,
    killed: KillSwitch,
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.killed.check()?;
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.killed.check()?;
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.killed.check()?;
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.killed.check()?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
