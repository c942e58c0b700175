//! Several Cloudflare accounts in one bouncer, end to end against a real LAPI and two
//! emulators (one account each): every decision reaches every account, each through its
//! own writer; an account that fails (a refused token, a rate limit) holds no other; metrics
//! and `/status` are per account.

mod common;

use std::time::Duration;

use cf_lists_emulator::{Emulator, Settings};
use common::lapi::NewDecision;
use common::world::{eventually, World};

const B_ACCOUNT: &str = "fedcba9876543210fedcba9876543210";

struct Two {
    world: World,
    b: Emulator,
    b_ban: String,
    b_challenge: String,
}

impl Two {
    async fn start(name: &str) -> Two {
        let world = World::start(name).await;
        let settings = Settings {
            account_id: B_ACCOUNT.into(),
            api_token: "token-of-b".into(),
            op_latency: (Duration::from_millis(20), Duration::from_millis(80)),
            ..Settings::default()
        };
        let bind = "127.0.0.1:0".parse().expect("valid address");
        let b = Emulator::start(settings, bind)
            .await
            .expect("emulator starts");
        let b_ban = b.create_list("crowdsec_ban");
        let b_challenge = b.create_list("crowdsec_challenge");
        world
            .lapi
            .add_decisions(&[
                NewDecision::ban_ip("192.0.2.1"),
                NewDecision::ban_ip("192.0.2.2").with_kind("captcha"),
            ])
            .await;
        Two {
            world,
            b,
            b_ban,
            b_challenge,
        }
    }

    /// The configuration: account `main` (the world's emulator, its one list) and account
    /// `second` (a ban list and a challenge list) with `b_token`.
    fn config(&self, b_token: &str) -> cfbouncer::config::Config {
        let w = &self.world;
        let text = format!(
            "[crowdsec]\napi_url = \"{}\"\napi_key = \"{}\"\nupdate_frequency = \"300ms\"\n\
             [cloudflare]\nmax_requests_per_minute = 240\n\
             [[cloudflare.accounts]]\nname = \"main\"\napi_url = \"{}\"\naccount_id = \"{}\"\n\
             api_token = \"{}\"\nlist_name = \"crowdsec_ban\"\n\
             [[cloudflare.accounts]]\nname = \"second\"\napi_url = \"{}\"\naccount_id = \"{B_ACCOUNT}\"\n\
             api_token = \"{b_token}\"\n\
             [[cloudflare.accounts.lists]]\nname = \"crowdsec_ban\"\ndecision_types = [\"ban\"]\n\
             [[cloudflare.accounts.lists]]\nname = \"crowdsec_challenge\"\ndecision_types = [\"captcha\"]\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [sync]\nreconcile_interval = \"1h\"\nshutdown_grace = \"5s\"\n",
            w.lapi.url(),
            w.key,
            w.cf.base_url(),
            w.cf.account_id(),
            w.cf.api_token(),
            self.b.base_url(),
        );
        cfbouncer::config::Config::parse(&text, &|_| None).expect("valid configuration")
    }

    /// Runs the bouncer with `b_token` for account second: its admin address, the token
    /// that stops it, and its task.
    async fn run(
        &self,
        b_token: &str,
    ) -> (
        std::net::SocketAddr,
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), cfbouncer::engine::Error>>,
    ) {
        let mut engine = cfbouncer::engine::Engine::new(self.config(b_token)).expect("builds");
        let admin = engine.bind_admin().await.expect("binds").expect("admin on");
        let token = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(engine.run(token.clone()));
        (admin, token, running)
    }

    fn ips(cf: &Emulator, list: &str) -> Vec<String> {
        let mut ips: Vec<String> = cf.items(list).into_iter().map(|i| i.ip).collect();
        ips.sort();
        ips
    }

    async fn until(&self, what: &str, check: impl Fn() -> bool) {
        let reached = eventually(Duration::from_secs(20), || std::future::ready(check())).await;
        assert!(reached, "{what}");
    }
}

async fn get(admin: std::net::SocketAddr, path: &str) -> String {
    reqwest::get(format!("http://{admin}{path}"))
        .await
        .expect("admin answers")
        .text()
        .await
        .expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_on_one_account_holds_no_other() {
    let two = Two::start("t-accounts-token").await;
    let (admin, token, running) = two.run("a-wrong-token").await;

    let main_list = two.world.list_id.clone();
    two.until("account main syncs beside a failing account", || {
        Two::ips(&two.world.cf, &main_list) == ["192.0.2.1"]
    })
    .await;
    // A delta reaches it too, while the other account keeps failing.
    two.world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.3")])
        .await;
    two.until("a delta reaches account main", || {
        Two::ips(&two.world.cf, &main_list) == ["192.0.2.1", "192.0.2.3"]
    })
    .await;
    assert!(
        two.b.items(&two.b_ban).is_empty(),
        "nothing written with a refused token"
    );

    // The bouncer learns of a completed operation a poll after the list shows it.
    eventually(Duration::from_secs(10), || async {
        let status: serde_json::Value =
            serde_json::from_str(&get(admin, "/status").await).expect("status JSON");
        status["accounts"][0]["listed_items"] == 2
    })
    .await;
    let status: serde_json::Value =
        serde_json::from_str(&get(admin, "/status").await).expect("status JSON");
    assert_eq!(status["ready"], false, "{status}");
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("account second: "), "{status}");
    assert_eq!(status["accounts"][0]["name"], "main");
    assert_eq!(status["accounts"][0]["ready"], true, "{status}");
    assert_eq!(status["accounts"][0]["listed_items"], 2);
    assert_eq!(status["accounts"][1]["name"], "second");
    let metrics = get(admin, "/metrics").await;
    assert!(
        metrics.contains("cf_iplist_bouncer_list_items{account=\"main\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cf_iplist_bouncer_list_items{account=\"second\"} 0"),
        "{metrics}"
    );
    assert_eq!(
        metrics
            .matches("# HELP cf_iplist_bouncer_list_items ")
            .count(),
        1
    );
    token.cancel();
    running.await.expect("no panic").expect("clean stop");
    assert_eq!(two.world.cf.counters().writes_while_pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_account_catches_up_and_the_other_never_waits_for_it() {
    let two = Two::start("t-accounts-limit").await;
    // Account second may make 3 requests in 10 s: the lookup, and little more.
    two.b.set_rate_limit(Some(3), Duration::from_secs(10));
    let (_admin, token, running) = two.run("token-of-b").await;

    let main_list = two.world.list_id.clone();
    for ip in ["192.0.2.3", "192.0.2.4"] {
        two.world
            .lapi
            .add_decisions(&[NewDecision::ban_ip(ip)])
            .await;
        two.until("account main follows LAPI while second is limited", || {
            Two::ips(&two.world.cf, &main_list).contains(&ip.to_owned())
        })
        .await;
    }
    assert!(
        Two::ips(&two.b, &two.b_ban).len() < 3,
        "second cannot have caught up within its limit"
    );
    // Limited by its own pace (Cloudflare's rate-limit headers) or by 429s: either way
    // it stayed within the quota's few requests.
    assert!(two.b.counters().requests <= 8, "{:?}", two.b.counters());

    // The limit is lifted: second catches up, each decision on its list.
    two.b.set_rate_limit(None, Duration::from_secs(10));
    let reached = eventually(Duration::from_secs(90), || {
        std::future::ready(
            Two::ips(&two.b, &two.b_ban) == ["192.0.2.1", "192.0.2.3", "192.0.2.4"]
                && Two::ips(&two.b, &two.b_challenge) == ["192.0.2.2"],
        )
    })
    .await;
    assert!(
        reached,
        "second caught up: {:?} {:?}",
        Two::ips(&two.b, &two.b_ban),
        Two::ips(&two.b, &two.b_challenge)
    );
    assert_eq!(Two::ips(&two.world.cf, &main_list).len(), 3);
    token.cancel();
    running.await.expect("no panic").expect("clean stop");
    for cf in [&two.world.cf, &two.b] {
        assert_eq!(cf.counters().writes_while_pending, 0);
    }
}
