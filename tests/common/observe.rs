//! What operators load: the Grafana dashboard's queries and the alert rules, read from
//! `deploy/`, and Debian's Prometheus binaries (`scripts/install-prometheus.sh`).

use std::path::PathBuf;

/// A file of this repository.
pub fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A file of this repository, read whole.
pub fn read_repo_file(relative: &str) -> String {
    let path = repo_file(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `deploy/grafana/dashboard.json`, parsed.
pub fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read_repo_file("deploy/grafana/dashboard.json"))
        .expect("dashboard.json is JSON")
}

/// Every panel of the dashboard (rows' nested panels included), rows themselves left out.
pub fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    let top = dashboard["panels"].as_array().expect("panels is an array");
    for panel in top {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            out.push(panel);
        }
    }
    out
}

/// One query of one panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// Every panel query of the dashboard, as written in it (with Grafana's variables).
pub fn panel_queries(dashboard: &serde_json::Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(PanelQuery {
                panel: title.clone(),
                ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                expr: target["expr"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    out
}

/// The dashboard's own variables and Grafana's built-in ones, with the value each takes
/// when a query is sent to Prometheus by hand: every job and instance, the defaults of
/// the text boxes, and a rate window that holds a few scrapes of the test's Prometheus.
pub const VARIABLES: [(&str, &str); 5] = [
    ("$__rate_interval", "15s"),
    ("$__interval", "1s"),
    ("$job", ".+"),
    ("$instance", ".+"),
    ("$requests_per_minute", "120"),
];

/// A panel query as Grafana would send it, its variables replaced by [`VARIABLES`].
pub fn as_sent(expr: &str) -> String {
    let mut out = expr.to_owned();
    for (name, value) in VARIABLES {
        out = out.replace(&format!("${{{}}}", &name[1..]), value);
        out = out.replace(name, value);
    }
    out
}

/// The names of the bouncer's metrics a query uses, without a histogram's suffixes.
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("cf_iplist_bouncer_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| base.ends_with("_seconds"))
            .unwrap_or(name);
        if !names.iter().any(|n| n == base) {
            names.push(base.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// What an alert watches: its expression cut at the top-level `and`, `or` and `unless`,
/// each part without its final comparison to a number (`... > 900`). Those parts return
/// data whenever the metrics are there, firing or not. `absent(...)` parts are left out:
/// they return data only when the metric is missing.
pub fn signals(expr: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut in_string = false;
    let mut start = 0;
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_string = !in_string,
            b'(' | b'[' | b'{' if !in_string => depth += 1,
            b')' | b']' | b'}' if !in_string => depth -= 1,
            _ if depth == 0 && !in_string && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                let word = ["and", "or", "unless"].into_iter().find(|w| {
                    expr[i..].starts_with(w)
                        && expr[i + w.len()..].starts_with(|c: char| c.is_whitespace())
                });
                if let Some(word) = word {
                    parts.push(&expr[start..i]);
                    i += word.len();
                    start = i;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&expr[start..]);
    parts
        .into_iter()
        .map(|part| strip_comparison(strip_matching(part.trim())))
        .filter(|part| !part.starts_with("absent("))
        .collect()
}

/// `on (a, b) expr` or `ignoring (a) expr` → `expr`.
fn strip_matching(part: &str) -> &str {
    for keyword in ["on", "ignoring"] {
        if let Some(rest) = part.strip_prefix(keyword) {
            let rest = rest.trim_start();
            if let (Some(rest), Some(close)) = (rest.strip_prefix('('), rest.find(')')) {
                return rest[close..].trim_start();
            }
        }
    }
    part
}

/// `expr > 900` → `expr`; anything else unchanged.
fn strip_comparison(part: &str) -> String {
    let part = part.trim();
    let Some(number_at) = part.rfind(|c: char| !(c.is_ascii_digit() || c == '.')) else {
        return part.to_owned();
    };
    let (head, number) = part.split_at(number_at + 1);
    if number.is_empty() {
        return part.to_owned();
    }
    let head = head.trim_end();
    for op in [">=", "<=", "==", "!=", ">", "<"] {
        if let Some(signal) = head.strip_suffix(op) {
            return signal.trim_end().to_owned();
        }
    }
    part.to_owned()
}

/// Debian's `prometheus` or `promtool`: `$PROMETHEUS_BIN`/`$PROMTOOL_BIN`, else where
/// `scripts/install-prometheus.sh` unpacks them.
pub fn prometheus_bin(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase());
    let path = std::env::var_os(&var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_file("target/prometheus/usr/bin").join(name));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-prometheus.sh (or set {var})",
        path.display()
    );
    path
}
