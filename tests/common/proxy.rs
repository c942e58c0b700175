//! A fault-injecting HTTP proxy to put between the bouncer under test and a real LAPI.
//!
//! Tests flip a [`Fault`] on a [`FaultProxy`] to make the LAPI look down, failing, garbled or
//! slow, while the real LAPI behind it stays untouched. Requests are forwarded as they came
//! (method, path, query, headers, body) and answers are streamed back, so a 15 MB
//! `startup=true` body is never held in memory except for [`Fault::Truncated`].
//!
//! "No answer" ([`Fault::Down`], [`Fault::ForwardThenDrop`], an unreachable upstream) is made
//! at the connection level: every accepted socket carries a kill switch the handler can flip,
//! after which the socket fails every read and write. hyper then drops the connection before a
//! single byte of the answer is written, and the client sees "connection closed before message
//! completed", at once, on fresh and on pooled keep-alive connections alike.

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
use axum::http::{header, HeaderMap, HeaderName, StatusCode, Uri};
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The path whose requests [`FaultProxy::stream_requests`] records.
const STREAM_PATH: &str = "/v1/decisions/stream";
/// The LAPI's exact 403 body for a bad key (shared/docs/lapi.md §4.6).
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
    /// Answer 403 `{"message":"access forbidden"}` as LAPI does for a bad key (docs §4.6).
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
}

/// State shared by the handle and every request.
struct Shared {
    /// Upstream base URL without its trailing `/`; the request's path and query are appended.
    upstream: String,
    http: reqwest::Client,
    state: Mutex<FaultState>,
}

struct FaultState {
    persistent: Fault,
    /// A [`FaultProxy::set_for`] fault and how many requests it still applies to (> 0).
    temporary: Option<(Fault, u32)>,
    requests: u64,
    faulted: u64,
    stream_requests: Vec<String>,
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
            }),
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

    /// Applies `fault` to the next `n` requests, then goes back to the persistent fault.
    /// Replaces an earlier `set_for` that has not run out; `n == 0` just cancels that.
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

    /// Path and query (`/v1/decisions/stream?startup=true`) of every stream request received,
    /// faulted ones included, in order.
    pub fn stream_requests(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().stream_requests.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FaultState {
    /// Counts and records a request, and picks the fault it gets.
    fn admit(&mut self, uri: &Uri) -> Fault {
        self.requests += 1;
        if uri.path() == STREAM_PATH {
            let pq = uri.path_and_query().map_or(STREAM_PATH, |pq| pq.as_str());
            self.stream_requests.push(pq.to_string());
        }
        let fault = match self.temporary.take() {
            Some((fault, left)) => {
                if left > 1 {
                    self.temporary = Some((fault.clone(), left - 1));
                }
                fault
            }
            None => self.persistent.clone(),
        };
        if fault != Fault::None {
            self.faulted += 1;
        }
        fault
    }
}

/// Panics in the test that sets a fault the proxy could not apply.
fn check(fault: &Fault) {
    if let Fault::Status(code) = fault {
        assert!(
            StatusCode::from_u16(*code).is_ok(),
            "Fault::Status({code}) is not an HTTP status"
        );
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
    let fault = shared.state.lock().unwrap().admit(req.uri());
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
        let mut out = Response::new(Body::from(body.slice(..body.len() / 2)));
        copy_end_to_end(&headers, out.headers_mut(), &[header::CONTENT_LENGTH]);
        out
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
