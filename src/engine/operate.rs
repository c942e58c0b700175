//! The engine's operator-facing extras: usage metrics pushed to LAPI, and the systemd
//! watchdog.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use std::sync::Arc;

use super::{sleep_or_cancel, Error, Shared};
use crate::config::Config;
use crate::lapi::{LapiClient, USER_AGENT};
use crate::telemetry::Telemetry;

/// Pushes usage metrics to LAPI. It has a LAPI client of its own: it never reads the
/// decision stream, which stays the poller's.
pub(super) struct UsageReporter {
    shared: Arc<Shared>,
    telemetry: Arc<Telemetry>,
    lapi: LapiClient,
}

/// Feeds the systemd watchdog while the engine is alive.
pub(super) struct Watchdog {
    /// Every account's state and telemetry: one wedged account starves the watchdog.
    pub accounts: Vec<(Arc<Shared>, Arc<Telemetry>)>,
    /// How recently a task loop must have gone round.
    pub alive_within: Duration,
}

impl UsageReporter {
    /// # Errors
    /// TLS setup errors of the LAPI client.
    pub(super) fn new(
        shared: Arc<Shared>,
        telemetry: Arc<Telemetry>,
        config: &Config,
    ) -> Result<UsageReporter, Error> {
        Ok(UsageReporter {
            shared,
            telemetry,
            lapi: LapiClient::new(&config.crowdsec)?,
        })
    }

    /// Pushes `active_decisions` to LAPI every `interval` (CrowdSec's remediation
    /// component metrics). A LAPI without the endpoint (404, before 1.6.3) is told once,
    /// at debug level, and not asked again.
    pub(super) async fn run(self, interval: Duration, token: CancellationToken) {
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
        // A standby blocks nothing: it reports no active decisions.
        let standby = self.shared.ha.as_ref().is_some_and(|ha| !ha.is_leader());
        let active = if standby {
            Vec::new()
        } else {
            self.shared.state().active_by_origin()
        };
        let items: Vec<serde_json::Value> = active
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
}

impl Watchdog {
    /// Pings the systemd watchdog while the engine's state can be locked (no deadlock),
    /// its loops went round recently, and the writer is not wedged.
    pub(super) async fn run(self, period: Duration, token: CancellationToken) {
        let alive_within = self.alive_within;
        loop {
            if !sleep_or_cancel(period / 2, &token).await {
                return;
            }
            let (mut responsive, mut live) = (true, Ok(()));
            for (shared, telemetry) in &self.accounts {
                let _state = shared.state();
                let health = telemetry.health();
                responsive &= shared.last_beat().elapsed() < alive_within;
                if live.is_ok() {
                    live = health.liveness(std::time::Instant::now());
                }
            }
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
        let engine = super::super::Engine::new(config).expect("engine");
        let reporter = UsageReporter::new(
            engine.accounts[0].shared.clone(),
            engine.accounts[0].telemetry.clone(),
            &engine.config,
        )
        .expect("reporter");
        let decision = |value, origin| crate::state::DecisionRef {
            scope: "Ip",
            value,
            kind: "ban",
            origin,
            scenario: "s",
            duration: "1h",
        };
        engine.accounts[0].shared.state().apply_delta(
            [],
            [
                decision("1.2.3.4", "cscli"),
                decision("2001:db8::1", "CAPI"),
                decision("5.6.7.8", "cscli"),
            ],
            std::time::Instant::now(),
        );
        let payload = reporter.usage_payload(1_700_000_000, 1800, 1_700_001_800);
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
}
