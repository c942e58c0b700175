//! Proves the fault proxy (tests/common/proxy.rs) forwards faithfully, injects each fault and
//! reproduces each newer-LAPI behaviour as documented, with a real LAPI behind it. Needs
//! `bash scripts/install-crowdsec.sh` first.

mod common;

use std::time::{Duration, Instant};

use common::lapi::{Lapi, NewDecision};
use common::proxy::{whole_seconds, Cut, Fault, FaultProxy};
use serde_json::Value;

/// One `/`, so the LAPI records it as type `fault-proxy-test`, version `1.2` (docs/lapi.md §4.7).
const USER_AGENT: &str = "fault-proxy-test/1.2";
const QUIET: &str = r#"{"deleted":null,"new":null}"#;
const STARTUP: &str = "v1/decisions/stream?startup=true";
const DELTA: &str = "v1/decisions/stream";

/// No test request may hang: every one gives up after this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

fn client() -> reqwest::Client {
    cfbouncer::install_tls_provider();
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build the test client")
}

/// `GET {base}{path}` as bouncer `key`: status, headers and body, or the transport error.
async fn get(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    key: &str,
) -> reqwest::Result<(u16, reqwest::header::HeaderMap, String)> {
    let resp = client
        .get(format!("{base}{path}"))
        .header("X-Api-Key", key)
        .send()
        .await?;
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    Ok((status, headers, resp.text().await?))
}

/// Like [`get`], but panics on a transport error; returns status and body.
async fn get_ok(client: &reqwest::Client, base: &str, path: &str, key: &str) -> (u16, String) {
    let (status, _, body) = get(client, base, path, key)
        .await
        .unwrap_or_else(|e| panic!("GET {base}{path}: {e}"));
    (status, body)
}

/// A stream answer without its `duration`s, which change with every call.
fn without_durations(body: &str) -> Value {
    let mut v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    for list in ["new", "deleted"] {
        for d in v[list].as_array_mut().into_iter().flatten() {
            d.as_object_mut()
                .expect("a decision object")
                .remove("duration");
        }
    }
    v
}

/// The `value`s of one stream list, sorted; `null` → empty.
fn values(body: &str, list: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let mut out: Vec<String> = v[list]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|d| d["value"].as_str().expect("value is a string").to_string())
        .collect();
    out.sort();
    out
}

/// 1 000 bans in 10.0.0.0/22: a startup body of ~140 KB, which the LAPI sends chunked.
fn many_bans() -> Vec<NewDecision> {
    (0..1000)
        .map(|i| NewDecision::ban_ip(&format!("10.0.{}.{}", i / 250, i % 250 + 1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_fault_forwards_like_a_direct_request() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-none");
    lapi.add_decisions(&many_bans()).await;
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();

    let (direct_status, direct_headers, direct) =
        get(&http, &lapi.url(), STARTUP, &key).await.unwrap();
    let (status, headers, proxied) = get(&http, &proxy.url(), STARTUP, &key).await.unwrap();
    assert_eq!((status, direct_status), (200, 200), "{proxied}");
    assert_eq!(without_durations(&proxied), without_durations(&direct));
    assert_eq!(values(&proxied, "new").len(), 1000);
    for name in ["content-type", "content-length", "transfer-encoding"] {
        assert_eq!(headers.get(name), direct_headers.get(name), "header {name}");
    }
    assert_eq!(
        headers["transfer-encoding"], "chunked",
        "large bodies stream"
    );

    let (_, headers, quiet) = get(&http, &proxy.url(), DELTA, &key).await.unwrap();
    assert_eq!(quiet, QUIET);
    assert_eq!(
        headers["content-length"], "27",
        "small bodies keep their length"
    );

    // The User-Agent reached the LAPI, which stores it per key (docs/lapi.md §4.7).
    let bouncers: Value =
        serde_json::from_str(&lapi.cscli_ok(&["bouncers", "list", "-o", "json"])).unwrap();
    let row = bouncers
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "t-proxy-none")
        .unwrap_or_else(|| panic!("bouncer row: {bouncers}"));
    assert_eq!(
        (&row["type"], &row["version"]),
        (&"fault-proxy-test".into(), &"1.2".into())
    );
    assert_eq!((proxy.requests(), proxy.faulted()), (2, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn canned_faults_answer_as_named_without_reaching_the_lapi() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-canned");
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();
    get_ok(&http, &lapi.url(), STARTUP, &key).await;
    lapi.add_decisions(&[NewDecision::ban_ip("1.2.3.4")]).await;

    for code in [500, 502, 503] {
        proxy.set_for(Fault::Status(code), 1);
        let (status, body) = get_ok(&http, &proxy.url(), DELTA, &key).await;
        assert_eq!(status, code, "{body}");
        assert!(
            !body.is_empty() && body.len() < 100,
            "a short body: {body:?}"
        );
    }
    proxy.set_for(Fault::Forbidden, 1);
    let (status, headers, body) = get(&http, &proxy.url(), DELTA, &key).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (403, r#"{"message":"access forbidden"}"#)
    );
    assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    proxy.set_for(Fault::Garbage, 1);
    let (status, body) = get_ok(&http, &proxy.url(), DELTA, &key).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");

    // None of these reached the LAPI: the decision is still news for this key.
    let (status, body) = get_ok(&http, &proxy.url(), DELTA, &key).await;
    assert_eq!(
        (status, values(&body, "new")),
        (200, vec!["1.2.3.4".to_string()])
    );
    assert_eq!((proxy.requests(), proxy.faulted()), (6, 5));
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_sends_half_the_body_with_valid_framing() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-truncated");
    lapi.add_decisions(&many_bans()).await;
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();

    let (_, full) = get_ok(&http, &lapi.url(), STARTUP, &key).await;
    proxy.set(Fault::Truncated);
    let (status, headers, half) = get(&http, &proxy.url(), STARTUP, &key).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], half.len().to_string().as_str());
    assert!(headers.get("transfer-encoding").is_none());
    // Durations differ by a few digits between two calls.
    let slack = full.len() / 50;
    assert!(
        half.len().abs_diff(full.len() / 2) < slack,
        "{} bytes of {}",
        half.len(),
        full.len()
    );
    assert!(
        half.starts_with(r#"{"deleted":null,"new":[{"duration":""#),
        "{half:.80}"
    );
    assert!(serde_json::from_str::<Value>(&half).is_err());

    let (status, quiet) = get_ok(&http, &proxy.url(), DELTA, &key).await;
    assert_eq!((status, quiet.as_str()), (200, &QUIET[..13]));
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_answers_after_the_delay() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-slow");
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();

    let delay = Duration::from_millis(400);
    proxy.set_for(Fault::Slow(delay), 1);
    let t0 = Instant::now();
    let (status, body) = get_ok(&http, &proxy.url(), STARTUP, &key).await;
    assert_eq!((status, body.as_str()), (200, QUIET));
    assert!(t0.elapsed() >= delay, "{:?}", t0.elapsed());

    assert_eq!(get_ok(&http, &proxy.url(), DELTA, &key).await.0, 200);
    assert_eq!((proxy.requests(), proxy.faulted()), (2, 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn down_fails_fast_on_new_and_pooled_connections_then_recovers() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-down");
    let proxy = FaultProxy::start(&lapi.url()).await;
    let pooled = client();
    assert_eq!(get_ok(&pooled, &proxy.url(), STARTUP, &key).await.0, 200);

    proxy.set(Fault::Down);
    for http in [&pooled, &client()] {
        for _ in 0..2 {
            let t0 = Instant::now();
            let err = get(http, &proxy.url(), DELTA, &key)
                .await
                .expect_err("no answer while Down");
            assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
            assert!(!err.is_timeout(), "{err:?}");
        }
    }
    assert_eq!((proxy.requests(), proxy.faulted()), (5, 4));

    proxy.set(Fault::None);
    for http in [&pooled, &client()] {
        let (status, body) = get_ok(http, &proxy.url(), DELTA, &key).await;
        assert_eq!((status, body.as_str()), (200, QUIET));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn set_for_fires_exactly_n_times_then_the_persistent_fault_returns() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-set-for");
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();
    let mut statuses = Vec::new();

    proxy.set_for(Fault::Status(503), 3);
    for _ in 0..5 {
        statuses.push(get_ok(&http, &proxy.url(), DELTA, &key).await.0);
    }
    assert_eq!(statuses, [503, 503, 503, 200, 200]);
    assert_eq!(proxy.faulted(), 3);

    statuses.clear();
    proxy.set(Fault::Status(500));
    proxy.set_for(Fault::Forbidden, 2);
    for _ in 0..4 {
        statuses.push(get_ok(&http, &proxy.url(), DELTA, &key).await.0);
    }
    assert_eq!(statuses, [403, 403, 500, 500]);

    proxy.set_for(Fault::Down, 1);
    assert!(get(&http, &proxy.url(), DELTA, &key).await.is_err());
    assert_eq!(get_ok(&http, &proxy.url(), DELTA, &key).await.0, 500);
    proxy.set(Fault::None);
    assert_eq!(get_ok(&http, &proxy.url(), DELTA, &key).await.0, 200);
    assert_eq!((proxy.requests(), proxy.faulted()), (12, 9));
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_then_drop_loses_the_answer_but_the_lapi_moved_last_pull() {
    let lapi = Lapi::start().await;
    let (key, control) = (
        lapi.add_bouncer("t-proxy-lost"),
        lapi.add_bouncer("t-proxy-control"),
    );
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();
    for k in [&key, &control] {
        assert_eq!(get_ok(&http, &lapi.url(), STARTUP, k).await.0, 200);
    }
    lapi.add_decisions(&[NewDecision::ban_ip("1.2.3.4")]).await;

    proxy.set_for(Fault::ForwardThenDrop, 1);
    let t0 = Instant::now();
    let err = get(&http, &proxy.url(), DELTA, &key)
        .await
        .expect_err("the answer is lost");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(!err.is_timeout(), "{err:?}");

    let (_, lost) = get_ok(&http, &lapi.url(), DELTA, &key).await;
    assert_eq!(
        lost, QUIET,
        "the LAPI answered the dropped request and moved on"
    );
    let (_, seen) = get_ok(&http, &lapi.url(), DELTA, &control).await;
    assert_eq!(
        values(&seen, "new"),
        ["1.2.3.4"],
        "another key still gets it"
    );
    assert_eq!(proxy.stream_requests(), ["/v1/decisions/stream"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_requests_records_path_and_query_in_order() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-record");
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();

    get_ok(&http, &proxy.url(), STARTUP, &key).await;
    proxy.set_for(Fault::Down, 1);
    let _ = get(&http, &proxy.url(), DELTA, &key).await;
    get_ok(&http, &proxy.url(), "health", &key).await;
    let scoped = "v1/decisions/stream?startup=true&scopes=ip,range&origins=cscli";
    get_ok(&http, &proxy.url(), scoped, &key).await;
    assert_eq!(
        proxy.stream_requests(),
        [
            "/v1/decisions/stream?startup=true",
            "/v1/decisions/stream",
            "/v1/decisions/stream?startup=true&scopes=ip,range&origins=cscli",
        ]
    );
    assert_eq!((proxy.requests(), proxy.faulted()), (4, 1));
}

/// `{"new": [...], "deleted": [...]}` parsed; panics on anything else.
fn parsed(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:.200}"))
}

/// The `id`s of one stream list, in the order sent; `null` → empty.
fn ids(answer: &Value, list: &str) -> Vec<i64> {
    answer[list]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|d| d["id"].as_i64().expect("id is an integer"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cut_startup_sends_valid_json_with_new_cut_and_deleted_empty() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-cut");
    lapi.add_decisions(&many_bans()).await;
    lapi.add_decisions(&[NewDecision::ban_ip("192.0.2.9").with_duration("-1h")])
        .await;
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();
    let (_, full) = get_ok(&http, &lapi.url(), STARTUP, &key).await;
    let full = parsed(&full);
    let mut all_ids = ids(&full, "new");
    all_ids.sort();
    assert_eq!(all_ids.len(), 1000);
    assert_eq!(values(&full.to_string(), "deleted"), ["192.0.2.9"]);

    // Three pages of 100, once: the next full pull is whole again.
    let cut = Cut::Pages {
        pages: 3,
        page_size: 100,
    };
    proxy.set_for(Fault::CutStartup(cut), 1);
    let (status, headers, body) = get(&http, &proxy.url(), STARTUP, &key).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert!(headers.get("content-length").is_none());
    assert!(body.starts_with(r#"{"new": [{"duration":""#), "{body:.80}");
    assert!(
        body.ends_with(r#"}], "deleted": []}"#),
        "{}",
        &body[body.len() - 80..]
    );
    let answer = parsed(&body);
    assert_eq!(ids(&answer, "new"), all_ids[..300], "the first 300 by id");
    assert_eq!(
        answer["deleted"],
        serde_json::json!([]),
        "the expired one is lost"
    );
    assert_eq!(proxy.cut_pulls(), 1);

    // Deltas pass unchanged and do not use up a `set_for`.
    proxy.set_for(Fault::CutStartup(Cut::After(10)), 1);
    assert_eq!(
        get_ok(&http, &proxy.url(), DELTA, &key).await,
        (200, QUIET.into())
    );
    let (_, body) = get_ok(&http, &proxy.url(), STARTUP, &key).await;
    assert_eq!(ids(&parsed(&body), "new"), all_ids[..10]);
    let (_, body) = get_ok(&http, &proxy.url(), STARTUP, &key).await;
    assert_eq!(ids(&parsed(&body), "new").len(), 1000, "set_for ran out");
    assert_eq!(proxy.cut_pulls(), 2);

    // `set`: the same cut on every full pull; one no larger than the cut passes whole.
    proxy.set(Fault::CutStartup(Cut::After(250)));
    for _ in 0..2 {
        let (_, body) = get_ok(&http, &proxy.url(), STARTUP, &key).await;
        assert_eq!(ids(&parsed(&body), "new"), all_ids[..250]);
    }
    proxy.set(Fault::CutStartup(Cut::After(1000)));
    let (_, whole) = get_ok(&http, &proxy.url(), STARTUP, &key).await;
    assert!(whole.starts_with(r#"{"deleted":[{"#), "{whole:.80}");
    assert_eq!(proxy.cut_pulls(), 4);
    assert_eq!(
        proxy.faulted(),
        5,
        "the full pulls it applied to, cut or not"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn new_address_answers_the_next_delta_like_a_first_pull() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-new-address");
    lapi.add_decisions(&[
        NewDecision::ban_ip("1.2.3.4"),
        NewDecision::ban_ip("192.0.2.9").with_duration("-1h"),
    ])
    .await;
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();
    assert_eq!(get_ok(&http, &proxy.url(), STARTUP, &key).await.0, 200);
    assert_eq!(
        get_ok(&http, &proxy.url(), DELTA, &key).await,
        (200, QUIET.into())
    );

    // A full pull on the way does not use it up.
    proxy.set_for(Fault::NewAddress, 1);
    let (_, startup) = get_ok(&http, &proxy.url(), STARTUP, &key).await;
    assert_eq!(values(&startup, "new"), ["1.2.3.4"]);
    let scoped = "v1/decisions/stream?scopes=ip,range";
    let (status, first) = get_ok(&http, &proxy.url(), scoped, &key).await;
    assert_eq!(status, 200);
    assert_eq!(values(&first, "new"), ["1.2.3.4"], "every active decision");
    assert_eq!(
        values(&first, "deleted"),
        ["192.0.2.9"],
        "and every expired one"
    );
    assert_eq!(
        lapi.log()
            .matches("GET /v1/decisions/stream?scopes=ip%2Crange&startup=true ")
            .count(),
        1,
        "forwarded as a full pull, the scopes kept"
    );
    assert_eq!(proxy.faulted(), 1);
    assert_eq!(
        proxy.stream_requests().last().map(String::as_str),
        Some("/v1/decisions/stream?scopes=ip,range"),
        "recorded as the client sent it"
    );

    // Once: the next delta is an ordinary one again.
    lapi.add_decisions(&[NewDecision::ban_ip("5.6.7.8")]).await;
    let (_, next) = get_ok(&http, &proxy.url(), DELTA, &key).await;
    assert_eq!(values(&next, "new"), ["5.6.7.8"]);
    assert_eq!(values(&next, "deleted"), Vec::<String>::new());
}

/// A version-4 UUID as Go's `uuid.NewString()` writes it.
fn is_uuid_v4(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let hex = |g: &str| {
        g.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| hex(g))
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

/// `-`? then `NhNmNs`, `NmNs` or `Ns`: whole seconds as Go writes them.
fn is_whole_seconds(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let Some(digits) = digits.strip_suffix('s') else {
        return false;
    };
    digits
        .split(['h', 'm'])
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn whole_seconds_rounds_as_go_does() {
    for (go, want) in [
        ("3h59m54.447176566s", "3h59m54s"),
        ("3h59m54.5s", "3h59m55s"),
        ("59m59.5s", "1h0m0s"),
        ("4.267836827s", "4s"),
        ("0.4s", "0s"),
        ("0.5s", "1s"),
        ("1.5µs", "0s"),
        ("0s", "0s"),
        ("-8.995662ms", "0s"),
        ("-0.5s", "-1s"),
        ("-1.030220439s", "-1s"),
        ("-1.6s", "-2s"),
        ("-1h30m0.2s", "-1h30m0s"),
    ] {
        assert_eq!(whole_seconds(go).as_deref(), Some(want), "{go}");
    }
    assert_eq!(whole_seconds("soon"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn uuid_whole_seconds_gives_stable_uuids_and_whole_second_durations() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-uuid");
    lapi.add_decisions(&[
        NewDecision::ban_ip("1.2.3.4"),
        NewDecision::ban_ip("5.6.7.8").with_duration("90s"),
        NewDecision::ban_ip("192.0.2.9").with_duration("-1h"),
    ])
    .await;
    lapi.cscli_ok(&["decisions", "delete", "--ip", "5.6.7.8"]);
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();
    let (_, direct) = get_ok(&http, &lapi.url(), STARTUP, &key).await;
    assert!(direct.contains(".") && !direct.contains("uuid"), "{direct}");

    proxy.set(Fault::UuidWholeSeconds);
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let (status, body) = get_ok(&http, &proxy.url(), STARTUP, &key).await;
        assert_eq!(status, 200);
        let answer = parsed(&body);
        assert_eq!(ids(&answer, "new").len(), 1);
        assert_eq!(ids(&answer, "deleted").len(), 2);
        for list in ["new", "deleted"] {
            for d in answer[list].as_array().expect("a list") {
                let uuid = d["uuid"].as_str().expect("a uuid");
                assert!(is_uuid_v4(uuid), "{uuid}");
                let id = d["id"].as_i64().expect("an id");
                assert_eq!(seen.entry(id).or_insert(uuid.to_string()), uuid, "stable");
                let duration = d["duration"].as_str().expect("a duration");
                assert!(is_whole_seconds(duration), "{duration}");
            }
        }
        let by_value = |value: &str| {
            let all = answer["new"]
                .as_array()
                .into_iter()
                .chain(answer["deleted"].as_array());
            let d = all.flatten().find(|d| d["value"] == value).expect("listed");
            d["duration"].as_str().expect("a duration").to_string()
        };
        // 4 h from the alert's whole second: 3h59m59.6s rounds up.
        let active = by_value("1.2.3.4");
        assert!(
            active.starts_with("3h59m") || active == "4h0m0s",
            "{active}"
        );
        // Soft-deleted a moment ago: `0s` under half a second (never `-0s`), then `-1s`...
        let deleted = by_value("5.6.7.8");
        assert!(
            ["0s", "-1s", "-2s"].contains(&deleted.as_str()),
            "{deleted}"
        );
        // Expired an hour ago (plus the fraction of a second since the alert was made).
        assert!(
            by_value("192.0.2.9").starts_with("-1h0m"),
            "{}",
            by_value("192.0.2.9")
        );
    }
    let uuids: std::collections::BTreeSet<_> = seen.values().collect();
    assert_eq!(uuids.len(), 3, "one per decision: {seen:?}");

    // Deltas too.
    lapi.add_decisions(&[NewDecision::ban_ip("9.9.9.9")]).await;
    let (_, delta) = get_ok(&http, &proxy.url(), DELTA, &key).await;
    let delta = parsed(&delta);
    let d = &delta["new"][0];
    assert_eq!(d["value"], "9.9.9.9");
    assert!(is_uuid_v4(d["uuid"].as_str().expect("a uuid")), "{d}");
    assert!(
        is_whole_seconds(d["duration"].as_str().expect("a duration")),
        "{d}"
    );
    // `deleted` may repeat the soft delete for 2 s (docs/lapi.md §4.3); `new` is empty, so null.
    let (_, quiet) = get_ok(&http, &proxy.url(), DELTA, &key).await;
    assert_eq!(parsed(&quiet)["new"], Value::Null, "empty lists stay null");
}

#[tokio::test(flavor = "multi_thread")]
async fn origins_rewrites_mapped_values_and_filters_on_the_new_origin() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-origins");
    lapi.add_decisions(&[
        NewDecision::ban_ip("1.2.3.4"),
        NewDecision::ban_ip("5.6.7.8"),
        NewDecision::ban_ip("9.9.9.9"),
        NewDecision::ban_ip("10.1.1.1"),
    ])
    .await;
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();
    proxy.set(Fault::origins(&[
        ("1.2.3.4", "console"),
        ("5.6.7.8", "remediation_sync"),
        ("10.1.1.1", "cscli-import"),
    ]));
    let origin_of = |body: &str, list: &str| -> Vec<(String, String)> {
        let answer = parsed(body);
        let mut out: Vec<_> = answer[list]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|d| {
                (
                    d["value"].as_str().unwrap().into(),
                    d["origin"].as_str().unwrap().into(),
                )
            })
            .collect();
        out.sort();
        out
    };
    let (_, body) = get_ok(&http, &proxy.url(), STARTUP, &key).await;
    let pair = |v: &str, o: &str| (v.to_string(), o.to_string());
    assert_eq!(
        origin_of(&body, "new"),
        [
            pair("1.2.3.4", "console"),
            pair("10.1.1.1", "cscli-import"),
            pair("5.6.7.8", "remediation_sync"),
            pair("9.9.9.9", "cscli"),
        ]
    );

    // The client's `origins=` filter sees the new origins.
    let only = |origins: &str| format!("{STARTUP}&origins={origins}");
    let (_, console) = get_ok(&http, &proxy.url(), &only("console"), &key).await;
    assert_eq!(origin_of(&console, "new"), [pair("1.2.3.4", "console")]);
    let (_, two) = get_ok(&http, &proxy.url(), &only("cscli,remediation_sync"), &key).await;
    assert_eq!(
        origin_of(&two, "new"),
        [
            pair("5.6.7.8", "remediation_sync"),
            pair("9.9.9.9", "cscli")
        ]
    );
    let (_, none) = get_ok(&http, &proxy.url(), &only("CAPI"), &key).await;
    assert_eq!(none, QUIET);

    // Deletions carry the rewritten origin too.
    lapi.cscli_ok(&["decisions", "delete", "--ip", "1.2.3.4"]);
    let (_, delta) = get_ok(&http, &proxy.url(), DELTA, &key).await;
    assert_eq!(origin_of(&delta, "deleted"), [pair("1.2.3.4", "console")]);
}

/// `POST {base}v1/usage-metrics` with `payload` as bouncer `key`: status and body.
async fn push(http: &reqwest::Client, base: &str, key: &str, payload: &Value) -> (u16, String) {
    let resp = http
        .post(format!("{base}v1/usage-metrics"))
        .header("X-Api-Key", key)
        .json(payload)
        .send()
        .await
        .expect("the proxy answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("a body"))
}

/// A payload as a bouncer sends it (docs/lapi.md §9.2).
fn usage_payload() -> Value {
    serde_json::json!({"remediation_components": [{
        "type": "fault-proxy-test", "version": "1.2",
        "os": {"name": "linux", "version": "6.1.0"},
        "feature_flags": [], "utc_startup_timestamp": 1_700_000_000,
        "metrics": [{"meta": {"window_size_seconds": 1800, "utc_now_timestamp": 1_700_001_800},
                     "items": [{"name": "active_decisions", "value": 2, "unit": "ip",
                                "labels": {"origin": "cscli", "ip_type": "ipv4"}}]}]}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_metrics_answers_201_or_422_naming_the_missing_field() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-usage");
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();
    let valid = usage_payload();
    assert_eq!(
        push(&http, &proxy.url(), &key, &valid).await,
        (404, String::new()),
        "1.4.6"
    );

    proxy.set(Fault::UsageMetrics);
    assert_eq!(get_ok(&http, &proxy.url(), STARTUP, &key).await.0, 200);
    lapi.add_decisions(&[NewDecision::ban_ip("1.2.3.4")]).await;
    assert_eq!(
        push(&http, &proxy.url(), &key, &valid).await,
        (201, String::new())
    );
    assert_eq!(proxy.usage_metrics(), std::slice::from_ref(&valid));
    // Without `os`, and with empty strings, LAPI takes it too.
    let mut bare = valid.clone();
    bare["remediation_components"][0]
        .as_object_mut()
        .unwrap()
        .remove("os");
    bare["remediation_components"][0]["version"] = "".into();
    bare["remediation_components"][0]["metrics"][0]["items"] = serde_json::json!([]);
    assert_eq!(push(&http, &proxy.url(), &key, &bare).await.0, 201);

    let component = "/remediation_components/0";
    for (pointer, field) in [
        ("", "version"),
        ("", "utc_startup_timestamp"),
        ("/os", "name"),
        ("/os", "version"),
        ("/metrics/0/meta", "window_size_seconds"),
        ("/metrics/0/meta", "utc_now_timestamp"),
        ("/metrics/0", "meta"),
        ("/metrics/0", "items"),
        ("/metrics/0/items/0", "name"),
        ("/metrics/0/items/0", "value"),
        ("/metrics/0/items/0", "unit"),
    ] {
        let mut payload = valid.clone();
        let parent = payload
            .pointer_mut(&format!("{component}{pointer}"))
            .and_then(Value::as_object_mut)
            .expect("the field's object");
        parent.remove(field);
        let (status, body) = push(&http, &proxy.url(), &key, &payload).await;
        let path = format!("remediation_components.0{pointer}.{field}")
            .replace('/', ".")
            .replace("0..", "0.");
        let want = format!("validation failure list:\n{path} in body is required");
        assert_eq!(status, 422, "{body}");
        assert_eq!(parsed(&body)["message"], want.as_str(), "without {path}");
    }
    let mut two_missing = valid.clone();
    let first = &mut two_missing["remediation_components"][0];
    first["os"] = serde_json::json!({});
    let (status, body) = push(&http, &proxy.url(), &key, &two_missing).await;
    assert_eq!(status, 422);
    assert_eq!(
        parsed(&body)["message"],
        "validation failure list:\nremediation_components.0.os.name in body is required\n\
         remediation_components.0.os.version in body is required"
    );

    for (payload, want) in [
        (serde_json::json!({}), "Missing remediation component data"),
        (
            serde_json::json!({"remediation_components": [valid["remediation_components"][0], valid["remediation_components"][0]]}),
            "Payload has more than one remediation component",
        ),
    ] {
        let (status, body) = push(&http, &proxy.url(), &key, &payload).await;
        assert_eq!(
            (status, parsed(&body)["message"].as_str()),
            (400, Some(want))
        );
    }
    let mut wrong_type = valid.clone();
    wrong_type["remediation_components"][0]["utc_startup_timestamp"] = "yesterday".into();
    assert_eq!(push(&http, &proxy.url(), &key, &wrong_type).await.0, 400);

    // The LAPI checks the key, and the check moved nothing: the delta still has the news.
    let (status, body) = push(&http, &proxy.url(), "not-a-key", &valid).await;
    assert_eq!(
        (status, body.as_str()),
        (403, r#"{"message":"access forbidden"}"#)
    );
    let (_, delta) = get_ok(&http, &proxy.url(), DELTA, &key).await;
    assert_eq!(values(&delta, "new"), ["1.2.3.4"]);
    assert_eq!(proxy.usage_metrics().len(), 2, "only the accepted ones");
}

#[tokio::test(flavor = "multi_thread")]
async fn all_combines_the_modes_on_one_answer() {
    let lapi = Lapi::start().await;
    let key = lapi.add_bouncer("t-proxy-all");
    lapi.add_decisions(&many_bans()).await;
    let proxy = FaultProxy::start(&lapi.url()).await;
    let http = client();
    proxy.set(Fault::All(vec![
        Fault::origins(&[("10.0.0.1", "console")]),
        Fault::UuidWholeSeconds,
        Fault::CutStartup(Cut::After(5)),
        Fault::UsageMetrics,
    ]));
    let (_, body) = get_ok(&http, &proxy.url(), STARTUP, &key).await;
    assert!(body.ends_with(r#"], "deleted": []}"#));
    let answer = parsed(&body);
    let new = answer["new"].as_array().expect("a list");
    assert_eq!(new.len(), 5);
    assert_eq!(new[0]["value"], "10.0.0.1");
    assert_eq!(new[0]["origin"], "console");
    assert!(new
        .iter()
        .all(|d| is_uuid_v4(d["uuid"].as_str().unwrap_or_default())));
    assert_eq!(
        push(&http, &proxy.url(), &key, &usage_payload()).await.0,
        201
    );
    assert_eq!(
        get_ok(&http, &proxy.url(), DELTA, &key).await,
        (200, QUIET.into())
    );
    // The delta went through the uuid rewrite, which had nothing to change.
    assert_eq!((proxy.cut_pulls(), proxy.faulted()), (1, 3));
}

#[test]
#[should_panic(expected = "Fault::All takes only the modes that reproduce newer LAPIs")]
fn all_refuses_the_other_faults() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let proxy = rt.block_on(FaultProxy::start("http://127.0.0.1:9/"));
    proxy.set(Fault::All(vec![Fault::UuidWholeSeconds, Fault::Down]));
}
