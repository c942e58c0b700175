//! The engine's operator-facing extras: usage metrics pushed to LAPI, the systemd
//! watchdog, and the `setup` and `cleanup` commands.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{sleep_or_cancel, Engine, Error};
use crate::cloudflare::{self, Rule};
use crate::lapi::USER_AGENT;

/// What `setup` found and did, one line each.
pub type SetupReport = Vec<String>;

impl Engine {
    /// Pushes `active_decisions` to LAPI every `interval` (CrowdSec's remediation
    /// component metrics). A LAPI without the endpoint (404, before 1.6.3) is told once,
    /// at debug level, and not asked again.
    pub(super) async fn push_usage_metrics(&self, interval: Duration, token: CancellationToken) {
        let started = unix_now().saturating_sub(
            self.telemetry
                .health()
                .uptime(std::time::Instant::now())
                .as_secs(),
        );
        let mut last_push = unix_now();
        loop {
            if !sleep_or_cancel(interval, &token).await {
                return;
            }
            let now = unix_now();
            let payload = self.usage_payload(started, now.saturating_sub(last_push), now);
            match self.lapi.push_usage_metrics(&payload).await {
                Ok(true) => {
                    last_push = now;
                    debug!("pushed usage metrics to LAPI");
                }
                Ok(false) => {
                    debug!("this LAPI has no usage-metrics endpoint (CrowdSec before 1.6.3); not pushing again");
                    return;
                }
                Err(err) => {
                    warn!(error = %err, "pushing usage metrics to LAPI failed; next try in one interval")
                }
            }
        }
    }

    fn usage_payload(&self, started: u64, window: u64, now: u64) -> serde_json::Value {
        let items: Vec<serde_json::Value> = self
            .shared
            .state()
            .active_by_origin()
            .into_iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(origin, ip_type, n)| {
                json!({"name": "active_decisions", "value": n, "unit": "ip",
                       "labels": {"origin": origin, "ip_type": ip_type}})
            })
            .collect();
        let (kind, version) = USER_AGENT.split_once('/').unwrap_or((USER_AGENT, ""));
        json!({"remediation_components": [{
            "type": kind,
            "version": version,
            "os": {"name": std::env::consts::OS, "version": kernel_release()},
            "feature_flags": [],
            "utc_startup_timestamp": started,
            "metrics": [{"meta": {"window_size_seconds": window, "utc_now_timestamp": now}, "items": items}],
        }]})
    }

    /// Pings the systemd watchdog while the engine's state can be locked (no deadlock)
    /// and its loops went round recently.
    pub(super) async fn feed_watchdog(&self, period: Duration, token: CancellationToken) {
        let alive_within =
            period.max(self.config.crowdsec.request_timeout + Duration::from_secs(120));
        loop {
            if !sleep_or_cancel(period / 2, &token).await {
                return;
            }
            let (responsive, live) = {
                let _state = self.shared.state();
                let health = self.telemetry.health();
                (
                    self.shared.last_beat().elapsed() < alive_within,
                    health.liveness(std::time::Instant::now()),
                )
            };
            match live {
                Ok(()) if responsive => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                Ok(()) => warn!(
                    "the sync loops have not gone round for a while; not feeding the watchdog"
                ),
                Err(why) => warn!(reason = %why, "not feeding the watchdog"),
            }
        }
    }

    /// Creates the list when it is configured by name and missing, and with `zones`,
    /// adds the custom rule `ip.src in $<list>` to each zone unless one is there.
    ///
    /// # Errors
    /// The first request that fails, or a list configured by id that does not exist.
    pub async fn setup(&self, zones: &[String], action: &str) -> Result<SetupReport, Error> {
        let mut report = Vec::new();
        let list = match self.find_list().await {
            Ok(list) => {
                report.push(format!(
                    "list {} ({}) exists, {} items",
                    list.name, list.id, list.num_items
                ));
                list
            }
            Err(Error::Cloudflare(cloudflare::Error::ListNotFound(name))) => {
                let description =
                    "CrowdSec bans, kept in step by crowdsec-cloudflare-iplist-bouncer";
                let list = self.cloudflare.create_list(&name, description).await?;
                report.push(format!("created list {} ({})", list.name, list.id));
                list
            }
            Err(err) => return Err(err),
        };
        let expression = format!("ip.src in ${}", list.name);
        for zone in zones {
            let existing = self.cloudflare.custom_rules(zone).await?;
            let present = existing.as_ref().and_then(|ruleset| {
                ruleset
                    .rules
                    .iter()
                    .find(|rule| references(&rule.expression, &list.name))
            });
            if let Some(rule) = present {
                report.push(format!(
                    "zone {zone}: a custom rule already uses ${} (action {}): left as it is",
                    list.name, rule.action
                ));
                continue;
            }
            let rule = Rule {
                id: String::new(),
                expression: expression.clone(),
                action: action.to_owned(),
                description: "CrowdSec bans (crowdsec-cloudflare-iplist-bouncer)".into(),
                enabled: true,
            };
            self.cloudflare
                .add_custom_rule(zone, existing.as_ref(), &rule)
                .await?;
            report.push(format!(
                "zone {zone}: added the custom rule `{expression}` → {action}"
            ));
        }
        Ok(report)
    }

    /// Removes every item the bouncer manages from the list (all of them with
    /// `manage = "all"`, the tagged ones with `"tagged"`), one bulk operation at a time.
    /// Returns how many were removed.
    ///
    /// # Errors
    /// The first error that stops it.
    pub async fn cleanup(&self, token: CancellationToken) -> Result<usize, Error> {
        let list = self.find_list().await?;
        {
            let mut state = self.shared.state();
            state.disable_mass_removal_guard();
            state.trust_full_pulls();
            state.replace_desired([], std::time::Instant::now());
        }
        self.read_list(&list.id).await?;
        let before = self.shared.state().managed_listed_items().len();
        self.drain_once(&list.id, &token).await?;
        let after = self.shared.state().managed_listed_items().len();
        Ok(before - after)
    }
}

/// Whether a rule expression references the list `$name` (not a longer name).
fn references(expression: &str, name: &str) -> bool {
    let needle = format!("${name}");
    expression.match_indices(&needle).any(|(at, _)| {
        let after = expression[at + needle.len()..].chars().next();
        after.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
}

/// The running kernel's release, as `uname -r` prints it; empty if uname(2) fails.
///
/// uname(2), not /proc/sys/kernel/osrelease: the systemd unit's `ProcSubset=pid` hides
/// /proc/sys, and the version was then sent empty.
fn kernel_release() -> String {
    // SAFETY: `utsname` is plain C data (arrays of `c_char`), for which all-zero bytes are a
    // valid value.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid, writable `utsname` for the whole call; uname(2) writes
    // only inside it.
    if unsafe { libc::uname(&mut name) } != 0 {
        return String::new();
    }
    // The kernel NUL-terminates each field; stop at the array's end anyway.
    let release: Vec<u8> = name
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&release).into_owned()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_metrics_have_the_shape_lapi_validates() {
        let text = "[crowdsec]\napi_key = \"k\"\n[cloudflare]\napi_token = \"t\"\n\
                    account_id = \"0123456789abcdef0123456789abcdef\"\nlist_name = \"l\"\n";
        let config = crate::config::Config::parse(text, &|_| None).expect("valid");
        let engine = Engine::new(config).expect("engine");
        let decision = |value, origin| crate::state::DecisionRef {
            scope: "Ip",
            value,
            kind: "ban",
            origin,
            scenario: "s",
            duration: "1h",
        };
        engine.shared.state().apply_delta(
            [],
            [
                decision("1.2.3.4", "cscli"),
                decision("2001:db8::1", "CAPI"),
                decision("5.6.7.8", "cscli"),
            ],
            std::time::Instant::now(),
        );
        let payload = engine.usage_payload(1_700_000_000, 1800, 1_700_001_800);
        let component = &payload["remediation_components"][0];
        assert_eq!(component["type"], "crowdsec-cloudflare-iplist-bouncer");
        assert!(component["version"]
            .as_str()
            .is_some_and(|v| v.starts_with('v')));
        for key in ["os", "feature_flags", "utc_startup_timestamp", "metrics"] {
            assert!(!component[key].is_null(), "{key} missing in {payload}");
        }
        let metrics = &component["metrics"][0];
        assert_eq!(metrics["meta"]["window_size_seconds"], 1800);
        assert_eq!(metrics["meta"]["utc_now_timestamp"], 1_700_001_800);
        let items = metrics["items"].as_array().expect("items");
        assert_eq!(items.len(), 2, "only non-zero counts: {items:?}");
        assert!(items.contains(
            &json!({"name": "active_decisions", "value": 2, "unit": "ip",
                                       "labels": {"origin": "cscli", "ip_type": "ipv4"}})
        ));
        assert!(items.contains(
            &json!({"name": "active_decisions", "value": 1, "unit": "ip",
                                       "labels": {"origin": "CAPI", "ip_type": "ipv6"}})
        ));
    }

    #[test]
    fn the_os_version_is_the_kernel_release_uname_prints() {
        let release = kernel_release();
        assert!(!release.is_empty());
        let uname = std::process::Command::new("uname")
            .arg("-r")
            .output()
            .expect("uname runs");
        assert!(uname.status.success());
        assert_eq!(release, String::from_utf8_lossy(&uname.stdout).trim_end());
    }

    #[test]
    fn rule_references_match_whole_list_names() {
        assert!(references("ip.src in $crowdsec_ban", "crowdsec_ban"));
        assert!(references(
            "(ip.src in $crowdsec_ban) and not http.host eq \"x\"",
            "crowdsec_ban"
        ));
        assert!(!references("ip.src in $crowdsec_ban_v2", "crowdsec_ban"));
        assert!(!references("ip.src in $other", "crowdsec_ban"));
    }
}
