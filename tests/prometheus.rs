//! A real Prometheus (Debian's, from scripts/install-prometheus.sh) on loopback scrapes a
//! running bouncer with deploy/prometheus/alerts.yaml loaded: every rule evaluates without
//! error, what each alert watches and every query of deploy/grafana/dashboard.json return
//! data, and none of the alerts fires for a bouncer in step.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::lapi::NewDecision;
use common::observe::{
    as_sent, dashboard, panel_queries, prometheus_bin, read_repo_file, repo_file, signals,
};
use common::world::World;

/// A Prometheus in a temp dir, stopped (killed) on drop.
struct Prometheus {
    url: String,
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second, with the alert rules loaded.
    async fn start(target: SocketAddr) -> Prometheus {
        let mut dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: cf-iplist-bouncer\n    static_configs:\n      - targets: ['{target}']\n",
            repo_file("deploy/prometheus/alerts.yaml").display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
            let child = tokio::process::Command::new(prometheus_bin("prometheus"))
                .arg(format!(
                    "--config.file={}",
                    dir.path().join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("prometheus starts");
            let mut prometheus = Prometheus {
                url: format!("http://127.0.0.1:{port}"),
                child,
                dir,
            };
            if prometheus.ready().await {
                return prometheus;
            }
            let _ = prometheus.child.kill().await;
            dir = prometheus.dir;
        }
        panic!("Prometheus did not become ready three times; see its log above")
    }

    /// Waits until it answers `/-/ready`; false if it exits first or never does.
    async fn ready(&mut self) -> bool {
        let url = format!("{}/-/ready", self.url);
        for _ in 0..200 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("{}", self.log());
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        response
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }

    /// The instant vector `expr` returns now: `Err` with Prometheus's error if it refused it.
    async fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let answer = self.get("/api/v1/query", &[("query", expr)]).await;
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// Queries every `(what, expr)` until each returns data or `timeout` passes; returns the
/// ones that never did, with what Prometheus said.
async fn without_data(
    prometheus: &Prometheus,
    queries: &[(String, String)],
    timeout: Duration,
) -> Vec<String> {
    let until = Instant::now() + timeout;
    loop {
        let mut missing = Vec::new();
        for (what, expr) in queries {
            match prometheus.query(expr).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => missing.push(format!("{what}: no data for {expr}")),
                Err(err) => missing.push(format!("{what}: refused {expr}: {err}")),
            }
        }
        if missing.is_empty() || Instant::now() >= until {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The rules Prometheus loaded, once it has evaluated each of `expected` at least once.
async fn evaluated_rules(prometheus: &Prometheus, expected: usize) -> Vec<serde_json::Value> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = prometheus.get("/api/v1/rules", &[]).await;
        let rules: Vec<serde_json::Value> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.iter().all(|r| {
            r["lastEvaluation"]
                .as_str()
                .is_some_and(|t| !t.starts_with("0001-"))
        });
        if rules.len() == expected && evaluated {
            return rules;
        }
        assert!(
            Instant::now() < until,
            "{expected} rules loaded and evaluated: {rules:?}\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_bouncer_and_every_rule_and_panel_has_data() {
    let world = World::start("t-prometheus").await;
    world
        .lapi
        .add_decisions(&[
            NewDecision::ban_ip("192.0.2.1"),
            NewDecision::ban_ip("192.0.2.2").with_origin("crowdsec"),
            NewDecision::ban_range("198.51.100.0/24").with_origin("CAPI"),
            NewDecision::ban_ip("2001:db8::1"),
        ])
        .await;
    let bouncer = world.start_bouncer().await;
    let admin = bouncer.admin.expect("the admin listener is on");
    world
        .expect_list(&["192.0.2.1", "192.0.2.2", "198.51.100.0/24", "2001:db8::/64"])
        .await;
    let prometheus = Prometheus::start(admin).await;
    // A failed Cloudflare request, then a bulk operation: the series of failures exist too
    // (the write-failure alert watches them).
    world.cf.fail_next_requests(1, 500);
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("203.0.113.7")])
        .await;
    world
        .expect_list(&[
            "192.0.2.1",
            "192.0.2.2",
            "198.51.100.0/24",
            "2001:db8::/64",
            "203.0.113.7",
        ])
        .await;

    // Every rule loaded and evaluated without error.
    let rules_file = read_repo_file("deploy/prometheus/alerts.yaml");
    let expected = rules_file.matches("- alert: ").count();
    let rules = evaluated_rules(&prometheus, expected).await;
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // What each alert watches, and every panel query, returns data.
    let mut queries: Vec<(String, String)> = Vec::new();
    for rule in &rules {
        let query = rule["query"].as_str().expect("query");
        for signal in signals(query) {
            queries.push((format!("alert {}", rule["name"]), signal));
        }
    }
    let alerts = queries.len();
    for panel in panel_queries(&dashboard()) {
        queries.push((
            format!("panel {:?} {}", panel.panel, panel.ref_id),
            as_sent(&panel.expr),
        ));
    }
    assert!(
        alerts >= expected && queries.len() > alerts + 20,
        "{queries:?}"
    );
    let missing = without_data(&prometheus, &queries, Duration::from_secs(30)).await;
    assert!(missing.is_empty(), "without data:\n{}", missing.join("\n"));

    // Nothing fires (or is about to) for a bouncer in step, the failed write included.
    let alerting = prometheus.query("ALERTS").await.expect("a valid query");
    assert!(
        alerting.is_empty(),
        "alerts for a bouncer in step: {alerting:?}"
    );
    bouncer.stop().await;
    world.assert_well_behaved();
}
