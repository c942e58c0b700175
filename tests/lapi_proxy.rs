//! Proves the fault proxy (tests/common/proxy.rs) forwards faithfully and injects each fault
//! as documented, with a real LAPI behind it. Needs `bash scripts/install-crowdsec.sh` first.

mod common;

use std::time::{Duration, Instant};

use common::lapi::{Lapi, NewDecision};
use common::proxy::{Fault, FaultProxy};
use serde_json::Value;

/// One `/`, so the LAPI records it as type `fault-proxy-test`, version `1.2` (docs §4.7).
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

    // The User-Agent reached the LAPI, which stores it per key (docs §4.7).
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
