//! The Cloudflare client on lists of kind `asn` (docs/cloudflare-lists.md §13), against the
//! emulator: finding such a list, adding AS numbers with comments, reading them back page by
//! page, finding one, deleting by id, and the account quota they share with IP lists.

use std::sync::Arc;
use std::time::Duration;

use cf_lists_emulator::{Emulator, Settings};
use cfbouncer::cloudflare::{
    choose_list, choose_list_of_kind, CloudflareClient, Error, ListKind, OpStatus,
};
use cfbouncer::config::{Config, ListRef};
use cfbouncer::telemetry::Telemetry;

async fn emulator(settings: Settings) -> Emulator {
    let settings = Settings {
        op_latency: (Duration::from_millis(10), Duration::from_millis(30)),
        ..settings
    };
    Emulator::start(settings, "127.0.0.1:0".parse().expect("address"))
        .await
        .expect("emulator starts")
}

/// A client of `cf`. The LAPI section is required by the configuration but never used here:
/// these tests speak only to Cloudflare.
fn client(cf: &Emulator) -> CloudflareClient {
    let text = format!(
        "[crowdsec]\napi_url = \"http://127.0.0.1:9\"\napi_key = \"unused\"\n\
         [cloudflare]\napi_url = \"{}\"\napi_token = \"{}\"\naccount_id = \"{}\"\n\
         list_name = \"crowdsec_ban\"\n",
        cf.base_url(),
        cf.api_token(),
        cf.account_id(),
    );
    let config = Config::parse(&text, &|_| None).expect("test config is valid");
    CloudflareClient::new(&config.cloudflare, Arc::new(Telemetry::default())).expect("client")
}

/// Waits for a bulk operation to end (5 s at most) and returns how it ended.
async fn finish(client: &CloudflareClient, op_id: &str) -> OpStatus {
    let wait = async {
        loop {
            match client.operation(op_id).await.expect("status read") {
                OpStatus::Pending => tokio::time::sleep(Duration::from_millis(10)).await,
                done => return done,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("the operation ends within 5 s")
}

fn name(name: &str) -> ListRef {
    ListRef::Name(name.to_owned())
}

#[tokio::test]
async fn an_asn_list_is_chosen_by_kind_and_an_ip_list_still_must_be_ip() {
    let cf = emulator(Settings::default()).await;
    cf.create_list("crowdsec_ban");
    let asn_id = cf.create_list_of_kind("crowdsec_asn", "asn");
    let client = client(&cf);
    let lists = client.lists().await.expect("lists");

    let found = choose_list_of_kind(&lists, &name("crowdsec_asn"), ListKind::Asn).expect("found");
    assert_eq!(
        (found.id.as_str(), found.kind.as_str()),
        (asn_id.as_str(), "asn")
    );
    let by_id = client
        .find_list_of_kind(&ListRef::Id(asn_id.clone()), ListKind::Asn)
        .await
        .expect("found by id");
    assert_eq!(by_id.name, "crowdsec_asn");

    // The IP path is as it was: an asn list is the wrong kind for it, with the same words.
    let err = choose_list(&lists, &name("crowdsec_asn")).expect_err("not an IP list");
    assert!(
        matches!(
            err,
            Error::WrongKind {
                wanted: ListKind::Ip,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "list \"crowdsec_asn\" is a asn list; the bouncer needs an IP list (kind ip)"
    );
    let err = choose_list_of_kind(&lists, &name("crowdsec_ban"), ListKind::Asn)
        .expect_err("not an ASN list");
    assert!(
        err.to_string()
            .ends_with("the bouncer needs an ASN list (kind asn)"),
        "{err}"
    );
    let err = choose_list_of_kind(&lists, &name("missing"), ListKind::Asn).expect_err("absent");
    assert!(
        matches!(err, Error::AsnListNotFound(ref n) if n == "missing"),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let err = choose_list(&lists, &name("missing")).expect_err("absent");
    assert!(matches!(err, Error::ListNotFound(_)), "{err:?}");
    cf.shutdown().await;
}

#[tokio::test]
async fn asn_items_are_added_read_page_by_page_found_and_deleted() {
    let cf = emulator(Settings::default()).await;
    let list_id = cf.create_list_of_kind("crowdsec_asn", "asn");
    let client = client(&cf);

    // 1 203 AS numbers: three pages of 500 and one of 203.
    let asns: Vec<u32> = (0..1203).map(|i| 64_512 + i * 7).collect();
    let items: Vec<(u32, std::sync::Arc<str>)> = asns
        .iter()
        .map(|asn| (*asn, format!("crowdsec ban AS{asn}").into()))
        .collect();
    let op = client
        .add_asn_items(&list_id, &items)
        .await
        .expect("accepted");
    assert_eq!(finish(&client, &op).await, OpStatus::Completed);

    let first = client
        .asn_items_page(&list_id, None, None)
        .await
        .expect("first page");
    assert_eq!((first.items.len(), first.unreadable), (500, 0));
    assert!(first.next.is_some());
    let (read, unreadable) = client
        .read_asn_list(&list_id, asns.len() as u64)
        .await
        .expect("whole list");
    assert_eq!(unreadable, 0);
    let read_asns: Vec<u32> = read.iter().map(|item| item.asn).collect();
    assert_eq!(read_asns, asns, "every item once, in ascending order");
    assert_eq!(read[3].comment.as_deref(), Some("crowdsec ban AS64533"));
    let stored = cf.asn_items(&list_id);
    assert_eq!(stored.len(), asns.len());
    assert_eq!(
        (stored[0].id.as_str(), stored[0].asn),
        (read[0].id.as_str(), read[0].asn)
    );

    // 64 519 is on the list; 6 451 is a prefix of it and of many others, but not on the list.
    let id = client
        .find_asn_item(&list_id, 64_519)
        .await
        .expect("search");
    assert_eq!(id.as_deref(), Some(read[1].id.as_str()));
    assert_eq!(
        client.find_asn_item(&list_id, 6_451).await.expect("search"),
        None
    );

    let gone: Vec<&str> = read[..2].iter().map(|item| item.id.as_str()).collect();
    let op = client
        .delete_asn_items(&list_id, &gone)
        .await
        .expect("accepted");
    assert_eq!(finish(&client, &op).await, OpStatus::Completed);
    let left = cf.asn_items(&list_id);
    assert_eq!(left.len(), asns.len() - 2);
    assert_eq!(left[0].asn, asns[2]);
    assert_eq!(
        client
            .find_asn_item(&list_id, 64_519)
            .await
            .expect("search"),
        None
    );
    cf.shutdown().await;
}

#[tokio::test]
async fn a_refused_asn_is_an_api_error_and_nothing_is_written() {
    let cf = emulator(Settings::default()).await;
    let list_id = cf.create_list_of_kind("crowdsec_asn", "asn");
    let client = client(&cf);
    let items = [(13335, "ok".into()), (0, "AS 0".into())];
    let err = client
        .add_asn_items(&list_id, &items)
        .await
        .expect_err("AS 0 is refused");
    match &err {
        Error::Api { status, errors, .. } => {
            assert_eq!((*status, errors[0].code), (400, 10035), "{err}");
            assert!(errors[0].message.contains("asn at position 1"), "{err}");
        }
        other => panic!("expected an API refusal, got {other:?}"),
    }
    assert!(!err.is_retryable() && !err.may_have_been_accepted());
    assert_eq!(cf.operation_count(), 0);

    // An IP list refuses AS numbers (10058): the kinds are never mixed up.
    let ip_list = cf.create_list("crowdsec_ban");
    let err = client
        .add_asn_items(&ip_list, &[(13335, "x".into())])
        .await
        .expect_err("an IP list takes no ASN");
    assert!(
        matches!(&err, Error::Api { errors, .. } if errors[0].code == 10058),
        "{err:?}"
    );
    cf.shutdown().await;
}

#[tokio::test]
async fn asn_items_count_against_the_capacity_ip_lists_use() {
    let cf = emulator(Settings {
        account_item_limit: 5,
        ..Settings::default()
    })
    .await;
    let ip_list = cf.create_list("crowdsec_ban");
    let asn_list = cf.create_list_of_kind("crowdsec_asn", "asn");
    for ip in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        cf.insert_item(&ip_list, ip, None);
    }
    let client = client(&cf);
    let three: Vec<(u32, std::sync::Arc<str>)> = (1..=3).map(|asn| (asn, "".into())).collect();
    let op = client
        .add_asn_items(&asn_list, &three)
        .await
        .expect("accepted");
    assert!(
        matches!(finish(&client, &op).await, OpStatus::Failed(ref e) if e.contains("limit")),
        "3 IPs and 3 ASNs exceed 5 items"
    );
    let op = client
        .add_asn_items(&asn_list, &three[..2])
        .await
        .expect("accepted");
    assert_eq!(finish(&client, &op).await, OpStatus::Completed);
    // The list of lists gives both sizes, which is what a capacity shared by lists needs.
    let lists = client.lists().await.expect("lists");
    let sizes: Vec<(&str, u64)> = lists
        .iter()
        .map(|list| (list.kind.as_str(), list.num_items))
        .collect();
    assert_eq!(sizes, vec![("ip", 3), ("asn", 2)]);
    cf.shutdown().await;
}
