//! LAPI 1.6 and 1.7 behaviours, reproduced by the fault proxy in front of the real 1.4.6
//! (tests/common/proxy.rs; docs/lapi.md §9): a start-up pull cut short as valid JSON, a
//! key used from a new address, uuids and whole-second durations, new origins.
//!
//! The promise under test: the list never loses a ban because a full pull was cut short.
//! A full pull's word alone removes nothing; removals it implies wait for a read of LAPI's
//! active decisions (`GET /v1/decisions`), which fails as a whole.

mod common;

use std::time::Duration;

use common::lapi::NewDecision;
use common::proxy::{Cut, Fault, FaultProxy};
use common::world::{eventually, World};

async fn behind_proxy(name: &str) -> (World, FaultProxy) {
    let mut world = World::start(name).await;
    let proxy = FaultProxy::start(&world.lapi.url()).await;
    world.lapi_via = Some(proxy.url());
    (world, proxy)
}

fn ip(i: u32) -> String {
    format!("100.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255)
}

async fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find(|line| line.starts_with(name) && !line.starts_with('#'))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

/// 10 000 decisions on the list (a free plan's capacity); then every full pull is cut short, at several points,
/// at reconciles and at a restart: nothing LAPI still holds leaves the list. A genuine
/// hard delete under the same cut goes, after the confirming read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_full_pulls_lose_nothing_lapi_still_holds() {
    let (mut world, proxy) = behind_proxy("t-cut-10k").await;
    world.cloudflare_extra = "max_requests_per_minute = 240\n".into();
    let decisions: Vec<NewDecision> = (0..9_999u32).map(|i| NewDecision::ban_ip(&ip(i))).collect();
    world.lapi.add_decisions(&decisions).await;
    // In an alert of its own, so a hard delete takes only it.
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("198.51.100.9")])
        .await;
    let full = |world: &World| world.cf.items(&world.list_id).len() == 10_000;
    let filler = world.spawn_bouncer();
    assert!(
        eventually(Duration::from_secs(90), || std::future::ready(full(&world))).await,
        "all 10 000 items reach the list (a free plan's capacity)"
    );
    filler.stop().await;

    // Reconciles read `GET /v1/decisions`, which LAPI answers whole or not at all; only
    // a start-up pull streams. Every start-up pull is cut, at several points, and each run
    // goes through reconciles too.
    world.sync_extra = "reconcile_interval = \"3s\"\nshutdown_grace = \"5s\"\n".into();
    let writes_before = world.cf.counters().writes;
    for (cut, left_out) in [
        (
            Cut::Pages {
                pages: 1,
                page_size: 3_000,
            },
            7_000.0,
        ),
        (Cut::After(1), 9_999.0),
        (Cut::After(9_999), 1.0),
    ] {
        proxy.set(Fault::CutStartup(cut));
        let cut_before = proxy.cut_pulls();
        let bouncer = world.start_bouncer().await;
        let admin = bouncer.admin.expect("admin listener");
        assert!(
            eventually(Duration::from_secs(30), || async {
                metric(
                    admin,
                    "cf_iplist_bouncer_removal_confirmations_total{outcome=\"kept\"}",
                )
                .await
                    >= left_out
            })
            .await,
            "the items the cut start-up pull ({cut:?}) left out were confirmed with LAPI"
        );
        assert_eq!(
            proxy.cut_pulls(),
            cut_before + 1,
            "the start-up pull was cut"
        );
        let reconciles = |n| proxy.stream_requests().len().saturating_sub(n);
        let seen = proxy.stream_requests().len();
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(reconciles(seen) > 0, "the bouncer went on polling");
        assert!(
            full(&world),
            "the cut start-up pull ({cut:?}) removed items"
        );
        assert_eq!(
            metric(
                admin,
                "cf_iplist_bouncer_removal_confirmations_total{outcome=\"removed\"}"
            )
            .await,
            0.0
        );
        bouncer.stop().await;
    }
    assert_eq!(
        world.cf.counters().writes,
        writes_before,
        "cut pulls wrote nothing"
    );

    // A genuine hard delete, with the start-up pull cut: the item goes at the next
    // reconcile, after the confirming read.
    let bouncer = world.start_bouncer().await;
    world
        .lapi
        .cscli_ok(&["alerts", "delete", "--ip", "198.51.100.9"]);
    let gone = eventually(Duration::from_secs(30), || {
        std::future::ready(!world.listed().contains(&"198.51.100.9".to_owned()))
    })
    .await;
    assert!(gone, "a hard-deleted decision leaves the list");
    assert_eq!(world.cf.items(&world.list_id).len(), 9_999);
    let admin = bouncer.admin.expect("admin listener");
    assert_eq!(
        metric(
            admin,
            "cf_iplist_bouncer_removal_confirmations_total{outcome=\"removed\"}"
        )
        .await,
        1.0
    );
    bouncer.stop().await;
    world.assert_well_behaved();
}

/// The flows every test relies on, run through a proxy mode: decisions added while the
/// bouncer runs reach the list, a deleted one leaves it, a short one expires, and a
/// reconcile (a full pull, cut or not) takes away nothing LAPI holds.
async fn main_flow(name: &str, mode: Fault) {
    let (mut world, proxy) = behind_proxy(name).await;
    world.sync_extra = "reconcile_interval = \"2s\"\nshutdown_grace = \"5s\"\n".into();
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.1")])
        .await;
    proxy.set(mode.clone());
    let bouncer = world.start_bouncer().await;
    // A cut start-up pull keeps at least the first decision.
    world.expect_list(&["192.0.2.1"]).await;
    // Decisions made from here on come by delta. (Behind the proxy, the LAPI moves the
    // key's `last_pull` even for a cut start-up pull, which 1.7 does not: what a cut
    // start-up pull hid would never come by delta here.)
    assert!(
        eventually(Duration::from_secs(20), || std::future::ready(
            proxy
                .stream_requests()
                .iter()
                .any(|q| !q.contains("startup=true"))
        ))
        .await,
        "the start-up pull is over"
    );
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("192.0.2.2"),
            NewDecision::ban_range("198.51.100.0/24"),
            NewDecision::ban_ip("2001:db8::1"),
        ])
        .await;
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.3").with_duration("8s")])
        .await;
    let mut want = vec!["192.0.2.1", "192.0.2.2", "198.51.100.0/24", "2001:db8::/64"];
    let mut with_short = want.clone();
    with_short.push("192.0.2.3");
    world.expect_list(&with_short).await;
    // The short decision expires (LAPI 1.6.3 says "0s" first), the delete goes.
    world.expect_list(&want).await;
    world
        .lapi
        .cscli_ok(&["decisions", "delete", "--ip", "192.0.2.2"]);
    want.retain(|v| *v != "192.0.2.2");
    world.expect_list(&want).await;
    // Reconciles come and go; the list stays.
    world.expect_list_stays(&want, Duration::from_secs(5)).await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_flow_against_lapi_1_4() {
    main_flow("t-flow-14", Fault::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_flow_with_every_full_pull_cut() {
    main_flow("t-flow-cut", Fault::CutStartup(Cut::After(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_flow_with_every_delta_from_a_new_address() {
    // Each delta answers like a new bouncer row's first one: everything, expired included.
    main_flow("t-flow-addr", Fault::NewAddress).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_flow_with_uuids_and_whole_seconds() {
    main_flow("t-flow-uuid", Fault::UuidWholeSeconds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_flow_with_every_newer_behaviour_at_once() {
    main_flow(
        "t-flow-all",
        Fault::All(vec![
            Fault::CutStartup(Cut::After(1)),
            Fault::UuidWholeSeconds,
            Fault::origins(&[
                ("192.0.2.2", "console"),
                ("198.51.100.0/24", "remediation_sync"),
            ]),
            Fault::UsageMetrics,
        ]),
    )
    .await;
}

/// LAPI 1.6.5 makes a new bouncer row when a key is used from another address: its first
/// delta holds every active and every expired decision. Nothing is lost or resurrected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_from_a_new_address_gets_everything_as_a_delta() {
    let (world, proxy) = behind_proxy("t-new-address").await;
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("192.0.2.1"),
            NewDecision::ban_ip("192.0.2.2"),
        ])
        .await;
    // An expired decision on another address, and one deleted on an active one's address.
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.9").with_duration("1s")])
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&["192.0.2.1", "192.0.2.2"]).await;
    proxy.set_for(Fault::NewAddress, 3);
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.3")])
        .await;
    world
        .expect_list(&["192.0.2.1", "192.0.2.2", "192.0.2.3"])
        .await;
    world
        .expect_list_stays(
            &["192.0.2.1", "192.0.2.2", "192.0.2.3"],
            Duration::from_secs(2),
        )
        .await;
    bouncer.stop().await;
    world.assert_well_behaved();
}

/// Console and remediation-sync decisions get their own metric label, and console bans
/// rank with cscli's (a person decided) above the crowd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_origins_are_labelled() {
    let (world, proxy) = behind_proxy("t-origins").await;
    proxy.set(Fault::origins(&[
        ("192.0.2.1", "console"),
        ("192.0.2.2", "remediation_sync"),
    ]));
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("192.0.2.1"),
            NewDecision::ban_ip("192.0.2.2"),
        ])
        .await;
    let bouncer = world.start_bouncer().await;
    world.expect_list(&["192.0.2.1", "192.0.2.2"]).await;
    let admin = bouncer.admin.expect("admin listener");
    for origin in ["console", "remediation_sync"] {
        let name =
            format!("cf_iplist_bouncer_active_decisions{{origin=\"{origin}\",ip_type=\"ipv4\"}}");
        assert_eq!(metric(admin, &name).await, 1.0, "{name}");
    }
    let comments: Vec<Option<String>> = world
        .cf
        .items(&world.list_id)
        .into_iter()
        .map(|item| item.comment)
        .collect();
    assert!(
        comments.iter().any(|c| c
            .as_deref()
            .is_some_and(|c| c.starts_with("crowdsec console:"))),
        "{comments:?}"
    );
    bouncer.stop().await;
    world.assert_well_behaved();
}
