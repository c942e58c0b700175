//! Operating the bouncer: the admin listener (metrics after a real sync, readiness that
//! follows LAPI, status), the `status`, `setup` and `cleanup` commands, and usage metrics
//! against a LAPI that predates them.

mod common;

use std::time::Duration;

use common::bin::{run, text};
use common::lapi::NewDecision;
use common::world::{eventually, World};

async fn get(url: &str) -> (u16, String) {
    cfbouncer::install_tls_provider();
    let response = reqwest::get(url).await.expect("the admin listener answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_status_after_a_real_sync() {
    let world = World::start("t-metrics").await;
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("1.2.3.4"),
            NewDecision::ban_ip("2001:db8::1").with_origin("crowdsec"),
            NewDecision::ban_ip("5.6.7.8").with_kind("captcha"),
        ])
        .await;
    let bouncer = world.start_bouncer().await;
    let admin = bouncer.admin.expect("the admin listener is on");
    world.expect_list(&["1.2.3.4", "2001:db8::/64"]).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&format!("http://{admin}/readyz")).await.0 == 200
        })
        .await
    );
    assert_eq!(
        get(&format!("http://{admin}/healthz")).await,
        (200, "ok\n".into())
    );
    // The emulator shows the items a moment before the bouncer has polled its operation.
    let metrics_url = format!("http://{admin}/metrics");
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(&metrics_url)
                .await
                .1
                .contains("cf_iplist_bouncer_list_items 2")
        })
        .await
    );
    let (status, metrics) = get(&metrics_url).await;
    assert_eq!(status, 200);
    for line in [
        "cf_iplist_bouncer_active_decisions{origin=\"cscli\",ip_type=\"ipv4\"} 1",
        "cf_iplist_bouncer_active_decisions{origin=\"crowdsec\",ip_type=\"ipv6\"} 1",
        "cf_iplist_bouncer_list_items 2",
        "cf_iplist_bouncer_pending_changes{action=\"add\"} 0",
        "cf_iplist_bouncer_bulk_operations_total{outcome=\"completed\"} 1",
        "cf_iplist_bouncer_cloudflare_requests_total{endpoint=\"items_add\",status=\"2xx\"} 1",
        "cf_iplist_bouncer_decisions_refused_total{reason=\"type\"} 1",
        "cf_iplist_bouncer_reconcile_drift_total{direction=\"added\"} 2",
        "cf_iplist_bouncer_ready 1",
        "cf_iplist_bouncer_bulk_operation_duration_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("cf_iplist_bouncer_lapi_polls_total{kind=\"full\"} 1"));
    assert!(
        metrics.contains("cf_iplist_bouncer_seconds_since_last_success{what=\"cloudflare_write\"}")
    );
    let (_, status) = get(&format!("http://{admin}/status")).await;
    let report: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(report["ready"], true, "{report}");
    assert_eq!(report["decisions"], 2);
    assert_eq!(report["listed_items"], 2);
    bouncer.stop().await;
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_lapi() {
    let mut world = World::start("t-readyz").await;
    let bouncer = world.start_bouncer().await;
    let readyz = format!("http://{}/readyz", bouncer.admin.expect("admin on"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&readyz).await.0 == 200
        })
        .await
    );
    world.lapi.stop().await;
    let reason = std::sync::Mutex::new(String::new());
    let unready = eventually(Duration::from_secs(15), || async {
        let (status, body) = get(&readyz).await;
        *reason.lock().expect("not poisoned") = body;
        status == 503
    })
    .await;
    let reason = reason.into_inner().expect("not poisoned");
    assert!(unready, "not ready once LAPI is gone");
    assert!(
        reason.starts_with("not ready: no successful LAPI pull for"),
        "{reason}"
    );
    world.lapi.restart().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            get(&readyz).await.0 == 200
        })
        .await
    );
    bouncer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_command_reads_a_running_bouncer() {
    let mut world = World::start("t-status").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    world.admin_listen = format!("127.0.0.1:{port}");
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("9.8.7.6")])
        .await;
    let bouncer = world.spawn_bouncer();
    world.expect_list(&["9.8.7.6"]).await;
    let config = world.config_file();
    let config = config.to_str().expect("utf-8 path");
    let mut out = run(&["-c", config, "status"]).await;
    for _ in 0..50 {
        if text(&out).contains("on the list 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        out = run(&["-c", config, "status"]).await;
    }
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(report.starts_with("ready (version"), "{report}");
    assert!(
        report.contains("decisions 1  desired items 1  on the list 1"),
        "{report}"
    );
    bouncer.stop().await;
    let out = run(&["-c", config, "status"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is the bouncer running"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_creates_the_list_and_rules_once_and_keeps_other_rules() {
    let world = World::start("t-setup").await;
    let zone_a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let zone_b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    world.cf.insert_zone_rule(
        zone_b,
        "http.host eq \"admin.example\"",
        "managed_challenge",
        "the operator's own rule",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("setup.toml");
    std::fs::write(
        &config,
        world.config_text().replace("crowdsec_ban", "edge_bans"),
    )
    .expect("write");
    let config = config.to_str().expect("utf-8 path");
    let out = run(&["-c", config, "setup", "--zone", zone_a, "--zone", zone_b]).await;
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("created list edge_bans"), "{report}");
    assert!(
        report.contains(&format!(
            "zone {zone_a}: added the custom rule `ip.src in $edge_bans`"
        )),
        "{report}"
    );
    let rules_b = world.cf.zone_rules(zone_b);
    assert_eq!(rules_b.len(), 2, "{rules_b:?}");
    assert_eq!(rules_b[0].description, "the operator's own rule");
    assert_eq!(rules_b[1].expression, "ip.src in $edge_bans");
    assert_eq!(rules_b[1].action, "block");

    // Again: nothing new.
    let out = run(&["-c", config, "setup", "--zone", zone_a, "--zone", zone_b]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("list edge_bans ("), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "zone {zone_b}: the custom rule `ip.src in $edge_bans` → block is in place"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(world.cf.zone_rules(zone_a).len(), 1);
    assert_eq!(world.cf.zone_rules(zone_b).len(), 2);
    assert_eq!(
        world.cf.counters().ruleset_replacements,
        0,
        "never PUT the entry point"
    );

    // The list now exists and the bouncer can use it.
    let out = run(&["-c", config, "check"]).await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_what_the_bouncer_manages() {
    let mut world = World::start("t-cleanup").await;
    world.cloudflare_extra = "manage = \"tagged\"\nbatch_size = 2\n".into();
    world
        .cf
        .insert_item(&world.list_id, "203.0.113.1", Some("made by hand"));
    let ips: Vec<String> = (1..=5).map(|i| format!("10.50.0.{i}")).collect();
    let decisions: Vec<NewDecision> = ips.iter().map(|ip| NewDecision::ban_ip(ip)).collect();
    world.lapi.add_decisions(&decisions).await;
    let config = world.config_file();
    let config = config.to_str().expect("utf-8 path");
    let out = run(&["-c", config, "once"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(world.listed().len(), 6);
    let out = run(&["-c", config, "cleanup"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("removed 5 items"), "{}", text(&out));
    assert_eq!(world.listed(), ["203.0.113.1"], "the hand-made item stays");
    let out = run(&["-c", config, "cleanup"]).await;
    assert!(
        text(&out).contains("removed 0 items"),
        "idempotent: {}",
        text(&out)
    );
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_metrics_stop_after_a_404_from_an_older_lapi() {
    let world = World::start("t-usage").await;
    let mut config = world.config();
    config.crowdsec.usage_metrics_interval = Some(Duration::from_millis(500));
    let token = tokio_util::sync::CancellationToken::new();
    let engine = cfbouncer::engine::Engine::new(config).expect("engine");
    let handle = tokio::spawn(engine.run(token.clone()));
    let pushes = || world.lapi.log().matches("POST /v1/usage-metrics").count();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            pushes() >= 1
        ))
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        pushes(),
        1,
        "Debian's LAPI 1.4.6 answers 404: asked once, never again"
    );
    token.cancel();
    handle.await.expect("no panic").expect("clean stop");
}
