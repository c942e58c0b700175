//! The few zone ruleset calls `setup` needs (docs/cloudflare-lists.md §9): find the
//! zone's `http_request_firewall_custom` entry point, create it, append a rule, rewrite
//! one in place. Never `PUT` the entry point: that replaces every rule the operator has.
//! Also the expressions of the rules `setup` writes, and the host names they may carve out.

use serde::{Deserialize, Serialize};

use super::{CloudflareClient, Error, ListInfo, WireList};

const PHASE: &str = "http_request_firewall_custom";

/// The longest rule expression Cloudflare takes (docs/cloudflare-lists.md §4.5).
pub const MAX_EXPRESSION_CHARS: usize = 4096;

/// The expression of the rule `setup` writes for `list`: `ip.src in $list` (an ASN list:
/// `ip.src.asnum in $list`), or with hosts to carve out,
/// `(ip.src in $list) and not (http.host in {"a.example" "b.example"})`
/// (docs/cloudflare-lists.md §9, §13), the hosts sorted and each once, so that the order
/// they are configured in changes nothing.
pub fn rule_expression(list: &str, asn: bool, exclude_hosts: &[String]) -> String {
    let mut hosts: Vec<&str> = exclude_hosts.iter().map(String::as_str).collect();
    hosts.sort_unstable();
    hosts.dedup();
    let field = field(asn);
    if hosts.is_empty() {
        return format!("{field} in ${list}");
    }
    let set: Vec<String> = hosts.into_iter().map(quote).collect();
    format!(
        "({field} in ${list}) and not (http.host in {{{}}})",
        set.join(" ")
    )
}

/// The field a list of this kind is matched against.
fn field(asn: bool) -> &'static str {
    if asn {
        "ip.src.asnum"
    } else {
        "ip.src"
    }
}

/// Whether `expression` is one [`rule_expression`] writes for `list`, with any hosts.
pub fn is_rule_expression(expression: &str, list: &str, asn: bool) -> bool {
    if expression == rule_expression(list, asn, &[]) {
        return true;
    }
    let prefix = format!("({} in ${list}) and not (http.host in {{", field(asn));
    let Some(set) = expression.strip_prefix(&prefix) else {
        return false;
    };
    let Some(set) = set.strip_suffix("})") else {
        return false;
    };
    let hosts: Option<Vec<String>> = set
        .split(' ')
        .map(|quoted| {
            let host = quoted.strip_prefix('"')?.strip_suffix('"')?;
            check_host(host).ok().map(|()| host.to_owned())
        })
        .collect();
    hosts.is_some_and(|hosts| rule_expression(list, asn, &hosts) == expression)
}

/// A string literal of the rules language: in double quotes, `\` and `"` escaped.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Checks a host name for `http.host in {…}`, which compares whole host names (no
/// wildcards): lower-case labels of a-z, 0-9 and `-`, joined by dots. The error says what
/// is wrong and the fix.
///
/// # Errors
/// The problem with `host`.
pub fn check_host(host: &str) -> Result<(), String> {
    let shape = "expected a host name such as \"auth.example.com\" (a-z, 0-9, - and .)";
    if host.is_empty() {
        return Err("an empty host name: remove it".to_owned());
    }
    if host.contains('*') {
        return Err(format!(
            "{host:?}: wildcards are not supported, `http.host in {{…}}` matches whole host \
             names: list each host"
        ));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "{host:?}: write it in lower case, {:?}",
            host.to_ascii_lowercase()
        ));
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(format!("{shape}, found {host:?}"));
    }
    Ok(())
}

/// A zone's custom-rules entry point, as far as `setup` cares.
#[derive(Debug, Clone, Deserialize)]
pub struct Ruleset {
    pub id: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Rule {
    #[serde(default, skip_serializing)]
    pub id: String,
    pub expression: String,
    pub action: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

#[derive(Serialize)]
struct NewRuleset<'a> {
    name: &'a str,
    kind: &'a str,
    phase: &'a str,
    rules: [&'a Rule; 1],
}

#[derive(Serialize)]
struct NewList<'a> {
    name: &'a str,
    kind: &'a str,
    description: &'a str,
}

impl CloudflareClient {
    /// Creates a list of kind `ip` or, with `asn`, `asn`.
    ///
    /// # Errors
    /// The request's error.
    pub async fn create_list(
        &self,
        name: &str,
        asn: bool,
        description: &str,
    ) -> Result<ListInfo, Error> {
        let url = format!("{}/rules/lists", self.account_url);
        let body = NewList {
            name,
            kind: if asn { "asn" } else { "ip" },
            description,
        };
        let (list, _) = self
            .call::<WireList, _>("creating the list", reqwest::Method::POST, url, Some(&body))
            .await?;
        Ok(list.into())
    }

    /// Whether the token may write to the list, by the one write that changes nothing:
    /// the list's description set to what it is (docs/cloudflare-lists.md §2.1, §8). The
    /// token-verify endpoints do not tell a token's permissions, and an empty bulk write
    /// would still take the account's one pending operation.
    ///
    /// # Errors
    /// The request's error: a 403 or code 10000 for a token that may only read.
    pub async fn probe_write(&self, list_id: &str) -> Result<(), Error> {
        #[derive(Deserialize)]
        struct Described {
            #[serde(default)]
            description: Option<String>,
        }
        #[derive(Serialize)]
        struct Update<'a> {
            description: &'a str,
        }
        let url = format!("{}/rules/lists/{list_id}", self.account_url);
        let (list, _) = self
            .call::<Described, ()>("reading the list", reqwest::Method::GET, url.clone(), None)
            .await?;
        let description = list.description.unwrap_or_default();
        let body = Update {
            description: &description,
        };
        self.call::<serde_json::Value, _>(
            "updating the list (a write that changes nothing)",
            reqwest::Method::PUT,
            url,
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// Deletes a list (refused by Cloudflare while a rule references it).
    ///
    /// # Errors
    /// The request's error.
    pub async fn delete_list(&self, list_id: &str) -> Result<(), Error> {
        let url = format!("{}/rules/lists/{list_id}", self.account_url);
        self.call::<serde_json::Value, ()>("deleting the list", reqwest::Method::DELETE, url, None)
            .await?;
        Ok(())
    }

    /// Rewrites one rule of a zone's custom-rules entry point in place: `PATCH` with the
    /// rule's whole new definition (docs/cloudflare-lists.md §9); its id and place stay.
    ///
    /// # Errors
    /// The request's error.
    pub async fn update_custom_rule(
        &self,
        zone_id: &str,
        ruleset_id: &str,
        rule_id: &str,
        rule: &Rule,
    ) -> Result<Ruleset, Error> {
        let url = format!(
            "{}/zones/{zone_id}/rulesets/{ruleset_id}/rules/{rule_id}",
            self.api_url
        );
        let (ruleset, _) = self
            .call::<Ruleset, _>(
                "updating a custom rule",
                reqwest::Method::PATCH,
                url,
                Some(rule),
            )
            .await?;
        Ok(ruleset)
    }

    /// Deletes one rule of a zone's custom-rules entry point.
    ///
    /// # Errors
    /// The request's error.
    pub async fn delete_custom_rule(
        &self,
        zone_id: &str,
        ruleset_id: &str,
        rule_id: &str,
    ) -> Result<(), Error> {
        let url = format!(
            "{}/zones/{zone_id}/rulesets/{ruleset_id}/rules/{rule_id}",
            self.api_url
        );
        self.call::<serde_json::Value, ()>(
            "deleting a custom rule",
            reqwest::Method::DELETE,
            url,
            None,
        )
        .await?;
        Ok(())
    }

    /// The zone's custom-rules entry point, or `None` when the zone has none yet.
    ///
    /// # Errors
    /// The request's error (a 404 is `Ok(None)`).
    pub async fn custom_rules(&self, zone_id: &str) -> Result<Option<Ruleset>, Error> {
        let url = format!(
            "{}/zones/{zone_id}/rulesets/phases/{PHASE}/entrypoint",
            self.api_url
        );
        match self
            .call::<Ruleset, ()>(
                "reading the zone's custom rules",
                reqwest::Method::GET,
                url,
                None,
            )
            .await
        {
            Ok((ruleset, _)) => Ok(Some(ruleset)),
            Err(Error::Api { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Adds a custom rule to the zone, creating the entry point if the zone has none.
    ///
    /// # Errors
    /// The request's error.
    pub async fn add_custom_rule(
        &self,
        zone_id: &str,
        existing: Option<&Ruleset>,
        rule: &Rule,
    ) -> Result<Ruleset, Error> {
        let (ruleset, _) = match existing {
            Some(ruleset) => {
                let url = format!(
                    "{}/zones/{zone_id}/rulesets/{}/rules",
                    self.api_url, ruleset.id
                );
                self.call::<Ruleset, _>(
                    "adding a custom rule",
                    reqwest::Method::POST,
                    url,
                    Some(rule),
                )
                .await?
            }
            None => {
                let url = format!("{}/zones/{zone_id}/rulesets", self.api_url);
                let body = NewRuleset {
                    name: "default",
                    kind: "zone",
                    phase: PHASE,
                    rules: [rule],
                };
                self.call::<Ruleset, _>(
                    "creating the custom rules entry point",
                    reqwest::Method::POST,
                    url,
                    Some(&body),
                )
                .await?
            }
        };
        Ok(ruleset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn without_hosts_the_expression_is_the_plain_one() {
        assert_eq!(
            rule_expression("crowdsec_ban", false, &[]),
            "ip.src in $crowdsec_ban"
        );
    }

    #[test]
    fn hosts_are_quoted_sorted_and_given_once() {
        let expression = rule_expression(
            "crowdsec_ban",
            false,
            &hosts(&["login.example.com", "auth.example.com", "login.example.com"]),
        );
        assert_eq!(
            expression,
            "(ip.src in $crowdsec_ban) and not (http.host in \
             {\"auth.example.com\" \"login.example.com\"})"
        );
        let reordered = rule_expression(
            "crowdsec_ban",
            false,
            &hosts(&["auth.example.com", "login.example.com"]),
        );
        assert_eq!(expression, reordered);
    }

    #[test]
    fn quotes_and_backslashes_are_escaped() {
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("auth.example.com"), "\"auth.example.com\"");
    }

    #[test]
    fn the_expressions_setup_writes_are_recognised_and_nothing_else() {
        let list = "crowdsec_ban";
        assert!(is_rule_expression("ip.src in $crowdsec_ban", list, false));
        let carved = rule_expression(list, false, &hosts(&["b.example", "a.example"]));
        assert!(is_rule_expression(&carved, list, false));
        assert!(!is_rule_expression(&carved, "crowdsec", false));
        assert!(!is_rule_expression(&carved, list, true));
        for other in [
            "ip.src in $crowdsec_ban_v2",
            "ip.src in $crowdsec_ban and http.host eq \"a.example\"",
            "(ip.src in $crowdsec_ban) and not (http.host in {\"b.example\" \"a.example\"})",
            "(ip.src in $crowdsec_ban) and not (http.host in {\"A.example\"})",
            "(ip.src in $crowdsec_ban) and not (http.host in {})",
            "(ip.src in $crowdsec_ban) and not (http.host in {\"a.example\"}) or true",
        ] {
            assert!(!is_rule_expression(other, list, false), "{other}");
        }
    }

    #[test]
    fn asn_lists_match_the_origin_as_number() {
        let carved = rule_expression("crowdsec_asn", true, &hosts(&["auth.example.com"]));
        assert_eq!(
            carved,
            "(ip.src.asnum in $crowdsec_asn) and not (http.host in {\"auth.example.com\"})"
        );
        assert!(is_rule_expression(&carved, "crowdsec_asn", true));
        assert!(is_rule_expression(
            "ip.src.asnum in $crowdsec_asn",
            "crowdsec_asn",
            true
        ));
        assert!(!is_rule_expression(
            "ip.src in $crowdsec_asn",
            "crowdsec_asn",
            true
        ));
    }

    #[test]
    fn host_names_are_checked() {
        for good in [
            "auth.example.com",
            "localhost",
            "a-1.b2.example",
            "xn--bcher-kva.example",
        ] {
            assert_eq!(check_host(good), Ok(()), "{good}");
        }
        let problem = |host: &str| check_host(host).expect_err(host);
        assert!(problem("").contains("empty"));
        assert!(problem("*.example.com").contains("wildcards are not supported"));
        assert!(problem("Auth.Example.com").contains("\"auth.example.com\""));
        for bad in [
            "auth example.com",
            "auth\".example.com",
            "{auth.example.com}",
            "auth.example.com.",
            ".example.com",
            "a..example",
            "-a.example",
            "a-.example",
            "auth.example.com:443",
            &"a".repeat(64),
            &["a"; 128].join("."),
        ] {
            assert!(problem(bad).contains("expected a host name"), "{bad}");
        }
    }
}
