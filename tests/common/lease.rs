//! A loopback fake of the three Kubernetes Lease calls the bouncer makes, with the API
//! server's semantics: `resourceVersion` bumped on every write, `409 Conflict` for a
//! stale one and `409 AlreadyExists` for a second create, `Status` bodies, bearer tokens.
//! No real API server can run here; this is the stand-in (README says so).
//!
//! Faults, per client (a client is a token): partitioned (requests hang until the
//! client gives up), latency, the next requests failing with a 5xx, and a write applied
//! whose answer is lost.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// One write the fake accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub at: Instant,
    pub client: String,
    /// The holder the write left in the Lease.
    pub holder: String,
}

#[derive(Default)]
struct Inner {
    version: u64,
    objects: HashMap<(String, String), Value>,
    /// token → client name
    tokens: HashMap<String, String>,
    partitioned: HashSet<String>,
    latency: Duration,
    fail_next: u32,
    lose_next_answers: u32,
    accepted: Vec<Accepted>,
    requests: u64,
}

#[derive(Clone)]
pub struct FakeLeases {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

type Shared = Arc<Mutex<Inner>>;

impl FakeLeases {
    pub async fn start() -> FakeLeases {
        let inner: Shared = Arc::default();
        let router = Router::new()
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
                post(create),
            )
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                get(read).put(replace),
            )
            .with_state(inner.clone());
        let addr = super::serve_on_loopback(router).await;
        FakeLeases { addr, inner }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Accepts `token` as the credentials of `client`.
    pub fn allow(&self, client: &str, token: &str) {
        self.inner().tokens.insert(token.into(), client.into());
    }

    /// Stops accepting `token` (a rotated-away token).
    pub fn revoke(&self, token: &str) {
        self.inner().tokens.remove(token);
    }

    /// Cuts `client` off (its requests hang) or lets it back.
    pub fn partition(&self, client: &str, cut: bool) {
        let mut inner = self.inner();
        if cut {
            inner.partitioned.insert(client.into());
        } else {
            inner.partitioned.remove(client);
        }
    }

    pub fn set_latency(&self, latency: Duration) {
        self.inner().latency = latency;
    }

    /// The next `n` requests (of any client) fail with 503.
    pub fn fail_next(&self, n: u32) {
        self.inner().fail_next = n;
    }

    /// The next `n` writes are applied, but answered with 504 as if the answer was lost.
    pub fn lose_next_answers(&self, n: u32) {
        self.inner().lose_next_answers = n;
    }

    pub fn object(&self, ns: &str, name: &str) -> Option<Value> {
        self.inner().objects.get(&(ns.into(), name.into())).cloned()
    }

    pub fn holder(&self, ns: &str, name: &str) -> String {
        self.object(ns, name)
            .and_then(|o| o["spec"]["holderIdentity"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Every write accepted, in order.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.inner().accepted.clone()
    }

    pub fn requests(&self) -> u64 {
        self.inner().requests
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// Authenticates, applies latency, partition and injected failures; `Ok(client)` to go on.
async fn admit(shared: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let (client, latency, partitioned, fail) = {
        let mut inner = shared.lock().unwrap_or_else(|p| p.into_inner());
        inner.requests += 1;
        let client = inner.tokens.get(&token).cloned();
        let partitioned = client
            .as_ref()
            .is_some_and(|c| inner.partitioned.contains(c));
        let fail = inner.fail_next > 0;
        if fail {
            inner.fail_next -= 1;
        }
        (client, inner.latency, partitioned, fail)
    };
    let Some(client) = client else {
        return Err(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        ));
    };
    if partitioned {
        // Nothing comes back: the client's own timeout ends the request.
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    tokio::time::sleep(latency).await;
    if fail {
        return Err(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "etcdserver: request timed out",
        ));
    }
    Ok(client)
}

async fn read(
    State(shared): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = admit(&shared, &headers).await {
        return refused;
    }
    let inner = shared.lock().unwrap_or_else(|p| p.into_inner());
    match inner.objects.get(&(ns, name.clone())) {
        Some(object) => Json(object.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{name}\" not found"),
        ),
    }
}

/// Stores `object` as the new version; returns the answer (or the lost one).
fn store(
    inner: &mut Inner,
    client: String,
    key: (String, String),
    mut object: Value,
    code: StatusCode,
) -> Response {
    inner.version += 1;
    object["metadata"]["resourceVersion"] = json!(inner.version.to_string());
    object["metadata"]["namespace"] = json!(key.0);
    let holder = object["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    inner.objects.insert(key, object.clone());
    inner.accepted.push(Accepted {
        at: Instant::now(),
        client,
        holder,
    });
    if inner.lose_next_answers > 0 {
        inner.lose_next_answers -= 1;
        return status(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            "the answer was lost",
        );
    }
    (code, Json(object)).into_response()
}

async fn create(
    State(shared): State<Shared>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let client = match admit(&shared, &headers).await {
        Ok(client) => client,
        Err(refused) => return refused,
    };
    if body["kind"] != "Lease" || body["apiVersion"] != "coordination.k8s.io/v1" {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "not a coordination.k8s.io/v1 Lease",
        );
    }
    let Some(name) = body["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value",
        );
    };
    let mut inner = shared.lock().unwrap_or_else(|p| p.into_inner());
    let key = (ns, name.clone());
    if inner.objects.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("leases.coordination.k8s.io \"{name}\" already exists"),
        );
    }
    store(&mut inner, client, key, body, StatusCode::CREATED)
}

async fn replace(
    State(shared): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let client = match admit(&shared, &headers).await {
        Ok(client) => client,
        Err(refused) => return refused,
    };
    let mut inner = shared.lock().unwrap_or_else(|p| p.into_inner());
    let key = (ns, name.clone());
    let Some(current) = inner.objects.get(&key) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{name}\" not found"),
        );
    };
    if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the \
                 object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    store(&mut inner, client, key, body, StatusCode::OK)
}
