//! Cloudflare faults, injected by the emulator: rate limits, 5xx, timeouts, resets,
//! malformed answers, lost answers, failed, poisoned and stuck operations, refused tokens,
//! and a bouncer killed mid-operation. Each test ends with the list equal to LAPI's bans
//! and no write sent while an operation was pending.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use cf_lists_emulator::Permissions;
use common::lapi::NewDecision;
use common::world::{eventually, World};

fn bans(prefix: &str, n: u32) -> (Vec<NewDecision>, Vec<String>) {
    let ips: Vec<String> = (1..=n).map(|i| format!("{prefix}.{i}")).collect();
    (ips.iter().map(|ip| NewDecision::ban_ip(ip)).collect(), ips)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_rate_limit_is_waited_out() {
    let mut world = World::start("t-cf-ratelimit").await;
    world.cloudflare_extra = "batch_size = 2\n".into();
    world.sync_extra.push_str("max_batch = 2\n");
    world.cf.set_rate_limit(Some(6), Duration::from_secs(3));
    // Without the rate-limit headers (Cloudflare before 2025-09) the bouncer only learns
    // of the limit from a 429.
    world.cf.set_rate_limit_headers(false);
    let (decisions, ips) = bans("10.20.0", 9);
    world.lapi.add_decisions(&decisions).await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&strs(&ips)).await;
    bouncer.stop().await;
    let counters = world.assert_well_behaved();
    assert!(counters.rate_limited > 0, "the limit was hit: {counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_headers_keep_the_bouncer_out_of_429s() {
    // The same tight limit as above, but announced by `Ratelimit` headers: the bouncer
    // spreads its requests over what is left of each window and is never refused.
    let mut world = World::start("t-cf-ratelimit-headers").await;
    world.cloudflare_extra = "batch_size = 2\n".into();
    world.sync_extra.push_str("max_batch = 2\n");
    world.cf.set_rate_limit(Some(6), Duration::from_secs(3));
    let (decisions, ips) = bans("10.20.1", 9);
    world.lapi.add_decisions(&decisions).await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&strs(&ips)).await;
    bouncer.stop().await;
    let counters = world.assert_well_behaved();
    assert!(counters.writes >= 5, "{counters:?}");
    assert!(
        counters.requests > 6,
        "more than one window's worth: {counters:?}"
    );
    assert_eq!(counters.rate_limited, 0, "never refused: {counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_resets_and_malformed_answers_are_retried() {
    let world = World::start("t-cf-errors").await;
    let bouncer = world.spawn_bouncer();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().list_reads >= 1
        ))
        .await
    );
    let mut want = Vec::new();
    for (i, fault) in ["502", "reset", "malformed", "reset-connection"]
        .iter()
        .enumerate()
    {
        match *fault {
            "502" => world.cf.fail_next_requests(2, 502),
            "reset" => world.cf.reset_next_requests(2),
            "malformed" => world.cf.malformed_next_requests(2),
            _ => world.cf.reset_next_connections(2),
        }
        let ip = format!("10.21.0.{}", i + 1);
        world.lapi.add_decisions(&[NewDecision::ban_ip(&ip)]).await;
        want.push(ip);
        world.expect_list(&strs(&want)).await;
    }
    bouncer.stop().await;
    let counters = world.assert_well_behaved();
    assert!(counters.faults_injected >= 6, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_timed_out_or_lost_its_answer_is_waited_out() {
    let mut world = World::start("t-cf-lost").await;
    world.cloudflare_extra = "request_timeout = \"1s\"\n".into();
    let bouncer = world.spawn_bouncer();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().list_reads >= 1
        ))
        .await
    );
    // The write is applied, but its answer never arrives.
    world.cf.lose_next_write_responses(1);
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("10.22.0.1")])
        .await;
    world.expect_list(&["10.22.0.1"]).await;
    // The answer comes too late: the client gave up after 1 s.
    world.cf.slow_next_requests(1, Duration::from_secs(3));
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("10.22.0.2")])
        .await;
    world.expect_list(&["10.22.0.1", "10.22.0.2"]).await;
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--ip", "10.22.0.1"]);
    world.expect_list(&["10.22.0.2"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_operation_is_retried() {
    let world = World::start("t-cf-failed-op").await;
    world.cf.fail_next_operations(2, "internal error");
    let (decisions, ips) = bans("10.23.0", 4);
    world.lapi.add_decisions(&decisions).await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&strs(&ips)).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_cloudflare_refuses_is_set_aside_and_the_rest_goes_through() {
    let mut world = World::start("t-cf-poison").await;
    world.sync_extra = "reconcile_interval = \"3s\"\n".into();
    world.cf.fail_operations_containing("10.24.0.5");
    let (decisions, ips) = bans("10.24.0", 8);
    world.lapi.add_decisions(&decisions).await;
    let bouncer = world.spawn_bouncer();
    let mut others = ips.clone();
    others.retain(|ip| ip != "10.24.0.5");
    world.expect_list(&strs(&others)).await;
    // Cloudflare accepts it again: the next reconcile retries it.
    world.cf.clear_poison();
    world.expect_list(&strs(&ips)).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_operation_blocks_every_other_write_until_it_ends() {
    let world = World::start("t-cf-stuck").await;
    let bouncer = world.spawn_bouncer();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().list_reads >= 1
        ))
        .await
    );
    world.cf.stick_next_operations(1, Duration::from_secs(4));
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("10.25.0.1")])
        .await;
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.operation_pending()
        ))
        .await
    );
    let writes = world.cf.counters().writes;
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("10.25.0.2")])
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(world.cf.operation_pending(), "still stuck");
    assert_eq!(
        world.cf.counters().writes,
        writes,
        "no second write while the first is pending"
    );
    world.expect_list(&["10.25.0.1", "10.25.0.2"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_write_permission_changes_nothing() {
    let world = World::start("t-cf-perm").await;
    world.cf.set_token_permissions(Permissions::Read);
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("10.26.0.1")])
        .await;
    let before = world.cf.counters().requests;
    let bouncer = world.spawn_bouncer();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().requests >= before + 3
        ))
        .await,
        "the lists, the items, and the refused write were requested"
    );
    world.expect_list_stays(&[], Duration::from_secs(2)).await;
    assert_eq!(world.cf.counters().writes, 0, "every write was refused");
    // The operator fixes the token; refused credentials are retried slowly, so restart.
    world.cf.set_token_permissions(Permissions::Edit);
    bouncer.stop().await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&["10.26.0.1"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_operation_then_restarted_converges_without_duplicates() {
    let world = World::start("t-cf-sigkill").await;
    world
        .cf
        .set_op_latency(Duration::from_millis(1500), Duration::from_millis(1500));
    let (decisions, ips) = bans("10.27.0", 5);
    world.lapi.add_decisions(&decisions).await;
    let config = world.config_file();
    let bin = env!("CARGO_BIN_EXE_crowdsec-cloudflare-iplist-bouncer");
    let start = || {
        Command::new(bin)
            .args(["-c", config.to_str().expect("utf-8 path"), "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the daemon starts")
    };
    let mut child = start();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.operation_pending()
        ))
        .await
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let mut child = start();
    world.expect_list(&strs(&ips)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("reaped");
    assert!(status.success());
    assert_eq!(world.listed().len(), ips.len(), "no duplicates");
    let counters = world.cf.counters();
    // The new process cannot know of its predecessor's pending operation: its first
    // write may be refused once (429), and is then retried.
    assert!(counters.writes_while_pending <= 1, "{counters:?}");
    assert_eq!(counters.per_page_over_max, 0);
}
