//! The bouncer's own usage-metrics push (`crowdsec.usage_metrics_interval`) against a LAPI
//! that has the endpoint: the fault proxy answers it as LAPI 1.6.3+ does
//! ([`Fault::UsageMetrics`]) in front of the real 1.4.6, which has not.

mod common;

use std::time::Duration;

use common::lapi::NewDecision;
use common::proxy::{Fault, FaultProxy};
use common::world::{eventually, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bouncers_usage_metrics_pass_lapi_validation() {
    let mut world = World::start("t-usage-201").await;
    let proxy = FaultProxy::start(&world.lapi.url()).await;
    proxy.set(Fault::UsageMetrics);
    world.lapi_via = Some(proxy.url());
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("1.2.3.4"),
            NewDecision::ban_ip("2001:db8::1").with_origin("crowdsec"),
        ])
        .await;
    let mut config = world.config();
    config.crowdsec.usage_metrics_interval = Some(Duration::from_millis(500));
    let token = tokio_util::sync::CancellationToken::new();
    let engine = cfbouncer::engine::Engine::new(config).expect("engine");
    let handle = tokio::spawn(engine.run(token.clone()));
    world.expect_list(&["1.2.3.4", "2001:db8::/64"]).await;

    // Accepted (201), and taken as success: it pushes again one interval later, where a
    // 404 stops it (tests/operate.rs) and a 422 would be logged as a failure.
    let pushed = eventually(Duration::from_secs(10), || {
        std::future::ready(proxy.usage_metrics().len() >= 2)
    })
    .await;
    assert!(pushed, "{} accepted pushes", proxy.usage_metrics().len());

    let payload = proxy.usage_metrics().pop().expect("a payload");
    let component = &payload["remediation_components"][0];
    assert_eq!(component["type"], "crowdsec-cloudflare-iplist-bouncer");
    let os_version = component["os"]["version"].as_str().expect("a string");
    assert!(!os_version.is_empty(), "os.version is sent: {payload}");
    let items = component["metrics"][0]["items"].as_array().expect("items");
    assert!(
        items.contains(
            &serde_json::json!({"name": "active_decisions", "value": 1, "unit": "ip",
                                           "labels": {"origin": "crowdsec", "ip_type": "ipv6"}})
        ),
        "{payload}"
    );
    token.cancel();
    handle.await.expect("no panic").expect("clean stop");
    // Stopped, so no push is half-way: every one the mode saw was accepted.
    let seen = proxy.faulted();
    assert_eq!(
        seen,
        proxy.usage_metrics().len() as u64,
        "every push passed validation"
    );
    world.assert_well_behaved();
}
