//! Proves the real-LAPI harness (tests/common/lapi.rs) behaves as docs/lapi.md says.
//! Needs `bash scripts/install-crowdsec.sh` first.

mod common;

use common::lapi::{alert_json, rfc3339_utc, Lapi, NewDecision};
use serde_json::{json, Value};

const QUIET: &str = r#"{"deleted":null,"new":null}"#;

/// The decisions of one stream list, as sorted (scope, value, type) triples; `null` → empty.
fn triples(list: &Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = list
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let s = |k: &str| {
                d[k].as_str()
                    .unwrap_or_else(|| panic!("{k} not a string in {d}"))
                    .to_string()
            };
            (s("scope"), s("value"), s("type"))
        })
        .collect();
    out.sort();
    out
}

fn triple(scope: &str, value: &str, kind: &str) -> (String, String, String) {
    (scope.to_string(), value.to_string(), kind.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_stream_shows_added_decisions_with_documented_shapes() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-shapes");
    assert_eq!(key.len(), 32, "cscli key: {key:?}");
    lapi.add_decisions(&[
        NewDecision::ban_ip("1.2.3.4"),
        NewDecision::ban_range("10.0.0.0/24"),
        NewDecision::ban_ip("2001:db8::1"),
        NewDecision::ban_ip("5.6.7.8").with_kind("captcha"),
        NewDecision::ban_ip("FR").with_scope("Country"),
    ])
    .await;

    let startup = lapi.stream(&key, true).await;
    assert_eq!(startup["deleted"], Value::Null, "{startup}");
    assert_eq!(
        triples(&startup["new"]),
        vec![
            triple("Ip", "1.2.3.4", "ban"),
            triple("Ip", "2001:db8::1", "ban"),
            triple("Ip", "5.6.7.8", "captcha"),
            triple("Range", "10.0.0.0/24", "ban"),
        ],
        "Country is outside the default scopes: {startup}"
    );
    for d in startup["new"].as_array().unwrap() {
        let mut keys: Vec<_> = d.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["duration", "id", "origin", "scenario", "scope", "type", "value"],
            "{d}"
        );
        assert!(d["id"].is_i64(), "{d}");
        assert_eq!(
            (d["origin"].as_str(), d["scenario"].as_str()),
            (Some("cscli"), Some("test/manual"))
        );
        assert!(
            d["duration"].as_str().unwrap().starts_with("3h59m"),
            "4h from a whole second: {d}"
        );
    }

    let (status, body) = lapi.bouncer_get("v1/decisions/stream", Some(&key)).await;
    assert_eq!((status, body.as_str()), (200, QUIET), "a quiet delta");
    let country = lapi.stream_with(&key, "startup=true&scopes=country").await;
    assert_eq!(
        triples(&country["new"]),
        vec![triple("Country", "FR", "ban")]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cscli_delete_shows_in_next_delta_with_negative_duration() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-delete");
    lapi.add_decisions(&[
        NewDecision::ban_ip("1.2.3.4"),
        NewDecision::ban_ip("5.5.5.5"),
    ])
    .await;
    assert_eq!(triples(&lapi.stream(&key, true).await["new"]).len(), 2);

    lapi.cscli_ok(&["decisions", "delete", "--ip", "1.2.3.4"]);
    let delta = lapi.stream(&key, false).await;
    assert_eq!(delta["new"], Value::Null, "{delta}");
    assert_eq!(
        triples(&delta["deleted"]),
        vec![triple("Ip", "1.2.3.4", "ban")]
    );
    let duration = delta["deleted"][0]["duration"].as_str().unwrap();
    assert!(
        duration.starts_with('-'),
        "deleted duration is negative: {delta}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chosen_origin_scenario_and_negative_duration_are_kept() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-fields");
    lapi.add_decisions(&[
        NewDecision::ban_ip("8.8.8.8")
            .with_origin("lists")
            .with_scenario("test/list"),
        NewDecision::ban_ip("9.9.9.9").with_duration("-1h"),
        NewDecision::ban_ip("7.7.7.7").with_duration("90s"),
    ])
    .await;
    let startup = lapi.stream(&key, true).await;
    assert_eq!(
        triples(&startup["new"]),
        vec![
            triple("Ip", "7.7.7.7", "ban"),
            triple("Ip", "8.8.8.8", "ban")
        ]
    );
    assert_eq!(
        triples(&startup["deleted"]),
        vec![triple("Ip", "9.9.9.9", "ban")]
    );
    let by_value = |v: &str| {
        startup["new"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["value"] == v)
            .unwrap()
            .clone()
    };
    assert_eq!(by_value("8.8.8.8")["origin"], "lists");
    assert_eq!(by_value("8.8.8.8")["scenario"], "test/list");
    let short = by_value("7.7.7.7")["duration"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(short.starts_with("1m2"), "90s from a whole second: {short}");
    assert!(
        startup["deleted"][0]["duration"]
            .as_str()
            .unwrap()
            .starts_with("-1h"),
        "{startup}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_decisions_and_wrong_key_gets_403() {
    let mut lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-restart");
    lapi.add_decisions(&[NewDecision::ban_ip("1.2.3.4")]).await;
    let url = lapi.url();

    lapi.restart().await;
    assert_eq!(lapi.url(), url, "same port after restart");
    let startup = lapi.stream(&key, true).await;
    assert_eq!(
        triples(&startup["new"]),
        vec![triple("Ip", "1.2.3.4", "ban")]
    );
    // The cached machine JWT died with the old process (per-process secret): must re-login.
    lapi.add_decisions(&[NewDecision::ban_ip("6.6.6.6")]).await;
    assert_eq!(
        triples(&lapi.stream(&key, false).await["new"]),
        vec![triple("Ip", "6.6.6.6", "ban")]
    );

    let forbidden = r#"{"message":"access forbidden"}"#;
    for bad in [Some("wrong-key"), Some(""), None] {
        let (status, body) = lapi
            .bouncer_get("v1/decisions/stream?startup=true", bad)
            .await;
        assert_eq!((status, body.as_str()), (403, forbidden), "key {bad:?}");
    }
    lapi.stop().await;
    lapi.stop().await; // idempotent
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_run_side_by_side() {
    let (a, b) = tokio::join!(Lapi::start(), Lapi::start());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    let (key_a, key_b) = (a.add_bouncer("t-a"), b.add_bouncer("t-b"));
    a.add_decisions(&[NewDecision::ban_ip("1.1.1.1")]).await;
    b.add_decisions(&[NewDecision::ban_range("2.2.0.0/16")])
        .await;
    assert_eq!(
        triples(&a.stream(&key_a, true).await["new"]),
        vec![triple("Ip", "1.1.1.1", "ban")]
    );
    assert_eq!(
        triples(&b.stream(&key_b, true).await["new"]),
        vec![triple("Range", "2.2.0.0/16", "ban")]
    );
    let (status, _) = b.bouncer_get("v1/decisions/stream", Some(&key_a)).await;
    assert_eq!(status, 403, "a's key means nothing to b");
}

#[tokio::test(flavor = "multi_thread")]
async fn dir_is_kept_and_lapi_stopped_when_a_test_panics() {
    let lapi = Lapi::start().await;
    let (dir, port) = (lapi.dir().to_path_buf(), lapi.port());
    let joined = std::thread::spawn(move || {
        let _lapi = lapi;
        panic!("intentional panic: checks that the harness keeps the LAPI dir");
    })
    .join();
    assert!(joined.is_err());
    assert!(dir.join("lapi.log").is_file() && dir.join("data/crowdsec.db").is_file());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "LAPI still listening"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rfc3339_and_alert_body() {
    assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339_utc(951_825_600), "2000-02-29T12:00:00Z");
    assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");

    let d = [
        NewDecision::ban_range("10.0.0.0/8").with_duration("-5m"),
        NewDecision::ban_ip("1.2.3.4"),
    ];
    let body = alert_json(&d, "2026-01-02T03:04:05Z");
    assert_eq!(
        body[0]["source"],
        json!({"scope": "Range", "value": "10.0.0.0/8"})
    );
    assert_eq!(
        (&body[0]["start_at"], &body[0]["stop_at"]),
        (
            &json!("2026-01-02T03:04:05Z"),
            &json!("2026-01-02T03:04:05Z")
        )
    );
    assert_eq!(
        body[0]["decisions"][0],
        json!({"duration": "-5m", "origin": "cscli", "scenario": "test/manual", "scope": "Range", "type": "ban", "value": "10.0.0.0/8"})
    );
    assert_eq!(body[0]["decisions"].as_array().unwrap().len(), 2);
}
