//! The `[ha]` section: one writer among several instances, elected by a Kubernetes
//! `Lease` (see `ha.rs`). Absent, or without `lease`, high availability is off and
//! nothing changes.

use std::path::PathBuf;
use std::time::Duration;

use super::{godur, Section};

/// Where the service account's files are mounted in a pod.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How `[ha]` was configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This instance's name in the Lease's `holderIdentity`.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// The API server's base URL, without a trailing `/`.
    pub api_server: String,
    /// The bearer token's file, re-read at least every minute (projected tokens rotate).
    pub token_file: PathBuf,
    /// The CA that signs the API server's certificate; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// Reads `[ha]`; `None` when it is off (or broken: the problems are recorded).
pub(super) fn read_ha(
    s: &mut Section<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<HaConfig> {
    let lease = s.opt_string("lease");
    let identity = s.opt_string("identity");
    let lease_duration = s.duration(
        "lease_duration",
        "15s",
        Duration::from_secs(2),
        Duration::from_secs(3600),
    );
    let renew_deadline = s.duration(
        "renew_deadline",
        "10s",
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    let retry_period = s.duration(
        "retry_period",
        "2s",
        Duration::from_millis(100),
        Duration::from_secs(600),
    );
    let api_server = s.opt_string("api_server");
    let token_file = s.opt_path("token_file");
    let ca_file = s.opt_path("ca_file");
    let Some(lease) = lease else {
        let set: Vec<&str> = [
            ("identity", identity.is_some()),
            ("api_server", api_server.is_some()),
            ("token_file", token_file.is_some()),
            ("ca_file", ca_file.is_some()),
        ]
        .iter()
        .filter_map(|(key, set)| set.then_some(*key))
        .collect();
        if !set.is_empty() {
            s.problem(
                "lease",
                &format!(
                    "missing, but {} is set: set lease = \"NAMESPACE/NAME\" to turn high \
                     availability on, or remove the [ha] section",
                    set.join(", ")
                ),
            );
        }
        return None;
    };
    let mut ok = true;
    let (namespace, lease_name) = match lease.split_once('/') {
        Some((ns, name)) if is_dns_label(ns) && is_dns_subdomain(name) => {
            (ns.to_owned(), name.to_owned())
        }
        _ => {
            s.problem(
                "lease",
                &format!(
                    "expected \"NAMESPACE/NAME\" in lower-case letters, digits, `-` (and `.` \
                     in the name), like \"crowdsec/cloudflare-bouncer\", found {lease:?}"
                ),
            );
            ok = false;
            (String::new(), String::new())
        }
    };
    let identity = identity
        .or_else(|| env("POD_NAME").filter(|v| !v.is_empty()))
        .or_else(|| env("HOSTNAME").filter(|v| !v.is_empty()));
    let identity = match identity {
        Some(id) if is_identity(&id) => id,
        Some(id) => {
            s.problem(
                "identity",
                &format!(
                    "expected 1 to 253 printable characters without spaces, found {:?}",
                    crate::net::quote(&id)
                ),
            );
            ok = false;
            String::new()
        }
        None => {
            s.problem(
                "identity",
                "missing: set it, or set POD_NAME (the pod's name, from the downward API) \
                 or HOSTNAME in the environment",
            );
            ok = false;
            String::new()
        }
    };
    if lease_duration.subsec_nanos() != 0 {
        s.problem(
            "lease_duration",
            &format!(
                "must be whole seconds (the Lease stores seconds), found {}",
                godur::format(lease_duration)
            ),
        );
        ok = false;
    }
    // client-go's rule: the leader must give up before anyone may take over, and must
    // get more than one retry in before it gives up (its jitter factor is 1.2).
    if !(lease_duration > renew_deadline
        && renew_deadline.as_secs_f64() > 1.2 * retry_period.as_secs_f64())
    {
        s.problem(
            "renew_deadline",
            &format!(
                "expected lease_duration > renew_deadline > 1.2 × retry_period, found {} > {} > 1.2 × {} \
                 (the defaults 15s, 10s, 2s satisfy it)",
                godur::format(lease_duration),
                godur::format(renew_deadline),
                godur::format(retry_period)
            ),
        );
        ok = false;
    }
    let api_server = match api_server {
        Some(url) => match check_api_server(&url) {
            Ok(url) => url,
            Err(why) => {
                s.problem("api_server", &why);
                ok = false;
                String::new()
            }
        },
        None => match (
            env("KUBERNETES_SERVICE_HOST"),
            env("KUBERNETES_SERVICE_PORT"),
        ) {
            (Some(host), Some(port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
            _ => {
                s.problem(
                    "api_server",
                    "not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST and \
                     KUBERNETES_SERVICE_PORT are unset): set api_server to the API server's URL",
                );
                ok = false;
                String::new()
            }
        },
    };
    let in_cluster = |file: &str| PathBuf::from(format!("{SERVICE_ACCOUNT_DIR}/{file}"));
    let token_file = token_file.unwrap_or_else(|| in_cluster("token"));
    let ca_file = match ca_file {
        Some(file) => Some(file),
        None if api_server.starts_with("https://") => Some(in_cluster("ca.crt")),
        None => None,
    };
    ok.then_some(HaConfig {
        namespace,
        lease_name,
        identity,
        lease_duration,
        renew_deadline,
        retry_period,
        api_server,
        token_file,
        ca_file,
    })
}

/// The API server's URL without a trailing `/`: https, or plain http to loopback only
/// (the bearer token must not cross a network in the clear).
fn check_api_server(text: &str) -> Result<String, String> {
    super::check_base_url(text, "https://10.96.0.1:443")?;
    let url =
        url::Url::parse(text).map_err(|err| format!("{text:?} is not a valid URL ({err})"))?;
    if url.path() != "/" && !url.path().is_empty() {
        return Err(format!(
            "expected the API server's address without a path, like \"https://10.96.0.1:443\", found {text:?}"
        ));
    }
    if url.scheme() == "http" && !crate::net::is_loopback(&url) {
        return Err(format!(
            "plain http is accepted only to loopback (the service-account token would \
             cross the network in the clear): use https, found {text:?}"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

/// RFC 1123 label: what a namespace name must be.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: what a Lease's name must be.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_identity(s: &str) -> bool {
    (1..=253).contains(&s.len()) && s.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    const BASE: &str = r#"
[crowdsec]
api_key = "k"
[cloudflare]
api_token = "t"
account_id = "0123456789abcdef0123456789abcdef"
list_name = "crowdsec_ban"
"#;

    fn parse(ha: &str, env: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Config::parse(&format!("{BASE}\n[ha]\n{ha}"), &lookup)
    }

    #[test]
    fn off_without_lease() {
        let config = Config::parse(BASE, &|_| None).unwrap();
        assert!(config.ha.is_none());
        let config = parse("", &[]).unwrap();
        assert!(config.ha.is_none());
        let problems = parse("identity = \"a\"", &[]).unwrap_err();
        assert!(
            problems[0].contains("ha.lease: missing, but identity is set"),
            "{problems:?}"
        );
    }

    #[test]
    fn in_cluster_defaults() {
        let env = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("POD_NAME", "lapi-0"),
            ("HOSTNAME", "other"),
        ];
        let ha = parse("lease = \"crowdsec/cf-bouncer\"", &env)
            .unwrap()
            .ha
            .unwrap();
        assert_eq!(ha.namespace, "crowdsec");
        assert_eq!(ha.lease_name, "cf-bouncer");
        assert_eq!(ha.identity, "lapi-0");
        assert_eq!(ha.api_server, "https://10.96.0.1:443");
        assert_eq!(
            ha.token_file.to_str(),
            Some("/var/run/secrets/kubernetes.io/serviceaccount/token")
        );
        assert_eq!(
            ha.ca_file.as_deref().and_then(|p| p.to_str()),
            Some("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
        );
        assert_eq!(ha.lease_duration.as_secs(), 15);
        assert_eq!(ha.renew_deadline.as_secs(), 10);
        assert_eq!(ha.retry_period.as_secs(), 2);
        let v6 = [
            ("KUBERNETES_SERVICE_HOST", "fd00::1"),
            ("KUBERNETES_SERVICE_PORT", "6443"),
            ("HOSTNAME", "host-a"),
        ];
        let ha = parse("lease = \"crowdsec/cf-bouncer\"", &v6)
            .unwrap()
            .ha
            .unwrap();
        assert_eq!(ha.api_server, "https://[fd00::1]:6443");
        assert_eq!(ha.identity, "host-a", "HOSTNAME when POD_NAME is unset");
    }

    #[test]
    fn timings_must_leave_a_margin() {
        let env = [("HOSTNAME", "a")];
        let base = "lease = \"ns/l\"\napi_server = \"http://127.0.0.1:1\"\n";
        for bad in [
            "lease_duration = \"10s\"\nrenew_deadline = \"10s\"",
            "renew_deadline = \"2s\"\nretry_period = \"2s\"",
            "lease_duration = \"5s\"\nrenew_deadline = \"8s\"",
        ] {
            let problems = parse(&format!("{base}{bad}"), &env).unwrap_err();
            assert!(
                problems
                    .iter()
                    .any(|p| p.contains("lease_duration > renew_deadline > 1.2")),
                "{bad}: {problems:?}"
            );
        }
        let problems = parse(&format!("{base}lease_duration = \"15500ms\""), &env).unwrap_err();
        assert!(problems[0].contains("whole seconds"), "{problems:?}");
        let ha = parse(
            &format!(
                "{base}lease_duration = \"4s\"\nrenew_deadline = \"3s\"\nretry_period = \"1s\""
            ),
            &env,
        )
        .unwrap()
        .ha
        .unwrap();
        assert_eq!(ha.renew_deadline.as_secs(), 3);
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let env = [("HOSTNAME", "a")];
        let problems = parse(
            "lease = \"ns/l\"\napi_server = \"http://10.0.0.1:6443\"",
            &env,
        )
        .unwrap_err();
        assert!(problems[0].contains("only to loopback"), "{problems:?}");
        let ha = parse(
            "lease = \"ns/l\"\napi_server = \"http://[::1]:8001/\"",
            &env,
        )
        .unwrap()
        .ha
        .unwrap();
        assert_eq!(ha.api_server, "http://[::1]:8001");
        assert_eq!(ha.ca_file, None);
        let problems = parse(
            "lease = \"ns/l\"\napi_server = \"https://k8s:6443/api\"",
            &env,
        )
        .unwrap_err();
        assert!(problems[0].contains("without a path"), "{problems:?}");
    }

    #[test]
    fn names_and_identity_are_checked() {
        let env = [
            ("KUBERNETES_SERVICE_HOST", "h"),
            ("KUBERNETES_SERVICE_PORT", "1"),
        ];
        let problems = parse("lease = \"Crowdsec/x\"", &env).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("ha.lease: expected")),
            "{problems:?}"
        );
        let problems = parse("lease = \"ns/x\"", &env).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("ha.identity: missing")),
            "{problems:?}"
        );
        let problems = parse("lease = \"ns/x\"\nidentity = \"a b\"", &env).unwrap_err();
        assert!(
            problems.iter().any(|p| p.contains("ha.identity: expected")),
            "{problems:?}"
        );
        let problems = parse("lease = \"ns/x\"\nidentity = \"a\"", &[]).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("ha.api_server: not running in a Kubernetes pod")),
            "{problems:?}"
        );
    }
}
