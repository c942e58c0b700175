//! The safety rails end to end: capacity by priority, allowlist, broad ranges, the
//! mass-removal guard and tagged ownership.

mod common;

use std::time::Duration;

use common::lapi::NewDecision;
use common::world::{eventually, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_the_list_holds_the_highest_priority_items() {
    let mut world = World::start("t-capacity").await;
    world.cloudflare_extra = "capacity = 3\n".into();
    // Another list of the account holds one item: it counts against the capacity.
    let other = world.cf.create_list("other_list");
    world.cf.insert_item(&other, "203.0.113.99", None);
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("10.30.0.1").with_origin("CAPI"),
            NewDecision::ban_ip("10.30.0.2").with_origin("lists"),
            NewDecision::ban_ip("10.30.0.3")
                .with_origin("crowdsec")
                .with_duration("1h"),
            NewDecision::ban_ip("10.30.0.4")
                .with_origin("crowdsec")
                .with_duration("3h"),
            NewDecision::ban_ip("10.30.0.5").with_origin("cscli"),
        ])
        .await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&["10.30.0.4", "10.30.0.5"]).await;
    world
        .expect_list_stays(&["10.30.0.4", "10.30.0.5"], Duration::from_secs(1))
        .await;
    // A higher-priority ban takes the place of the lowest.
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("10.30.0.6").with_origin("cscli")])
        .await;
    world.expect_list(&["10.30.0.5", "10.30.0.6"]).await;
    // A slot frees up: the next in priority comes in.
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--ip", "10.30.0.6"]);
    world.expect_list(&["10.30.0.4", "10.30.0.5"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlisted_and_overly_broad_decisions_never_reach_the_list() {
    let mut world = World::start("t-allowlist").await;
    world
        .sync_extra
        .push_str("[safety]\nallowlist = [\"192.0.2.0/24\", \"2001:db8:aa::1\"]\n");
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("192.0.2.7"),
            NewDecision::ban_range("192.0.0.0/16"),
            NewDecision::ban_ip("2001:db8:aa::5"),
            NewDecision::ban_range("0.0.0.0/0"),
            NewDecision::ban_range("10.0.0.0/12"),
            NewDecision::ban_range("2001:db8::/24"),
            NewDecision::ban_range("198.51.100.0/24"),
            NewDecision::ban_ip("2001:db8:bb::1"),
        ])
        .await;
    let bouncer = world.spawn_bouncer();
    world
        .expect_list(&["198.51.100.0/24", "2001:db8:bb::/64"])
        .await;
    world
        .expect_list_stays(
            &["198.51.100.0/24", "2001:db8:bb::/64"],
            Duration::from_secs(1),
        )
        .await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_lapi_cannot_unban_everyone_in_one_reconcile() {
    let mut world = World::start("t-mass-removal").await;
    world.sync_extra = "reconcile_interval = \"3s\"\n".into();
    let ips: Vec<String> = (1..=20).map(|i| format!("10.31.0.{i}")).collect();
    let decisions: Vec<NewDecision> = ips.iter().map(|ip| NewDecision::ban_ip(ip)).collect();
    world.lapi.add_decisions(&decisions).await;
    let bouncer = world.spawn_bouncer();
    let want: Vec<&str> = ips.iter().map(String::as_str).collect();
    world.expect_list(&want).await;
    // Every alert is hard-deleted: only a reconcile can see it.
    world.lapi.cscli_ok(&["alerts", "delete", "--all"]);
    let reads = world.cf.counters().list_reads;
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().list_reads > reads
        ))
        .await,
        "a reconcile ran"
    );
    world
        .expect_list_stays(&want, Duration::from_millis(1500))
        .await;
    // The next reconcile confirms: LAPI really is empty.
    world.expect_list(&[]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_mode_leaves_items_made_by_hand_alone() {
    let mut world = World::start("t-tagged").await;
    world.cloudflare_extra = "manage = \"tagged\"\n".into();
    world.cf.insert_item(
        &world.list_id,
        "203.0.113.1",
        Some("office VPN, blocked by hand"),
    );
    world.cf.insert_item(&world.list_id, "203.0.113.2", None);
    world.cf.insert_item(
        &world.list_id,
        "203.0.113.3",
        Some("crowdsec cscli: an old ban"),
    );
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("198.51.100.1")])
        .await;
    let bouncer = world.spawn_bouncer();
    world
        .expect_list(&["198.51.100.1", "203.0.113.1", "203.0.113.2"])
        .await;
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--ip", "198.51.100.1"]);
    world.expect_list(&["203.0.113.1", "203.0.113.2"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}
