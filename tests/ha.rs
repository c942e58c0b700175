//! High availability (docs/high-availability.md): the Lease client against a loopback
//! fake of the Lease API, and three real bouncer processes on one real LAPI and the
//! emulator, with the leader killed, stopped past its deadline, and cut off from the
//! Lease API. No real Kubernetes API server runs here: the fake is the stand-in.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cfbouncer::config::HaConfig;
use cfbouncer::ha::lease::{ApiError, HttpLeaseApi, LeaseApi, Record, OPERATION_ANNOTATION};
use cfbouncer::ha::{Elector, Ha, Role, Timings};
use cfbouncer::telemetry::Telemetry;
use common::lapi::NewDecision;
use common::lease::FakeLeases;
use common::recorder::Recorder;
use common::world::{eventually, World};
use tokio_util::sync::CancellationToken;

const NS: &str = "crowdsec";
const LEASE: &str = "cf-bouncer";

fn ha_config(fake: &FakeLeases, identity: &str, token_file: &Path, timings: Timings) -> HaConfig {
    HaConfig {
        namespace: NS.into(),
        lease_name: LEASE.into(),
        identity: identity.into(),
        lease_duration: timings.lease_duration,
        renew_deadline: timings.renew_deadline,
        retry_period: timings.retry_period,
        api_server: fake.url(),
        token_file: token_file.to_owned(),
        ca_file: None,
    }
}

const FAST: Timings = Timings {
    lease_duration: Duration::from_secs(3),
    renew_deadline: Duration::from_secs(2),
    retry_period: Duration::from_millis(500),
};

fn record(holder: &str) -> Record {
    Record {
        holder: holder.into(),
        lease_duration_s: 15,
        ..Record::default()
    }
}

#[tokio::test]
async fn the_lease_client_speaks_the_api_servers_protocol() {
    let fake = FakeLeases::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "token-one\n").unwrap();
    fake.allow("a", "token-one");
    let api = HttpLeaseApi::new(&ha_config(&fake, "a", &token_file, FAST)).unwrap();

    assert_eq!(api.get().await, Ok(None), "absent");
    let created = api.create(&record("a")).await.unwrap();
    assert_eq!(
        api.create(&record("a")).await,
        Err(ApiError::Conflict),
        "AlreadyExists"
    );
    let read = api.get().await.unwrap().unwrap();
    assert_eq!(read.resource_version(), created.resource_version());
    assert_eq!(read.record().holder, "a");

    let renewed = api
        .replace(
            &read,
            &Record {
                operation: Some("op-1".into()),
                ..record("a")
            },
        )
        .await
        .unwrap();
    assert_ne!(
        renewed.resource_version(),
        read.resource_version(),
        "bumped"
    );
    assert_eq!(
        fake.object(NS, LEASE).unwrap()["metadata"]["annotations"][OPERATION_ANNOTATION],
        "op-1"
    );
    // A PUT with the stale resourceVersion is refused.
    assert_eq!(
        api.replace(&read, &record("a")).await,
        Err(ApiError::Conflict)
    );

    // A rotated token: the old one is refused (401), the file is read again, once.
    std::fs::write(&token_file, "token-two").unwrap();
    fake.allow("a", "token-two");
    fake.revoke("token-one");
    assert!(api.get().await.unwrap().is_some(), "re-read after 401");
    fake.revoke("token-two");
    let refused = api.get().await.unwrap_err();
    assert!(refused.to_string().contains("HTTP 401"), "{refused}");

    // Errors name what failed, with the Status message.
    fake.allow("a", "token-two");
    fake.fail_next(1);
    let failed = api.get().await.unwrap_err().to_string();
    assert!(
        failed.contains("HTTP 503") && failed.contains("etcdserver"),
        "{failed}"
    );
}

/// An in-process candidate over HTTP.
struct Candidate {
    ha: Arc<Ha>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(fake: &FakeLeases, dir: &Path, name: &str) -> Candidate {
    let token_file = dir.join(format!("token-{name}"));
    std::fs::write(&token_file, format!("t-{name}")).unwrap();
    fake.allow(name, &format!("t-{name}"));
    let api = HttpLeaseApi::new(&ha_config(fake, name, &token_file, FAST)).unwrap();
    let ha = Arc::new(Ha::new(name.into(), FAST));
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        Elector::new(api, ha.clone(), Arc::new(Telemetry::default())).run(stop.clone()),
    );
    Candidate { ha, stop, task }
}

/// Watches `candidates` for `period`, failing if two could write at once.
async fn watch_one_writer(candidates: &[&Candidate], period: Duration) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        let now = tokio::time::Instant::now();
        let writers = candidates
            .iter()
            .filter(|c| c.ha.write_window(now).is_some())
            .count();
        assert!(writers <= 1, "two instances may write at once");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_of_the_lease_api_never_make_two_writers() {
    let fake = FakeLeases::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        candidate(&fake, dir.path(), "a"),
        candidate(&fake, dir.path(), "b"),
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.ha.is_leader() || b.ha.is_leader()
        })
        .await
    );
    let (leader, standby) = if a.ha.is_leader() { (&a, &b) } else { (&b, &a) };
    watch_one_writer(&[&a, &b], Duration::from_secs(2)).await;
    assert_eq!(standby.ha.role(), Role::Standby);
    assert_eq!(
        standby.ha.status().holder.as_deref(),
        Some(leader.ha.identity())
    );

    // Latency, 5xx answers and writes whose answer is lost: still one writer.
    fake.set_latency(Duration::from_millis(300));
    fake.fail_next(2);
    fake.lose_next_answers(2);
    watch_one_writer(&[&a, &b], Duration::from_secs(6)).await;
    fake.set_latency(Duration::ZERO);
    watch_one_writer(&[&a, &b], Duration::from_secs(2)).await;
    assert!(a.ha.is_leader() ^ b.ha.is_leader(), "a leader again");

    // The leader cut off: it stops writing within renew_deadline, the other takes over.
    let leader_name = if a.ha.is_leader() { "a" } else { "b" };
    let (leader, standby) = if a.ha.is_leader() { (&a, &b) } else { (&b, &a) };
    fake.partition(leader_name, true);
    let cut = tokio::time::Instant::now();
    // No renewal can succeed after the cut, so while it still leads, its window already
    // ends by the cut + renew_deadline (checked at that instant, not by how fast this
    // test notices); then it steps down.
    assert!(
        eventually(Duration::from_secs(5), || async {
            assert!(
                leader.ha.write_window(cut + FAST.renew_deadline).is_none(),
                "the window reaches past the cut + renew_deadline"
            );
            leader
                .ha
                .write_window(tokio::time::Instant::now())
                .is_none()
        })
        .await
    );
    // The fence closes first; the role follows once the hanging renewal gives up.
    assert!(
        eventually(Duration::from_secs(5), || async { !leader.ha.is_leader() }).await,
        "stepped down"
    );
    assert!(eventually(Duration::from_secs(10), || async { standby.ha.is_leader() }).await);
    watch_one_writer(&[&a, &b], Duration::from_secs(1)).await;
    fake.partition(leader_name, false);
    a.stop.cancel();
    b.stop.cancel();
    let _ = a.task.await;
    let _ = b.task.await;
}

/// One bouncer process of the chaos test.
struct Instance {
    name: String,
    config: PathBuf,
    log: PathBuf,
    admin: u16,
    recorder: Recorder,
    child: Option<Child>,
}

impl Instance {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = common::bin::command(&["-c", self.config.to_str().unwrap(), "run"])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the bouncer starts");
        self.child = Some(child);
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        match reqwest::get(format!("http://127.0.0.1:{}{path}", self.admin)).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    async fn role(&self) -> String {
        let (_, body) = self.get("/status").await;
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["ha"]["role"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Chaos {
    world: World,
    fake: FakeLeases,
    instances: Vec<Instance>,
    next_ip: u8,
    expected: Vec<String>,
}

impl Chaos {
    fn holder(&self) -> String {
        self.fake.holder(NS, LEASE)
    }

    fn leader(&mut self) -> &mut Instance {
        let holder = self.holder();
        self.instances
            .iter_mut()
            .find(|i| i.name == holder)
            .expect("a holder among the instances")
    }

    fn dump(&self) -> String {
        self.instances
            .iter()
            .map(|i| format!("---- {} ----\n{}", i.name, i.logs()))
            .collect()
    }

    /// Adds a ban and returns how long it took to reach the list.
    async fn ban_and_time(&mut self, within: Duration) -> Duration {
        self.next_ip += 1;
        let ip = format!("192.0.2.{}", self.next_ip);
        let started = Instant::now();
        self.world
            .lapi
            .add_decisions(&[NewDecision::ban_ip(&ip)])
            .await;
        self.expected.push(ip.clone());
        let reached = eventually(within, || {
            std::future::ready(self.world.listed().contains(&ip))
        })
        .await;
        assert!(reached, "{ip} never reached the list\n{}", self.dump());
        started.elapsed()
    }

    async fn wait_for_leader(&self, other_than: &str) -> String {
        let found = eventually(Duration::from_secs(40), || {
            let h = self.holder();
            std::future::ready(!h.is_empty() && h != other_than)
        })
        .await;
        assert!(found, "no new leader\n{}", self.dump());
        self.holder()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_writer_through_kill_stop_and_partition() {
    let world = World::start("t-ha-bouncer-a").await;
    let fake = FakeLeases::start().await;
    let dir = tempfile::tempdir().unwrap();
    let emulator_base = world.cf.base_url();
    let emulator_root = format!("http://{}", world.cf.addr());
    let mut instances = Vec::new();
    for (i, name) in ["bouncer-a", "bouncer-b", "bouncer-c"].iter().enumerate() {
        // Each instance has its own LAPI key (its own row and stream position).
        let key = if i == 0 {
            world.key.clone()
        } else {
            world.lapi.add_bouncer(&format!("t-ha-{name}"))
        };
        let recorder = Recorder::start(&emulator_root).await;
        let token_file = dir.path().join(format!("{name}.token"));
        std::fs::write(&token_file, format!("sa-{name}")).unwrap();
        fake.allow(name, &format!("sa-{name}"));
        let admin = free_port();
        let text = world
            .config_text()
            .replace(&world.key, &key)
            .replace(&emulator_root, &format!("http://{}", recorder.addr))
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{admin}\""))
            + &format!(
                "\n[ha]\nlease = \"{NS}/{LEASE}\"\nidentity = \"{name}\"\napi_server = \"{}\"\ntoken_file = \"{}\"\n",
                fake.url(),
                token_file.display()
            );
        assert!(
            !text.contains(&emulator_base),
            "every Cloudflare request goes through the recorder"
        );
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        instances.push(Instance {
            name: (*name).into(),
            config,
            log: dir.path().join(format!("{name}.log")),
            admin,
            recorder,
            child: None,
        });
    }
    let mut chaos = Chaos {
        world,
        fake,
        instances,
        next_ip: 0,
        expected: Vec::new(),
    };
    for instance in &mut chaos.instances {
        instance.spawn();
    }
    let first = chaos.wait_for_leader("").await;
    chaos.ban_and_time(Duration::from_secs(30)).await;

    // What an operator sees: the leader gauge, the holder in /status, standbys ready.
    for instance in &chaos.instances {
        let reached = eventually(Duration::from_secs(10), || async {
            let (_, metrics) = instance.get("/metrics").await;
            let (ready, _) = instance.get("/readyz").await;
            let gauge = if instance.name == first {
                "cf_iplist_bouncer_leader 1"
            } else {
                "cf_iplist_bouncer_leader 0"
            };
            metrics.lines().any(|l| l == gauge) && ready == 200
        })
        .await;
        let (_, status) = instance.get("/status").await;
        assert!(reached, "{}: {status}\n{}", instance.name, chaos.dump());
        assert!(
            status.contains(&format!("\"holder\":\"{first}\"")),
            "{status}"
        );
    }
    assert!(chaos.leader().logs().contains("acquired the lease"));

    // 1. SIGKILL while a bulk operation is pending: the successor waits it out. First
    // the previous operation's record must be gone from the Lease.
    let annotation = |chaos: &Chaos| {
        chaos.fake.object(NS, LEASE).and_then(|o| {
            o["metadata"]["annotations"][OPERATION_ANNOTATION]
                .as_str()
                .map(str::to_owned)
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            annotation(&chaos).is_none()
        ))
        .await,
        "a completed operation's record is cleared\n{}",
        chaos.dump()
    );
    chaos
        .world
        .cf
        .stick_next_operations(1, Duration::from_secs(20));
    chaos.next_ip += 1;
    let stuck_ip = format!("192.0.2.{}", chaos.next_ip);
    chaos
        .world
        .lapi
        .add_decisions(&[NewDecision::ban_ip(&stuck_ip)])
        .await;
    chaos.expected.push(stuck_ip);
    let recorded = eventually(Duration::from_secs(10), || {
        std::future::ready(annotation(&chaos).is_some() && chaos.world.cf.operation_pending())
    })
    .await;
    assert!(
        recorded,
        "the pending operation is recorded in the Lease\n{}",
        chaos.dump()
    );
    let killed = chaos.holder();
    chaos.leader().kill();
    let after_pending = chaos.ban_and_time(Duration::from_secs(60)).await;
    let second = chaos.wait_for_leader(&killed).await;
    assert!(
        chaos
            .leader()
            .logs()
            .contains("waiting out the bulk operation the previous writer left pending"),
        "{}",
        chaos.dump()
    );
    chaos
        .instances
        .iter_mut()
        .find(|i| i.name == killed)
        .unwrap()
        .spawn();

    // 2. SIGKILL of an idle leader: the takeover that is measured.
    assert!(
        eventually(Duration::from_secs(30), || std::future::ready(
            !chaos.world.cf.operation_pending()
        ))
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    chaos.leader().kill();
    let takeover_kill = chaos.ban_and_time(Duration::from_secs(40)).await;
    let third = chaos.wait_for_leader(&second).await;
    chaos
        .instances
        .iter_mut()
        .find(|i| i.name == second)
        .unwrap()
        .spawn();

    // 3. SIGSTOP past the deadline, then SIGCONT: the old leader must not write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    chaos.leader().signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    let takeover_stop = chaos.ban_and_time(Duration::from_secs(40)).await;
    let fourth = chaos.wait_for_leader(&third).await;
    let past_deadline = Duration::from_secs(20).saturating_sub(stopped_at.elapsed());
    tokio::time::sleep(past_deadline).await;
    chaos
        .instances
        .iter()
        .find(|i| i.name == third)
        .unwrap()
        .signal(libc::SIGCONT);
    let resumed = chaos.instances.iter().find(|i| i.name == third).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            resumed.role().await == "standby"
        })
        .await,
        "the resumed instance stands by\n{}",
        chaos.dump()
    );

    // 4. The leader cut off from the Lease API (it still reaches LAPI and Cloudflare):
    // it stops writing at its deadline, and another instance takes over while it is
    // still cut off. (Healed before anyone took over, it could lead again: its own
    // record is still the Lease's, and a PUT with its resourceVersion is a fair win.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    chaos.fake.partition(&fourth, true);
    let cut_at = Instant::now();
    let ban_while_cut = chaos.ban_and_time(Duration::from_secs(40)).await;
    let cut_off = chaos.instances.iter().find(|i| i.name == fourth).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            cut_off.role().await == "standby"
        })
        .await,
        "{}",
        chaos.dump()
    );
    assert!(cut_off
        .logs()
        .contains("could not renew the lease within renew_deadline"));
    let fifth = chaos.wait_for_leader(&fourth).await;
    let takeover_partition = cut_at.elapsed();
    chaos.fake.partition(&fourth, false);
    let healed = chaos.instances.iter().find(|i| i.name == fourth).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let (_, status) = healed.get("/status").await;
            status.contains(&format!("\"holder\":\"{fifth}\""))
        })
        .await,
        "the healed instance follows the new leader\n{}",
        chaos.dump()
    );
    assert_eq!(healed.role().await, "standby");

    // Converged: every ban on the list, nothing else, no write while one was pending.
    chaos.ban_and_time(Duration::from_secs(20)).await;
    let mut expected = chaos.expected.clone();
    expected.sort();
    let wanted: Vec<&str> = expected.iter().map(String::as_str).collect();
    chaos.world.expect_list(&wanted).await;
    chaos.world.assert_well_behaved();

    // Every write: by the Lease's holder at that moment, and inside the writer's window
    // (its last accepted renewal + renew_deadline, an upper bound of its real fence).
    let accepted = chaos.fake.accepted();
    let renew_deadline = Duration::from_secs(10);
    let mut writes = 0;
    for instance in &chaos.instances {
        for write in instance
            .recorder
            .exchanges()
            .iter()
            .filter(|e| e.is_item_write())
        {
            writes += 1;
            let before: Vec<_> = accepted.iter().filter(|a| a.at <= write.at).collect();
            let holder = before.last().map(|a| a.holder.as_str()).unwrap_or_default();
            assert_eq!(
                holder, instance.name,
                "{} wrote while {holder} held the Lease",
                instance.name
            );
            let renewed = before
                .iter()
                .rev()
                .find(|a| a.client == instance.name)
                .expect("a renewal before the write");
            assert!(
                write.at < renewed.at + renew_deadline,
                "{} wrote {:?} after its last renewal, past renew_deadline",
                instance.name,
                write.at - renewed.at
            );
        }
    }
    assert!(writes >= 6, "the writes were recorded: {writes}");
    eprintln!(
        "a new ban reached the list {:.1}s after the leader's SIGKILL, {:.1}s after a SIGKILL with an \
         operation pending, {:.1}s after a SIGSTOP, {:.1}s after a partition began (written by the \
         cut-off leader inside its window); a new leader {:.1}s after the partition began; leaders \
         {first} {second} {third} {fourth} {fifth}; {} Lease API requests",
        takeover_kill.as_secs_f64(),
        after_pending.as_secs_f64(),
        takeover_stop.as_secs_f64(),
        ban_while_cut.as_secs_f64(),
        takeover_partition.as_secs_f64(),
        chaos.fake.requests()
    );
    if std::env::var_os("HA_TEST_LOGS").is_some() {
        eprintln!("{}", chaos.dump());
    }
    // The target, lease_duration + 5 s, is reported above, not asserted: it is a timing.
    for instance in &mut chaos.instances {
        if instance.child.is_some() {
            instance.kill();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_released_only_after_the_writer_stopped() {
    let mut world = World::start("t-ha-release").await;
    world.sync_extra = "reconcile_interval = \"1h\"\nshutdown_grace = \"10s\"\n".into();
    let fake = FakeLeases::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "sa-only").unwrap();
    fake.allow("only", "sa-only");
    let text = world.config_text()
        + &format!(
            "\n[ha]\nlease = \"{NS}/{LEASE}\"\nidentity = \"only\"\napi_server = \"{}\"\ntoken_file = \"{}\"\n\
             lease_duration = \"3s\"\nrenew_deadline = \"2s\"\nretry_period = \"500ms\"\n",
            fake.url(),
            token_file.display()
        );
    let config = cfbouncer::config::Config::parse(&text, &|_| None).expect("valid");
    let engine = cfbouncer::engine::Engine::new(config).expect("engine");
    let token = CancellationToken::new();
    let run = tokio::spawn(engine.run(token.clone()));
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.1")])
        .await;
    world.expect_list(&["192.0.2.1"]).await;
    assert_eq!(fake.holder(NS, LEASE), "only");

    // An operation pending at shutdown: the writer may finish it within the grace, and
    // only then is the Lease released.
    world.cf.stick_next_operations(1, Duration::from_secs(3));
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.2")])
        .await;
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.operation_pending()
        ))
        .await
    );
    token.cancel();
    let mut released_while_pending = None;
    let released = eventually(Duration::from_secs(15), || {
        let released = fake.holder(NS, LEASE).is_empty();
        if released && released_while_pending.is_none() {
            released_while_pending = Some(world.cf.operation_pending());
        }
        std::future::ready(released)
    })
    .await;
    assert!(released, "the Lease is released on shutdown");
    assert_eq!(
        released_while_pending,
        Some(false),
        "released only once the operation ended"
    );
    run.await.expect("no panic").expect("clean stop");
    world.expect_list(&["192.0.2.1", "192.0.2.2"]).await;
    let object = fake.object(NS, LEASE).unwrap();
    assert_eq!(object["spec"]["leaseDurationSeconds"], 1);
    assert!(object["metadata"]["annotations"]
        .get(OPERATION_ANNOTATION)
        .is_none());
    world.assert_well_behaved();
}

#[tokio::test]
async fn a_write_outside_the_leaders_window_is_never_sent() {
    let world = World::start("t-ha-fence").await;
    let config = world.config();
    let telemetry = Arc::new(Telemetry::default());
    let mut client =
        cfbouncer::cloudflare::CloudflareClient::new(&config.cloudflare, telemetry).unwrap();
    // A standby (the election has not made it leader): writes are refused unsent,
    // reads go on.
    client.fence_with(Arc::new(Ha::new("standby".into(), FAST)));
    let item = cfbouncer::item::Item::from_decision("192.0.2.1", 64).unwrap();
    let refused = client
        .add_items(&world.list_id, &[(item, "crowdsec test".into())])
        .await
        .unwrap_err();
    assert!(
        matches!(refused, cfbouncer::cloudflare::Error::Fenced { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("not the elected writer"),
        "{refused}"
    );
    assert!(client.lists().await.is_ok(), "reads are not fenced");
    let counters = world.cf.counters();
    assert_eq!(
        counters.writes + counters.rejected_writes,
        0,
        "nothing was sent: {counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_the_lease() {
    let world = World::start("t-ha-check").await;
    let fake = FakeLeases::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "sa-check").unwrap();
    fake.allow("checker", "sa-check");
    let text = world.config_text()
        + &format!(
            "\n[ha]\nlease = \"{NS}/{LEASE}\"\nidentity = \"checker\"\napi_server = \"{}\"\ntoken_file = \"{}\"\n",
            fake.url(),
            token_file.display()
        );
    let config = dir.path().join("bouncer.toml");
    std::fs::write(&config, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let check = || async { common::bin::run(&["-c", config.to_str().unwrap(), "check"]).await };
    let out = check().await;
    let said = common::bin::text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("the Lease crowdsec/cf-bouncer does not exist yet"),
        "{said}"
    );
    assert!(fake.object(NS, LEASE).is_none(), "check creates nothing");

    // Held by someone: check names the holder.
    fake.allow("other", "sa-other");
    let other_token = dir.path().join("other");
    std::fs::write(&other_token, "sa-other").unwrap();
    let api = HttpLeaseApi::new(&ha_config(&fake, "other", &other_token, FAST)).unwrap();
    api.create(&record("other")).await.unwrap();
    let out = check().await;
    let said = common::bin::text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("is held by other (this instance: checker)"),
        "{said}"
    );

    // A refused token fails the check, naming the call.
    fake.revoke("sa-check");
    let out = check().await;
    let said = common::bin::text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("FAIL lease") && said.contains("HTTP 401"),
        "{said}"
    );
}
