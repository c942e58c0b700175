//! A loopback proxy that forwards every request to the Cloudflare emulator and records
//! it, so that a test with several bouncers can tell whose request was whose, and when.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: Method,
    pub path: String,
    /// When it reached the proxy.
    pub at: Instant,
    pub status: u16,
}

impl Exchange {
    /// A write to a list's items (add, replace or delete).
    pub fn is_item_write(&self) -> bool {
        self.method != Method::GET
            && self.path.contains("/rules/lists/")
            && self.path.ends_with("/items")
    }
}

#[derive(Clone)]
struct Upstream {
    base: String,
    http: reqwest::Client,
    log: Arc<Mutex<Vec<Exchange>>>,
}

pub struct Recorder {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Exchange>>>,
}

impl Recorder {
    /// Forwards to `upstream` (`http://host:port`, no path).
    pub async fn start(upstream: &str) -> Recorder {
        let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let state = Upstream {
            base: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            log: log.clone(),
        };
        let router = Router::new().fallback(forward).with_state(state);
        let addr = super::serve_on_loopback(router).await;
        Recorder { addr, log }
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn forward(
    State(up): State<Upstream>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut request = up
        .http
        .request(method.clone(), format!("{}{path}", up.base));
    for name in ["authorization", "content-type"] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let (code, content_type, bytes) = match request.body(body).send().await {
        Ok(response) => {
            let code = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned();
            let bytes = response.bytes().await.unwrap_or_default();
            (code, content_type, bytes)
        }
        Err(_) => (
            502,
            "text/plain".to_owned(),
            Bytes::from_static(b"upstream failed"),
        ),
    };
    up.log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Exchange {
            method,
            path: uri.path().to_owned(),
            at,
            status: code,
        });
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, [("content-type", content_type)], Body::from(bytes)).into_response()
}
