//! Hostile and broken peers: redirects, absurd `Retry-After`, huge answers, endless
//! pagination, a predecessor killed mid-operation, a LAPI that stalls mid-answer, TLS
//! set up wrong, and decisions on addresses no client ever has. Each peer is a fake
//! written here (or the emulator, or a real LAPI); each test asserts what the bouncer
//! does about it.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::bin::{output, text};
use common::hostile::{
    fake_lapi, free_port, get, one_ban, start_tls_lapi, Answer, Body, Daemon, FakeServer, Pki, Rig,
    SServer, EMPTY_STREAM,
};
use common::lapi::NewDecision;
use common::world::{eventually, World};

/// Items already on the list, which an empty full pull, if believed, would remove.
const ON_THE_LIST: [&str; 2] = ["192.0.2.1", "192.0.2.2"];

/// Runs `check` with the configuration in `config`.
async fn check(config: &std::path::Path) -> (Option<i32>, String) {
    let out = output(common::bin::command(&[
        "-c",
        config.to_str().expect("utf-8 path"),
        "check",
    ]))
    .await;
    (out.status.code(), text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapi_redirect_is_never_followed_and_the_list_is_untouched() {
    // Where the redirect points: an empty answer that would empty the list.
    let capture = FakeServer::start(|_| Answer::json(200, EMPTY_STREAM)).await;
    let location = format!("{}v1/decisions/stream", capture.url());
    let fake = FakeServer::start({
        let location = location.clone();
        move |_| Answer::redirect(302, &location)
    })
    .await;
    let mut rig = Rig::start(&fake.url()).await;
    for ip in ON_THE_LIST {
        rig.cf
            .insert_item(&rig.list_id, ip, Some("crowdsec cscli: manual ban"));
    }
    let port = free_port();
    rig.admin_listen = format!("127.0.0.1:{port}");
    let config = rig.config_file();
    let daemon = Daemon::start(&config);

    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let last = Mutex::new((0, String::new()));
    let named = eventually(Duration::from_secs(20), || async {
        let got = get(&readyz).await;
        let named = got.1.contains(&location) && got.1.contains("crowdsec.api_url");
        *last.lock().expect("not poisoned") = got;
        named && fake.seen().len() >= 2
    })
    .await;
    let (status, reason) = last.into_inner().expect("not poisoned");
    assert!(
        named,
        "/readyz names the redirect and crowdsec.api_url: {status} {reason}; \
         capture saw {} requests; list {:?}",
        capture.seen().len(),
        rig.listed()
    );
    assert_eq!(status, 503, "{reason}");
    assert!(
        capture.seen().is_empty(),
        "the redirect was followed: {:?}",
        capture.seen()
    );
    assert_eq!(rig.listed(), ON_THE_LIST, "the list is untouched");
    assert_eq!(rig.cf.counters().writes, 0, "nothing was written");
    let log = daemon.log();
    assert!(
        log.contains(&format!("redirecting to {location}")) && log.contains("crowdsec.api_url"),
        "{log}"
    );
    drop(daemon);

    let (code, report) = check(&config).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("FAIL lapi"), "{report}");
    assert!(report.contains(&location), "{report}");
    assert!(report.contains("crowdsec.api_url"), "{report}");
    assert!(capture.seen().is_empty(), "{:?}", capture.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloudflare_redirect_is_never_followed_and_the_token_stays_home() {
    let capture = FakeServer::start(|_| {
        Answer::json(
            200,
            r#"{"success":true,"errors":[],"messages":[],"result":[]}"#,
        )
    })
    .await;
    let capture_base = capture.base();
    let fake_cf = FakeServer::start(move |seen| {
        Answer::redirect(307, &format!("{capture_base}{}", seen.target))
    })
    .await;
    let lapi = fake_lapi(|| Answer::json(200, EMPTY_STREAM)).await;
    let mut rig = Rig::start(&lapi.url()).await;
    rig.cloudflare_url = Some(format!("{}/client/v4", fake_cf.base()));
    let config = rig.config_file();

    let (code, report) = check(&config).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("FAIL cloudflare"), "{report}");
    let location = format!(
        "{}/client/v4/accounts/{}/rules/lists",
        capture.base(),
        rig.cf.account_id()
    );
    assert!(
        report.contains(&format!("HTTP 307 redirecting to {location}")),
        "{report}"
    );
    assert!(report.contains("cloudflare.api_url"), "{report}");

    let once = output(common::bin::command(&[
        "-c",
        config.to_str().expect("utf-8 path"),
        "once",
    ]))
    .await;
    assert_eq!(once.status.code(), Some(1), "{}", text(&once));
    assert!(
        text(&once).contains("cloudflare.api_url"),
        "{}",
        text(&once)
    );

    assert!(
        capture.seen().is_empty(),
        "a request (and the token) followed the redirect: {:?}",
        capture.seen()
    );
    let asked = fake_cf.seen();
    assert!(!asked.is_empty());
    assert!(
        asked
            .iter()
            .all(|seen| seen.header("authorization").is_some()),
        "the configured URL got the token, as it should: {asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_thirty_years_is_capped_and_sigterm_still_stops_in_the_grace() {
    let mut world = World::start("t-hostile-retry-after").await;
    let grace = Duration::from_secs(3);
    world.sync_extra = "reconcile_interval = \"1h\"\nshutdown_grace = \"3s\"\n".into();
    let port = free_port();
    world.admin_listen = format!("127.0.0.1:{port}");
    // Long enough that the 429 surely lands on a status poll of this operation.
    world
        .cf
        .set_op_latency(Duration::from_secs(20), Duration::from_secs(20));
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("198.51.100.1")])
        .await;
    let mut daemon = Daemon::start(&world.config_file());
    assert!(
        eventually(Duration::from_secs(15), || std::future::ready(
            world.cf.operation_pending()
        ))
        .await,
        "an operation is pending: {}",
        daemon.log()
    );
    // From now on every request gets 429 with `Retry-After: 1000000000`.
    world
        .cf
        .set_rate_limit(Some(0), Duration::from_secs(1_000_000_000));
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().rate_limited >= 1
        ))
        .await,
        "a status poll was refused"
    );
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let (status, body) = get(&healthz).await;
        assert_eq!(status, 200, "/healthz while waiting out the 429: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let signalled = Instant::now();
    daemon.sigterm();
    let status = daemon.wait_exit(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    let log = daemon.log();
    eprintln!("exit {took:?} after SIGTERM (shutdown_grace {grace:?})");
    let status = status.unwrap_or_else(|| panic!("still running 15 s after SIGTERM: {log}"));
    assert!(status.success(), "{status}: {log}");
    assert!(
        took < grace + Duration::from_secs(2),
        "stopped within shutdown_grace + 2 s of the signal: {took:?}"
    );
    assert!(
        log.contains("asked_s=1000000000 wait_s=300"),
        "the capped wait is logged: {log}"
    );
    assert!(
        log.contains("Retry-After is longer than the bouncer ever waits"),
        "{log}"
    );
}

/// Peak memory the bouncer may take against a hostile LAPI.
const MEMORY_BUDGET_KIB: u64 = 64 * 1024;

/// Runs the bouncer against `lapi` until three pulls were answered, and asserts its peak
/// RSS stayed within the budget.
async fn within_budget_after_three_pulls(lapi: &FakeServer, what: &str) -> (Rig, Daemon) {
    let rig = Rig::start(&lapi.url()).await;
    let daemon = Daemon::start(&rig.config_file());
    let pulls = eventually(Duration::from_secs(40), || {
        std::future::ready(lapi.finished() >= 3)
    })
    .await;
    assert!(pulls, "three pulls were answered: {}", daemon.log());
    let peak = daemon.peak_rss_kib();
    eprintln!("peak RSS after 3 pulls of {what}: {peak} KiB");
    assert!(
        peak < MEMORY_BUDGET_KIB,
        "peak RSS {peak} KiB against {what}"
    );
    (rig, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_150_mb_error_answer_costs_no_memory() {
    let lapi = fake_lapi(|| {
        Answer::with_body(
            500,
            Body::Filled {
                head: b"internal error: ".to_vec(),
                fill: b'e',
                len: 150 << 20,
                tail: Vec::new(),
            },
        )
        .header("Content-Type", "text/plain")
    })
    .await;
    let (_rig, daemon) = within_budget_after_three_pulls(&lapi, "a 150 MB error answer").await;
    let log = daemon.log();
    // The start of the answer is kept for the message, and no more.
    assert!(
        log.contains("LAPI answered HTTP 500: internal error: eeee"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_scenario_costs_no_memory_and_its_ban_is_applied_with_a_cut_label() {
    let lapi = fake_lapi(|| {
        Answer::with_body(
            200,
            Body::Filled {
                head: br#"{"new":[{"duration":"3h59m","id":1,"origin":"cscli","scope":"Ip","type":"ban","value":"203.0.113.50","scenario":""#.to_vec(),
                fill: b's',
                len: 50 << 20,
                tail: br#""}],"deleted":null}"#.to_vec(),
            },
        )
    })
    .await;
    let (rig, _daemon) = within_budget_after_three_pulls(&lapi, "a 50 MB scenario").await;
    let listed = eventually(Duration::from_secs(20), || {
        std::future::ready(rig.listed() == ["203.0.113.50"])
    })
    .await;
    assert!(listed, "the ban reached the list: {:?}", rig.listed());
    let items = rig.cf.items(&rig.list_id);
    let comment = items[0].comment.clone().unwrap_or_default();
    assert!(comment.starts_with("crowdsec cscli: sss"), "{comment}");
    let chars = comment.chars().count();
    assert!((100..=500).contains(&chars), "a cut label: {chars} chars");
}

/// A fake Cloudflare account with one list of three items whose every page of items
/// holds one item and the cursor `next(page)`; it refuses everything else with a 500.
async fn paging_cloudflare(
    account: &str,
    next: impl Fn(usize) -> String + Send + Sync + 'static,
) -> FakeServer {
    let lists = format!("/client/v4/accounts/{account}/rules/lists");
    let items = format!("{lists}/{LIST_ID}/items");
    let pages = AtomicUsize::new(0);
    FakeServer::start(move |seen| {
        if seen.method == "GET" && seen.path() == lists {
            Answer::json(
                200,
                &format!(
                    r#"{{"success":true,"errors":[],"messages":[],"result":[{{"id":"{LIST_ID}","name":"crowdsec_ban","kind":"ip","num_items":3}}]}}"#
                ),
            )
        } else if seen.method == "GET" && seen.path() == items {
            let page = pages.fetch_add(1, Ordering::SeqCst);
            Answer::json(
                200,
                &format!(
                    r#"{{"success":true,"errors":[],"messages":[],"result":[{{"id":"item{page}","ip":"192.0.2.{}","comment":"crowdsec cscli: x"}}],"result_info":{{"cursors":{{"after":"{}"}}}}}}"#,
                    page % 250 + 1,
                    next(page)
                ),
            )
        } else {
            Answer::json(
                500,
                r#"{"success":false,"errors":[{"code":10001,"message":"not here"}],"messages":[],"result":null}"#,
            )
        }
    })
    .await
}

const LIST_ID: &str = "2c0fc9fa937b11eaa1b71c4d701ab86e";

/// Runs `once` against a paging fake; returns its output, how long it took, and what the
/// fake was asked.
async fn once_against(cf: &FakeServer, rig: &mut Rig) -> (String, Duration, Vec<String>) {
    rig.cloudflare_url = Some(format!("{}/client/v4", cf.base()));
    let config = rig.config_file();
    let started = Instant::now();
    let mut once = Daemon::spawn(&["-c", config.to_str().expect("utf-8 path"), "once"]);
    let status = once.wait_exit(Duration::from_secs(20)).await;
    let took = started.elapsed();
    let asked: Vec<String> = cf
        .seen()
        .iter()
        .map(|seen| format!("{} {}", seen.method, seen.path()))
        .collect();
    let reads = asked.iter().filter(|a| a.ends_with("/items")).count();
    let status = status.unwrap_or_else(|| {
        panic!(
            "`once` still reads after 20 s ({reads} page reads): {}",
            once.log()
        )
    });
    assert_eq!(status.code(), Some(1), "{}", once.log());
    let writes: Vec<&String> = asked.iter().filter(|a| !a.starts_with("GET ")).collect();
    assert!(writes.is_empty(), "nothing is written: {writes:?}");
    (once.log(), took, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_read_whose_cursor_repeats_fails_at_once_and_writes_nothing() {
    let lapi = fake_lapi(|| Answer::json(200, &one_ban("203.0.113.9"))).await;
    let mut rig = Rig::start(&lapi.url()).await;
    let cf = paging_cloudflare(&rig.cf.account_id(), |_| "the-same-cursor".into()).await;
    let (log, took, asked) = once_against(&cf, &mut rig).await;
    assert!(
        log.contains("the pagination cursor repeated after 2 pages"),
        "{log}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let reads = asked.iter().filter(|a| a.ends_with("/items")).count();
    assert_eq!(reads, 2, "{asked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_read_whose_cursors_never_end_fails_and_writes_nothing() {
    let lapi = fake_lapi(|| Answer::json(200, &one_ban("203.0.113.9"))).await;
    let mut rig = Rig::start(&lapi.url()).await;
    let cf = paging_cloudflare(&rig.cf.account_id(), |page| format!("cursor-{page}")).await;
    let (log, took, asked) = once_against(&cf, &mut rig).await;
    // Three items need one page: twice that and ten more is where the read gives up.
    assert!(
        log.contains("12 pages and more to come, far more than the list's size allows"),
        "{log}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let reads = asked.iter().filter(|a| a.ends_with("/items")).count();
    assert_eq!(reads, 12, "{asked:?}");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_operation_then_restarted_reads_the_list_again_instead_of_writing_twice() {
    let world = World::start("t-hostile-sigkill").await;
    // The killed process's operation outlives its successor's start by far.
    world
        .cf
        .set_op_latency(Duration::from_secs(4), Duration::from_secs(4));
    let ips: Vec<String> = (1..=5).map(|i| format!("10.28.0.{i}")).collect();
    let decisions: Vec<NewDecision> = ips.iter().map(|ip| NewDecision::ban_ip(ip)).collect();
    world.lapi.add_decisions(&decisions).await;
    let config = world.config_file();
    let mut first = Daemon::start(&config);
    assert!(
        eventually(Duration::from_secs(15), || std::future::ready(
            world.cf.operation_pending()
        ))
        .await,
        "{}",
        first.log()
    );
    first.sigkill();
    let mut second = Daemon::start(&config);
    // The successor's first write meets the operation it cannot know of: 429.
    assert!(
        eventually(Duration::from_secs(15), || std::future::ready(
            world.cf.counters().rejected_writes >= 1
        ))
        .await,
        "the successor's write was refused while the operation was pending: {:?}\n{}",
        world.cf.counters(),
        second.log()
    );
    // It waits that operation out, then reads the list (or, before the fix, writes again).
    let reads = world.cf.counters().list_reads;
    assert!(
        eventually(Duration::from_secs(30), || {
            let counters = world.cf.counters();
            std::future::ready(counters.list_reads > reads || counters.writes >= 2)
        })
        .await,
        "{:?}\n{}",
        world.cf.counters(),
        second.log()
    );
    world.expect_list(&strs(&ips)).await;
    // Give a second write, if one were coming, the time to come.
    world
        .expect_list_stays(&strs(&ips), Duration::from_secs(1))
        .await;
    second.sigterm();
    let status = second.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        second.log()
    );
    let counters = world.cf.counters();
    assert_eq!(
        counters.writes, 1,
        "only the killed process's write was accepted: nothing was written twice: {counters:?}"
    );
    assert_eq!(counters.item_changes, 5, "{counters:?}");
    assert_eq!(counters.writes_while_pending, 1, "{counters:?}");
    assert_eq!(counters.per_page_over_max, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapi_that_stalls_mid_answer_fails_the_pull_after_30s() {
    // Both reads a full pull may take (`once` reads a snapshot) stall part-way.
    let stall = |head: &[u8]| {
        Answer::with_body(
            200,
            Body::Stall {
                head: head.to_vec(),
                hold: Duration::from_secs(150),
            },
        )
    };
    let lapi = FakeServer::start(move |seen| match (seen.method.as_str(), seen.path()) {
        ("GET", "/v1/decisions/stream") => stall(br#"{"new":[{"duration":"3h59m","#),
        ("GET", "/v1/decisions") => stall(br#"[{"duration":"3h59m","#),
        _ => Answer::json(404, r#"{"message":"not found"}"#),
    })
    .await;
    let mut rig = Rig::start(&lapi.url()).await;
    rig.crowdsec_extra = "request_timeout = \"120s\"\n".into();
    let config = rig.config_file();
    let started = Instant::now();
    let mut once = Daemon::spawn(&["-c", config.to_str().expect("utf-8 path"), "once"]);
    let status = once.wait_exit(Duration::from_secs(50)).await;
    let took = started.elapsed();
    eprintln!("the stalled pull failed after {took:?}");
    let log = once.log();
    let status = status.unwrap_or_else(|| panic!("still waiting after 50 s: {log}"));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        took >= Duration::from_secs(29) && took < Duration::from_secs(45),
        "{took:?}: {log}"
    );
    assert!(log.contains("sent nothing for 30s"), "{log}");
    assert!(log.contains("timed out"), "{log}");
    assert!(!log.contains("error decoding response body"), "{log}");
    assert_eq!(lapi.seen().len(), 1, "one pull");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lapi_answer_cut_part_way_fails_the_pull() {
    // A short answer (its Content-Length under 64 KiB) is read whole and parsed where it
    // was read: cut inside a decision, it fails like a long one, and nothing is written.
    let cut = br#"[{"duration":"3h59m","id":1,"origin":"cscli","scope":"Ip","type":"ban","value":"198.51.100."#;
    let lapi = FakeServer::start(move |seen| match (seen.method.as_str(), seen.path()) {
        ("GET", "/v1/decisions") => Answer::with_body(200, Body::Bytes(cut.to_vec())),
        _ => Answer::json(404, r#"{"message":"not found"}"#),
    })
    .await;
    let rig = Rig::start(&lapi.url()).await;
    let config = rig.config_file();
    let mut once = Daemon::spawn(&["-c", config.to_str().expect("utf-8 path"), "once"]);
    let status = once.wait_exit(Duration::from_secs(30)).await;
    let log = once.log();
    let status = status.unwrap_or_else(|| panic!("still running after 30 s: {log}"));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("ends part-way"), "{log}");
    assert_eq!(lapi.seen().len(), 1, "one pull");
    assert_eq!(rig.cf.counters().writes, 0, "nothing written");
}

/// The value of a metric line `name{labels} value` in an exposition.
fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_on_addresses_no_client_has_never_reach_the_list_and_are_counted() {
    let world = World::start("t-hostile-not-a-client").await;
    let never = [
        "127.0.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "::1",
    ];
    let mut decisions: Vec<NewDecision> = never.iter().map(|ip| NewDecision::ban_ip(ip)).collect();
    decisions.push(NewDecision::ban_ip("198.51.100.7"));
    world.lapi.add_decisions(&decisions).await;
    let bouncer = world.start_bouncer().await;
    world.expect_list(&["198.51.100.7"]).await;
    let metrics = format!("http://{}/metrics", bouncer.admin.expect("admin listener"));
    let series = r#"cf_iplist_bouncer_decisions_refused_total{reason="not_a_client"}"#;
    let last = Mutex::new(String::new());
    let counted = eventually(Duration::from_secs(10), || async {
        let (_, body) = get(&metrics).await;
        let counted = metric(&body, series) == Some(never.len() as f64);
        *last.lock().expect("not poisoned") = body;
        counted
    })
    .await;
    let body = last.into_inner().expect("not poisoned");
    assert!(
        counted,
        "{series} counts {} decisions:\n{body}",
        never.len()
    );
    world
        .expect_list_stays(&["198.51.100.7"], Duration::from_secs(1))
        .await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

/// The `lapi` line of a `check` report.
fn lapi_line(report: &str) -> &str {
    report
        .lines()
        .find(|line| line.contains(" lapi "))
        .unwrap_or_else(|| panic!("no lapi line: {report}"))
}

fn toml_path(path: &std::path::Path) -> String {
    format!("{:?}", path.to_str().expect("utf-8 path"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_a_server_signed_by_an_unknown_ca_names_crowdsec_ca_cert_path() {
    let pki = Pki::new();
    let server = SServer::start(&pki, false).await;
    let rig = Rig::start(&server.url()).await;
    let (code, report) = check(&rig.config_file()).await;
    assert_eq!(code, Some(1), "{report}");
    let line = lapi_line(&report);
    assert!(line.starts_with("FAIL lapi"), "{report}");
    assert!(line.contains("unknown CA"), "{line}");
    assert!(line.contains("crowdsec.ca_cert_path"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_a_server_requiring_a_client_certificate_names_crowdsec_cert_path() {
    let pki = Pki::new();
    let server = SServer::start(&pki, true).await;
    let mut rig = Rig::start(&server.url()).await;
    rig.crowdsec_extra = format!("ca_cert_path = {}\n", toml_path(&pki.path("ca.pem")));
    let (code, report) = check(&rig.config_file()).await;
    assert_eq!(code, Some(1), "{report}");
    let line = lapi_line(&report);
    assert!(line.starts_with("FAIL lapi"), "{report}");
    assert!(line.contains("crowdsec.cert_path"), "{line}");
    assert!(!line.contains("unknown CA"), "the CA is known: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_a_ca_file_without_a_certificate_is_named() {
    let pki = Pki::new();
    let server = SServer::start(&pki, false).await;
    let mut rig = Rig::start(&server.url()).await;
    let not_a_ca = rig.dir().join("not-a-ca.pem");
    std::fs::write(&not_a_ca, "this file holds no certificate\n").expect("write");
    rig.crowdsec_extra = format!("ca_cert_path = {}\n", toml_path(&not_a_ca));
    let (code, report) = check(&rig.config_file()).await;
    assert_eq!(code, Some(1), "{report}");
    let line = lapi_line(&report);
    assert!(line.contains("crowdsec.ca_cert_path"), "{line}");
    assert!(line.contains("holds no PEM certificate"), "{line}");
    // The daemon refuses to start on it, saying the same.
    let config = rig.config_file();
    let mut daemon = Daemon::start(&config);
    let status = daemon.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "{status:?}: {}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("holds no PEM certificate"),
        "{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_check_under_certificate_auth_reports_the_certificate_not_a_key() {
    let pki = Pki::new();
    let url = start_tls_lapi(&pki);
    let mut rig = Rig::start(&url).await;
    rig.lapi_auth = format!(
        "cert_path = {}\nkey_path = {}\n",
        toml_path(&pki.path("client.pem")),
        toml_path(&pki.path("client.key"))
    );
    rig.crowdsec_extra = format!("ca_cert_path = {}\n", toml_path(&pki.path("ca.pem")));
    let (code, report) = check(&rig.config_file()).await;
    let line = lapi_line(&report);
    assert!(line.starts_with("ok   lapi"), "{report}");
    assert!(!line.contains("accepts the bouncer key"), "{line}");
    assert!(
        line.contains("accepts the bouncer's client certificate"),
        "{line}"
    );
    assert_eq!(code, Some(0), "{report}");
}
