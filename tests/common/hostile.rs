//! Hostile peers for the hardening tests: a raw HTTP/1.1 server whose answers a test
//! scripts byte by byte (redirects, huge bodies, answers that stall), a rig with the
//! Cloudflare emulator and no LAPI (for tests whose LAPI is a fake), and the real binary
//! run as a daemon whose log, peak memory and exit are watched.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cf_lists_emulator::{Emulator, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::bin::command;
use super::world::eventually;

/// A stream answer with nothing in it.
pub const EMPTY_STREAM: &str = r#"{"new":null,"deleted":null}"#;
/// The longest request head read; longer ones are dropped.
const MAX_HEAD: usize = 64 * 1024;
/// How much a stalled answer claims to be still coming.
const STALL_CLAIM: usize = 1 << 20;
/// Filler is written in chunks of this size.
const FILL_CHUNK: usize = 64 * 1024;

/// A request as the fake server read it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// What an answer's body is made of.
pub enum Body {
    Bytes(Vec<u8>),
    /// `head`, then `len` bytes of `fill`, then `tail`: written in chunks, never held whole.
    Filled {
        head: Vec<u8>,
        fill: u8,
        len: usize,
        tail: Vec<u8>,
    },
    /// `head`, then silence: the rest of the announced length never comes, and the
    /// connection stays open until the client closes it or `hold` passes.
    Stall {
        head: Vec<u8>,
        hold: Duration,
    },
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Bytes(bytes) => bytes.len(),
            Body::Filled {
                head, len, tail, ..
            } => head.len() + len + tail.len(),
            Body::Stall { head, .. } => head.len() + STALL_CLAIM,
        }
    }
}

/// One scripted answer.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Answer {
    pub fn json(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Bytes(body.as_bytes().to_vec()),
        }
    }

    pub fn redirect(status: u16, location: &str) -> Answer {
        Answer {
            status,
            headers: vec![("Location".into(), location.into())],
            body: Body::Bytes(Vec::new()),
        }
    }

    pub fn with_body(status: u16, body: Body) -> Answer {
        Answer {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = dyn Fn(&Seen) -> Answer + Send + Sync;

/// An HTTP/1.1 server on 127.0.0.1:<free port> that answers each request (one per
/// connection) as its handler says, and records what it was asked. Dropping it stops
/// accepting connections.
pub struct FakeServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    finished: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let finished = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let (seen, finished) = (seen.clone(), finished.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (handler, seen, finished) =
                        (handler.clone(), seen.clone(), finished.clone());
                    tokio::spawn(async move {
                        serve(stream, &*handler, &seen).await;
                        finished.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
        });
        FakeServer {
            addr,
            seen,
            finished,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `http://127.0.0.1:PORT`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request read so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// Connections done with: answered to the end, or given up by the client.
    pub fn finished(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn serve(mut stream: TcpStream, handler: &Handler, seen: &Mutex<Vec<Seen>>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    let answer = handler(&request);
    seen.lock().expect("not poisoned").push(request);
    // The client may hang up part-way: that is what some tests are about.
    let _ = write_answer(&mut stream, answer).await;
}

/// Reads a request head (and drops its body); `None` if the client sent none.
async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut left = length.saturating_sub(buf.len() - end - 4);
    while left > 0 {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        left = left.saturating_sub(n);
    }
    Some(Seen {
        method,
        target,
        headers,
    })
}

async fn write_answer(stream: &mut TcpStream, answer: Answer) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", answer.status, reason(answer.status));
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        answer.body.len()
    ));
    stream.write_all(head.as_bytes()).await?;
    match answer.body {
        Body::Bytes(bytes) => stream.write_all(&bytes).await?,
        Body::Filled {
            head,
            fill,
            len,
            tail,
        } => {
            stream.write_all(&head).await?;
            let chunk = vec![fill; FILL_CHUNK];
            let mut left = len;
            while left > 0 {
                let n = left.min(FILL_CHUNK);
                stream.write_all(&chunk[..n]).await?;
                left -= n;
            }
            stream.write_all(&tail).await?;
        }
        Body::Stall { head, hold } => {
            stream.write_all(&head).await?;
            stream.flush().await?;
            // Until the client gives up (end of stream) or `hold` passes.
            let mut sink = [0u8; 1024];
            let _ = tokio::time::timeout(hold, async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            return Ok(());
        }
    }
    stream.flush().await?;
    stream.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        307 => "Temporary Redirect",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

/// A fake LAPI: every stream pull gets `stream`, `GET /v1/decisions` gets `null`, the
/// probe (`HEAD`) 200, anything else 404.
pub async fn fake_lapi(stream: impl Fn() -> Answer + Send + Sync + 'static) -> FakeServer {
    FakeServer::start(move |seen| match (seen.method.as_str(), seen.path()) {
        ("GET", "/v1/decisions/stream") => stream(),
        ("GET" | "HEAD", "/v1/decisions") => Answer::json(200, "null"),
        _ => Answer::json(404, r#"{"message":"not found"}"#),
    })
    .await
}

/// A stream answer with one ban.
pub fn one_ban(ip: &str) -> String {
    format!(
        r#"{{"new":[{{"duration":"3h59m","id":1,"origin":"cscli","scenario":"manual ban","scope":"Ip","type":"ban","value":"{ip}"}}],"deleted":null}}"#
    )
}

/// The Cloudflare emulator with one list, and a bouncer configuration for it whose LAPI
/// is whatever the test says (a fake, usually).
pub struct Rig {
    pub cf: Emulator,
    pub list_id: String,
    /// `crowdsec.api_url`.
    pub lapi_url: String,
    /// The `[crowdsec]` lines that authenticate; a key by default.
    pub lapi_auth: String,
    pub crowdsec_extra: String,
    /// `cloudflare.api_url`, when not the emulator's.
    pub cloudflare_url: Option<String>,
    pub cloudflare_extra: String,
    pub sync_extra: String,
    pub admin_listen: String,
    dir: tempfile::TempDir,
}

impl Rig {
    pub async fn start(lapi_url: &str) -> Rig {
        let settings = Settings {
            op_latency: (Duration::from_millis(20), Duration::from_millis(80)),
            ..Settings::default()
        };
        let bind: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        let cf = Emulator::start(settings, bind)
            .await
            .expect("emulator starts");
        let list_id = cf.create_list("crowdsec_ban");
        Rig {
            cf,
            list_id,
            lapi_url: lapi_url.to_owned(),
            lapi_auth: "api_key = \"fake-lapi-key\"\n".into(),
            crowdsec_extra: String::new(),
            cloudflare_url: None,
            cloudflare_extra: String::new(),
            sync_extra: "reconcile_interval = \"1h\"\nshutdown_grace = \"5s\"\n".into(),
            admin_listen: "127.0.0.1:0".into(),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_text(&self) -> String {
        format!(
            "[crowdsec]\napi_url = \"{}\"\n{}update_frequency = \"300ms\"\n{}\n\
             [cloudflare]\napi_url = \"{}\"\napi_token = \"{}\"\naccount_id = \"{}\"\nlist_name = \"crowdsec_ban\"\n{}\n\
             [admin]\nlisten = \"{}\"\n\
             [sync]\n{}",
            self.lapi_url,
            self.lapi_auth,
            self.crowdsec_extra,
            self.cloudflare_url
                .clone()
                .unwrap_or_else(|| self.cf.base_url()),
            self.cf.api_token(),
            self.cf.account_id(),
            self.cloudflare_extra,
            self.admin_listen,
            self.sync_extra,
        )
    }

    /// Writes the configuration (mode 0600) for runs of the real binary.
    pub fn config_file(&self) -> PathBuf {
        write_config(self.dir.path(), &self.config_text())
    }

    /// Canonical ips on the emulated list, sorted.
    pub fn listed(&self) -> Vec<String> {
        let mut ips: Vec<String> = self
            .cf
            .items(&self.list_id)
            .into_iter()
            .map(|item| item.ip)
            .collect();
        ips.sort();
        ips
    }
}

/// Writes `text` as `bouncer.toml` in `dir`, mode 0600.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("bouncer.toml");
    std::fs::write(&path, text).expect("write config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
    path
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET url`: the status and body, or status 0 and the error when nothing answers.
pub async fn get(url: &str) -> (u16, String) {
    cfbouncer::install_tls_provider();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    match client.get(url).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(err) => (0, err.to_string()),
    }
}

/// The real binary run as a daemon, its log collected.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// `-c CONFIG run`.
    pub fn start(config: &Path) -> Daemon {
        Daemon::spawn(&["-c", config.to_str().expect("utf-8 path"), "run"])
    }

    /// The binary with `args`, stdout and stderr collected into one log.
    pub fn spawn(args: &[&str]) -> Daemon {
        let mut child = command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        collect(BufReader::new(stdout), log.clone());
        collect(BufReader::new(stderr), log.clone());
        Daemon {
            child,
            log,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("not poisoned").clone()
    }

    /// Waits until its log holds `text`; returns whether it did within `timeout`.
    pub async fn wait_for_log(&self, text: &str, timeout: Duration) -> bool {
        eventually(timeout, || std::future::ready(self.log().contains(text))).await
    }

    /// Peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the daemon still runs");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    pub fn sigterm(&self) {
        let pid = i32::try_from(self.pid()).expect("a pid fits i32");
        // SAFETY: kill(2) on a child this handle still owns (not yet reaped).
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM delivered");
    }

    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.status = Some(self.child.wait().expect("reaped"));
    }

    /// Waits for it to exit; `None` if it still runs after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + timeout;
        while self.status.is_none() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                break;
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(reader: impl BufRead + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let mut log = log.lock().expect("not poisoned");
            log.push_str(&line);
            log.push('\n');
        }
    });
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate, made
/// with the `openssl` CLI in a temp dir.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        pki.openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
                &["-subj", "/CN=hostile test CA"],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ]
            .concat(),
        );
        for (name, cn, ext) in [
            (
                "server",
                "localhost",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "bouncer", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, pem, extfile) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            std::fs::write(
                pki.dir.path().join(&extfile),
                format!("basicConstraints=CA:FALSE\n{ext}"),
            )
            .expect("write extensions");
            let subject = format!("/CN={cn}");
            pki.openssl(
                &[
                    &["req"][..],
                    &ec,
                    &["-keyout", &key, "-out", &csr, "-subj", &subject],
                ]
                .concat(),
            );
            pki.openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ]);
        }
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("the openssl CLI runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A file of the PKI: `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// `openssl s_server -www` on 127.0.0.1:<free port> with the server certificate;
/// `-Verify 1` (a client certificate signed by the CA required) when asked. Killed on drop.
pub struct SServer {
    child: Child,
    pub port: u16,
}

impl SServer {
    pub async fn start(pki: &Pki, require_client_cert: bool) -> SServer {
        let port = free_port();
        let accept = format!("127.0.0.1:{port}");
        let (cert, key, ca) = (
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
        );
        let mut command = std::process::Command::new("openssl");
        command
            .args(["s_server", "-accept", &accept, "-www"])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key);
        if require_client_cert {
            command.args(["-Verify", "1"]).arg("-CAfile").arg(&ca);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server starts");
        let log = Arc::new(Mutex::new(String::new()));
        collect(
            BufReader::new(child.stdout.take().expect("piped")),
            log.clone(),
        );
        // It prints ACCEPT once it listens.
        let listening = eventually(Duration::from_secs(10), || {
            std::future::ready(log.lock().expect("not poisoned").contains("ACCEPT"))
        })
        .await;
        assert!(listening, "openssl s_server listens on {accept}");
        SServer { child, port }
    }

    /// `https://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS server that requires a client certificate signed by the CA and answers every
/// request `200` with an empty body (`openssl s_server -www` never answers a `HEAD`,
/// which is how `check` probes LAPI). Serves until the test process ends.
pub fn start_tls_lapi(pki: &Pki) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    cfbouncer::install_tls_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).expect("read the CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("a usable CA");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .expect("a client verifier");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.path("server.pem"))
        .expect("read the server certificate")
        .collect::<Result<_, _>>()
        .expect("a server certificate");
    let key = PrivateKeyDer::from_pem_file(pki.path("server.key")).expect("the server key");
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("a server config"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("an address").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match std::io::Read::read(&mut tls, &mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = std::io::Write::write_all(
                    &mut tls,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                tls.conn.send_close_notify();
                let _ = std::io::Write::flush(&mut tls);
            });
        }
    });
    format!("https://127.0.0.1:{port}/")
}
