//! `check`: the pre-flight an operator runs. The configuration is already valid when
//! this runs; here both APIs are reached with it: it has clients of its own, leaves
//! LAPI's stream alone, and makes one write to Cloudflare that changes nothing (the
//! list's description set to what it is) to learn whether the token may write.
//!
//! LAPI is probed with `HEAD /v1/decisions?ip=127.0.0.1` (live mode): it checks the key
//! without touching the stream's `last_pull` while a daemon with the same key polls
//! (live mode moves it at most once a minute, and the daemon pulls more often).

use std::fmt::Write as _;

use crate::cloudflare::CloudflareClient;
use crate::config::Config;
use crate::lapi::{self, LapiClient};

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub what: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Reaches LAPI and Cloudflare, and with `[ha]` the Lease API; returns one finding for
/// each.
pub async fn run(config: &Config) -> Vec<Finding> {
    crate::install_tls_provider();
    let mut findings = vec![check_lapi(config).await];
    // Each account on its own: one that fails says so, and the others are still checked.
    let several = config.accounts.len() > 1;
    for i in 0..config.accounts.len().max(1) {
        let account = config.for_account(i);
        let mut finding = check_cloudflare(&account).await;
        if several {
            finding.detail = format!("account {}: {}", account.cloudflare.name, finding.detail);
        }
        findings.push(finding);
    }
    if let Some(ha) = &config.ha {
        findings.push(check_lease(ha).await);
    }
    findings
}

/// Reads the Lease (a `GET`: it changes nothing, so it may run beside the daemons):
/// the API server, the token and the Role's `get` on the Lease.
async fn check_lease(config: &crate::config::HaConfig) -> Finding {
    use crate::ha::lease::{HttpLeaseApi, LeaseApi};
    let name = format!("{}/{}", config.namespace, config.lease_name);
    let read = match HttpLeaseApi::new(config) {
        Ok(api) => api.get().await.map_err(|err| err.to_string()),
        Err(err) => Err(err),
    };
    let detail = match &read {
        Ok(None) => format!(
            "{} answers; the Lease {name} does not exist yet (the first instance creates it)",
            config.api_server
        ),
        Ok(Some(lease)) => {
            let holder = lease.record().holder;
            let holder = if holder.is_empty() {
                "nobody".to_owned()
            } else {
                holder
            };
            format!(
                "{} answers; the Lease {name} is held by {holder} (this instance: {})",
                config.api_server, config.identity
            )
        }
        Err(err) => format!("cannot read the Lease {name}: {err}"),
    };
    Finding {
        what: "lease",
        ok: read.is_ok(),
        detail,
    }
}

/// Renders findings for a person; the bool is whether all is well.
pub fn render(findings: &[Finding]) -> (String, bool) {
    let mut out = String::new();
    for finding in findings {
        let status = if finding.ok { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "{status} {:<10} {}", finding.what, finding.detail);
    }
    (out, findings.iter().all(|f| f.ok))
}

async fn check_lapi(config: &Config) -> Finding {
    let url = &config.crowdsec.api_url;
    let (result, accepted) = match LapiClient::new(&config.crowdsec) {
        Ok(client) => {
            let accepted = if client.uses_certificate() {
                "accepts the bouncer's client certificate"
            } else {
                "accepts the bouncer key"
            };
            (client.probe().await, accepted)
        }
        Err(err) => (Err(err), ""),
    };
    Finding {
        what: "lapi",
        ok: result.is_ok(),
        detail: match result {
            Ok(()) => format!("{url} {accepted}"),
            Err(err @ lapi::Error::Transport { .. }) => {
                format!("{err} (is LAPI running? check crowdsec.api_url)")
            }
            Err(err) => err.to_string(),
        },
    }
}

async fn check_cloudflare(config: &Config) -> Finding {
    let finding = |ok, detail: String| Finding {
        what: "cloudflare",
        ok,
        detail,
    };
    let telemetry = std::sync::Arc::new(crate::telemetry::Telemetry::default());
    let client = match CloudflareClient::new(&config.cloudflare, telemetry) {
        Ok(client) => client,
        Err(err) => return finding(false, err.to_string()),
    };
    let all = match client.lists().await {
        Ok(all) => all,
        Err(err) => return finding(false, err.to_string()),
    };
    let mut lines = Vec::new();
    let mut ok = true;
    for wanted in &config.cloudflare.lists {
        let (line, fine) = check_list(&client, &all, wanted).await;
        ok &= fine;
        lines.push(line);
    }
    finding(ok, lines.join("; "))
}

/// One configured list: found, of the kind its decisions need, readable, writable. The
/// line names the list and, when something is wrong, the fix.
async fn check_list(
    client: &CloudflareClient,
    all: &[crate::cloudflare::ListInfo],
    wanted: &crate::config::ListConfig,
) -> (String, bool) {
    let kind = if wanted.asn {
        crate::cloudflare::ListKind::Asn
    } else {
        crate::cloudflare::ListKind::Ip
    };
    let takes = wanted.decision_types.join(", ");
    let list = match crate::cloudflare::choose_list_of_kind(all, &wanted.list, kind) {
        Ok(list) => list,
        Err(err @ crate::cloudflare::Error::WrongKind { .. }) => {
            return (
                format!(
                    "{err}: the list for {takes} decisions on {} must be of kind {}; \
                     name another list, or set scope = \"{}\" for it",
                    if wanted.asn { "AS numbers" } else { "IPs" },
                    kind.as_str(),
                    if wanted.asn { "ip" } else { "as" },
                ),
                false,
            )
        }
        Err(err) => return (format!("{err} (for {takes} decisions)"), false),
    };
    let read = if wanted.asn {
        client
            .asn_items_page(&list.id, None, None)
            .await
            .map(|_| ())
    } else {
        client.items_page(&list.id, None, None).await.map(|_| ())
    };
    if let Err(err) = read {
        return (format!("list {}: {err}", list.name), false);
    }
    match client.probe_write(&list.id).await {
        Ok(()) => (
            format!(
                "token accepted and may write; list {} ({}, kind {}, for {takes}) is readable \
                 and holds {} items",
                list.name, list.id, list.kind, list.num_items
            ),
            true,
        ),
        Err(err) if err.is_auth() => (
            format!(
                "the token may read list {} but not write to it ({err}): give it \
                 Account > Account Filter Lists > Edit, not Read",
                list.name
            ),
            false,
        ),
        Err(err @ crate::cloudflare::Error::RateLimited { .. }) => (
            format!(
                "token accepted; list {} ({}) is readable and holds {} items; whether the token \
                 may write is unknown ({err}): run check again later",
                list.name, list.id, list.num_items
            ),
            true,
        ),
        Err(err) => (
            format!("list {}: the write probe failed: {err}", list.name),
            false,
        ),
    }
}
