//! A real CrowdSec Local API (Debian bookworm's `crowdsec` 1.4.6) for integration tests.
//!
//! Each [`Lapi`] runs `crowdsec -no-cs -no-capi` alone in its own temp dir: config, SQLite DB
//! and `lapi.log` all live there, on a loopback port of its own, so tests can run in parallel
//! (threads of one test binary and several test binaries at once). The behaviour relied on
//! here is described in docs/lapi.md.
//!
//! The binaries come from `scripts/install-crowdsec.sh` (unpacked into `target/crowdsec/`).
//! When a test panics, the temp dir is kept and its path printed: the log and the DB are the
//! best evidence (docs/lapi.md §8).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long `start`/`restart` wait for the LAPI to answer before giving up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before sending SIGKILL (it normally exits in < 2 s).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Launch attempts when the chosen port turns out to be taken (`address already in use`).
const START_ATTEMPTS: usize = 6;
/// After `/health` answers, how long our process must stay alive to prove that it, and not
/// another instance that owns the port, is the one answering (a failed bind exits in ~60 ms).
const BIND_GRACE: Duration = Duration::from_millis(150);
/// Ports are drawn below Linux's ephemeral range (32768–60999) so that outgoing connections
/// of other tests never hold them.
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;
/// LAPI JWTs live 1 h; refresh well before.
const JWT_MAX_AGE: Duration = Duration::from_secs(50 * 60);
/// Exactly one `/`, so the LAPI records type and version cleanly (docs/lapi.md §4.7).
const USER_AGENT: &str = "cfbouncer-lapi-harness/0.1";
const MACHINE_ID: &str = "test-machine";
const LISTENING: &str = "Local API listening on";
const ADDR_IN_USE: &str = "address already in use";
const INSTALL_HINT: &str =
    "run `bash scripts/install-crowdsec.sh` (or set CROWDSEC_BIN and CSCLI_BIN)";

const PROFILES_YAML: &str = "\
name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == \"Ip\"
decisions:
 - type: ban
   duration: 4h
on_success: break
";

/// One running (or stopped) LAPI in its own temp dir.
pub struct Lapi {
    /// `None` once the dir was kept for a failed test.
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    port: u16,
    crowdsec_bin: PathBuf,
    cscli_bin: PathBuf,
    machine_password: String,
    child: Option<Child>,
    /// `sh` that SIGTERMs the LAPI if this test process dies without running `Drop`.
    watchdog: Option<Child>,
    http: reqwest::Client,
    /// Machine JWT and when it was obtained.
    jwt: Mutex<Option<(String, Instant)>>,
}

/// The only way a launch may fail without panicking: someone else holds the port.
struct AddrInUse;

impl Lapi {
    /// Starts a fresh LAPI in a new temp dir, with a registered machine, on a free port.
    pub async fn start() -> Lapi {
        let t0 = Instant::now();
        let (crowdsec_bin, cscli_bin) = (
            find_bin("CROWDSEC_BIN", "crowdsec"),
            find_bin("CSCLI_BIN", "cscli"),
        );
        let tmp = tempfile::Builder::new()
            .prefix("cfbouncer-lapi-")
            .tempdir()
            .expect("create LAPI temp dir");
        let dir = tmp.path().to_path_buf();
        let mut lapi = Lapi {
            tmp: Some(tmp),
            dir,
            port: pick_port(),
            crowdsec_bin,
            cscli_bin,
            machine_password: random_alnum(32),
            child: None,
            watchdog: None,
            http: http_client(),
            jwt: Mutex::new(None),
        };
        lapi.write_files();
        lapi.register_machine();
        for _ in 0..START_ATTEMPTS {
            if lapi.launch().await.is_ok() {
                eprintln!(
                    "lapi: started {} in {} ms (dir {})",
                    lapi.url(),
                    t0.elapsed().as_millis(),
                    lapi.dir.display()
                );
                return lapi;
            }
            lapi.port = pick_port();
            lapi.write_files();
        }
        panic!(
            "LAPI: {START_ATTEMPTS} ports in a row were already in use; see {}",
            lapi.log_path().display()
        );
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp dir holding config, DB and `lapi.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    /// The cscli binary [`Lapi::cscli`] runs (with `-c` [`Lapi::config_path`]).
    pub fn cscli_bin(&self) -> &Path {
        &self.cscli_bin
    }

    /// Everything the LAPI printed so far (all runs, if restarted).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Registers a bouncer and returns its API key. Fresh key per test: `last_pull` is per key
    /// (docs/lapi.md §4.7).
    pub fn add_bouncer(&self, name: &str) -> String {
        self.cscli_ok(&["bouncers", "add", name, "-o", "raw"])
            .trim()
            .to_string()
    }

    /// Runs `cscli -c CONFIG --error ARGS...`. `decisions add/delete` need the LAPI up
    /// (docs/lapi.md §2).
    pub fn cscli(&self, args: &[&str]) -> Output {
        Command::new(&self.cscli_bin)
            .arg("-c")
            .arg(self.config_path())
            .arg("--error")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; {INSTALL_HINT}",
                    self.cscli_bin.display()
                )
            })
    }

    /// Like [`Lapi::cscli`], but panics with cscli's stderr unless it succeeded; returns stdout.
    pub fn cscli_ok(&self, args: &[&str]) -> String {
        let out = self.cscli(args);
        if !out.status.success() {
            panic!(
                "cscli {args:?} failed ({}):\nstderr: {}\nstdout: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        String::from_utf8(out.stdout).expect("cscli stdout is UTF-8")
    }

    /// Adds all `decisions` in one alert through `POST /v1/alerts` as the machine
    /// (docs/lapi.md §5.1). Each decision's `until` is now (whole seconds) + its duration, which
    /// may be negative.
    pub async fn add_decisions(&self, decisions: &[NewDecision]) {
        if decisions.is_empty() {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970");
        let body = alert_json(decisions, &rfc3339_utc(now.as_secs()));
        for fresh_token in [false, true] {
            let token = self.machine_jwt(fresh_token).await;
            let resp = self
                .http
                .post(format!("{}v1/alerts", self.url()))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("POST /v1/alerts: {e}"));
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            match status {
                201 => return,
                // Expired token, or the LAPI restarted: 1.4.6 signs JWTs with a per-process secret.
                401 if !fresh_token => continue,
                _ => {
                    panic!("POST /v1/alerts: expected 201, got {status}: {text}\nbody sent: {body}")
                }
            }
        }
    }

    /// SIGTERM by PID, SIGKILL after 5 s, and reap. Idempotent.
    pub async fn stop(&mut self) {
        self.kill_watchdog();
        let Some(child) = self.child.take() else {
            return;
        };
        let t0 = Instant::now();
        let status = tokio::task::spawn_blocking(move || terminate(child))
            .await
            .expect("terminate crowdsec");
        eprintln!(
            "lapi: stopped {} in {} ms ({status})",
            self.url(),
            t0.elapsed().as_millis()
        );
    }

    /// Stops and starts again on the same dir and port; all state is in SQLite and survives.
    pub async fn restart(&mut self) {
        self.stop().await;
        let t0 = Instant::now();
        *self.jwt.lock().unwrap() = None;
        self.http = http_client();
        for _ in 0..START_ATTEMPTS {
            if self.launch().await.is_ok() {
                eprintln!(
                    "lapi: restarted {} in {} ms",
                    self.url(),
                    t0.elapsed().as_millis()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!(
            "LAPI restart: port {} stayed in use; see {}",
            self.port,
            self.log_path().display()
        );
    }

    /// `GET /v1/decisions/stream` as bouncer `key` (`?startup=true` if `startup`); panics unless 200.
    pub async fn stream(&self, key: &str, startup: bool) -> serde_json::Value {
        self.stream_with(key, if startup { "startup=true" } else { "" })
            .await
    }

    /// `GET /v1/decisions/stream?QUERY` (e.g. `startup=true&scopes=country`); panics unless 200.
    pub async fn stream_with(&self, key: &str, query: &str) -> serde_json::Value {
        let sep = if query.is_empty() { "" } else { "?" };
        let path = format!("v1/decisions/stream{sep}{query}");
        let (status, body) = self.bouncer_get(&path, Some(key)).await;
        assert_eq!(status, 200, "GET /{path}: {body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET /{path}: bad JSON ({e}): {body}"))
    }

    /// `GET /PATH_AND_QUERY` with `X-Api-Key: key` if given; returns status and raw body.
    pub async fn bouncer_get(&self, path_and_query: &str, key: Option<&str>) -> (u16, String) {
        let mut req = self.http.get(format!("{}{}", self.url(), path_and_query));
        if let Some(key) = key {
            req = req.header("X-Api-Key", key);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /{path_and_query}: {e}"));
        let status = resp.status().as_u16();
        (
            status,
            resp.text()
                .await
                .unwrap_or_else(|e| panic!("GET /{path_and_query} body: {e}")),
        )
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("lapi.log")
    }

    /// Writes config.yaml (for the current port), profiles, simulation and machine credentials.
    fn write_files(&self) {
        let d = self.dir.display();
        let plugins = self
            .crowdsec_bin
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("/usr"));
        let plugins = plugins.join("lib/crowdsec/plugins");
        // Block style: flow style with `::1` in a flow sequence does not parse in Go's yaml.
        let config = format!(
            "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n  working_dir: .\n\
             config_paths:\n  config_dir: {d}/\n  data_dir: {d}/data/\n  simulation_path: {d}/simulation.yaml\n  \
             hub_dir: {d}/hub/\n  index_path: {d}/hub/.index.json\n  notification_dir: {d}/notifications/\n  \
             plugin_dir: {}/\n\
             cscli:\n  output: human\n  color: \"no\"\n\
             db_config:\n  log_level: warning\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: true\n\
             api:\n  client:\n    insecure_skip_verify: false\n    credentials_path: {d}/local_api_credentials.yaml\n  \
             server:\n    log_level: info\n    listen_uri: 127.0.0.1:{}\n    profiles_path: {d}/profiles.yaml\n    \
             trusted_ips:\n      - 127.0.0.1\n      - \"::1\"\n\
             prometheus:\n  enabled: false\n",
            plugins.display(),
            self.port
        );
        let creds = format!(
            "url: {}\nlogin: {MACHINE_ID}\npassword: {}\n",
            self.url(),
            self.machine_password
        );
        for sub in ["data", "hub", "notifications"] {
            fs::create_dir_all(self.dir.join(sub)).expect("create LAPI subdir");
        }
        for (name, text) in [
            ("config.yaml", config.as_str()),
            ("profiles.yaml", PROFILES_YAML),
            ("simulation.yaml", "simulation: off\n"),
            ("local_api_credentials.yaml", creds.as_str()),
        ] {
            fs::write(self.dir.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
        }
    }

    /// Registers the machine straight in the DB (no LAPI needed); cscli then logs in with the
    /// credentials file written by `write_files` (cscli's own copy is overwritten right after).
    fn register_machine(&self) {
        let creds = self.dir.join("local_api_credentials.yaml");
        let (creds_arg, url) = (creds.to_str().expect("UTF-8 temp path"), self.url());
        let pw = self.machine_password.as_str();
        self.cscli_ok(&[
            "machines",
            "add",
            MACHINE_ID,
            "--password",
            pw,
            "--force",
            "-f",
            creds_arg,
            "--url",
            &url,
        ]);
        self.write_files();
    }

    /// Spawns crowdsec and waits until it serves; `Err` only if the port was taken.
    async fn launch(&mut self) -> Result<(), AddrInUse> {
        let log_path = self.log_path();
        let offset = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open lapi.log");
        let child = Command::new(&self.crowdsec_bin)
            .arg("-c")
            .arg(self.config_path())
            .args(["-no-cs", "-no-capi"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup lapi.log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e}; {INSTALL_HINT}",
                    self.crowdsec_bin.display()
                )
            });
        self.watchdog = spawn_watchdog(child.id());
        self.child = Some(child);
        let ready = self.wait_ready(offset).await;
        if ready.is_err() {
            self.kill_watchdog();
        }
        ready
    }

    /// Waits for the `listening on` line, `/health` up, and our process still alive after that.
    async fn wait_ready(&mut self, offset: u64) -> Result<(), AddrInUse> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.log_since(offset);
            let child = self.child.as_mut().expect("launched");
            if log.contains(ADDR_IN_USE) {
                kill_and_reap(child);
                self.child = None;
                return Err(AddrInUse);
            }
            if let Some(status) = child.try_wait().expect("try_wait crowdsec") {
                self.child = None;
                panic!(
                    "crowdsec exited during start ({status}); {}:\n{log}",
                    self.log_path().display()
                );
            }
            if log.contains(LISTENING) && self.health_up().await {
                tokio::time::sleep(BIND_GRACE).await;
                let alive = !exited(self.child.as_mut().expect("launched"));
                if alive && !self.log_since(offset).contains(ADDR_IN_USE) {
                    return Ok(());
                }
                continue;
            }
            if Instant::now() > deadline {
                panic!(
                    "LAPI not ready after {START_TIMEOUT:?} on {}; {}:\n{log}",
                    self.url(),
                    self.log_path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn health_up(&self) -> bool {
        let req = self
            .http
            .get(format!("{}health", self.url()))
            .timeout(Duration::from_secs(2));
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                let body = resp.text().await.unwrap_or_default();
                serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["status"] == "up")
            }
            _ => false,
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let bytes = fs::read(self.log_path()).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default()).into_owned()
    }

    /// The machine's JWT, from cache unless `fresh` or older than [`JWT_MAX_AGE`].
    async fn machine_jwt(&self, fresh: bool) -> String {
        let cached = self.jwt.lock().unwrap().clone();
        if let Some((token, at)) = cached {
            if !fresh && at.elapsed() < JWT_MAX_AGE {
                return token;
            }
        }
        let login =
            serde_json::json!({"machine_id": MACHINE_ID, "password": self.machine_password});
        let resp = self
            .http
            .post(format!("{}v1/watchers/login", self.url()))
            .json(&login)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST /v1/watchers/login: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let token = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_string))
            .filter(|_| status == 200)
            .unwrap_or_else(|| panic!("POST /v1/watchers/login: {status}: {text}"));
        *self.jwt.lock().unwrap() = Some((token.clone(), Instant::now()));
        token
    }

    fn kill_watchdog(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            // SIGKILL: the watchdog must not act; closing its stdin would make it kill.
            kill_and_reap(&mut w);
        }
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.kill_watchdog();
        if let Some(child) = self.child.take() {
            terminate(child);
        }
        if std::thread::panicking() {
            if let Some(tmp) = self.tmp.take() {
                let dir = tmp.keep();
                eprintln!(
                    "lapi: test panicked; kept LAPI dir {} (lapi.log, config.yaml, data/crowdsec.db)",
                    dir.display()
                );
            }
        }
    }
}

/// A decision to add with [`Lapi::add_decisions`]. Defaults: an `Ip` ban for 4h from `cscli`.
#[derive(Clone, Debug)]
pub struct NewDecision {
    pub value: String,
    pub scope: String,
    pub kind: String,
    /// Go duration (`4h`, `90s`, `-1h`...): `until = now + duration`.
    pub duration: String,
    pub origin: String,
    pub scenario: String,
}

impl NewDecision {
    pub fn ban_ip(ip: &str) -> Self {
        NewDecision {
            value: ip.to_string(),
            scope: "Ip".to_string(),
            kind: "ban".to_string(),
            duration: "4h".to_string(),
            origin: "cscli".to_string(),
            scenario: "test/manual".to_string(),
        }
    }

    pub fn ban_range(cidr: &str) -> Self {
        Self::ban_ip(cidr).with_scope("Range")
    }

    pub fn with_scope(mut self, scope: &str) -> Self {
        self.scope = scope.to_string();
        self
    }

    pub fn with_kind(mut self, kind: &str) -> Self {
        self.kind = kind.to_string();
        self
    }

    pub fn with_duration(mut self, d: &str) -> Self {
        self.duration = d.to_string();
        self
    }

    pub fn with_origin(mut self, o: &str) -> Self {
        self.origin = o.to_string();
        self
    }

    pub fn with_scenario(mut self, s: &str) -> Self {
        self.scenario = s.to_string();
        self
    }
}

/// The `POST /v1/alerts` body of docs/lapi.md §5.1: one alert holding all decisions; `now` is
/// RFC 3339.
pub fn alert_json(decisions: &[NewDecision], now: &str) -> serde_json::Value {
    let first = &decisions[0];
    let decisions: Vec<_> = decisions
        .iter()
        .map(|d| {
            serde_json::json!({"duration": d.duration, "origin": d.origin, "scenario": d.scenario,
                               "scope": d.scope, "type": d.kind, "value": d.value})
        })
        .collect();
    serde_json::json!([{
        "scenario": first.scenario, "scenario_hash": "", "scenario_version": "", "message": "test",
        "events_count": 1, "events": [], "capacity": 0, "leakspeed": "0", "simulated": false,
        "start_at": now, "stop_at": now,
        "source": {"scope": first.scope, "value": first.value},
        "decisions": decisions,
    }])
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (civil-from-days, proleptic Gregorian).
pub fn rfc3339_utc(secs: u64) -> String {
    let (days, sod) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// `CROWDSEC_BIN`/`CSCLI_BIN`, else `target/crowdsec/usr/bin/NAME`, else `/usr/bin/NAME`.
fn find_bin(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env}={} does not exist; {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/crowdsec/usr/bin")
        .join(name);
    let system = Path::new("/usr/bin").join(name);
    [local, system]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found in target/crowdsec/usr/bin nor /usr/bin; {INSTALL_HINT}")
        })
}

/// A random port in [`PORT_RANGE`] that is free right now (bind probe); races are handled by
/// retrying the launch on `address already in use`.
fn pick_port() -> u16 {
    for _ in 0..200 {
        let port = fastrand::u16(PORT_RANGE);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found in {PORT_RANGE:?}");
}

fn http_client() -> reqwest::Client {
    // Only http:// is used, but reqwest is built without a default rustls provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .no_proxy()
        .build()
        .expect("build reqwest client")
}

fn random_alnum(n: usize) -> String {
    (0..n).map(|_| fastrand::alphanumeric()).collect()
}

/// A `sh` that waits for EOF on its stdin, which only happens if this process dies without
/// reaping it, and then SIGTERMs the LAPI (SIGKILL if still there after 5 s): no orphan LAPI
/// after an abort. It polls, so it never signals the PID long after the LAPI is gone.
/// Its own process group, so a Ctrl-C to the test run does not kill it first.
fn spawn_watchdog(pid: u32) -> Option<Child> {
    let script = format!(
        "read _; kill -TERM {pid} 2>/dev/null || exit 0; i=0; while [ $i -lt 50 ]; do \
         sleep 0.1; kill -0 {pid} 2>/dev/null || exit 0; i=$((i+1)); done; kill -KILL {pid} 2>/dev/null"
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

/// True once the child has exited (and is reaped); an unreaped child's PID cannot be reused,
/// so signalling by PID before this returns true is safe.
fn exited(child: &mut Child) -> bool {
    !matches!(child.try_wait(), Ok(None))
}

fn sigterm(pid: u32) {
    // The shell builtin: no dependency on procps' kill(1).
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM by PID, SIGKILL after [`STOP_GRACE`], and reap; blocks (< 100 ms measured).
fn terminate(mut child: Child) -> String {
    let t0 = Instant::now();
    if !exited(&mut child) {
        sigterm(child.id());
    }
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if t0.elapsed() < STOP_GRACE => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                kill_and_reap(&mut child);
                return "SIGKILLed after SIGTERM grace".to_string();
            }
        }
    }
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
