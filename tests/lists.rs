//! Several lists in one account, end to end against a real LAPI and the emulator:
//! `captcha` decisions on a challenge list, `ban` on the ban list, `AS` bans on an ASN
//! list; an address banned and challenged only on the ban list, back on the challenge
//! list when the ban ends; the account's capacity shared, bans first.

mod common;

use std::time::Duration;

use common::lapi::NewDecision;
use common::world::{eventually, World};

const LISTS: &str = r#"
[[cloudflare.lists]]
name = "crowdsec_ban"
decision_types = ["ban"]
[[cloudflare.lists]]
name = "crowdsec_challenge"
decision_types = ["captcha"]
[[cloudflare.lists]]
name = "crowdsec_asn"
decision_types = ["ban"]
scope = "as"
"#;

struct Lists {
    world: World,
    challenge: String,
    asn: String,
}

impl Lists {
    async fn start(name: &str) -> Lists {
        let mut world = World::start(name).await;
        let challenge = world.cf.create_list("crowdsec_challenge");
        let asn = world.cf.create_list_of_kind("crowdsec_asn", "asn");
        world.lists = Some(format!("{LISTS}[safety]\nallowlist = [\"AS64500\"]\n"));
        Lists {
            world,
            challenge,
            asn,
        }
    }

    /// (ban list, challenge list, ASN list), each sorted.
    fn seen(&self) -> (Vec<String>, Vec<String>, Vec<u32>) {
        let cf = &self.world.cf;
        let ips = |id: &str| {
            let mut ips: Vec<String> = cf.items(id).into_iter().map(|i| i.ip).collect();
            ips.sort();
            ips
        };
        let mut asns: Vec<u32> = cf.asn_items(&self.asn).into_iter().map(|i| i.asn).collect();
        asns.sort_unstable();
        (ips(&self.world.list_id), ips(&self.challenge), asns)
    }

    async fn expect(&self, ban: &[&str], challenge: &[&str], asn: &[u32]) {
        let want = (
            ban.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            challenge
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
            asn.to_vec(),
        );
        let mut seen = self.seen();
        let reached = eventually(Duration::from_secs(20), || {
            seen = self.seen();
            std::future::ready(seen == want)
        })
        .await;
        assert!(reached, "lists never became {want:?}; last seen {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_decision_lands_on_its_list_and_the_stronger_remedy_wins() {
    let lists = Lists::start("t-lists-route").await;
    let lapi = &lists.world.lapi;
    lapi.add_decisions(&[
        NewDecision::ban_ip("192.0.2.1"),
        NewDecision::ban_ip("192.0.2.2").with_kind("captcha"),
        NewDecision::ban_ip("13335").with_scope("AS"),
        // No list takes captchas on AS numbers: left off every list.
        NewDecision::ban_ip("64496")
            .with_scope("AS")
            .with_kind("captcha"),
        // The operator's own provider, allowlisted: refused.
        NewDecision::ban_ip("AS64500").with_scope("AS"),
    ])
    .await;
    let bouncer = lists.world.spawn_bouncer();
    lists.expect(&["192.0.2.1"], &["192.0.2.2"], &[13335]).await;

    // Banned as well as challenged: only on the ban list.
    lapi.add_decisions(&[NewDecision::ban_ip("192.0.2.2")])
        .await;
    lists
        .expect(&["192.0.2.1", "192.0.2.2"], &[], &[13335])
        .await;

    // The ban ends: back to the challenge the captcha asks for.
    lapi.cscli_ok(&["decisions", "delete", "--ip", "192.0.2.2", "--type", "ban"]);
    lists.expect(&["192.0.2.1"], &["192.0.2.2"], &[13335]).await;

    // The AS ban ends.
    lapi.cscli_ok(&["decisions", "delete", "--value", "13335"]);
    lists.expect(&["192.0.2.1"], &["192.0.2.2"], &[]).await;

    bouncer.stop().await;
    let counters = lists.world.assert_well_behaved();
    assert_eq!(counters.rejected_writes, 0, "{counters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_s_capacity_is_shared_and_bans_come_before_captchas() {
    let mut lists = Lists::start("t-lists-capacity").await;
    // Three places in the account, one of them taken by a list the bouncer does not keep.
    let other = lists.world.cf.create_list("someone_else");
    lists.world.cf.insert_item(&other, "198.51.100.1", None);
    lists.world.cloudflare_extra = "capacity = 3\n".into();
    let lapi = &lists.world.lapi;
    lapi.add_decisions(&[
        // A person's captchas rank above the community's bans by origin, but a ban is
        // the stronger remedy.
        NewDecision::ban_ip("192.0.2.10").with_kind("captcha"),
        NewDecision::ban_ip("192.0.2.11").with_kind("captcha"),
        NewDecision::ban_ip("192.0.2.20").with_origin("CAPI"),
    ])
    .await;
    lapi.add_decisions(&[NewDecision::ban_ip("13335")
        .with_scope("AS")
        .with_origin("CAPI")])
        .await;
    let bouncer = lists.world.spawn_bouncer();
    lists.expect(&["192.0.2.20"], &[], &[13335]).await;

    // A ban ends: a captcha takes its place (the lower address of the two, equal otherwise).
    lapi.cscli_ok(&["decisions", "delete", "--value", "13335"]);
    let (ban, challenge, asn) = {
        let mut seen = lists.seen();
        eventually(Duration::from_secs(20), || {
            seen = lists.seen();
            std::future::ready(seen.1.len() == 1 && seen.2.is_empty())
        })
        .await;
        seen
    };
    assert_eq!(ban, ["192.0.2.20"]);
    assert!(asn.is_empty());
    assert_eq!(challenge.len(), 1, "{challenge:?}");
    // Stays so: the account holds 3 items, its capacity.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(lists.seen(), (ban, challenge, asn));
    bouncer.stop().await;
    lists.world.assert_well_behaved();
}

/// A start-up pull cut short (LAPI 1.7, reproduced by the proxy) keeps only its first
/// decision: nothing LAPI still holds leaves any list, on the challenge and ASN lists as on
/// the ban list, once LAPI's confirming read has been asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_full_pull_takes_nothing_off_any_list() {
    use common::proxy::{Cut, Fault, FaultProxy};
    let mut lists = Lists::start("t-lists-cut").await;
    let proxy = FaultProxy::start(&lists.world.lapi.url()).await;
    lists.world.lapi_via = Some(proxy.url());
    let lapi = &lists.world.lapi;
    lapi.add_decisions(&[NewDecision::ban_ip("192.0.2.1")])
        .await;
    lapi.add_decisions(&[
        NewDecision::ban_ip("192.0.2.2").with_kind("captcha"),
        NewDecision::ban_ip("13335").with_scope("AS"),
        NewDecision::ban_ip("192.0.2.3"),
        NewDecision::ban_ip("192.0.2.3").with_kind("captcha"),
    ])
    .await;
    let filler = lists.world.spawn_bouncer();
    let full = (
        vec!["192.0.2.1", "192.0.2.3"],
        vec!["192.0.2.2"],
        vec![13335],
    );
    lists.expect(&full.0, &full.1, &full.2).await;
    filler.stop().await;
    let writes = lists.world.cf.counters().writes;

    proxy.set(Fault::CutStartup(Cut::After(1)));
    let bouncer = lists.world.start_bouncer().await;
    let admin = bouncer.admin.expect("admin listener");
    let kept = "cf_iplist_bouncer_removal_confirmations_total{outcome=\"kept\"}";
    let confirmed = eventually(Duration::from_secs(20), || async {
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let value = (text.lines())
            .find(|line| line.starts_with(kept))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        value.is_some_and(|v| v >= 3.0)
    })
    .await;
    assert!(
        confirmed,
        "the three items the cut pull left out were confirmed"
    );
    assert_eq!(proxy.cut_pulls(), 1, "the start-up pull was cut");
    tokio::time::sleep(Duration::from_secs(1)).await;
    lists.expect(&full.0, &full.1, &full.2).await;
    bouncer.stop().await;
    assert_eq!(
        lists.world.cf.counters().writes,
        writes,
        "nothing was written"
    );
}
