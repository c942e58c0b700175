//! Lists of kind `asn` in the emulator (docs/cloudflare-lists.md §13), over real HTTP on
//! 127.0.0.1:0: the same envelope, ids, pages, cursors and bulk operations as IP lists, their own
//! item validation, and the account quota shared with IP lists.

use std::time::Duration;

use cf_lists_emulator::{AsnZero, Emulator, Settings, StoredAsnItem};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Api {
    client: reqwest::Client,
    base: String,
    account: String,
    token: String,
}

struct Reply {
    status: StatusCode,
    body: Value,
}

impl Reply {
    fn error_code(&self) -> i64 {
        self.body["errors"][0]["code"].as_i64().unwrap_or(-1)
    }
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let url = format!("{}/accounts/{}/rules/lists{path}", self.base, self.account);
        let mut request = self.client.request(method, url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request reaches the emulator");
        let status = response.status();
        let body = response.json().await.expect("response body is JSON");
        Reply { status, body }
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    /// Submits an item write, asserts it was accepted, and waits for its operation to end;
    /// returns the operation's final status.
    async fn write(&self, method: Method, list_id: &str, body: Value) -> Value {
        let reply = self
            .call(method, &format!("/{list_id}/items"), Some(body))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "write refused: {}",
            reply.body
        );
        let op_id = reply.body["result"]["operation_id"]
            .as_str()
            .expect("operation_id")
            .to_owned();
        let wait = async {
            loop {
                let status = self.get(&format!("/bulk_operations/{op_id}")).await;
                let result = status.body["result"].clone();
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
}

fn fast() -> Settings {
    Settings {
        op_latency: (Duration::from_millis(10), Duration::from_millis(20)),
        ..Settings::default()
    }
}

async fn start(settings: Settings) -> (Emulator, Api) {
    let emulator = Emulator::start(settings, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = Api {
        client: reqwest::Client::new(),
        base: emulator.base_url(),
        account: emulator.account_id(),
        token: emulator.api_token(),
    };
    (emulator, api)
}

fn asn_items(asns: &[u64]) -> Value {
    let item = |asn: &u64| json!({ "asn": asn, "comment": format!("as{asn}") });
    Value::Array(asns.iter().map(item).collect())
}

/// The `asn` fields of one page, and its `after` cursor.
async fn page(api: &Api, list_id: &str, query: &str) -> (Vec<u64>, Option<String>) {
    let reply = api.get(&format!("/{list_id}/items?{query}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let asns = reply.body["result"].as_array().expect("items array");
    let asns = asns
        .iter()
        .map(|item| item["asn"].as_u64().expect("asn is a number"));
    let after = reply.body["result_info"]["cursors"]["after"].as_str();
    (asns.collect(), after.map(str::to_owned))
}

// docs/cloudflare-lists.md §2.1, §13: an asn list is created like any list, and its items come
// back with an id, the number as a JSON number, the comment and the timestamps.
#[tokio::test]
async fn asn_lists_are_created_written_and_read() {
    let (emulator, api) = start(fast()).await;
    let created = api
        .call(
            Method::POST,
            "",
            Some(json!({"name": "crowdsec_asn", "kind": "asn"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert_eq!(created.body["result"]["kind"], "asn");
    let list_id = created.body["result"]["id"].as_str().unwrap().to_owned();

    let done = api
        .write(
            Method::POST,
            &list_id,
            asn_items(&[64512, 13335, 4_294_967_295]),
        )
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let reply = api.get(&format!("/{list_id}/items")).await;
    let items = reply.body["result"].as_array().unwrap();
    let first = &items[0];
    assert_eq!(first["asn"], json!(13335), "ascending order: {items:?}");
    assert_eq!(first["comment"], "as13335");
    assert_eq!(first["id"].as_str().map(str::len), Some(32));
    assert!(first["created_on"].is_string() && first["modified_on"].is_string());
    assert!(first.get("ip").is_none(), "{first}");
    assert_eq!(reply.body["success"], json!(true));
    let listed: Vec<_> = items.iter().map(|item| item["asn"].clone()).collect();
    assert_eq!(
        listed,
        vec![json!(13335), json!(64512), json!(4_294_967_295u64)]
    );
    let list = api.get(&format!("/{list_id}")).await;
    assert_eq!(list.body["result"]["num_items"], json!(3));

    let item_id = first["id"].as_str().unwrap();
    let one = api.get(&format!("/{list_id}/items/{item_id}")).await;
    assert_eq!(one.body["result"]["asn"], json!(13335));

    let stored = emulator.asn_items(&list_id);
    assert_eq!(
        stored[0],
        StoredAsnItem {
            id: item_id.to_owned(),
            asn: 13335,
            comment: Some("as13335".to_owned()),
        }
    );
    assert!(
        emulator.items(&list_id).is_empty(),
        "no IP items in an asn list"
    );
}

// docs/cloudflare-lists.md §2.3, §13: pages and cursors as for IP lists; `search` must equal an
// ASN, it is no prefix.
#[tokio::test]
async fn asn_items_are_paged_and_searched_exactly() {
    let (emulator, api) = start(fast()).await;
    let list_id = emulator.create_list_of_kind("asns", "asn");
    let asns = [1, 2, 133, 13335, 20000, 64512, 65000];
    api.write(Method::POST, &list_id, asn_items(&asns)).await;

    let mut seen = Vec::new();
    let mut query = "per_page=3".to_owned();
    let mut pages = 0;
    loop {
        let (page, after) = page(&api, &list_id, &query).await;
        pages += 1;
        seen.extend(page);
        match after {
            Some(after) => query = format!("per_page=3&cursor={after}"),
            None => break,
        }
    }
    assert_eq!((seen, pages), (asns.to_vec(), 3));

    let (found, after) = page(&api, &list_id, "search=133").await;
    assert_eq!((found, after), (vec![133], None));
    let (found, _) = page(&api, &list_id, "search=13335").await;
    assert_eq!(found, vec![13335]);
    let (found, _) = page(&api, &list_id, "search=1333").await;
    assert!(found.is_empty(), "{found:?}");

    // A cursor from an IP list is no position in an asn list.
    let ip_list = emulator.create_list("ips");
    emulator.insert_item(&ip_list, "192.0.2.1", None);
    emulator.insert_item(&ip_list, "192.0.2.2", None);
    let ip_page = api.get(&format!("/{ip_list}/items?per_page=1")).await;
    let ip_cursor = ip_page.body["result_info"]["cursors"]["after"]
        .as_str()
        .expect("an IP cursor")
        .to_owned();
    let crossed = api
        .get(&format!("/{list_id}/items?cursor={ip_cursor}"))
        .await;
    assert_eq!(crossed.status, StatusCode::BAD_REQUEST, "{}", crossed.body);
}

// docs/cloudflare-lists.md §2.4–§2.6: upsert overwrites a comment and keeps the id, replace
// writes the whole list, delete goes by id.
#[tokio::test]
async fn asn_items_take_part_in_every_bulk_operation() {
    let (emulator, api) = start(fast()).await;
    let list_id = emulator.create_list_of_kind("asns", "asn");
    api.write(Method::POST, &list_id, asn_items(&[10, 20]))
        .await;
    let before = emulator.asn_items(&list_id);
    let upsert = json!([{"asn": 10, "comment": "new"}, {"asn": 30}]);
    api.write(Method::POST, &list_id, upsert).await;
    let after = emulator.asn_items(&list_id);
    assert_eq!(after.len(), 3);
    assert_eq!(
        (after[0].id.clone(), after[0].comment.clone()),
        (before[0].id.clone(), Some("new".into()))
    );
    assert_eq!(after[2].comment, None);

    let delete = json!({"items": [{"id": after[0].id}, {"id": after[2].id}]});
    api.write(Method::DELETE, &list_id, delete).await;
    let left: Vec<u32> = emulator.asn_items(&list_id).iter().map(|i| i.asn).collect();
    assert_eq!(left, vec![20]);

    api.write(Method::PUT, &list_id, asn_items(&[7, 8])).await;
    let replaced: Vec<u32> = emulator.asn_items(&list_id).iter().map(|i| i.asn).collect();
    assert_eq!(replaced, vec![7, 8]);
    api.write(Method::PUT, &list_id, json!([])).await;
    assert!(emulator.asn_items(&list_id).is_empty());
}

// docs/cloudflare-lists.md §6.4, §13: a bad ASN, or an item of the other kind, is refused at once
// and creates no operation.
#[tokio::test]
async fn invalid_asns_and_foreign_items_are_refused() {
    let (emulator, api) = start(fast()).await;
    let asn_list = emulator.create_list_of_kind("asns", "asn");
    let ip_list = emulator.create_list("ips");
    let refused = [
        (&asn_list, json!([{"asn": "13335"}]), 10035),
        (&asn_list, json!([{"asn": 13335.5}]), 10035),
        (&asn_list, json!([{"asn": -1}]), 10035),
        (&asn_list, json!([{"asn": 4_294_967_296u64}]), 10035),
        (&asn_list, json!([{"asn": 0}]), 10035),
        (&asn_list, json!([{"asn": 5}, {"asn": 5}]), 10028),
        (&asn_list, json!([{"ip": "192.0.2.1"}]), 10058),
        (&asn_list, json!([{"asn": 5}, {"ip": "192.0.2.1"}]), 10056),
        (&ip_list, json!([{"asn": 13335}]), 10058),
        (
            &ip_list,
            json!([{"ip": "192.0.2.1"}, {"asn": 13335}]),
            10056,
        ),
    ];
    for (list_id, body, code) in refused {
        for method in [Method::POST, Method::PUT] {
            let reply = api
                .call(method, &format!("/{list_id}/items"), Some(body.clone()))
                .await;
            assert_eq!(
                (reply.status, reply.error_code()),
                (StatusCode::BAD_REQUEST, code),
                "{body} → {}",
                reply.body
            );
        }
    }
    let message = api
        .call(
            Method::POST,
            &format!("/{asn_list}/items"),
            Some(json!([{"asn": 1}, {"asn": "2"}])),
        )
        .await;
    let text = message.body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        text.starts_with("invalid value for asn at position 1"),
        "{text}"
    );
    assert_eq!(emulator.operation_count(), 0, "no operation was created");
    assert_eq!(emulator.counters().rejected_writes, 21);
}

// docs/cloudflare-lists.md §13 (unverified): AS number 0 is refused by default and taken when
// the switch says so.
#[tokio::test]
async fn asn_zero_is_a_switch() {
    let settings = Settings {
        asn_zero: AsnZero::Accept,
        ..fast()
    };
    let (emulator, api) = start(settings).await;
    let list_id = emulator.create_list_of_kind("asns", "asn");
    let done = api.write(Method::POST, &list_id, asn_items(&[0])).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(emulator.asn_items(&list_id)[0].asn, 0);
}

// docs/cloudflare-lists.md §4.1: the account quota counts the items of every list, ASNs and IPs
// together.
#[tokio::test]
async fn asn_items_share_the_account_quota_with_ip_items() {
    let settings = Settings {
        account_item_limit: 4,
        ..fast()
    };
    let (emulator, api) = start(settings).await;
    let ip_list = emulator.create_list("ips");
    let asn_list = emulator.create_list_of_kind("asns", "asn");
    let ips = json!([{"ip": "192.0.2.1"}, {"ip": "192.0.2.2"}, {"ip": "192.0.2.3"}]);
    api.write(Method::POST, &ip_list, ips).await;
    let failed = api.write(Method::POST, &asn_list, asn_items(&[1, 2])).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"], "list item limit exceeded");
    assert!(emulator.asn_items(&asn_list).is_empty(), "nothing applied");
    let fits = api.write(Method::POST, &asn_list, asn_items(&[1])).await;
    assert_eq!(fits["status"], "completed");
    // Now the IP list cannot grow either.
    let more = api
        .write(Method::POST, &ip_list, json!([{"ip": "192.0.2.4"}]))
        .await;
    assert_eq!(more["status"], "failed", "{more}");
}
