//! A test world: a real LAPI, the Cloudflare emulator with one list, a fresh bouncer key,
//! and the bouncer itself, run in-process or as the real binary.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cf_lists_emulator::{Counters, Emulator, Settings};
use cfbouncer::config::Config;
use cfbouncer::engine::{Engine, Error};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::lapi::Lapi;

pub struct World {
    pub lapi: Lapi,
    pub cf: Emulator,
    pub list_id: String,
    pub key: String,
    /// Extra TOML lines per section, appended by tests (e.g. a short reconcile).
    pub crowdsec_extra: String,
    pub cloudflare_extra: String,
    /// `[[cloudflare.lists]]` entries replacing `list_name = "crowdsec_ban"`, when set.
    pub lists: Option<String>,
    pub sync_extra: String,
    /// `crowdsec.update_frequency`; short by default so tests run fast.
    pub update_frequency: String,
    /// The LAPI URL the bouncer uses, when not the LAPI itself (a fault proxy).
    pub lapi_via: Option<String>,
    /// `[admin] listen`; port 0 by default so parallel tests never collide.
    pub admin_listen: String,
    dir: tempfile::TempDir,
}

/// A bouncer running in-process.
pub struct Running {
    token: CancellationToken,
    handle: JoinHandle<Result<(), Error>>,
    /// Where its admin listener is, when started with [`World::start_bouncer`].
    pub admin: Option<std::net::SocketAddr>,
}

impl Running {
    /// Cancels as SIGTERM would, and waits for a clean stop.
    pub async fn stop(self) {
        self.token.cancel();
        let result = tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("the bouncer stops within 20 s of cancellation")
            .expect("the bouncer task does not panic");
        result.expect("the bouncer stops without error");
    }
}

impl World {
    /// A world whose emulator completes bulk operations in 20–80 ms.
    pub async fn start(name: &str) -> World {
        let settings = Settings {
            op_latency: (Duration::from_millis(20), Duration::from_millis(80)),
            ..Settings::default()
        };
        World::with_settings(name, settings).await
    }

    pub async fn with_settings(name: &str, settings: Settings) -> World {
        // The engine's logs, shown for failing tests (RUST_LOG=debug for more).
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_ansi(false)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .try_init();
        let lapi = Lapi::start().await;
        let key = lapi.add_bouncer(name);
        let bind: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        let cf = Emulator::start(settings, bind)
            .await
            .expect("emulator starts");
        let list_id = cf.create_list("crowdsec_ban");
        World {
            lapi,
            cf,
            list_id,
            key,
            crowdsec_extra: String::new(),
            cloudflare_extra: String::new(),
            lists: None,
            sync_extra: "reconcile_interval = \"1h\"\nshutdown_grace = \"5s\"\n".into(),
            update_frequency: "300ms".into(),
            lapi_via: None,
            admin_listen: "127.0.0.1:0".into(),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The bouncer's configuration file text for this world.
    pub fn config_text(&self) -> String {
        let text = format!(
            "[crowdsec]\napi_url = \"{}\"\napi_key = \"{}\"\nupdate_frequency = \"{}\"\n{}\n\
             [cloudflare]\napi_url = \"{}\"\napi_token = \"{}\"\naccount_id = \"{}\"\nlist_name = \"crowdsec_ban\"\n{}\n\
             [admin]\nlisten = \"{}\"\n\
             [sync]\n{}",
            self.lapi_via.clone().unwrap_or_else(|| self.lapi.url()),
            self.key,
            self.update_frequency,
            self.crowdsec_extra,
            self.cf.base_url(),
            self.cf.api_token(),
            self.cf.account_id(),
            self.cloudflare_extra,
            self.admin_listen,
            self.sync_extra,
        );
        match &self.lists {
            None => text,
            Some(lists) => text
                .replace("list_name = \"crowdsec_ban\"\n", "")
                .replace("\n[admin]\n", &format!("\n{lists}\n[admin]\n")),
        }
    }

    pub fn config(&self) -> Config {
        Config::parse(&self.config_text(), &|_| None).expect("test config is valid")
    }

    /// Writes the configuration to a file (mode 0600) for runs of the real binary.
    pub fn config_file(&self) -> PathBuf {
        let path = self.dir.path().join("bouncer.toml");
        std::fs::write(&path, self.config_text()).expect("write config");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        path
    }

    pub fn spawn_bouncer(&self) -> Running {
        let token = CancellationToken::new();
        let engine = Engine::new(self.config()).expect("engine builds");
        let handle = tokio::spawn(engine.run(token.clone()));
        Running {
            token,
            handle,
            admin: None,
        }
    }

    /// Like [`World::spawn_bouncer`], with the admin listener bound first so its address
    /// is known.
    pub async fn start_bouncer(&self) -> Running {
        let token = CancellationToken::new();
        let mut engine = Engine::new(self.config()).expect("engine builds");
        let admin = engine.bind_admin().await.expect("admin listener binds");
        let handle = tokio::spawn(engine.run(token.clone()));
        Running {
            token,
            handle,
            admin,
        }
    }

    /// Canonical ips on the emulated list, sorted as the API sorts them.
    pub fn listed(&self) -> Vec<String> {
        self.cf
            .items(&self.list_id)
            .into_iter()
            .map(|item| item.ip)
            .collect()
    }

    /// Waits until the list holds exactly `expected` (any order).
    pub async fn expect_list(&self, expected: &[&str]) {
        let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        let mut got = Vec::new();
        let reached = eventually(Duration::from_secs(20), || {
            got = self.listed();
            got.sort();
            std::future::ready(got == want)
        })
        .await;
        assert!(reached, "list never became {want:?}; last seen {got:?}");
    }

    /// Asserts the list keeps holding exactly `expected` for `period`.
    pub async fn expect_list_stays(&self, expected: &[&str], period: Duration) {
        let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        let until = Instant::now() + period;
        while Instant::now() < until {
            let mut got = self.listed();
            got.sort();
            assert_eq!(got, want, "the list changed when it should not have");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes an item through the API, as an operator would in the dashboard, and
    /// waits for the operation to complete.
    pub async fn remove_by_hand(&self, ip: &str) {
        let http = reqwest::Client::new();
        let auth = format!("Bearer {}", self.cf.api_token());
        let base = format!(
            "{}/accounts/{}/rules/lists",
            self.cf.base_url(),
            self.cf.account_id()
        );
        let page: serde_json::Value = http
            .get(format!("{base}/{}/items?per_page=500", self.list_id))
            .header("authorization", &auth)
            .send()
            .await
            .expect("list read")
            .json()
            .await
            .expect("json");
        let id = page["result"]
            .as_array()
            .and_then(|items| items.iter().find(|item| item["ip"] == ip))
            .and_then(|item| item["id"].as_str())
            .unwrap_or_else(|| panic!("{ip} is on the list"))
            .to_owned();
        let op: serde_json::Value = http
            .delete(format!("{base}/{}/items", self.list_id))
            .header("authorization", &auth)
            .json(&serde_json::json!({"items": [{"id": id}]}))
            .send()
            .await
            .expect("delete")
            .json()
            .await
            .expect("json");
        assert_eq!(op["success"], true, "{op}");
        let ip = ip.to_owned();
        let gone = eventually(Duration::from_secs(5), || {
            std::future::ready(!self.listed().contains(&ip))
        })
        .await;
        assert!(gone, "{ip} was deleted by hand");
    }

    /// The invariants every test checks at the end.
    pub fn assert_well_behaved(&self) -> Counters {
        let counters = self.cf.counters();
        assert_eq!(
            counters.writes_while_pending, 0,
            "a write was sent while an operation was pending: {counters:?}"
        );
        assert_eq!(
            counters.per_page_over_max, 0,
            "a list read asked for more than 500 per page: {counters:?}"
        );
        counters
    }
}

/// Polls `check` every 50 ms until it is true or `timeout` passes; returns whether it became true.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
