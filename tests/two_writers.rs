//! Two bouncers on one list, each following its own LAPI, undo each other's work at every
//! reconcile. Each must notice the other (docs/hardening.md §5), say so, and stop removing
//! items, so that neither unbans what the other banned.

mod common;

use std::time::Duration;

use cfbouncer::config::Config;
use cfbouncer::engine::Engine;
use common::lapi::NewDecision;
use common::world::{eventually, World};
use tokio_util::sync::CancellationToken;

async fn get(url: String) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("admin answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("text"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writer_is_detected_and_removals_stop() {
    let mut one = World::start("t-writer-one").await;
    let mut other = World::start("t-writer-other").await;
    for world in [&mut one, &mut other] {
        world.sync_extra = "reconcile_interval = \"2s\"\nshutdown_grace = \"5s\"\n".into();
    }
    one.lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.1")])
        .await;
    other
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.2")])
        .await;
    let first = one.start_bouncer().await;
    one.expect_list(&["192.0.2.1"]).await;

    // The second bouncer follows its own LAPI but writes to the first one's list.
    let text = other
        .config_text()
        .replace(&other.cf.base_url(), &one.cf.base_url())
        .replace(&other.cf.api_token(), &one.cf.api_token())
        .replace(&other.cf.account_id(), &one.cf.account_id());
    let config = Config::parse(&text, &|_| None).expect("valid config");
    let mut engine = Engine::new(config).expect("engine builds");
    let second_admin = engine
        .bind_admin()
        .await
        .expect("admin binds")
        .expect("admin on");
    let token = CancellationToken::new();
    let second = tokio::spawn(engine.run(token.clone()));

    let first_admin = first.admin.expect("admin on");
    let suspected = |admin: std::net::SocketAddr| async move {
        let (_, metrics) = get(format!("http://{admin}/metrics")).await;
        metrics
            .lines()
            .any(|line| line == "cf_iplist_bouncer_foreign_writer_suspected 1")
    };
    assert!(
        eventually(Duration::from_secs(60), || async {
            suspected(first_admin).await && suspected(second_admin).await
        })
        .await,
        "both bouncers suspect another writer"
    );
    let (status, reason) = get(format!("http://{first_admin}/readyz")).await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("another writer"), "{reason}");
    let (_, status_json) = get(format!("http://{first_admin}/status")).await;
    assert!(
        status_json.contains("\"foreign_writer\":\""),
        "{status_json}"
    );

    // Removals are paused on both sides; adds go on: both bans stay.
    one.expect_list(&["192.0.2.1", "192.0.2.2"]).await;
    one.expect_list_stays(&["192.0.2.1", "192.0.2.2"], Duration::from_secs(6))
        .await;

    token.cancel();
    tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the second bouncer stops")
        .expect("no panic")
        .expect("no error");
    first.stop().await;
    one.assert_well_behaved();
}
