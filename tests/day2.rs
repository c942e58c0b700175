//! Day-2 operations, driven through the real binary as an operator would: confirming a
//! held mass removal, one-shot commands beside a running daemon, commands without the
//! secrets the service gets from systemd, `-t`, `-c` after the command, `status` with the
//! admin listener off, a read-only token, and tearing down what `setup` made.

mod common;

use std::process::{Child, Stdio};

use cf_lists_emulator::Permissions;
use common::bin::{command as bouncer, output, run, text};
use common::lapi::NewDecision;
use common::world::World;

/// The daemon, as the real binary, with `config`; killed when dropped.
struct Daemon(Child);

impl Daemon {
    fn start(config: &str) -> Daemon {
        let child = bouncer(&["-c", config, "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the daemon starts");
        Daemon(child)
    }

    /// SIGTERM, and waits for the exit.
    async fn stop(mut self) {
        let pid = self.0.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let mut child = std::mem::replace(
            &mut self.0,
            std::process::Command::new("true").spawn().expect("true"),
        );
        tokio::task::spawn_blocking(move || child.wait().expect("wait"))
            .await
            .expect("no panic");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn path(config: &std::path::Path) -> &str {
    config.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_holds_a_mass_removal_until_confirm_removals() {
    let world = World::start("t-d2-mass").await;
    let hand: Vec<String> = (1..=20).map(|i| format!("198.51.100.{i}")).collect();
    for ip in &hand {
        world.cf.insert_item(&world.list_id, ip, None);
    }
    let config = world.config_file();
    for _ in 0..2 {
        // Run as often as you like: without the flag the hold stays.
        let out = run(&["-c", path(&config), "once"]).await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let report = text(&out);
        assert!(
            report.contains("20 removals held by the mass-removal guard"),
            "{report}"
        );
        assert!(report.contains("once --confirm-removals"), "{report}");
        assert!(report.contains("198.51.100.1"), "a sample: {report}");
        assert_eq!(world.listed().len(), 20, "nothing removed");
    }
    let out = run(&["-c", path(&config), "once", "--confirm-removals"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("removed the 20 items the mass-removal guard held"),
        "{}",
        text(&out)
    );
    assert!(world.listed().is_empty(), "{:?}", world.listed());
    world.assert_well_behaved();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_refuse_to_run_beside_a_daemon() {
    let mut world = World::start("t-d2-daemon").await;
    // Off: the lock must not depend on the admin listener.
    world.admin_listen = "off".into();
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.10")])
        .await;
    let config = world.config_file();
    let daemon = Daemon::start(path(&config));
    world.expect_list(&["192.0.2.10"]).await;
    world.cf.reset_counters();
    for args in [
        vec!["once"],
        vec!["cleanup"],
        vec!["setup"],
        vec!["once", "--confirm-removals"],
    ] {
        let mut full = vec!["-c", path(&config)];
        full.extend(args.iter().copied());
        let out = run(&full).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("sudo systemctl stop crowdsec-cloudflare-iplist-bouncer"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let counters = world.cf.counters();
    assert_eq!(counters.writes, 0, "no second writer: {counters:?}");
    assert_eq!(world.listed(), ["192.0.2.10"]);

    // A second daemon on the same account does not start either.
    let out = run(&["-c", path(&config), "run"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("one writer per account"),
        "{}",
        text(&out)
    );

    // `check` only reads: it still runs.
    let out = run(&["-c", path(&config), "check"]).await;
    assert!(out.status.success(), "{}", text(&out));

    daemon.stop().await;
    let out = run(&["-c", path(&config), "once"]).await;
    assert!(
        out.status.success(),
        "once runs once the daemon is gone: {}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_leaves_the_stream_position_of_the_key_alone() {
    let world = World::start("t-d2-stream").await;
    // The daemon's start-up pull with this key…
    world.lapi.stream(&world.key, true).await;
    // …then a ban, then `once` with the same key.
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.77")])
        .await;
    let config = world.config_file();
    let out = run(&["-c", path(&config), "once"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(world.listed(), ["192.0.2.77"]);
    // The daemon's next delta still brings the ban: `once` did not move `last_pull`.
    let delta = world.lapi.stream(&world.key, false).await;
    let new: Vec<&str> = delta["new"]
        .as_array()
        .map(|decisions| {
            decisions
                .iter()
                .filter_map(|d| d["value"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(new, ["192.0.2.77"], "{delta}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_without_the_secrets_of_the_service() {
    let world = World::start("t-d2-secrets").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("c.toml");
    // The secrets moved to systemd credentials: the file has none.
    let text_config: String = world
        .config_text()
        .lines()
        .filter(|line| !line.starts_with("api_key") && !line.starts_with("api_token"))
        .map(|line| format!("{line}\n"))
        .collect::<String>()
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:9\"");
    std::fs::write(&config, text_config).expect("write");

    // -t: offline, needs no secret; notes where they must come from.
    let out = run(&["-c", path(&config), "-t"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        format!("configuration OK: {}", config.display())
    );
    assert!(
        text(&out).contains("note: crowdsec.api_key: missing"),
        "{}",
        text(&out)
    );
    // Under systemd (credentials loaded), a missing credential is a problem.
    let mut systemd = bouncer(&["-t", "-c", path(&config)]);
    systemd.env("CREDENTIALS_DIRECTORY", dir.path());
    let out = output(systemd).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cloudflare.api_token: missing"),
        "{}",
        text(&out)
    );
    // …and present there, it passes.
    std::fs::write(dir.path().join("crowdsec_api_key"), &world.key).expect("write");
    std::fs::write(
        dir.path().join("cloudflare_api_token"),
        world.cf.api_token(),
    )
    .expect("write");
    let mut systemd = bouncer(&["-t", "-c", path(&config)]);
    systemd.env("CREDENTIALS_DIRECTORY", dir.path());
    let out = output(systemd).await;
    assert!(out.status.success(), "{}", text(&out));

    // status talks to the admin listener only: no secret asked for.
    let out = run(&["-c", path(&config), "status"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is the bouncer running"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("missing"), "{}", text(&out));

    // A command that sends them says how to run it with the service's credentials.
    let out = run(&["-c", path(&config), "once"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("systemd-run --pipe --wait -p LoadCredential=crowdsec_api_key:FILE"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("CLOUDFLARE_API_TOKEN"),
        "{}",
        text(&out)
    );
    // The environment is the other way.
    let mut with_env = bouncer(&["once", "-c", path(&config)]);
    with_env
        .env("CROWDSEC_API_KEY", &world.key)
        .env("CLOUDFLARE_API_TOKEN", world.cf.api_token());
    let out = output(with_env).await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_config_lists_every_problem_and_exits_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[crowdsec]\napi_key = \"k\"\nupdate_frequncy = \"10s\"\n[cloudflare]\napi_token = \"t\"\naccount_id = \"x\"\n",
    )
    .expect("write");
    let out = run(&["-t", "-c", path(&config)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = text(&out);
    assert!(
        report.contains("crowdsec.update_frequncy: unknown key"),
        "{report}"
    );
    assert!(
        report.contains("cloudflare.account_id: expected"),
        "{report}"
    );
    assert!(report.contains("cloudflare.list_id: missing"), "{report}");
    assert!(!report.contains("configuration OK"), "{report}");

    // The example as shipped: its `<…>` placeholders are no key and no token (so the
    // package's postinst, which asks `-t`, does not start the service).
    let example = dir.path().join("example.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example"),
        &example,
    )
    .expect("copy the example");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&example, std::fs::Permissions::from_mode(0o600))
    }
    .expect("chmod");
    let out = run(&["-t", "-c", path(&example)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for key in ["crowdsec.api_key", "cloudflare.api_token"] {
        assert!(
            text(&out).contains(&format!("{key}: still the placeholder")),
            "{key}: {}",
            text(&out)
        );
    }

    // A file the configuration names must be readable.
    let good = format!(
        "[crowdsec]\napi_key = \"k\"\ncert_path = \"{0}/nope.pem\"\nkey_path = \"{0}/nope.key\"\n\
         [cloudflare]\napi_token = \"t\"\naccount_id = \"{1}\"\nlist_name = \"crowdsec_ban\"\n",
        dir.path().display(),
        "a".repeat(32)
    );
    std::fs::write(&config, good).expect("write");
    let out = run(&["--test-config", "-c", path(&config)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("crowdsec.cert_path: cannot read"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("crowdsec.key_path: cannot read"),
        "{}",
        text(&out)
    );

    // A systemd credential's path exists only for the service: from a shell, a note.
    let credentials = format!(
        "[crowdsec]\napi_key = \"k\"\ncert_path = \"/run/credentials/x.service/lapi_cert\"\n\
         key_path = \"/run/credentials/x.service/lapi_key\"\n\
         [cloudflare]\napi_token = \"t\"\naccount_id = \"{}\"\nlist_name = \"crowdsec_ban\"\n",
        "a".repeat(32)
    );
    std::fs::write(&config, credentials).expect("write");
    let out = run(&["-t", "-c", path(&config)]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("note: crowdsec.cert_path: /run/credentials/x.service/lapi_cert is a systemd credential"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_flag_after_the_command_and_status_with_the_listener_off() {
    let mut world = World::start("t-d2-flags").await;
    world.admin_listen = "off".into();
    let config = world.config_file();
    let out = run(&["check", "-c", path(&config)]).await;
    assert!(out.status.success(), "check -c FILE: {}", text(&out));
    let out = run(&["status", "--config", path(&config)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the admin listener is off"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_a_token_that_may_only_read() {
    let world = World::start("t-d2-readonly").await;
    let config = world.config_file();
    let out = run(&["-c", path(&config), "check"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("may write"), "{}", text(&out));
    world.cf.set_token_permissions(Permissions::Read);
    let out = run(&["-c", path(&config), "check"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("FAIL cloudflare"), "{report}");
    assert!(
        report.contains("may read list crowdsec_ban but not write"),
        "{report}"
    );
    assert!(report.contains("Account Filter Lists > Edit"), "{report}");
    assert_eq!(world.cf.counters().writes, 0, "the probe is no bulk write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_rules_undoes_setup_and_keeps_hand_made_rules() {
    let world = World::start("t-d2-teardown").await;
    let zone = "cccccccccccccccccccccccccccccccc";
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.5")])
        .await;
    let config = world.config_file();
    let out = run(&["-c", path(&config), "setup", "--zone", zone]).await;
    assert!(out.status.success(), "{}", text(&out));
    world.cf.insert_zone_rule(
        zone,
        "ip.src in $crowdsec_ban and http.host eq \"a.example\"",
        "log",
        "the operator's own",
    );
    let out = run(&["-c", path(&config), "once"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(world.listed(), ["192.0.2.5"]);

    // --zone alone is refused: it belongs to --rules.
    let out = run(&["-c", path(&config), "cleanup", "--zone", zone]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let out = run(&["-c", path(&config), "cleanup", "--rules", "--zone", zone]).await;
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("removed 1 items from the list"), "{report}");
    assert!(
        report.contains("removed 1 rule(s) setup added; 1 other"),
        "{report}"
    );
    assert!(world.listed().is_empty());
    let rules = world.cf.zone_rules(zone);
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].description, "the operator's own");

    // While that rule uses the list, Cloudflare refuses to delete it.
    let out = run(&["-c", path(&config), "cleanup", "--delete-list"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("10031"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_delete_list_removes_the_list_setup_made() {
    let world = World::start("t-d2-dellist").await;
    let zone = "dddddddddddddddddddddddddddddddd";
    let config = world.config_file();
    let out = run(&["-c", path(&config), "setup", "--zone", zone]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&[
        "cleanup",
        "-c",
        path(&config),
        "--rules",
        "--zone",
        zone,
        "--delete-list",
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("deleted list crowdsec_ban"),
        "{}",
        text(&out)
    );
    assert!(world.cf.zone_rules(zone).is_empty());
    let out = run(&["-c", path(&config), "check"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no IP list \"crowdsec_ban\""),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_for_systemd_while_cloudflare_is_down_at_boot() {
    let world = World::start("t-d2-boot").await;
    // Cloudflare answers 503 to everything for longer than this test runs.
    world.cf.fail_next_requests(10_000, 503);
    let config = world.config_file();
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .expect("timeout");
    let mut daemon = bouncer(&["-c", path(&config), "run"]);
    daemon
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let daemon = Daemon(daemon.spawn().expect("the daemon starts"));
    let received = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(8);
        let mut buf = [0u8; 512];
        while std::time::Instant::now() < until {
            if let Ok(n) = socket.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let ready = seen.iter().any(|m| m.contains("READY=1"));
                let pings = seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
                if ready && pings >= 2 {
                    break;
                }
            }
        }
        seen
    })
    .await
    .expect("no panic");
    assert!(
        received.iter().any(|m| m.contains("READY=1")),
        "started while the list cannot be looked up: {received:?}"
    );
    assert!(
        received.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2,
        "the watchdog is fed while it retries: {received:?}"
    );
    assert!(
        world.cf.counters().list_reads == 0,
        "the list was never read"
    );
    daemon.stop().await;
}

#[test]
fn uninstall_says_how_to_delete_a_registration_it_did_not_make() {
    let root = tempfile::tempdir().expect("temp dir");
    let bouncers = root.path().join("etc/crowdsec/bouncers");
    std::fs::create_dir_all(&bouncers).expect("mkdir");
    let cfg = bouncers.join("crowdsec-cloudflare-iplist-bouncer.toml");
    std::fs::write(&cfg, "[crowdsec]\napi_key = \"registered by hand\"\n").expect("write");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/uninstall.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .env("ROOT", root.path())
        .env_remove("CSCLI")
        .output()
        .expect("uninstall.sh runs");
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(
        report.contains("no registration made by install.sh"),
        "{report}"
    );
    assert!(report.contains("cscli bouncers delete"), "{report}");
    assert!(cfg.exists(), "the configuration is kept without --purge");
}

/// A forward HTTP proxy for plain-HTTP requests (absolute-form), recording the
/// `host:port` each connection asked for.
async fn forward_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let Some(target) = line
                    .split(' ')
                    .nth(1)
                    .and_then(|uri| uri.strip_prefix("http://"))
                    .and_then(|rest| rest.split('/').next())
                    .map(str::to_owned)
                else {
                    return;
                };
                record.lock().expect("lock").push(target.clone());
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                if upstream.write_all(&head).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_apis_are_reached_through_the_environments_proxy() {
    let world = World::start("t-d2-proxy").await;
    let config = world.config_file();
    let (proxy, seen) = forward_proxy().await;
    let mut check = bouncer(&["check", "-c", path(&config)]);
    check
        .env("HTTP_PROXY", &proxy)
        .env_remove("http_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    let out = output(check).await;
    assert!(out.status.success(), "{}", text(&out));
    let seen = seen.lock().expect("lock").clone();
    let lapi = format!("127.0.0.1:{}", world.lapi.port());
    let cloudflare = world.cf.addr().to_string();
    assert!(seen.contains(&lapi), "LAPI through the proxy: {seen:?}");
    assert!(
        seen.contains(&cloudflare),
        "Cloudflare through the proxy: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_only_root_may_read_says_to_use_sudo() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("root-only.toml");
    std::fs::write(&config, "[crowdsec]\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    // The directory must be reachable by the unprivileged user; the file not readable.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    let command = if is_root {
        // As nobody, as an operator without sudo would run it; a copy of the binary that
        // nobody may run, wherever the build directory is.
        let bin = dir.path().join("bouncer");
        std::fs::copy(common::bin::BIN, &bin).expect("copy the binary");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut command = std::process::Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin);
        command
    } else {
        std::process::Command::new(common::bin::BIN)
    };
    let mut command = command;
    command.args(["status", "-c", path(&config)]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("run the command with sudo"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_squatted_by_another_user_does_not_stop_the_bouncer() {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    // Debian's Python: nobody can run it (a pyenv one under /root it cannot).
    let python = "/usr/bin/python3";
    if !is_root || !std::path::Path::new(python).exists() {
        eprintln!("not root, or no {python}: cannot squat the lock as another user; skipped");
        return;
    }
    let world = World::start("t-d2-squat").await;
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.55")])
        .await;
    let config = world.config_file();
    // nobody takes the account's lock name (an abstract socket has no permissions).
    let name = cfbouncer::lock::lock_name(&world.config().cloudflare);
    let script =
        "import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.bind('\\0'+sys.argv[1])\n\
                  s.listen(8)\nprint('bound',flush=True)\ntime.sleep(60)\n";
    let mut squatter = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            python,
            "-c",
            script,
            &name,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv runs");
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(squatter.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the squatter says it bound");
    assert_eq!(line.trim(), "bound");
    let out = run(&["-c", path(&config), "once"]).await;
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("not a bouncer's user"),
        "{}",
        text(&out)
    );
    assert_eq!(world.listed(), ["192.0.2.55"]);
}
