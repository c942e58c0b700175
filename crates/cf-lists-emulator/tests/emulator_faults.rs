//! Integration tests of the emulator's injected faults, permissions and configurable rate
//! limit, over real HTTP on 127.0.0.1:0. Each fault must fire exactly n times, then stop.

use std::future::Future;
use std::time::{Duration, Instant};

use cf_lists_emulator::{Emulator, Permissions, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A thin client: `send` exposes transport errors, `call` expects a JSON answer.
struct Api {
    client: reqwest::Client,
    token: String,
}

impl Api {
    async fn send(&self, method: Method, url: &str, body: Option<Value>) -> reqwest::Response {
        self.try_send(method, url, body)
            .await
            .expect("request reaches the emulator")
    }

    async fn try_send(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut request = self.client.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await
    }

    async fn call(&self, method: Method, url: &str, body: Option<Value>) -> (StatusCode, Value) {
        let response = self.send(method, url, body).await;
        let status = response.status();
        (
            status,
            response.json().await.expect("response body is JSON"),
        )
    }

    /// Submits `[{"ip": …}]` and returns the operation id, asserting it was accepted.
    async fn write(&self, items_url: &str, ips: &[&str]) -> String {
        let (status, body) = self
            .call(Method::POST, items_url, Some(ip_items(ips)))
            .await;
        assert_eq!(status, StatusCode::OK, "write refused: {body}");
        body["result"]["operation_id"].as_str().unwrap().to_owned()
    }

    /// Polls an operation until it is `completed` or `failed` (5 s timeout).
    async fn wait_op(&self, lists_url: &str, op_id: &str) -> Value {
        let url = format!("{lists_url}/bulk_operations/{op_id}");
        let wait = async {
            loop {
                let (_, body) = self.call(Method::GET, &url, None).await;
                let result = body["result"].clone();
                if result["status"] == "completed" || result["status"] == "failed" {
                    return result;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        within(Duration::from_secs(5), wait).await
    }
}

struct Setup {
    emulator: Emulator,
    api: Api,
    /// `…/accounts/{account_id}/rules/lists`.
    lists: String,
    /// `…/rules/lists/{list_id}/items`.
    items: String,
    list_id: String,
}

/// A reqwest client; this crate builds reqwest without a default rustls crypto provider.
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn fast() -> Settings {
    Settings {
        op_latency: (Duration::from_millis(20), Duration::from_millis(40)),
        ..Settings::default()
    }
}

async fn start(settings: Settings) -> Setup {
    let emulator = Emulator::start(settings, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let lists = format!(
        "{}/accounts/{}/rules/lists",
        emulator.base_url(),
        emulator.account_id()
    );
    let list_id = emulator.create_list("crowdsec_ban");
    let api = Api {
        client: client(),
        token: emulator.api_token(),
    };
    Setup {
        items: format!("{lists}/{list_id}/items"),
        lists,
        list_id,
        api,
        emulator,
    }
}

fn ip_items(ips: &[&str]) -> Value {
    Value::Array(ips.iter().map(|ip| json!({ "ip": ip })).collect())
}

async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .expect("finished in time")
}

fn ips(emulator: &Emulator, list_id: &str) -> Vec<String> {
    let items = emulator.items(list_id).into_iter();
    items.map(|item| item.ip).collect()
}

#[tokio::test]
async fn slow_requests_are_handled_at_once_and_answered_late() {
    let Setup {
        emulator,
        api,
        items,
        list_id,
        ..
    } = start(fast()).await;
    emulator.slow_next_requests(2, Duration::from_millis(400));
    let impatient = client();
    let timed_out = impatient
        .post(&items)
        .bearer_auth(&api.token)
        .json(&ip_items(&["1.2.3.4"]))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(timed_out.unwrap_err().is_timeout());
    assert_eq!(emulator.operation_count(), 1, "the write was handled");
    assert_eq!(emulator.counters().writes, 1);

    let started = Instant::now();
    assert_eq!(api.call(Method::GET, &items, None).await.0, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "second is slow"
    );
    let started = Instant::now();
    assert_eq!(api.call(Method::GET, &items, None).await.0, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "third is not"
    );
    assert_eq!(ips(&emulator, &list_id), vec!["1.2.3.4"]);
    assert_eq!(emulator.counters().faults_injected, 2);

    // A held response does not keep the server from stopping.
    emulator.slow_next_requests(1, Duration::from_secs(3600));
    let pending = tokio::spawn(async move { api.try_send(Method::GET, &items, None).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    within(Duration::from_secs(5), emulator.shutdown()).await;
    let _ = within(Duration::from_secs(5), pending).await;
}

#[tokio::test]
async fn lost_write_response_still_applies_the_write() {
    let settings = Settings {
        op_latency: (Duration::from_millis(300), Duration::from_millis(300)),
        ..fast()
    };
    let Setup {
        emulator,
        api,
        items,
        lists,
        list_id,
    } = start(settings).await;
    emulator.lose_next_write_responses(1);
    assert_eq!(api.call(Method::GET, &items, None).await.0, StatusCode::OK);
    let refused = api.call(Method::POST, &items, Some(json!({}))).await;
    assert_eq!(
        refused.0,
        StatusCode::BAD_REQUEST,
        "refused writes are answered"
    );

    let lost = api
        .try_send(Method::POST, &items, Some(ip_items(&["1.2.3.4"])))
        .await;
    assert!(lost.is_err(), "no response: {lost:?}");
    assert!(emulator.operation_pending());
    assert_eq!(
        (emulator.counters().writes, emulator.operation_count()),
        (1, 1)
    );
    let applied = async {
        while ips(&emulator, &list_id).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within(Duration::from_secs(5), applied).await;
    assert!(!emulator.operation_pending());

    let op = api.write(&items, &["5.6.7.8"]).await;
    assert_eq!(api.wait_op(&lists, &op).await["status"], "completed");
    assert_eq!(emulator.counters().faults_injected, 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn malformed_responses_are_not_json_and_apply_nothing() {
    let Setup {
        emulator,
        api,
        items,
        ..
    } = start(fast()).await;
    emulator.malformed_next_requests(2);
    let write = api
        .send(Method::POST, &items, Some(ip_items(&["1.2.3.4"])))
        .await;
    assert_eq!(write.status(), StatusCode::OK);
    let text = write.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    let read = api.send(Method::GET, &items, None).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert!(read.json::<Value>().await.is_err());
    let (status, body) = api.call(Method::GET, &items, None).await;
    assert_eq!(
        (status, body["success"].clone()),
        (StatusCode::OK, json!(true))
    );
    assert_eq!(emulator.operation_count(), 0, "nothing applied");
    assert_eq!(emulator.counters().faults_injected, 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn reset_connections_fail_new_connections_only() {
    let Setup {
        emulator,
        api,
        items,
        ..
    } = start(fast()).await;
    assert_eq!(api.call(Method::GET, &items, None).await.0, StatusCode::OK);
    emulator.reset_next_connections(2);
    let fresh = client();
    for _ in 0..2 {
        let reset = fresh.get(&items).bearer_auth(&api.token).send().await;
        assert!(reset.is_err(), "connection reset: {reset:?}");
    }
    let ok = fresh
        .get(&items)
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let counters = emulator.counters();
    assert_eq!((counters.faults_injected, counters.requests), (2, 2));
    emulator.shutdown().await;
}

#[tokio::test]
async fn reset_requests_abort_keep_alive_connections() {
    let Setup {
        emulator,
        api,
        items,
        ..
    } = start(fast()).await;
    assert_eq!(api.call(Method::GET, &items, None).await.0, StatusCode::OK);
    emulator.reset_next_requests(1);
    let reset = api
        .try_send(Method::POST, &items, Some(ip_items(&["1.2.3.4"])))
        .await;
    assert!(reset.is_err(), "connection aborted: {reset:?}");
    assert_eq!(emulator.operation_count(), 0, "nothing applied");
    assert_eq!(api.call(Method::GET, &items, None).await.0, StatusCode::OK);
    assert_eq!(emulator.counters().faults_injected, 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn stuck_operation_stays_pending_for_its_duration() {
    let Setup {
        emulator,
        api,
        items,
        lists,
        ..
    } = start(fast()).await;
    emulator.stick_next_operations(1, Duration::from_millis(1200));
    let started = Instant::now();
    let stuck = api.write(&items, &["1.2.3.4"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = format!("{lists}/bulk_operations/{stuck}");
    let status = api.call(Method::GET, &url, None).await.1["result"]["status"].clone();
    assert!(status == "pending" || status == "running", "{status}");
    let refused = api
        .call(Method::POST, &items, Some(ip_items(&["5.6.7.8"])))
        .await;
    assert_eq!(refused.0, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(api.wait_op(&lists, &stuck).await["status"], "completed");
    assert!(started.elapsed() >= Duration::from_millis(1200));

    let started = Instant::now();
    let next = api.write(&items, &["5.6.7.8"]).await;
    api.wait_op(&lists, &next).await;
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "only one stuck"
    );
    assert_eq!(emulator.counters().faults_injected, 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn poisoned_ip_fails_only_operations_containing_it() {
    let Setup {
        emulator,
        api,
        items,
        lists,
        list_id,
    } = start(fast()).await;
    emulator.fail_operations_containing("1.2.3.4/32");
    let op = api.write(&items, &["5.6.7.8", "1.2.3.4"]).await;
    let failed = api.wait_op(&lists, &op).await;
    assert_eq!(
        (failed["status"].clone(), failed["error"].clone()),
        (json!("failed"), json!("invalid item 1.2.3.4"))
    );
    assert!(emulator.items(&list_id).is_empty(), "nothing applied");
    let op = api.write(&items, &["5.6.7.8"]).await;
    assert_eq!(api.wait_op(&lists, &op).await["status"], "completed");
    let op = api.write(&items, &["5.6.7.8"]).await;
    assert_eq!(api.wait_op(&lists, &op).await["status"], "completed");

    emulator.insert_item(&list_id, "1.2.3.4", None);
    let id = emulator.items(&list_id)[0].id.clone();
    let delete = json!({"items": [{"id": id}]});
    let (_, body) = api.call(Method::DELETE, &items, Some(delete.clone())).await;
    let op = body["result"]["operation_id"].as_str().unwrap();
    assert_eq!(api.wait_op(&lists, op).await["status"], "failed", "by id");

    emulator.clear_poison();
    let (_, body) = api.call(Method::DELETE, &items, Some(delete)).await;
    let op = body["result"]["operation_id"].as_str().unwrap();
    assert_eq!(api.wait_op(&lists, op).await["status"], "completed");
    assert_eq!(ips(&emulator, &list_id), vec!["5.6.7.8"]);
    assert_eq!(emulator.counters().faults_injected, 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn read_permission_refuses_writes_and_none_refuses_all() {
    let Setup {
        emulator,
        api,
        items,
        lists,
        list_id,
    } = start(fast()).await;
    emulator.set_token_permissions(Permissions::Read);
    assert_eq!(api.call(Method::GET, &items, None).await.0, StatusCode::OK);
    let writes = [
        (Method::POST, items.clone(), Some(ip_items(&["1.2.3.4"]))),
        (Method::PUT, items.clone(), Some(json!([]))),
        (
            Method::POST,
            lists.clone(),
            Some(json!({"name": "x", "kind": "ip"})),
        ),
        (Method::DELETE, format!("{lists}/{list_id}"), None),
    ];
    for (method, url, body) in writes {
        let (status, body) = api.call(method, &url, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{url}");
        assert_eq!(body["errors"][0]["code"], 10000);
        assert_eq!(body["errors"][0]["message"], "Authentication error");
    }
    assert_eq!(emulator.operation_count(), 0);

    emulator.set_token_permissions(Permissions::None);
    let (status, body) = api.call(Method::GET, &items, None).await;
    assert_eq!(
        (status, body["errors"][0]["code"].clone()),
        (StatusCode::FORBIDDEN, json!(10000))
    );
    emulator.set_token_permissions(Permissions::Edit);
    let op = api.write(&items, &["1.2.3.4"]).await;
    assert_eq!(api.wait_op(&lists, &op).await["status"], "completed");
    emulator.shutdown().await;
}

#[tokio::test]
async fn rate_limit_window_is_configurable_and_recovers() {
    let settings = Settings {
        global_rate_limit: Some(2),
        rate_limit_window: Duration::from_secs(2),
        ..fast()
    };
    let Setup {
        emulator,
        api,
        items,
        ..
    } = start(settings).await;
    for _ in 0..2 {
        let response = api.send(Method::GET, &items, None).await;
        assert_eq!(
            response.headers()["ratelimit-policy"],
            "\"default\";q=2;w=2"
        );
    }
    let limited = api.send(Method::GET, &items, None).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["message"],
        "More than 2 requests per 2 seconds reached. Please wait and consider throttling your request speed"
    );
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(api.call(Method::GET, &items, None).await.0, StatusCode::OK);

    emulator.set_rate_limit(Some(1), Duration::from_secs(1));
    assert_eq!(api.call(Method::GET, &items, None).await.0, StatusCode::OK);
    let limited = api.call(Method::GET, &items, None).await;
    assert_eq!(limited.0, StatusCode::TOO_MANY_REQUESTS);
    emulator.set_rate_limit(None, Duration::from_secs(1));
    assert_eq!(api.call(Method::GET, &items, None).await.0, StatusCode::OK);
    assert_eq!(emulator.counters().rate_limited, 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn admin_endpoint_arms_the_new_switches() {
    let Setup {
        emulator,
        api,
        items,
        ..
    } = start(fast()).await;
    let admin = client();
    let url = format!("http://{}/__emulator/faults", emulator.addr());
    let post = |body: Value| admin.post(&url).json(&body).send();
    let armed = json!({
        "slow_next_requests": {"n": 0, "delay_ms": 10},
        "lose_next_write_responses": {"n": 0},
        "reset_next_connections": {"n": 0},
        "reset_next_requests": {"n": 0},
        "stick_next_operations": {"n": 0, "duration_ms": 10},
        "malformed_next_requests": {"n": 1},
        "fail_operations_containing": "10.0.0.1",
        "clear_poison": true,
        "permissions": "read",
        "rate_limit": {"limit": 100, "window_secs": 60},
    });
    assert_eq!(post(armed).await.unwrap().status(), StatusCode::OK);
    let malformed = api.send(Method::GET, &items, None).await;
    assert!(malformed.json::<Value>().await.is_err());
    let refused = api
        .call(Method::POST, &items, Some(ip_items(&["1.2.3.4"])))
        .await;
    assert_eq!(refused.0, StatusCode::FORBIDDEN);
    let limited = api.send(Method::GET, &items, None).await;
    assert_eq!(
        limited.headers()["ratelimit-policy"],
        "\"default\";q=100;w=60"
    );

    for bad in [
        json!({"fail_operations_containing": "nope"}),
        json!({"rate_limit": {"limit": 0}}),
        json!({"permissions": "admin"}),
    ] {
        assert_eq!(post(bad).await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    let state_url = format!("http://{}/__emulator/state", emulator.addr());
    let state: Value = admin
        .get(state_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["operation_count"], 0);
    assert_eq!(state["counters"]["faults_injected"], 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn rate_limit_headers_count_per_token_and_can_be_switched_off() {
    let settings = Settings {
        global_rate_limit: Some(5),
        rate_limit_window: Duration::from_secs(60),
        ..fast()
    };
    let Setup {
        emulator,
        api,
        items,
        ..
    } = start(settings).await;
    let remaining = |response: &reqwest::Response| {
        let value = response.headers()["ratelimit"].to_str().unwrap().to_owned();
        let r = value.split(';').find_map(|p| p.strip_prefix("r=")).unwrap();
        r.parse::<u32>().unwrap()
    };
    let first = api.send(Method::GET, &items, None).await;
    assert_eq!(remaining(&first), 4);
    let second = api.send(Method::GET, &items, None).await;
    assert_eq!(remaining(&second), 3);
    // Another token (refused, but counted) has a window of its own.
    let other = Api {
        client: client(),
        token: "another-token".into(),
    };
    let refused = other.send(Method::GET, &items, None).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(remaining(&refused), 4);
    assert_eq!(remaining(&api.send(Method::GET, &items, None).await), 2);

    let admin = client();
    let url = format!("http://{}/__emulator/faults", emulator.addr());
    let off = admin
        .post(&url)
        .json(&json!({"rate_limit_headers": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), StatusCode::OK);
    let plain = api.send(Method::GET, &items, None).await;
    assert_eq!(plain.status(), StatusCode::OK);
    assert!(plain.headers().get("ratelimit").is_none());
    assert!(plain.headers().get("ratelimit-policy").is_none());
    // Still counted: the fifth request passes, the sixth is refused with Retry-After.
    assert_eq!(
        api.send(Method::GET, &items, None).await.status(),
        StatusCode::OK
    );
    let limited = api.send(Method::GET, &items, None).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().get("retry-after").is_some());
    assert!(limited.headers().get("ratelimit").is_none());
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_operation_takes_longer_with_more_items_when_asked() {
    let settings = Settings {
        op_latency: (Duration::from_millis(20), Duration::from_millis(20)),
        op_item_cost: Duration::from_millis(1),
        ..fast()
    };
    let Setup {
        emulator,
        api,
        items,
        lists,
        ..
    } = start(settings).await;
    let timed = |ips: Vec<String>| {
        let (api, items, lists) = (&api, &items, &lists);
        async move {
            let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
            let started = std::time::Instant::now();
            let op = api.write(items, &ips).await;
            assert_eq!(api.wait_op(lists, &op).await["status"], "completed");
            started.elapsed()
        }
    };
    let one = timed(vec!["1.2.3.4".into()]).await;
    let many = timed(
        (0..400)
            .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
            .collect(),
    )
    .await;
    // 20 ms + 1 ms vs 20 ms + 400 ms.
    assert!(one < Duration::from_millis(300), "{one:?}");
    assert!(many >= Duration::from_millis(420), "{many:?}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_operations_timeline_tells_when_each_operation_ended_and_was_seen() {
    let settings = Settings {
        op_latency: (Duration::from_millis(100), Duration::from_millis(100)),
        ..fast()
    };
    let Setup {
        emulator,
        api,
        items,
        lists,
        ..
    } = start(settings).await;
    let op = api.write(&items, &["1.2.3.4", "10.0.0.0/24"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.wait_op(&lists, &op).await["status"], "completed");
    let url = format!("http://{}/__emulator/operations", emulator.addr());
    let body: Value = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ops = body["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{body}");
    let timeline = &ops[0];
    assert_eq!(timeline["id"], op.as_str());
    assert_eq!(timeline["items"], 2);
    assert_eq!(timeline["ips"], json!(["1.2.3.4", "10.0.0.0/24"]));
    let at = |key: &str| timeline[key].as_f64().unwrap();
    let took = at("ended") - at("submitted");
    assert!((0.099..0.2).contains(&took), "the latency: {took}");
    // Polled 300 ms after the submission: seen well after it ended.
    assert!(at("seen_ended") - at("ended") >= 0.15, "{timeline}");
    emulator.shutdown().await;
}
