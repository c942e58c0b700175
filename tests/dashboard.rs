//! What operators import and load, checked without running anything: the Grafana
//! dashboard's structure, and the alert rules' files (`deploy/`). That every query of
//! both returns data from a real Prometheus scraping a real bouncer is tests/prometheus.rs.

mod common;

use std::collections::{BTreeSet, HashSet};

use common::observe::{
    as_sent, dashboard, metric_names, panel_queries, panels, read_repo_file, signals,
};

/// The metric names of README's Metrics table, with the prefix.
fn documented_metrics() -> BTreeSet<String> {
    let readme = read_repo_file("README.md");
    let section = readme
        .split("\n## Metrics")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .and_then(|rest| rest.split("\n### ").next())
        .expect("README has a Metrics section");
    let mut names = BTreeSet::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('|').nth(1).unwrap_or_default();
        for name in cell.split('`').skip(1).step_by(2) {
            names.insert(format!("cf_iplist_bouncer_{name}"));
        }
    }
    names
}

#[test]
fn dashboard_imports_with_the_data_source_as_a_variable() {
    let dashboard = dashboard();
    for key in ["title", "uid"] {
        assert!(
            dashboard[key].as_str().is_some_and(|s| !s.is_empty()),
            "{key}"
        );
    }
    assert!(dashboard["schemaVersion"].as_u64() >= Some(36));
    // No data source of the exporting Grafana is baked in: a variable of type datasource.
    assert!(dashboard.get("__inputs").is_none());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let datasource = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let defined: HashSet<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();

    let uses_variable = |value: &serde_json::Value| {
        value["type"] == "prometheus" && value["uid"] == "${datasource}"
    };
    let mut ids = HashSet::new();
    let mut cells = HashSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "every panel has a title: {panel}");
        assert!(
            ids.insert(panel["id"].as_u64().expect("numeric id")),
            "{title}: id repeats"
        );
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().expect("gridPos"));
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: {grid}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{title} overlaps another panel at {cx},{cy}"
                );
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            uses_variable(&panel["datasource"]),
            "{title}: datasource {}",
            panel["datasource"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has queries");
        let mut refs = HashSet::new();
        for target in targets {
            assert!(
                uses_variable(&target["datasource"]),
                "{title}: target datasource"
            );
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "{title}: refId repeats"
            );
            let expr = target["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty(), "{title}: empty query");
            // Every variable a query uses is the dashboard's or Grafana's.
            for word in expr.split('$').skip(1) {
                let name: String = word
                    .trim_start_matches('{')
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    name.starts_with("__") || defined.contains(name.as_str()),
                    "{title}: ${name} is not a variable of the dashboard"
                );
            }
            assert!(
                !as_sent(expr).contains('$'),
                "{title}: a variable is left in {expr}"
            );
        }
    }
}

#[test]
fn dashboard_shows_what_operators_watch_with_documented_metrics() {
    let dashboard = dashboard();
    let queries = panel_queries(&dashboard);
    let used: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(&q.expr)).collect();
    for wanted in [
        "active_decisions",
        "list_items",
        "items_left_out",
        "pending_changes",
        "bulk_operation_duration_seconds",
        "bulk_operations_total",
        "cloudflare_requests_total",
        "lapi_polls_total",
        "lapi_poll_failures_total",
        "decisions_refused_total",
        "removals_held",
        "removals_awaiting_confirmation",
        "foreign_writer_suspected",
        "leader",
        "ready",
    ] {
        let name = format!("cf_iplist_bouncer_{wanted}");
        assert!(used.contains(&name), "no panel shows {name}");
    }
    let documented = documented_metrics();
    let unknown: Vec<&String> = used.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "panels use metrics README does not list: {unknown:?}"
    );
    let titles: Vec<&str> = panels(&dashboard)
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for title in [
        "Decision-to-edge latency, by part",
        "Items on the list vs capacity",
    ] {
        assert!(titles.contains(&title), "{title} in {titles:?}");
    }
}

/// `- alert: Name` lines of alerts.yaml.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn alert_rules_use_documented_metrics_and_each_has_a_summary() {
    let rules = read_repo_file("deploy/prometheus/alerts.yaml");
    let names = alert_names(&rules);
    assert!(names.len() >= 9, "{names:?}");
    for name in &names {
        let rule = rules
            .split(&format!("- alert: {name}\n"))
            .nth(1)
            .expect("rule body");
        let rule = rule.split("- alert: ").next().unwrap_or(rule);
        assert!(rule.contains("      expr: "), "{name}: expr");
        assert!(rule.contains("          summary: \""), "{name}: a summary");
        assert!(
            rule.contains("check"),
            "{name}: the summary says what to check"
        );
        assert!(rule.contains("severity: "), "{name}: a severity");
    }
    let used: BTreeSet<String> = metric_names(&rules).into_iter().collect();
    let documented = documented_metrics();
    let unknown: Vec<&String> = used.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "rules use metrics README does not list: {unknown:?}"
    );
    assert!(
        used.contains("cf_iplist_bouncer_leader"),
        "the no-leader rule"
    );
}

#[test]
fn every_alert_has_a_promtool_case_that_fires_and_one_that_stays_quiet() {
    let rules = read_repo_file("deploy/prometheus/alerts.yaml");
    let tests = read_repo_file("deploy/prometheus/alerts_test.yaml");
    // Each `- eval_time:` entry names one alert and what it expects.
    let entries: Vec<&str> = tests.split("- eval_time: ").skip(1).collect();
    for name in alert_names(&rules) {
        let mine: Vec<&&str> = entries
            .iter()
            .filter(|e| e.contains(&format!("alertname: {name}\n")))
            .collect();
        let quiet = mine.iter().filter(|e| e.contains("exp_alerts: []")).count();
        let fires = mine.iter().filter(|e| e.contains("- exp_labels:")).count();
        assert!(
            quiet >= 1 && fires >= 1,
            "{name}: {fires} firing and {quiet} quiet cases"
        );
    }
}

#[test]
fn prometheus_rule_carries_the_rules_of_alerts_yaml() {
    let rules = read_repo_file("deploy/prometheus/alerts.yaml");
    let operator = read_repo_file("deploy/prometheus/prometheusrule.yaml");
    assert!(operator.contains("\nkind: PrometheusRule\n"));
    assert!(operator.contains("\napiVersion: monitoring.coreos.com/v1\n"));
    let groups = rules
        .split_once("\ngroups:")
        .map(|(_, g)| g)
        .expect("groups");
    let spec = operator
        .split_once("\nspec:\n  groups:")
        .map(|(_, g)| g)
        .expect("spec.groups");
    let unindented: String = spec
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        unindented.trim_end(),
        groups.trim_end(),
        "prometheusrule.yaml's spec is alerts.yaml's groups, indented by two spaces"
    );
}

#[test]
fn alert_signals_drop_thresholds_set_operators_and_absent() {
    let expr = "sum by (job) (x{a=\"or b\"}) > 0\nand on (job)\nmax by (job) (y) > 900";
    assert_eq!(
        signals(expr),
        ["sum by (job) (x{a=\"or b\"})", "max by (job) (y)"]
    );
    assert_eq!(signals("max(l) < 1 or absent(l)"), ["max(l)"]);
    assert_eq!(signals("a + b > 0.5"), ["a + b"]);
    assert_eq!(signals("rate(x[5m])"), ["rate(x[5m])"]);
}

#[test]
fn grafana_variables_are_replaced_in_both_spellings() {
    assert_eq!(
        as_sent("rate(m{job=~\"$job\", instance=~\"${instance}\"}[$__rate_interval])"),
        "rate(m{job=~\".+\", instance=~\".+\"}[15s])"
    );
}

#[test]
fn metric_names_drop_only_a_histograms_suffixes() {
    assert_eq!(
        metric_names(
            "rate(cf_iplist_bouncer_bulk_operation_duration_seconds_bucket[1m]) / cf_iplist_bouncer_lapi_polls_total"
        ),
        [
            "cf_iplist_bouncer_bulk_operation_duration_seconds",
            "cf_iplist_bouncer_lapi_polls_total"
        ]
    );
}
