//! Integration tests of the emulator's zone rulesets endpoints (docs/cloudflare-lists.md §9),
//! the ones a `setup`/`cleanup` command uses, over real HTTP on 127.0.0.1:0.

use std::time::Duration;

use cf_lists_emulator::{Emulator, Permissions, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ZONE: &str = "fedcba9876543210fedcba9876543210";
const BAN_RULE: &str = "ip.src in $crowdsec_ban";

struct Api {
    client: reqwest::Client,
    token: String,
    /// `…/client/v4/zones/{ZONE}/rulesets`.
    rulesets: String,
    /// `…/accounts/{account_id}/rules/lists`.
    lists: String,
}

impl Api {
    async fn call(&self, method: Method, url: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request reaches the emulator");
        let status = response.status();
        (
            status,
            response.json().await.expect("response body is JSON"),
        )
    }

    fn entrypoint(&self) -> String {
        format!(
            "{}/phases/http_request_firewall_custom/entrypoint",
            self.rulesets
        )
    }
}

fn error_code(body: &Value) -> i64 {
    body["errors"][0]["code"].as_i64().unwrap_or(-1)
}

async fn start() -> (Emulator, Api, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings {
        op_latency: (Duration::from_millis(20), Duration::from_millis(40)),
        ..Settings::default()
    };
    let emulator = Emulator::start(settings, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = emulator.base_url();
    let api = Api {
        client: reqwest::Client::new(),
        token: emulator.api_token(),
        rulesets: format!("{base}/zones/{ZONE}/rulesets"),
        lists: format!("{base}/accounts/{}/rules/lists", emulator.account_id()),
    };
    let list_id = emulator.create_list("crowdsec_ban");
    (emulator, api, list_id)
}

fn rule(description: &str, expression: &str, action: &str) -> Value {
    json!({"description": description, "expression": expression, "action": action})
}

// docs/cloudflare-lists.md §9: GET entry point → 404, create it with the rule, later append another
// rule.
#[tokio::test]
async fn setup_flow_creates_the_entrypoint_then_appends() {
    let (emulator, api, _) = start().await;
    let (status, body) = api.call(Method::GET, &api.entrypoint(), None).await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 10003));
    assert_eq!(
        body["errors"][0]["message"],
        "could not find entrypoint ruleset in the http_request_firewall_custom phase"
    );

    let create = json!({
        "name": "default", "kind": "zone", "phase": "http_request_firewall_custom",
        "rules": [rule("crowdsec", BAN_RULE, "block")],
    });
    let (status, created) = api
        .call(Method::POST, &api.rulesets, Some(create.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let ruleset = &created["result"];
    let ruleset_id = ruleset["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (ruleset["kind"].clone(), ruleset["version"].clone()),
        (json!("zone"), json!("1"))
    );
    assert_eq!(ruleset["phase"], "http_request_firewall_custom");
    assert!(ruleset["last_updated"].is_string());
    let first = &ruleset["rules"][0];
    assert_eq!(
        (first["action"].clone(), first["enabled"].clone()),
        (json!("block"), json!(true))
    );
    assert_eq!(first["expression"], BAN_RULE);
    assert_eq!(first["id"].as_str().unwrap().len(), 32);

    let (status, again) = api.call(Method::POST, &api.rulesets, Some(create)).await;
    assert_eq!(
        (status, error_code(&again)),
        (StatusCode::BAD_REQUEST, 20070)
    );

    let (status, found) = api.call(Method::GET, &api.entrypoint(), None).await;
    assert_eq!(
        (status, found["result"]["id"].clone()),
        (StatusCode::OK, json!(ruleset_id))
    );
    // Idempotent look-up, as a setup command does it: by the list reference.
    let rules = found["result"]["rules"].as_array().unwrap();
    assert!(rules
        .iter()
        .any(|r| r["expression"].as_str().unwrap().contains("$crowdsec_ban")));

    let rules_url = format!("{}/{ruleset_id}/rules", api.rulesets);
    let challenge = rule("", "not ip.src in $crowdsec_ban", "managed_challenge");
    let (status, appended) = api.call(Method::POST, &rules_url, Some(challenge)).await;
    assert_eq!(status, StatusCode::OK, "{appended}");
    assert_eq!(appended["result"]["version"], "2");
    assert_eq!(appended["result"]["rules"].as_array().unwrap().len(), 2);

    let (_, got) = api
        .call(Method::GET, &format!("{}/{ruleset_id}", api.rulesets), None)
        .await;
    assert_eq!(got["result"], appended["result"]);
    let (_, listed) = api.call(Method::GET, &api.rulesets, None).await;
    assert_eq!(listed["result"][0]["id"], json!(ruleset_id));
    let rules = emulator.zone_rules(ZONE);
    let actions: Vec<&str> = rules.iter().map(|rule| rule.action.as_str()).collect();
    assert_eq!(actions, vec!["block", "managed_challenge"]);
    assert_eq!(rules[0].description, "crowdsec");
    let counters = emulator.counters();
    assert_eq!(
        (counters.ruleset_requests, counters.ruleset_replacements),
        (7, 0)
    );
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §9, §4.5: actions, expression length, referenced lists, zone ids.
#[tokio::test]
async fn rules_are_validated() {
    let (emulator, api, _) = start().await;
    emulator.insert_zone_rule(ZONE, "ip.src eq 192.0.2.1", "log", "by hand");
    let ruleset_id = api.call(Method::GET, &api.entrypoint(), None).await.1["result"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rules_url = format!("{}/{ruleset_id}/rules", api.rulesets);
    let long = format!("ip.src in {{{}}}", "192.0.2.1 ".repeat(410));
    let cases = [
        (rule("", BAN_RULE, "allow"), 20071),
        (rule("", "  ", "block"), 20071),
        (rule("", &long, "block"), 20071),
        (rule("", "ip.src in $unknown_list", "block"), 20072),
        (
            json!({"expression": BAN_RULE, "action": "block", "enabled": "yes"}),
            10026,
        ),
        (
            json!({"expression": BAN_RULE, "action": "block", "position": {"index": 1}}),
            10026,
        ),
    ];
    for (body, code) in cases {
        let (status, reply) = api.call(Method::POST, &rules_url, Some(body.clone())).await;
        assert_eq!(
            (status, error_code(&reply)),
            (StatusCode::BAD_REQUEST, code),
            "{body}"
        );
    }
    let managed = rule("", "ip.src in $cf.open_proxies", "block");
    assert_eq!(
        api.call(Method::POST, &rules_url, Some(managed)).await.0,
        StatusCode::OK
    );

    let bad_zone = api.rulesets.replace(ZONE, "not-a-zone");
    let (status, body) = api.call(Method::GET, &bad_zone, None).await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 7003));
    let unknown = format!("{}/{}/rules", api.rulesets, "0".repeat(32));
    let (status, _) = api
        .call(Method::POST, &unknown, Some(rule("", BAN_RULE, "block")))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(emulator.zone_rules(ZONE).len(), 2);
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §9: PUT entry point replaces the user's rules; counted so tests can
// forbid it.
#[tokio::test]
async fn put_entrypoint_replaces_every_rule_and_is_counted() {
    let (emulator, api, _) = start().await;
    emulator.insert_zone_rule(
        ZONE,
        "http.host eq \"example.com\"",
        "challenge",
        "user rule",
    );
    let body = json!({"rules": [rule("crowdsec", BAN_RULE, "block")]});
    let (status, replaced) = api.call(Method::PUT, &api.entrypoint(), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["result"]["version"], "2");
    let rules = emulator.zone_rules(ZONE);
    assert_eq!(rules.len(), 1, "the user rule is gone");
    assert_eq!(rules[0].expression, BAN_RULE);
    assert_eq!(emulator.counters().ruleset_replacements, 1);
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §2.1, §7: a referenced list cannot be deleted (10031) until the rule is
// removed.
#[tokio::test]
async fn referenced_list_cannot_be_deleted() {
    let (emulator, api, list_id) = start().await;
    let rule_id = emulator.insert_zone_rule(ZONE, BAN_RULE, "block", "crowdsec");
    let list_url = format!("{}/{list_id}", api.lists);
    let (_, list) = api.call(Method::GET, &list_url, None).await;
    assert_eq!(list["result"]["num_referencing_filters"], 1);
    let (status, refused) = api.call(Method::DELETE, &list_url, None).await;
    assert_eq!(
        (status, error_code(&refused)),
        (StatusCode::BAD_REQUEST, 10031)
    );
    assert_eq!(
        refused["errors"][0]["message"],
        "filters.api.ip_list_in_use"
    );

    let ruleset_id = emulator_ruleset_id(&api).await;
    let rule_url = format!("{}/{ruleset_id}/rules/{rule_id}", api.rulesets);
    let (status, after) = api.call(Method::DELETE, &rule_url, None).await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["result"]["rules"], json!([]));
    let (_, list) = api.call(Method::GET, &list_url, None).await;
    assert_eq!(list["result"]["num_referencing_filters"], 0);
    assert_eq!(
        api.call(Method::DELETE, &list_url, None).await.0,
        StatusCode::OK
    );
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §8: a read-only token can look up the entry point but not change it.
#[tokio::test]
async fn read_only_token_cannot_write_rulesets() {
    let (emulator, api, _) = start().await;
    emulator.set_token_permissions(Permissions::Read);
    assert_eq!(
        api.call(Method::GET, &api.entrypoint(), None).await.0,
        StatusCode::NOT_FOUND
    );
    let create =
        json!({"name": "default", "kind": "zone", "phase": "http_request_firewall_custom"});
    let (status, body) = api.call(Method::POST, &api.rulesets, Some(create)).await;
    assert_eq!((status, error_code(&body)), (StatusCode::FORBIDDEN, 10000));
    assert!(emulator.zone_rules(ZONE).is_empty());
    emulator.shutdown().await;
}

async fn emulator_ruleset_id(api: &Api) -> String {
    let (_, body) = api.call(Method::GET, &api.entrypoint(), None).await;
    body["result"]["id"].as_str().unwrap().to_owned()
}

// docs/cloudflare-lists.md §9: PATCH rewrites one rule in place, with its whole new
// definition: same id and place, new rule and ruleset versions; validated like a new rule;
// refused to a read-only token.
#[tokio::test]
async fn patch_updates_a_rule_in_place() {
    let (emulator, api, _) = start().await;
    let first = emulator.insert_zone_rule(ZONE, "http.host eq \"a.example\"", "log", "mine");
    let second = emulator.insert_zone_rule(ZONE, BAN_RULE, "block", "crowdsec");
    let ruleset_id = emulator_ruleset_id(&api).await;
    let url = format!("{}/{ruleset_id}/rules/{second}", api.rulesets);
    let carved = "(ip.src in $crowdsec_ban) and not (http.host in {\"auth.example\"})";
    let mut body = rule("crowdsec, carved", carved, "managed_challenge");
    body["enabled"] = json!(false);
    let (status, updated) = api.call(Method::PATCH, &url, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let ruleset = &updated["result"];
    assert_eq!(ruleset["version"], "3", "two inserts, then the update");
    assert_eq!(ruleset["rules"][1]["version"], "2");
    assert_eq!(ruleset["rules"][0]["version"], "1");
    let rules = emulator.zone_rules(ZONE);
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].id, first);
    assert_eq!(
        rules[1],
        cf_lists_emulator::Rule {
            id: second.clone(),
            expression: carved.into(),
            action: "managed_challenge".into(),
            description: "crowdsec, carved".into(),
            enabled: false,
        }
    );

    // Fields left out take their defaults: the body is the whole definition.
    let (status, _) = api
        .call(Method::PATCH, &url, Some(rule("", BAN_RULE, "block")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let rules = emulator.zone_rules(ZONE);
    assert_eq!(
        (rules[1].enabled, rules[1].description.as_str()),
        (true, "")
    );

    let bad = rule("x", "ip.src in $missing", "block");
    let (status, body) = api.call(Method::PATCH, &url, Some(bad)).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, 20072)
    );
    let (status, _) = api
        .call(Method::PATCH, &url, Some(rule("x", BAN_RULE, "explode")))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut moved = rule("x", BAN_RULE, "block");
    moved["position"] = json!({"index": 1});
    let (status, _) = api.call(Method::PATCH, &url, Some(moved)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let missing = format!("{}/{ruleset_id}/rules/{}", api.rulesets, "0".repeat(32));
    let (status, _) = api
        .call(Method::PATCH, &missing, Some(rule("x", BAN_RULE, "block")))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(emulator.zone_rules(ZONE)[1].expression, BAN_RULE);

    emulator.set_token_permissions(Permissions::Read);
    let (status, body) = api
        .call(Method::PATCH, &url, Some(rule("x", carved, "block")))
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::FORBIDDEN, 10000));
    assert_eq!(emulator.zone_rules(ZONE)[1].expression, BAN_RULE);
    emulator.shutdown().await;
}
