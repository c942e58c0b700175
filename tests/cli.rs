//! The binary's contract: `run`, `check`, `once`, exit codes and messages, driven exactly
//! as systemd or an operator would drive it.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::bin::{command as bouncer, output, text};
use common::lapi::NewDecision;
use common::world::{eventually, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_makes_the_list_equal_to_lapi_bans_and_exits_zero() {
    let world = World::start("t-once").await;
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("1.2.3.4"),
            NewDecision::ban_range("10.0.0.0/24"),
            NewDecision::ban_ip("2001:db8::7"),
            NewDecision::ban_ip("5.6.7.8").with_kind("captcha"),
        ])
        .await;
    world.cf.insert_item(&world.list_id, "192.0.2.1", None);
    let config = world.config_file();
    let out = output(bouncer(&[
        "-c",
        config.to_str().expect("utf-8 path"),
        "once",
    ]))
    .await;
    assert!(out.status.success(), "once failed: {}", text(&out));
    assert!(text(&out).contains("in step"), "{}", text(&out));
    let mut listed = world.listed();
    listed.sort();
    assert_eq!(listed, ["1.2.3.4", "10.0.0.0/24", "2001:db8::/64"]);

    // Run again: already in step, so no write at all.
    world.cf.reset_counters();
    let out = output(bouncer(&[
        "-c",
        config.to_str().expect("utf-8 path"),
        "once",
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(world.assert_well_behaved().writes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_grows_its_batches_while_they_succeed() {
    let mut world = World::start("t-once-grow").await;
    world.cloudflare_extra = "batch_size = 2\n".into();
    world.sync_extra.push_str("max_batch = 8\n");
    let ips: Vec<String> = (1..=14).map(|i| format!("198.51.100.{i}")).collect();
    let decisions: Vec<NewDecision> = ips.iter().map(|ip| NewDecision::ban_ip(ip)).collect();
    world.lapi.add_decisions(&decisions).await;
    let config = world.config_file();
    let out = output(bouncer(&[
        "-c",
        config.to_str().expect("utf-8 path"),
        "once",
    ]))
    .await;
    assert!(out.status.success(), "once failed: {}", text(&out));
    let mut listed = world.listed();
    listed.sort();
    let mut want = ips.clone();
    want.sort();
    assert_eq!(listed, want);
    // 2 + 4 + 8 items, where batch_size alone would take 7 writes.
    assert_eq!(world.assert_well_behaved().writes, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_fails_clearly_when_the_list_does_not_exist() {
    let world = World::start("t-once-nolist").await;
    let text_config = world.config_text().replace("crowdsec_ban", "no_such_list");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, text_config).expect("write");
    let out = output(bouncer(&[
        "-c",
        config.to_str().expect("utf-8 path"),
        "once",
    ]))
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no IP list \"no_such_list\""),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_api_and_exits_by_the_result() {
    let world = World::start("t-check").await;
    let config = world.config_file();
    let out = output(bouncer(&[
        "-c",
        config.to_str().expect("utf-8 path"),
        "check",
    ]))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("ok   config"), "{report}");
    assert!(report.contains("ok   lapi"), "{report}");
    assert!(report.contains("ok   cloudflare"), "{report}");

    // A revoked key: the report names the fix; the exit code says it failed.
    world.lapi.cscli_ok(&["bouncers", "delete", "t-check"]);
    let out = output(bouncer(&[
        "-c",
        config.to_str().expect("utf-8 path"),
        "check",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("FAIL lapi"), "{}", text(&out));
    assert!(text(&out).contains("cscli bouncers add"), "{}", text(&out));

    // A wrong token.
    let bad_token = world
        .config_text()
        .replace(&world.cf.api_token(), "wrong-token");
    std::fs::write(&config, bad_token).expect("write");
    let out = output(bouncer(&[
        "-c",
        config.to_str().expect("utf-8 path"),
        "check",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("Account Filter Lists > Edit"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_lists_every_problem_and_exits_two() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[crowdsec]\napi_key = \"k\"\nupdate_frequncy = \"10s\"\n[cloudflare]\napi_token = \"t\"\naccount_id = \"x\"\n",
    )
    .expect("write");
    let out = output(bouncer(&[
        "-c",
        config.to_str().expect("utf-8 path"),
        "check",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2));
    let report = text(&out);
    assert!(
        report.contains("crowdsec.update_frequncy: unknown key"),
        "{report}"
    );
    assert!(report.contains("cloudflare.account_id:"), "{report}");
    assert!(report.contains("cloudflare.list_id: missing"), "{report}");
    assert!(!report.contains("\"t\""), "secrets never printed: {report}");

    let out = output(bouncer(&["-c", "/nonexistent/bouncer.toml"])).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("cannot read the configuration file"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_operation_finish_and_exits_zero() {
    let world = World::start("t-sigterm").await;
    world
        .cf
        .set_op_latency(Duration::from_millis(1500), Duration::from_millis(1500));
    let config = world.config_file();
    let child = bouncer(&["-c", config.to_str().expect("utf-8 path")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the daemon starts");
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.counters().list_reads >= 1
        ))
        .await,
        "the daemon reads the list"
    );
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("1.1.1.1")])
        .await;
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            world.cf.operation_pending()
        ))
        .await,
        "an operation is in flight"
    );
    let stopping = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let status = tokio::task::spawn_blocking(move || child.wait_with_output().expect("wait"))
        .await
        .expect("no panic");
    let waited = stopping.elapsed();
    assert!(
        status.status.success(),
        "exit 0 on SIGTERM: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        waited < Duration::from_secs(6),
        "stopped within the grace period: {waited:?}"
    );
    // The operation was waited for, and the list was left as it is.
    assert_eq!(world.listed(), ["1.1.1.1"]);
    assert!(!world.cf.operation_pending());
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_explains_a_list_mapping_that_cannot_work() {
    let mut world = World::start("t-check-lists").await;
    world.cf.create_list("crowdsec_challenge");
    // An IP list where an ASN list is configured.
    world.cf.create_list("crowdsec_asn");
    world.lists = Some(
        "[[cloudflare.lists]]\nname = \"crowdsec_ban\"\ndecision_types = [\"ban\"]\n\
         [[cloudflare.lists]]\nname = \"crowdsec_challenge\"\ndecision_types = [\"captcha\"]\n\
         [[cloudflare.lists]]\nname = \"crowdsec_asn\"\ndecision_types = [\"ban\"]\nscope = \"as\"\n\
         [[cloudflare.lists]]\nname = \"crowdsec_throttle\"\ndecision_types = [\"throttle\"]\n"
            .into(),
    );
    let check = |config: std::path::PathBuf| async move {
        let out = output(bouncer(&[
            "-c",
            config.to_str().expect("utf-8 path"),
            "check",
        ]))
        .await;
        (out.status.code(), text(&out))
    };
    let (code, report) = check(world.config_file()).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(report.contains("FAIL cloudflare"), "{report}");
    assert!(
        report.contains("list crowdsec_ban (") && report.contains("for ban) is readable"),
        "{report}"
    );
    assert!(
        report.contains("list \"crowdsec_asn\" is a ip list")
            && report.contains("must be of kind asn"),
        "{report}"
    );
    assert!(
        report.contains("no IP list \"crowdsec_throttle\"") && report.contains("for throttle"),
        "{report}"
    );

    // A token that may only read: named per list, with the permission to give.
    world
        .cf
        .set_token_permissions(cf_lists_emulator::Permissions::Read);
    world.lists = Some(
        "[[cloudflare.lists]]\nname = \"crowdsec_challenge\"\ndecision_types = [\"captcha\"]\n"
            .into(),
    );
    let (code, report) = check(world.config_file()).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report.contains("may read list crowdsec_challenge but not write to it")
            && report.contains("Account Filter Lists > Edit"),
        "{report}"
    );
}
