//! The few zone ruleset calls `setup` needs (docs/cloudflare-lists.md §9): find the
//! zone's `http_request_firewall_custom` entry point, create it, append a rule. Never
//! `PUT` the entry point: that replaces every rule the operator has.

use serde::{Deserialize, Serialize};

use super::{CloudflareClient, Error, ListInfo, WireList};

const PHASE: &str = "http_request_firewall_custom";

/// A zone's custom-rules entry point, as far as `setup` cares.
#[derive(Debug, Clone, Deserialize)]
pub struct Ruleset {
    pub id: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Creates an IP list.
    ///
    /// # Errors
    /// The request's error.
    pub async fn create_list(&self, name: &str, description: &str) -> Result<ListInfo, Error> {
        let url = format!("{}/rules/lists", self.account_url);
        let body = NewList {
            name,
            kind: "ip",
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
