//! The admin listener under slow, silent and numerous clients: slowloris connections are
//! closed after the header timeout, a new connection at the cap takes the place of the
//! idlest one, and a real bouncer with few file descriptors keeps answering `/healthz`
//! within a second and keeps syncing while hundreds of such connections come and go.
//! Every client here connects to loopback only, and every loop is bounded in time.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use common::bin::BIN;
use common::lapi::NewDecision;
use common::world::{eventually, World};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The admin listener's header timeout, as the bouncer runs it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Its connection cap, as the bouncer runs it.
const CAP: usize = 64;
/// The bound a liveness probe needs.
const PROBE_BOUND: Duration = Duration::from_secs(1);

/// The real tests of a bouncer are heavy for a 2-core machine: one at a time, so that the
/// one-second bound measures the listener and not the neighbours.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `admin::serve` with a trivial router on a loopback port; cancelled on drop.
struct Served {
    addr: SocketAddr,
    token: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn serve_trivial() -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let router = Router::new().route("/healthz", get(|| async { "ok\n" }));
    let token = CancellationToken::new();
    tokio::spawn(cfbouncer::admin::serve(listener, router, token.clone()));
    Served { addr, token }
}

/// One `/healthz` request on a fresh connection: how long it took, or why it failed.
async fn healthz(addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\nok\n") {
            Ok(())
        } else {
            Err(format!("answer {answer:?}"))
        }
    };
    match tokio::time::timeout(PROBE_BOUND, exchange).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("no answer within {PROBE_BOUND:?}")),
    }
}

/// Waits until the server closes `stream` (a read returns 0 or fails), ignoring what it
/// sends first; how long that took, or `None` when it stays open for `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

/// How the clients of an attack fared.
#[derive(Default)]
struct Tally {
    /// Connections made.
    opened: AtomicUsize,
    /// Connections the server closed.
    closed_by_server: AtomicUsize,
    /// Connections open now, as the clients see them.
    open: AtomicUsize,
}

/// Slow and silent clients that reconnect, after a pause, whenever the server closes them.
struct Attack {
    stop: CancellationToken,
    clients: JoinSet<()>,
    tally: Arc<Tally>,
}

impl Attack {
    fn start(addr: SocketAddr, slow: usize, silent: usize) -> Attack {
        let stop = CancellationToken::new();
        let tally = Arc::new(Tally::default());
        let mut clients = JoinSet::new();
        for n in 0..slow + silent {
            let (stop, tally) = (stop.clone(), tally.clone());
            clients.spawn(attacker(addr, n < slow, stop, tally));
        }
        Attack {
            stop,
            clients,
            tally,
        }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        while self.clients.join_next().await.is_some() {}
    }
}

async fn attacker(addr: SocketAddr, slow: bool, stop: CancellationToken, tally: Arc<Tally>) {
    while !stop.is_cancelled() {
        let connect = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr));
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            connected = connect => connected,
        };
        if let Ok(Ok(mut stream)) = stream {
            tally.opened.fetch_add(1, Ordering::Relaxed);
            tally.open.fetch_add(1, Ordering::Relaxed);
            let closed = hold(&mut stream, slow, &stop).await;
            tally.open.fetch_sub(1, Ordering::Relaxed);
            if closed {
                tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Reconnect as an attacker would, spread out so the clients do not move in waves.
        let pause = Duration::from_millis(1000 + fastrand::u64(0..1000));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Holds a connection open: a slow client sends a request head one byte a second and
/// never ends it, a silent one sends nothing. True when the server closed it.
async fn hold(stream: &mut TcpStream, slow: bool, stop: &CancellationToken) -> bool {
    let (mut reader, mut writer) = stream.split();
    if slow
        && writer
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Slow: ")
            .await
            .is_err()
    {
        return true;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            () = stop.cancelled() => return false,
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            },
            _ = tick.tick(), if slow => {
                if writer.write_all(b"a").await.is_err() {
                    return true;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_silent_client_is_closed_after_the_header_timeout() {
    let served = serve_trivial().await;
    let mut slow = TcpStream::connect(served.addr).await.expect("connect");
    let mut silent = TcpStream::connect(served.addr).await.expect("connect");
    let mut kept_alive = TcpStream::connect(served.addr).await.expect("connect");
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .expect("write");
    let mut answer = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), kept_alive.read(&mut answer))
        .await
        .expect("a complete request is answered at once")
        .expect("read");
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..n]
    );
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Slow: ")
        .await
        .expect("write");
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            // One byte every 500 ms, and a check whether the server has closed.
            match tokio::time::timeout(Duration::from_millis(500), slow.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
                Ok(Ok(_)) => {}
                Err(_) => {
                    if slow.write_all(b"a").await.is_err() {
                        return Some(started.elapsed());
                    }
                }
            }
            if started.elapsed() > HEADER_TIMEOUT * 3 {
                return None;
            }
        }
    });
    let limit = HEADER_TIMEOUT + Duration::from_secs(3);
    let (silent_closed, kept_alive_closed, slow_closed) = tokio::join!(
        closed_within(&mut silent, limit),
        closed_within(&mut kept_alive, limit),
        trickle,
    );
    let slow_closed = slow_closed.expect("no panic");
    for (who, closed) in [
        ("a slowloris client", slow_closed),
        ("a client that never sends", silent_closed),
        ("an idle keep-alive connection", kept_alive_closed),
    ] {
        let after = closed.unwrap_or_else(|| panic!("{who} is still open after {limit:?}"));
        assert!(
            after >= HEADER_TIMEOUT - Duration::from_millis(500),
            "{who} was closed after {after:?}, before the header timeout"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_a_new_connection_replaces_the_idlest_and_is_answered() {
    let served = serve_trivial().await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(served.addr).await.expect("connect"));
        // In order, so that the first is the idlest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The listener holds them all (none is closed yet).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let latency = healthz(served.addr)
        .await
        .expect("/healthz is answered at the cap");
    assert!(latency < PROBE_BOUND, "{latency:?}");
    let first = closed_within(&mut held[0], Duration::from_secs(1)).await;
    assert!(
        first.is_some(),
        "the idlest held connection was closed to make room"
    );
    let last = closed_within(&mut held[CAP - 1], Duration::from_millis(300)).await;
    assert!(last.is_none(), "the newest held connection stays open");
}

/// The bouncer binary, killed when dropped (a failed test leaves no process behind).
struct Daemon(Child);

impl Daemon {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Open file descriptors, from /proc.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    /// User plus system CPU time, from /proc.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat has a command name")
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().expect("utime") // field 14
            + fields[12].parse::<u64>().expect("stime"); // field 15
        let per_second: u64 = String::from_utf8_lossy(
            &Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .expect("getconf")
                .stdout,
        )
        .trim()
        .parse()
        .expect("CLK_TCK");
        Duration::from_millis(ticks * 1000 / per_second)
    }

    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A world whose bouncer will listen on a known loopback port.
async fn world_with_admin_port(name: &str) -> (World, SocketAddr) {
    let mut world = World::start(name).await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    world.admin_listen = addr.to_string();
    (world, addr)
}

/// Runs the bouncer binary, under `ulimit -n` when given.
fn start_daemon(world: &World, nofile: Option<u32>) -> Daemon {
    let config = world.config_file();
    let config = config.to_str().expect("utf-8 path");
    let mut command = match nofile {
        Some(n) => {
            let mut sh = Command::new("sh");
            sh.args([
                "-c",
                &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                BIN,
                "-c",
                config,
                "run",
            ]);
            sh
        }
        None => {
            let mut bin = Command::new(BIN);
            bin.args(["-c", config, "run"]);
            bin
        }
    };
    let child = command
        .env_remove("CROWDSEC_API_KEY")
        .env_remove("CLOUDFLARE_API_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the daemon starts");
    Daemon(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_slow_and_silent_connections_healthz_answers_and_syncing_goes_on() {
    let _heavy = HEAVY.lock().await;
    let (world, admin) = world_with_admin_port("t-admin-flood").await;
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.1")])
        .await;
    // 128 file descriptors, as a tight container would give: with no cap, the held
    // connections take them all, and neither /healthz nor the bouncer's calls get one.
    let daemon = start_daemon(&world, Some(128));
    world.expect_list(&["192.0.2.1"]).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            healthz(admin).await.is_ok()
        })
        .await,
        "/healthz answers before the attack"
    );
    let fds_before = daemon.fds();

    let attack = Attack::start(admin, 300, 300);
    // Let every client connect once (those past the cap are closed and come back).
    let all_connected = eventually(Duration::from_secs(10), || {
        std::future::ready(attack.tally.opened.load(Ordering::Relaxed) >= 600)
    })
    .await;
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.2")])
        .await;
    // Probes for longer than two header timeouts, so that held connections are closed
    // and replaced under the probes' feet.
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut most_fds = 0;
    let probing = Instant::now();
    while probing.elapsed() < HEADER_TIMEOUT * 2 + Duration::from_secs(2) {
        match healthz(admin).await {
            Ok(latency) => latencies.push(latency),
            Err(why) => failures.push(format!("at {:?}: {why}", probing.elapsed())),
        }
        most_fds = most_fds.max(daemon.fds());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let open_now = attack.tally.open.load(Ordering::Relaxed);
    let synced_under_attack = eventually(Duration::from_secs(10), || {
        std::future::ready(world.listed().contains(&"192.0.2.2".to_owned()))
    })
    .await;
    let opened = attack.tally.opened.load(Ordering::Relaxed);
    let closed = attack.tally.closed_by_server.load(Ordering::Relaxed);
    attack.stop().await;
    latencies.sort();
    eprintln!(
        "attack: {opened} connections made, {closed} closed by the server, {open_now} open \
         at the end of probing; bouncer fds {fds_before} before, {most_fds} at most; \
         /healthz: {} answered (slowest {:?}), {} failed",
        latencies.len(),
        latencies.last(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "/healthz failed under attack ({} of {}): {failures:?}",
        failures.len(),
        failures.len() + latencies.len()
    );
    assert!(
        synced_under_attack,
        "a decision added under attack reached the list"
    );
    assert!(all_connected, "the attack connected only {opened} times");
    assert!(
        most_fds <= fds_before + CAP + 4,
        "the admin listener held at most {CAP} connections: {most_fds} fds, {fds_before} before"
    );
    world.expect_list(&["192.0.2.1", "192.0.2.2"]).await;
    drop(daemon);
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_listener_waits_without_spinning_and_recovers() {
    let _heavy = HEAVY.lock().await;
    let (world, admin) = world_with_admin_port("t-admin-emfile").await;
    let mut daemon = start_daemon(&world, None);
    assert!(
        eventually(Duration::from_secs(20), || async {
            healthz(admin).await.is_ok()
        })
        .await,
        "/healthz answers"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Leave the process two more file descriptors than it has open: accept() fails with
    // EMFILE as soon as two connections are held.
    let fds = daemon.fds();
    let pid = daemon.pid().to_string();
    let prlimit = |soft: String| {
        let status = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:")])
            .status()
            .expect("prlimit runs");
        assert!(status.success(), "prlimit {soft}");
    };
    prlimit((fds + 2).to_string());
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(admin).await.expect("connect"));
    }
    let cpu_before = daemon.cpu();
    let period = Duration::from_secs(3);
    tokio::time::sleep(period).await;
    let cpu = daemon.cpu().saturating_sub(cpu_before);
    let starved = healthz(admin).await;
    assert!(daemon.alive(), "the bouncer is still running out of fds");
    prlimit("1024".into());
    drop(held);
    let recovered = eventually(Duration::from_secs(10), || async {
        healthz(admin).await.is_ok()
    })
    .await;
    eprintln!("out of fds for {period:?}: {cpu:?} CPU; /healthz meanwhile: {starved:?}");
    assert!(
        cpu < period / 3,
        "the accept loop spun on EMFILE: {cpu:?} CPU in {period:?}"
    );
    assert!(recovered, "/healthz answers once fds are back");
    assert!(daemon.alive());
}
