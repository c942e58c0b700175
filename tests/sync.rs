//! End to end: a real LAPI, the Cloudflare emulator, and the bouncer's engine in-process.
//! Each test asserts the list the emulator holds, and that no write was ever sent while
//! an operation was pending and no page asked for more than 500 items.

mod common;

use std::time::{Duration, Instant};

use common::lapi::NewDecision;
use common::world::{eventually, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_range_and_ipv6_bans_reach_the_list_but_captcha_and_country_do_not() {
    let world = World::start("t-kinds").await;
    let bouncer = world.spawn_bouncer();
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("1.2.3.4").with_scenario("crowdsecurity/ssh-bf"),
            NewDecision::ban_range("10.0.0.0/24"),
            NewDecision::ban_ip("2001:db8::1").with_origin("crowdsec"),
            NewDecision::ban_range("2001:db8:1::/48"),
            NewDecision::ban_ip("5.6.7.8").with_kind("captcha"),
            NewDecision::ban_ip("FR").with_scope("Country"),
        ])
        .await;
    world
        .expect_list(&["1.2.3.4", "10.0.0.0/24", "2001:db8::/64", "2001:db8:1::/48"])
        .await;
    let items = world.cf.items(&world.list_id);
    let comment_of = |ip: &str| {
        items
            .iter()
            .find(|item| item.ip == ip)
            .and_then(|item| item.comment.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        comment_of("1.2.3.4"),
        "crowdsec cscli: crowdsecurity/ssh-bf"
    );
    assert!(comment_of("2001:db8::/64").starts_with("crowdsec crowdsec: "));
    world
        .expect_list_stays(
            &["1.2.3.4", "10.0.0.0/24", "2001:db8::/64", "2001:db8:1::/48"],
            Duration::from_secs(1),
        )
        .await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cscli_delete_and_expiry_remove_items() {
    let world = World::start("t-delete").await;
    let bouncer = world.spawn_bouncer();
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("1.2.3.4"),
            NewDecision::ban_ip("4.4.4.4"),
            NewDecision::ban_ip("3.3.3.3").with_duration("4s"),
        ])
        .await;
    world.expect_list(&["1.2.3.4", "3.3.3.3", "4.4.4.4"]).await;
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--ip", "1.2.3.4"]);
    // 3.3.3.3 expires by itself within 4 s.
    world.expect_list(&["4.4.4.4"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ipv6_hosts_in_one_slash_64_share_one_item() {
    let world = World::start("t-ipv6").await;
    let bouncer = world.spawn_bouncer();
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("2001:db8::1"),
            NewDecision::ban_ip("2001:db8::2"),
        ])
        .await;
    world.expect_list(&["2001:db8::/64"]).await;
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--ip", "2001:db8::1"]);
    world
        .expect_list_stays(&["2001:db8::/64"], Duration::from_secs(2))
        .await;
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--ip", "2001:db8::2"]);
    world.expect_list(&[]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

/// Ids of the active decisions on `ip`, as live mode lists them (no dedup).
async fn decision_ids(world: &World, ip: &str) -> Vec<(i64, String)> {
    let (status, body) = world
        .lapi
        .bouncer_get(&format!("v1/decisions?ip={ip}"), Some(&world.key))
        .await;
    assert_eq!(status, 200, "{body}");
    let decisions: serde_json::Value = serde_json::from_str(&body).expect("json");
    decisions
        .as_array()
        .map(|all| {
            all.iter()
                .map(|d| {
                    (
                        d["id"].as_i64().unwrap_or(0),
                        d["scenario"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_decisions_follow_lapi_dedup() {
    // docs/lapi.md §4.4: deleting the longer of two bans produces no event and the IP
    // stays banned; deleting the other later reports an id never sent in `new`.
    let world = World::start("t-dedup").await;
    let bouncer = world.spawn_bouncer();
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("9.9.9.9")
                .with_duration("1h")
                .with_scenario("dup-short"),
            NewDecision::ban_ip("9.9.9.9")
                .with_duration("2h")
                .with_scenario("dup-long"),
        ])
        .await;
    world.expect_list(&["9.9.9.9"]).await;
    let ids = decision_ids(&world, "9.9.9.9").await;
    let id_of = |scenario: &str| {
        ids.iter()
            .find(|(_, s)| s == scenario)
            .map(|(id, _)| id.to_string())
            .unwrap_or_else(|| panic!("no {scenario} decision in {ids:?}"))
    };
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--id", &id_of("dup-long")]);
    world
        .expect_list_stays(&["9.9.9.9"], Duration::from_secs(2))
        .await;
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--id", &id_of("dup-short")]);
    world.expect_list(&[]).await;

    // Expiry: the shorter one's expiry is never reported; the longer one's is.
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("8.8.8.8").with_duration("3s"),
            NewDecision::ban_ip("8.8.8.8").with_duration("7s"),
        ])
        .await;
    world.expect_list(&["8.8.8.8"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    world
        .expect_list_stays(&["8.8.8.8"], Duration::from_secs(2))
        .await;
    world.expect_list(&[]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_hard_deletes_and_hand_edits() {
    let mut world = World::start("t-reconcile").await;
    world.sync_extra = "reconcile_interval = \"2s\"\n".into();
    // Two alerts: `cscli alerts delete --ip` deletes a whole alert with its decisions.
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("4.4.4.4")])
        .await;
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("5.5.5.5")])
        .await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&["4.4.4.4", "5.5.5.5"]).await;

    // A hard delete never shows in the stream (docs/lapi.md §4.8).
    world
        .lapi
        .cscli_ok(&["alerts", "delete", "--ip", "4.4.4.4"]);
    let quiet = world
        .lapi
        .stream(&world.lapi.add_bouncer("t-reconcile-probe"), false)
        .await;
    assert_eq!(quiet, serde_json::json!({"deleted": null, "new": null}));
    world.expect_list(&["5.5.5.5"]).await;

    // An item added by hand in the dashboard, and one removed by hand.
    world
        .cf
        .insert_item(&world.list_id, "203.0.113.7", Some("added by hand"));
    world.expect_list(&["5.5.5.5"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_removed_by_hand_is_put_back_by_reconcile() {
    let mut world = World::start("t-readd").await;
    world.sync_extra = "reconcile_interval = \"2s\"\n".into();
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("6.6.6.6")])
        .await;
    world.cf.insert_item(&world.list_id, "7.7.7.7", None);
    let bouncer = world.spawn_bouncer();
    world.expect_list(&["6.6.6.6"]).await;
    // Remove it behind the bouncer's back, then wait for the next reconcile.
    world.remove_by_hand("6.6.6.6").await;
    let reads_before = world.cf.counters().list_reads;
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().list_reads > reads_before
        ))
        .await
    );
    world.expect_list(&["6.6.6.6"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_step_makes_no_writes() {
    let world = World::start("t-restart").await;
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("1.1.1.1"),
            NewDecision::ban_range("10.1.0.0/16"),
        ])
        .await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&["1.1.1.1", "10.1.0.0/16"]).await;
    bouncer.stop().await;

    world.cf.reset_counters();
    let bouncer = world.spawn_bouncer();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().list_reads >= 1
        ))
        .await,
        "the restarted bouncer reads the list"
    );
    world
        .expect_list_stays(&["1.1.1.1", "10.1.0.0/16"], Duration::from_secs(2))
        .await;
    bouncer.stop().await;
    let counters = world.assert_well_behaved();
    assert_eq!(counters.writes, 0, "{counters:?}");
    assert_eq!(counters.rejected_writes, 0, "{counters:?}");
    assert_eq!(
        counters.list_reads, 1,
        "one page holds the whole list: {counters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_items_added_since_the_last_read_finds_their_ids() {
    let world = World::start("t-ids").await;
    let bouncer = world.spawn_bouncer();
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("1.1.1.1")])
        .await;
    world.expect_list(&["1.1.1.1"]).await;
    // Added by this bouncer's POST: the id is unknown until a search finds it.
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--ip", "1.1.1.1"]);
    world.expect_list(&[]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_decisions_sync_in_four_growing_writes() {
    let world = World::start("t-10k").await;
    let decisions: Vec<NewDecision> = (0..10_000u32)
        .map(|i| NewDecision::ban_ip(&format!("100.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)))
        .collect();
    world.lapi.add_decisions(&decisions).await;
    let started = Instant::now();
    let bouncer = world.spawn_bouncer();
    assert!(
        eventually(Duration::from_secs(60), || std::future::ready(
            world.cf.items(&world.list_id).len() == 10_000
        ))
        .await,
        "all 10 000 items reach the list"
    );
    let elapsed = started.elapsed();
    bouncer.stop().await;
    let counters = world.assert_well_behaved();
    eprintln!("10k sync from an empty list: {elapsed:?}, {counters:?}");
    assert_eq!(
        counters.writes, 4,
        "batch_size 1000 doubling while full batches succeed: 1000 + 2000 + 4000 + 3000: {counters:?}"
    );
    assert_eq!(counters.item_changes, 10_000, "{counters:?}");
    assert_eq!(counters.list_reads, 1, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_to_edge_latency_at_one_second_polling() {
    let mut world = World::start("t-latency").await;
    world.update_frequency = "1s".into();
    let bouncer = world.spawn_bouncer();
    world
        .cf
        .set_op_latency(Duration::from_millis(300), Duration::from_millis(1200));
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().list_reads >= 1
        ))
        .await
    );
    let mut latencies = Vec::new();
    for i in 1..=5 {
        let ip = format!("198.51.100.{i}");
        let started = Instant::now();
        world
            .lapi
            .cscli_ok(&["decisions", "add", "--ip", &ip, "--duration", "1h"]);
        let seen = eventually(Duration::from_secs(10), || {
            std::future::ready(world.listed().contains(&ip))
        })
        .await;
        assert!(seen, "{ip} reaches the list");
        latencies.push(started.elapsed());
    }
    bouncer.stop().await;
    latencies.sort();
    eprintln!("cscli decisions add -> on the list, update_frequency 1s, op latency 0.3-1.2s: {latencies:?}");
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_against_the_older_documented_api_behaviour() {
    // Where the docs disagree (docs/cloudflare-lists.md §3, §6): writes queued FIFO instead
    // of refused, IPv6 limited to /64, CIDRs with host bits refused instead of masked.
    use cf_lists_emulator::{HostBits, PendingWrite, Settings};
    let settings = Settings {
        op_latency: (Duration::from_millis(20), Duration::from_millis(80)),
        pending_write: PendingWrite::Queue,
        ipv6_max_prefix: 64,
        host_bits: HostBits::Reject,
        ..Settings::default()
    };
    let world = World::with_settings("t-legacy", settings).await;
    let bouncer = world.spawn_bouncer();
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("2001:db8::1"),
            NewDecision::ban_range("10.1.2.3/24"),
            NewDecision::ban_range("2001:db8:5::1/48"),
        ])
        .await;
    world
        .expect_list(&["10.1.2.0/24", "2001:db8::/64", "2001:db8:5::/48"])
        .await;
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--ip", "2001:db8::1"]);
    world.expect_list(&["10.1.2.0/24", "2001:db8:5::/48"]).await;
    bouncer.stop().await;
    let counters = world.assert_well_behaved();
    assert_eq!(counters.rejected_writes, 0, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_hosts_can_be_pushed_as_slash_128() {
    let mut world = World::start("t-ipv6-128").await;
    world.cloudflare_extra = "ipv6_prefix = 128\n".into();
    let bouncer = world.spawn_bouncer();
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("2001:DB8::1"),
            NewDecision::ban_ip("2001:db8::2"),
        ])
        .await;
    world.expect_list(&["2001:db8::1", "2001:db8::2"]).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}
