//! LAPI faults: unreachable, 5xx, garbage, truncated, 403, slow, answers lost, restarts.
//! Whatever LAPI does, the list is never touched on a failed pull, and once LAPI is back
//! the list converges with no ban lost and no unban forgotten.

mod common;

use std::time::Duration;

use common::lapi::NewDecision;
use common::proxy::{Fault, FaultProxy};
use common::world::{eventually, World};

async fn behind_proxy(name: &str) -> (World, FaultProxy) {
    let mut world = World::start(name).await;
    let proxy = FaultProxy::start(&world.lapi.url()).await;
    world.lapi_via = Some(proxy.url());
    (world, proxy)
}

fn full_pulls(proxy: &FaultProxy) -> usize {
    let streamed = proxy
        .stream_requests()
        .iter()
        .filter(|q| q.contains("startup=true"))
        .count();
    // Full pulls after the first read a snapshot of the active decisions.
    streamed + proxy.snapshots() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapi_unreachable_at_start_leaves_the_list_untouched_then_converges() {
    let (world, proxy) = behind_proxy("t-lapi-down").await;
    world
        .cf
        .insert_item(&world.list_id, "192.0.2.1", Some("made by hand"));
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("2.2.2.2")])
        .await;
    proxy.set(Fault::Down);
    let bouncer = world.spawn_bouncer();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            proxy.faulted() >= 2
        ))
        .await,
        "the bouncer keeps trying"
    );
    world
        .expect_list_stays(&["192.0.2.1"], Duration::from_secs(2))
        .await;
    assert_eq!(
        world.cf.counters().writes,
        0,
        "no write without a successful full pull"
    );
    proxy.set(Fault::None);
    world.expect_list(&["2.2.2.2"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pulls_mid_run_never_remove_and_lose_nothing() {
    let (world, proxy) = behind_proxy("t-lapi-errors").await;
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("1.1.1.1"),
            NewDecision::ban_ip("2.2.2.2"),
        ])
        .await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&["1.1.1.1", "2.2.2.2"]).await;
    let writes = world.cf.counters().writes;
    let pulls_before = full_pulls(&proxy);
    // While LAPI misbehaves, one ban is lifted and another one made.
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--ip", "1.1.1.1"]);
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("3.3.3.3")])
        .await;
    for fault in [
        Fault::Status(503),
        Fault::Garbage,
        Fault::Truncated,
        Fault::Status(500),
    ] {
        let faulted = proxy.faulted();
        proxy.set(fault.clone());
        assert!(
            eventually(Duration::from_secs(10), || std::future::ready(
                proxy.faulted() > faulted
            ))
            .await,
            "{fault:?} was applied"
        );
        world
            .expect_list_stays(&["1.1.1.1", "2.2.2.2"], Duration::from_millis(500))
            .await;
    }
    assert_eq!(
        world.cf.counters().writes,
        writes,
        "no write derived from a failed pull"
    );
    proxy.set(Fault::None);
    world.expect_list(&["2.2.2.2", "3.3.3.3"]).await;
    assert!(
        full_pulls(&proxy) > pulls_before,
        "recovery starts with a full pull"
    );
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_whose_answer_was_lost_is_recovered_by_a_full_pull() {
    // LAPI moved this key's last_pull, but the bouncer never saw the answer: a naive
    // bouncer would never learn of the ban made in between.
    let (world, proxy) = behind_proxy("t-lapi-lost").await;
    let bouncer = world.spawn_bouncer();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().list_reads >= 1
        ))
        .await
    );
    proxy.set(Fault::ForwardThenDrop);
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("4.4.4.4")])
        .await;
    let faulted = proxy.faulted();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            proxy.faulted() >= faulted + 2
        ))
        .await
    );
    proxy.set(Fault::None);
    world.expect_list(&["4.4.4.4"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lapi_times_out_and_is_retried() {
    let (mut world, proxy) = behind_proxy("t-lapi-slow").await;
    world.crowdsec_extra = "request_timeout = \"1s\"\n".into();
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("5.5.5.5")])
        .await;
    proxy.set(Fault::Slow(Duration::from_secs(3)));
    let bouncer = world.spawn_bouncer();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            proxy.faulted() >= 1
        ))
        .await
    );
    world
        .expect_list_stays(&[], Duration::from_millis(1500))
        .await;
    proxy.set(Fault::None);
    world.expect_list(&["5.5.5.5"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_touches_nothing_until_it_is_registered_again() {
    let world = World::start("t-lapi-403").await;
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("6.6.6.6")])
        .await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&["6.6.6.6"]).await;
    world.lapi.cscli_ok(&["bouncers", "delete", "t-lapi-403"]);
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--ip", "6.6.6.6"]);
    world
        .expect_list_stays(&["6.6.6.6"], Duration::from_secs(2))
        .await;
    // The operator registers the key again (as `cscli bouncers add NAME -k KEY`).
    world
        .lapi
        .cscli_ok(&["bouncers", "add", "t-lapi-403", "-k", &world.key]);
    // 403 is retried slowly (a minute): a restart picks the fix up at once.
    bouncer.stop().await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&[]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapi_stopped_and_restarted_mid_run() {
    let mut world = World::start("t-lapi-restart").await;
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("7.7.7.7")])
        .await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&["7.7.7.7"]).await;
    world.lapi.stop().await;
    world
        .expect_list_stays(&["7.7.7.7"], Duration::from_secs(2))
        .await;
    world.lapi.restart().await;
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("8.8.8.8")])
        .await;
    world.expect_list(&["7.7.7.7", "8.8.8.8"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}
