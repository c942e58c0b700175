//! Integration tests of the Cloudflare Lists API emulator, over real HTTP on 127.0.0.1:0.
//! Each test checks one documented behaviour (docs/cloudflare-lists.md section in the name
//! or the comment).

use std::time::Duration;

use cf_lists_emulator::{CapacityError, Emulator, HostBits, PendingWrite, Settings};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A thin client that returns `(status, headers, body)` and never panics on 4xx/5xx.
struct Api {
    client: reqwest::Client,
    base: String,
    account: String,
    token: String,
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn error_code(&self) -> i64 {
        self.body["errors"][0]["code"].as_i64().unwrap_or(-1)
    }

    fn error_message(&self) -> &str {
        self.body["errors"][0]["message"].as_str().unwrap_or("")
    }
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}/accounts/{}/rules/lists{path}", self.base, self.account)
    }

    async fn send(&self, method: Method, url: String, token: &str, body: Option<&Value>) -> Reply {
        let mut request = self.client.request(method, url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request reaches the emulator");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.expect("response body is JSON");
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.send(method, self.url(path), &self.token, body.as_ref())
            .await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// Submits a write and returns its operation id, asserting it was accepted.
    async fn write(&self, method: Method, list_id: &str, body: Value) -> String {
        let reply = self
            .call(method, &format!("/{list_id}/items"), Some(body))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "write refused: {}",
            reply.body
        );
        reply.body["result"]["operation_id"]
            .as_str()
            .expect("operation_id")
            .to_owned()
    }

    async fn op_status(&self, op_id: &str) -> Value {
        self.get(&format!("/bulk_operations/{op_id}")).await.body["result"].clone()
    }

    /// Polls an operation until it is `completed` or `failed` (5 s timeout).
    async fn wait_op(&self, op_id: &str) -> Value {
        let wait = async {
            loop {
                let result = self.op_status(op_id).await;
                if result["status"] == "completed" || result["status"] == "failed" {
                    return result;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("operation finishes")
    }

    /// The `ip` fields of one page of GET items.
    async fn ips(&self, list_id: &str, query: &str) -> Vec<String> {
        let reply = self.get(&format!("/{list_id}/items?{query}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let items = reply.body["result"]
            .as_array()
            .expect("items array")
            .clone();
        items
            .iter()
            .map(|item| item["ip"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

/// A reqwest client; this crate builds reqwest without a default rustls crypto provider.
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Fast operations for tests (the latency of docs/cloudflare-lists.md §3 is only emulated).
fn fast() -> Settings {
    Settings {
        op_latency: (Duration::from_millis(20), Duration::from_millis(40)),
        ..Settings::default()
    }
}

async fn start(settings: Settings) -> (Emulator, Api, String) {
    let emulator = Emulator::start(settings, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let api = Api {
        client: client(),
        base: emulator.base_url(),
        account: emulator.account_id(),
        token: emulator.api_token(),
    };
    let list_id = emulator.create_list("crowdsec_ban");
    (emulator, api, list_id)
}

fn ip_items(ips: &[&str]) -> Value {
    Value::Array(ips.iter().map(|ip| json!({ "ip": ip })).collect())
}

// docs/cloudflare-lists.md §2.1: create, get, list and delete lists; name and duplicate validation.
#[tokio::test]
async fn lists_can_be_created_listed_and_deleted() {
    let (emulator, api, _) = start(fast()).await;
    let body = json!({"name": "second_list", "kind": "ip", "description": "test"});
    let created = api.call(Method::POST, "", Some(body.clone())).await;
    assert_eq!(created.status, StatusCode::OK);
    let list = &created.body["result"];
    let id = list["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(
        (list["num_items"].clone(), list["kind"].clone()),
        (json!(0), json!("ip"))
    );
    assert_eq!(list["description"], "test");

    let all = api.get("").await;
    let names: Vec<_> = all.body["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("crowdsec_ban"), json!("second_list")]);
    assert_eq!(
        api.get(&format!("/{id}")).await.body["result"]["name"],
        "second_list"
    );

    let duplicate = api.call(Method::POST, "", Some(body)).await;
    assert_eq!(duplicate.status, StatusCode::BAD_REQUEST);
    let bad_name = api
        .call(
            Method::POST,
            "",
            Some(json!({"name": "Bad-Name", "kind": "ip"})),
        )
        .await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_name.body["result"], Value::Null);
    let no_kind = api.call(Method::POST, "", Some(json!({"name": "x"}))).await;
    assert_eq!(no_kind.status, StatusCode::BAD_REQUEST);

    let deleted = api.call(Method::DELETE, &format!("/{id}"), None).await;
    assert_eq!(deleted.body["result"], json!({ "id": id }));
    assert_eq!(
        api.get(&format!("/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §1: bad token or unknown account → 403 with code 10000.
#[tokio::test]
async fn bad_token_and_unknown_account_are_refused() {
    let (emulator, api, _) = start(fast()).await;
    let bad_token = api.send(Method::GET, api.url(""), "wrong", None).await;
    assert_eq!(bad_token.status, StatusCode::FORBIDDEN);
    assert_eq!(bad_token.error_code(), 10000);
    assert_eq!(bad_token.error_message(), "Authentication error");
    assert_eq!(bad_token.body["success"], false);
    let other_account = format!("{}/accounts/{}/rules/lists", api.base, "f".repeat(32));
    let unknown = api.send(Method::GET, other_account, &api.token, None).await;
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (StatusCode::FORBIDDEN, 10000)
    );
    assert_eq!(emulator.counters().requests, 2);
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §3: the write is async; pending → running → completed; visible only at
// completion.
#[tokio::test]
async fn writes_become_visible_only_when_the_operation_completes() {
    let settings = Settings {
        op_latency: (Duration::from_millis(1000), Duration::from_millis(1000)),
        ..fast()
    };
    let (emulator, api, list_id) = start(settings).await;
    let op_id = api
        .write(Method::POST, &list_id, ip_items(&["1.2.3.4"]))
        .await;
    assert_eq!(op_id.len(), 32);
    assert_eq!(
        api.op_status(&op_id).await,
        json!({"id": op_id, "status": "pending"})
    );
    assert!(api.ips(&list_id, "").await.is_empty());
    assert_eq!(
        api.get(&format!("/{list_id}")).await.body["result"]["num_items"],
        0
    );
    assert!(emulator.operation_pending());

    tokio::time::sleep(Duration::from_millis(650)).await;
    assert_eq!(api.op_status(&op_id).await["status"], "running");
    assert!(emulator.items(&list_id).is_empty());

    let done = api.wait_op(&op_id).await;
    assert_eq!(done["status"], "completed");
    assert!(done["completed"].as_str().unwrap().ends_with('Z'));
    assert_eq!(api.ips(&list_id, "").await, vec!["1.2.3.4"]);
    assert_eq!(
        api.get(&format!("/{list_id}")).await.body["result"]["num_items"],
        1
    );
    assert!(!emulator.operation_pending());
    let counters = emulator.counters();
    assert_eq!((counters.writes, counters.item_changes), (1, 1));
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §3: one pending bulk operation per account; a second write gets 429 +
// Retry-After.
#[tokio::test]
async fn write_while_pending_is_rejected_with_429() {
    let (emulator, api, list_id) = start(fast()).await;
    let first = api
        .write(Method::POST, &list_id, ip_items(&["1.1.1.1"]))
        .await;
    let second = api
        .call(
            Method::POST,
            &format!("/{list_id}/items"),
            Some(ip_items(&["2.2.2.2"])),
        )
        .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.error_code(), 10040);
    assert_eq!(
        second.error_message(),
        "you have been ratelimited please wait and try again"
    );
    assert_eq!(second.headers["retry-after"], "1");
    let counters = emulator.counters();
    assert_eq!(
        (
            counters.writes_while_pending,
            counters.rejected_writes,
            counters.writes
        ),
        (1, 1, 1)
    );

    api.wait_op(&first).await;
    let third = api
        .write(Method::POST, &list_id, ip_items(&["2.2.2.2"]))
        .await;
    api.wait_op(&third).await;
    assert_eq!(api.ips(&list_id, "").await, vec!["1.1.1.1", "2.2.2.2"]);
    assert_eq!(emulator.counters().writes_while_pending, 1);
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §3 (older text): in Queue mode writes are accepted and executed FIFO.
#[tokio::test]
async fn queue_mode_executes_writes_in_order() {
    let settings = Settings {
        pending_write: PendingWrite::Queue,
        ..fast()
    };
    let (emulator, api, list_id) = start(settings).await;
    let add = api
        .write(Method::POST, &list_id, ip_items(&["1.1.1.1"]))
        .await;
    let replace = api
        .write(Method::PUT, &list_id, ip_items(&["2.2.2.2"]))
        .await;
    let add_again = api
        .write(Method::POST, &list_id, ip_items(&["3.3.3.3"]))
        .await;
    assert_eq!(api.op_status(&add_again).await["status"], "pending");
    assert_eq!(emulator.counters().writes_while_pending, 2);

    let done: Vec<Value> = vec![
        api.wait_op(&add).await,
        api.wait_op(&replace).await,
        api.wait_op(&add_again).await,
    ];
    let times: Vec<&str> = done
        .iter()
        .map(|op| op["completed"].as_str().unwrap())
        .collect();
    assert!(
        times[0] <= times[1] && times[1] <= times[2],
        "FIFO completion: {times:?}"
    );
    assert_eq!(api.ips(&list_id, "").await, vec!["2.2.2.2", "3.3.3.3"]);
    let counters = emulator.counters();
    assert_eq!((counters.writes, counters.rejected_writes), (3, 0));
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §2.3: per_page 1..=500, cursors, `after` absent on the last page, sort
// order.
#[tokio::test]
async fn pagination_walks_all_items_and_caps_per_page() {
    let (emulator, api, list_id) = start(fast()).await;
    let ips: Vec<String> = (0..1200)
        .map(|n| format!("10.{}.{}.1", n / 250, n % 250))
        .collect();
    let body = Value::Array(ips.iter().map(|ip| json!({"ip": ip})).collect());
    let op = api.write(Method::POST, &list_id, body).await;
    assert_eq!(api.wait_op(&op).await["status"], "completed");

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut page_sizes = Vec::new();
    loop {
        let query = match &cursor {
            Some(cursor) => format!("/{list_id}/items?per_page=500&cursor={cursor}"),
            None => format!("/{list_id}/items?per_page=500"),
        };
        let reply = api.get(&query).await;
        let page = reply.body["result"].as_array().unwrap();
        page_sizes.push(page.len());
        seen.extend(
            page.iter()
                .map(|item| item["ip"].as_str().unwrap().to_owned()),
        );
        match reply.body["result_info"]["cursors"]["after"].as_str() {
            Some(after) => cursor = Some(after.to_owned()),
            None => break,
        }
    }
    assert_eq!(page_sizes, vec![500, 500, 200]);
    let stored: Vec<String> = emulator
        .items(&list_id)
        .into_iter()
        .map(|item| item.ip)
        .collect();
    assert_eq!(seen, stored);
    let mut sorted: Vec<std::net::Ipv4Addr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
    sorted.sort();
    assert_eq!(
        seen,
        sorted.iter().map(ToString::to_string).collect::<Vec<_>>()
    );

    assert_eq!(api.ips(&list_id, "").await.len(), 25, "default per_page");
    let too_big = api.get(&format!("/{list_id}/items?per_page=501")).await;
    assert_eq!(too_big.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        api.get(&format!("/{list_id}/items?per_page=0"))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(emulator.counters().per_page_over_max, 1);
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §2.3: the `before` cursor pages backwards.
#[tokio::test]
async fn before_cursor_returns_the_previous_page() {
    let (emulator, api, list_id) = start(fast()).await;
    for n in 0..10 {
        emulator.insert_item(&list_id, &format!("192.0.2.{n}"), None);
    }
    let first = api.get(&format!("/{list_id}/items?per_page=4")).await;
    let after = first.body["result_info"]["cursors"]["after"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = api
        .get(&format!("/{list_id}/items?per_page=4&cursor={after}"))
        .await;
    let before = second.body["result_info"]["cursors"]["before"]
        .as_str()
        .unwrap()
        .to_owned();
    let back = api
        .get(&format!("/{list_id}/items?per_page=4&cursor={before}"))
        .await;
    assert_eq!(back.body["result"], first.body["result"]);
    let bad = api.get(&format!("/{list_id}/items?cursor=garbage")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §6.3: canonical stored forms; IPv4 before IPv6.
#[tokio::test]
async fn items_are_stored_in_canonical_form() {
    let (emulator, api, list_id) = start(fast()).await;
    let body = ip_items(&[
        "2001:DB8::1/128",
        "1.2.3.4/32",
        "10.1.2.3/24",
        "f::1/64",
        "0f::",
    ]);
    let op = api.write(Method::POST, &list_id, body).await;
    api.wait_op(&op).await;
    // Same address: shorter prefix first ("sorted by IP address, then by the subnet mask").
    let expected = vec!["1.2.3.4", "10.1.2.0/24", "f::/64", "f::", "2001:db8::1"];
    assert_eq!(api.ips(&list_id, "").await, expected);
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §6.3 (unverified): HostBits::Reject refuses a CIDR with host bits set.
#[tokio::test]
async fn host_bits_can_be_rejected() {
    let settings = Settings {
        host_bits: HostBits::Reject,
        ..fast()
    };
    let (emulator, api, list_id) = start(settings).await;
    let body = Some(ip_items(&["10.1.2.0/24", "10.1.2.3/24"]));
    let reply = api
        .call(Method::POST, &format!("/{list_id}/items"), body)
        .await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::BAD_REQUEST, 10035)
    );
    assert!(reply
        .error_message()
        .starts_with("invalid value for ip at position 1"));
    assert_eq!(emulator.counters().rejected_writes, 1);
    assert!(!emulator.operation_pending(), "no operation created");
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §6.4: the same canonical item twice in one request → 10028.
#[tokio::test]
async fn duplicates_in_one_request_are_refused() {
    let (emulator, api, list_id) = start(fast()).await;
    let body = Some(ip_items(&["1.2.3.4", "5.6.7.8", "1.2.3.4/32"]));
    let reply = api
        .call(Method::POST, &format!("/{list_id}/items"), body)
        .await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::BAD_REQUEST, 10028)
    );
    assert_eq!(
        reply.error_message(),
        "The add list items operation contains duplicate items"
    );
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §6.1: the pre-2025-07 API refuses IPv6 hosts and prefixes longer than
// /64.
#[tokio::test]
async fn legacy_api_refuses_ipv6_hosts() {
    let settings = Settings {
        ipv6_max_prefix: 64,
        ..fast()
    };
    let (emulator, api, list_id) = start(settings).await;
    let url = format!("/{list_id}/items");
    let host = api
        .call(Method::POST, &url, Some(ip_items(&["2001:db8::1"])))
        .await;
    assert_eq!(
        (host.status, host.error_code()),
        (StatusCode::BAD_REQUEST, 10035)
    );
    assert_eq!(
        host.error_message(),
        "invalid value for ip at position 0: filters.api.IPv6 CIDRs should have a prefix length from /12 to /64 inclusive"
    );
    let garbage = api
        .call(Method::POST, &url, Some(ip_items(&["1.2.3.4", "nope"])))
        .await;
    assert_eq!(
        garbage.error_message(),
        "invalid value for ip at position 1"
    );
    let op = api
        .write(Method::POST, &list_id, ip_items(&["2001:db8::/64"]))
        .await;
    api.wait_op(&op).await;
    assert_eq!(api.ips(&list_id, "").await, vec!["2001:db8::/64"]);
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §2.4, §2.6: upsert keeps the id and overwrites the comment; DELETE by
// id.
#[tokio::test]
async fn upsert_keeps_ids_and_delete_removes_by_id() {
    let (emulator, api, list_id) = start(fast()).await;
    let op = api
        .write(
            Method::POST,
            &list_id,
            json!([{"ip": "1.2.3.4", "comment": "old"}, {"ip": "5.6.7.8"}]),
        )
        .await;
    api.wait_op(&op).await;
    let before = emulator.items(&list_id);
    let op = api
        .write(
            Method::POST,
            &list_id,
            json!([{"ip": "1.2.3.4/32", "comment": "new"}]),
        )
        .await;
    api.wait_op(&op).await;
    let after = emulator.items(&list_id);
    assert_eq!(after[0].id, before[0].id);
    assert_eq!(after[0].comment.as_deref(), Some("new"));
    assert_eq!(emulator.counters().item_changes, 3);

    let item = api.get(&format!("/{list_id}/items/{}", after[0].id)).await;
    assert_eq!(item.body["result"]["ip"], "1.2.3.4");
    assert_eq!(item.body["result"]["comment"], "new");
    let unknown_id = "0".repeat(32);
    let body = json!({"items": [{"id": after[0].id}, {"id": unknown_id}]});
    let op = api.write(Method::DELETE, &list_id, body).await;
    assert_eq!(
        api.wait_op(&op).await["status"],
        "completed",
        "unknown ids are ignored"
    );
    assert_eq!(api.ips(&list_id, "").await, vec!["5.6.7.8"]);
    let gone = api.get(&format!("/{list_id}/items/{}", after[0].id)).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    let url = format!("/{list_id}/items");
    let empty = api
        .call(Method::DELETE, &url, Some(json!({"items": []})))
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    let op = api.write(Method::PUT, &list_id, json!([])).await;
    api.wait_op(&op).await;
    assert!(
        emulator.items(&list_id).is_empty(),
        "PUT [] empties the list"
    );
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §2.3: `search` is a string prefix match on the stored form.
#[tokio::test]
async fn search_is_a_prefix_match() {
    let (emulator, api, list_id) = start(fast()).await;
    for ip in ["1.2.3.4", "1.2.3.40", "1.2.4.1", "11.2.3.4"] {
        emulator.insert_item(&list_id, ip, None);
    }
    assert_eq!(
        api.ips(&list_id, "search=1.2.3.4").await,
        vec!["1.2.3.4", "1.2.3.40"]
    );
    assert_eq!(
        api.ips(&list_id, "search=1.2.3.4&per_page=1").await,
        vec!["1.2.3.4"]
    );
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §4.1 (unverified): over the account quota the operation fails and
// nothing applies.
#[tokio::test]
async fn capacity_overflow_fails_the_operation() {
    let settings = Settings {
        account_item_limit: 3,
        ..fast()
    };
    let (emulator, api, list_id) = start(settings).await;
    let other = emulator.create_list("other");
    emulator.insert_item(&other, "9.9.9.9", None);
    emulator.insert_item(&list_id, "1.1.1.1", None);
    let op = api
        .write(
            Method::POST,
            &list_id,
            ip_items(&["1.1.1.1", "2.2.2.2", "3.3.3.3"]),
        )
        .await;
    let failed = api.wait_op(&op).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"], "list item limit exceeded");
    assert_eq!(emulator.items(&list_id).len(), 1);
    let op = api
        .write(Method::POST, &list_id, ip_items(&["1.1.1.1", "2.2.2.2"]))
        .await;
    assert_eq!(
        api.wait_op(&op).await["status"],
        "completed",
        "upserting an existing item is free"
    );
    emulator.shutdown().await;
}

// CapacityError::Sync: the same overflow is refused at submit time.
#[tokio::test]
async fn capacity_overflow_can_be_refused_synchronously() {
    let settings = Settings {
        account_item_limit: 1,
        capacity_error: CapacityError::Sync,
        ..fast()
    };
    let (emulator, api, list_id) = start(settings).await;
    let body = Some(ip_items(&["1.1.1.1", "2.2.2.2"]));
    let reply = api
        .call(Method::POST, &format!("/{list_id}/items"), body)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(!emulator.operation_pending());
    emulator.shutdown().await;
}

// Fault switches through the handle and the admin endpoint.
#[tokio::test]
async fn injected_request_faults_answer_with_the_status() {
    let (emulator, api, list_id) = start(fast()).await;
    emulator.fail_next_requests(2, 503);
    let first = api
        .call(
            Method::POST,
            &format!("/{list_id}/items"),
            Some(ip_items(&["1.1.1.1"])),
        )
        .await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.body["success"], false);
    assert_eq!(api.get("").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(api.get("").await.status, StatusCode::OK);
    assert!(
        !emulator.operation_pending(),
        "a failed request has no effect"
    );

    let admin = client();
    let faults_url = format!("http://{}/__emulator/faults", emulator.addr());
    let body = json!({"fail_next_requests": {"n": 1, "status": 502}});
    let reply = admin.post(&faults_url).json(&body).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(api.get("").await.status, StatusCode::BAD_GATEWAY);
    let bad = admin
        .post(&faults_url)
        .json(&json!({"nope": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        emulator.counters().requests,
        4,
        "admin requests are not counted"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn injected_operation_faults_fail_without_applying() {
    let (emulator, api, list_id) = start(fast()).await;
    emulator.fail_next_operations(1, "internal failure");
    let op = api
        .write(Method::POST, &list_id, ip_items(&["1.1.1.1"]))
        .await;
    let failed = api.wait_op(&op).await;
    assert_eq!(
        (failed["status"].clone(), failed["error"].clone()),
        (json!("failed"), json!("internal failure"))
    );
    assert!(failed["completed"].is_string());
    assert!(emulator.items(&list_id).is_empty());
    let op = api
        .write(Method::POST, &list_id, ip_items(&["1.1.1.1"]))
        .await;
    assert_eq!(api.wait_op(&op).await["status"], "completed");
    assert_eq!(emulator.items(&list_id).len(), 1);
    emulator.shutdown().await;
}

// docs/cloudflare-lists.md §4.4: beyond the global limit every request gets 429 with the observed
// message.
#[tokio::test]
async fn global_rate_limit_blocks_the_rest_of_the_window() {
    let settings = Settings {
        global_rate_limit: Some(3),
        ..fast()
    };
    let (emulator, api, _) = start(settings).await;
    for _ in 0..3 {
        let reply = api.get("").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(reply.headers.contains_key("ratelimit"));
        assert_eq!(reply.headers["ratelimit-policy"], "\"default\";q=3;w=300");
    }
    let limited = api.get("").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        limited.error_message(),
        "More than 3 requests per 300 seconds reached. Please wait and consider throttling your request speed"
    );
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((290..=300).contains(&retry_after));
    assert_eq!(emulator.counters().rate_limited, 1);
    emulator.shutdown().await;
}

// Admin state snapshot and request-input robustness (malformed bodies, unknown routes).
#[tokio::test]
async fn admin_state_and_malformed_input() {
    let (emulator, api, list_id) = start(fast()).await;
    emulator.insert_item(&list_id, "1.2.3.4/32", Some("by hand"));
    let url = format!("/{list_id}/items");
    let reply = api
        .send(Method::POST, api.url(&url), &api.token, None)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "empty body");
    let raw = api
        .client
        .post(api.url(&url))
        .bearer_auth(&api.token)
        .body("[{")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let envelope: Value = raw.json().await.unwrap();
    assert_eq!(envelope["errors"][0]["code"], 10026);
    let not_found = api.get("/0123/items/abc/extra").await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    let op = api
        .get(&format!("/bulk_operations/{}", "a".repeat(32)))
        .await;
    assert_eq!(op.status, StatusCode::NOT_FOUND);

    let state_url = format!("http://{}/__emulator/state", emulator.addr());
    let state: Value = client()
        .get(state_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["account_id"], emulator.account_id());
    assert_eq!(state["lists"][0]["items"][0]["ip"], "1.2.3.4");
    assert_eq!(state["lists"][0]["items"][0]["comment"], "by hand");
    assert_eq!(state["operation_pending"], false);
    assert_eq!(state["counters"]["rejected_writes"], 2);
    assert_eq!(state["counters"]["requests"], 4);
    emulator.reset_counters();
    assert_eq!(emulator.counters(), Default::default());
    emulator.shutdown().await;
}
