//! The rules `setup --zone` keeps and `cleanup --rules` removes, run as the real binary
//! against the emulator (docs/cloudflare-lists.md §9): the carve-out of
//! `cloudflare.exclude_hosts`, idempotence, updates in place, and rules made by hand,
//! which neither command touches. Neither command reads LAPI, so none runs here.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use cf_lists_emulator::{Emulator, Rule, Settings};
use common::bin::{run, text};

const ZONE: &str = "abcdefabcdefabcdefabcdefabcdef01";
const PLAIN: &str = "ip.src in $crowdsec_ban";
const CARVED: &str =
    "(ip.src in $crowdsec_ban) and not (http.host in {\"auth.example.com\" \"login.example.com\"})";
/// The description of the rule earlier versions of `setup` wrote.
const OLD_DESCRIPTION: &str = "CrowdSec bans (crowdsec-cloudflare-iplist-bouncer)";

struct Setup {
    cf: Emulator,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let settings = Settings {
            op_latency: (Duration::from_millis(20), Duration::from_millis(40)),
            ..Settings::default()
        };
        let bind = "127.0.0.1:0".parse().expect("valid address");
        let cf = Emulator::start(settings, bind)
            .await
            .expect("emulator starts");
        cf.create_list("crowdsec_ban");
        let dir = tempfile::tempdir().expect("temp dir");
        Setup { cf, dir }
    }

    /// A configuration file with `extra` in `[cloudflare]`. LAPI is never reached.
    fn config(&self, extra: &str) -> PathBuf {
        // `[[cloudflare.lists]]` in `extra` replaces the one list by name.
        let list = if extra.contains("[[cloudflare.lists]]") {
            ""
        } else {
            "list_name = \"crowdsec_ban\"\n"
        };
        let text = format!(
            "[crowdsec]\napi_url = \"http://127.0.0.1:9/\"\napi_key = \"unused\"\n\
             [cloudflare]\napi_url = \"{}\"\napi_token = \"{}\"\naccount_id = \"{}\"\n\
             {list}{extra}\n[admin]\nlisten = \"\"\n",
            self.cf.base_url(),
            self.cf.api_token(),
            self.cf.account_id(),
        );
        let path = self.dir.path().join("bouncer.toml");
        std::fs::write(&path, text).expect("write config");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    /// Runs the binary with the configuration `extra` makes; it must succeed.
    async fn ok(&self, extra: &str, args: &[&str]) -> String {
        let config = self.config(extra);
        let mut all = vec!["-c", config.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let out = run(&all).await;
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        text(&out)
    }

    fn rules(&self) -> Vec<Rule> {
        self.cf.zone_rules(ZONE)
    }
}

const HOSTS: &str = "exclude_hosts = [\"login.example.com\", \"auth.example.com\"]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_writes_the_carve_out_once_and_again_changes_nothing() {
    let world = Setup::start().await;
    let report = world.ok(HOSTS, &["setup", "--zone", ZONE]).await;
    assert!(
        report.contains(&format!(
            "zone {ZONE}: added the custom rule `{CARVED}` → block"
        )),
        "{report}"
    );
    let rules = world.rules();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        (rules[0].expression.as_str(), rules[0].action.as_str()),
        (CARVED, "block")
    );
    assert!(rules[0].enabled);

    // Again, the hosts in another order: one read of the zone's rules, no write.
    let before = world.cf.counters().ruleset_requests;
    let reordered =
        "exclude_hosts = [\"auth.example.com\", \"login.example.com\", \"auth.example.com\"]";
    let report = world.ok(reordered, &["setup", "--zone", ZONE]).await;
    assert!(report.contains("is in place"), "{report}");
    assert_eq!(world.cf.counters().ruleset_requests - before, 1);
    assert_eq!(world.rules(), rules);
    assert_eq!(world.cf.counters().ruleset_replacements, 0, "never PUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_hosts_or_action_update_setup_s_rule_in_place() {
    let world = Setup::start().await;
    world
        .cf
        .insert_zone_rule(ZONE, "http.host eq \"a.example\"", "log", "the operator's");
    world.ok("", &["setup", "--zone", ZONE]).await;
    let rules = world.rules();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(rules[1].expression, PLAIN);
    let id = rules[1].id.clone();

    let report = world.ok(HOSTS, &["setup", "--zone", ZONE]).await;
    assert!(
        report.contains(&format!(
            "updated the custom rule setup added to `{CARVED}` → block"
        )),
        "{report}"
    );
    let report = (world.ok(
        HOSTS,
        &["setup", "--zone", ZONE, "--action", "managed_challenge"],
    ))
    .await;
    assert!(report.contains("→ managed_challenge"), "{report}");
    let rules = world.rules();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(rules[0].description, "the operator's", "kept, first");
    assert_eq!(rules[1].id, id, "the same rule, rewritten");
    assert_eq!(
        (rules[1].expression.as_str(), rules[1].action.as_str()),
        (CARVED, "managed_challenge")
    );

    // Without exclude_hosts, back to the plain rule: still the same one.
    world.ok("", &["setup", "--zone", ZONE]).await;
    let rules = world.rules();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(
        (
            rules[1].id.as_str(),
            rules[1].expression.as_str(),
            rules[1].action.as_str()
        ),
        (id.as_str(), PLAIN, "block")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_made_rule_on_the_list_is_left_to_the_operator() {
    let world = Setup::start().await;
    let hand_made = world
        .cf
        .insert_zone_rule(ZONE, PLAIN, "block", "my ban rule");
    let report = world.ok(HOSTS, &["setup", "--zone", ZONE]).await;
    assert!(
        report.contains("a custom rule not made by setup already uses $crowdsec_ban"),
        "{report}"
    );
    let rules = world.rules();
    assert_eq!(rules.len(), 1, "none added: {rules:?}");
    assert_eq!(
        (rules[0].id.as_str(), rules[0].expression.as_str()),
        (hand_made.as_str(), PLAIN)
    );

    let report = world
        .ok(HOSTS, &["cleanup", "--rules", "--zone", ZONE])
        .await;
    assert!(
        report.contains(&format!(
            "zone {ZONE}: removed no rule: the 1 rule(s) using $crowdsec_ban were not made by setup"
        )),
        "{report}"
    );
    assert_eq!(world.rules(), rules, "cleanup keeps it too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_rules_removes_setup_s_rules_old_and_new_and_nothing_else() {
    let world = Setup::start().await;
    let other_zone = "abcdefabcdefabcdefabcdefabcdef02";
    // A rule an earlier version of setup wrote, and hand-made rules around it.
    world
        .cf
        .insert_zone_rule(ZONE, PLAIN, "block", OLD_DESCRIPTION);
    let kept = [
        world
            .cf
            .insert_zone_rule(ZONE, PLAIN, "log", "the operator's copy"),
        world.cf.insert_zone_rule(
            ZONE,
            "ip.src in $crowdsec_ban and http.host eq \"a.example\"",
            "block",
            OLD_DESCRIPTION,
        ),
        world
            .cf
            .insert_zone_rule(ZONE, "http.host eq \"b.example\"", "block", ""),
    ];
    // This version's rule, with the carve-out.
    world.ok(HOSTS, &["setup", "--zone", other_zone]).await;
    assert_eq!(world.cf.zone_rules(other_zone)[0].expression, CARVED);

    let report = world.ok(HOSTS, &["setup", "--zone", ZONE]).await;
    assert!(
        report.contains("updated the custom rule setup added"),
        "{report}"
    );
    assert!(
        report.contains("2 other rule(s) using $crowdsec_ban"),
        "{report}"
    );

    let report = world
        .ok(
            HOSTS,
            &["cleanup", "--rules", "--zone", ZONE, "--zone", other_zone],
        )
        .await;
    assert!(
        report.contains(&format!(
            "zone {ZONE}: removed 1 rule(s) setup added; 2 other rule(s) using $crowdsec_ban"
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "zone {other_zone}: removed the custom rule `{CARVED}`"
        )),
        "{report}"
    );
    let left: Vec<String> = world.rules().into_iter().map(|rule| rule.id).collect();
    assert_eq!(left, kept);
    assert!(world.cf.zone_rules(other_zone).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclude_hosts_that_are_no_host_names_are_refused_before_any_request() {
    let world = Setup::start().await;
    let config = world.config("exclude_hosts = [\"*.example.com\"]");
    let out = run(&[
        "-c",
        config.to_str().expect("utf-8"),
        "setup",
        "--zone",
        ZONE,
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out)
            .contains("cloudflare.exclude_hosts: \"*.example.com\": wildcards are not supported"),
        "{}",
        text(&out)
    );
    assert_eq!(world.cf.counters().ruleset_requests, 0);
}

const LISTS: &str = "exclude_hosts = [\"auth.example.com\"]\n\
    [[cloudflare.lists]]\nname = \"crowdsec_ban\"\ndecision_types = [\"ban\"]\n\
    [[cloudflare.lists]]\nname = \"crowdsec_challenge\"\ndecision_types = [\"captcha\"]\n\
    [[cloudflare.lists]]\nname = \"crowdsec_asn\"\ndecision_types = [\"ban\"]\nscope = \"as\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_writes_one_rule_per_list_with_its_action_and_cleanup_removes_them() {
    let world = Setup::start().await;
    let report = world.ok(LISTS, &["setup", "--zone", ZONE]).await;
    // The missing lists are created, each of its kind.
    assert!(report.contains("list crowdsec_ban ("), "{report}");
    assert!(
        report.contains("created list crowdsec_challenge ("),
        "{report}"
    );
    assert!(report.contains("kind asn)"), "{report}");
    let carve = "not (http.host in {\"auth.example.com\"})";
    let mut rules: Vec<(String, String)> = (world.rules().into_iter())
        .map(|rule| (rule.expression, rule.action))
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        vec![
            (
                format!("(ip.src in $crowdsec_ban) and {carve}"),
                "block".to_string()
            ),
            (
                format!("(ip.src in $crowdsec_challenge) and {carve}"),
                "managed_challenge".to_string()
            ),
            (
                format!("(ip.src.asnum in $crowdsec_asn) and {carve}"),
                "block".to_string()
            ),
        ]
    );
    // Idempotent: again, nothing changes.
    let before = world.rules();
    let report = world.ok(LISTS, &["setup", "--zone", ZONE]).await;
    assert_eq!(report.matches("is in place").count(), 3, "{report}");
    assert_eq!(world.rules(), before);
    assert_eq!(world.cf.counters().ruleset_replacements, 0, "never PUT");

    // --action belongs to the one list of list_name.
    let config = world.config(LISTS);
    let out = run(&[
        "-c",
        config.to_str().expect("utf-8 path"),
        "setup",
        "--zone",
        ZONE,
        "--action",
        "block",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("each list's rule takes the list's own `action`"));

    let keep = world
        .cf
        .insert_zone_rule(ZONE, "http.host eq \"b.example\"", "block", "");
    let report = world
        .ok(LISTS, &["cleanup", "--rules", "--zone", ZONE])
        .await;
    assert_eq!(
        report.matches("removed the custom rule").count(),
        3,
        "{report}"
    );
    let left: Vec<String> = world.rules().into_iter().map(|rule| rule.id).collect();
    assert_eq!(left, [keep]);
}
