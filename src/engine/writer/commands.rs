//! The `setup` and `cleanup` commands: writes, so the writer's.

use tokio_util::sync::CancellationToken;

use super::Writer;
use crate::cloudflare::{self, Rule};
use crate::engine::Error;

/// The description of the rule `setup` adds, by which `cleanup --rules` knows it.
const RULE_DESCRIPTION: &str = "CrowdSec bans (crowdsec-cloudflare-iplist-bouncer)";

/// What `setup` found and did, one line each.
pub type SetupReport = Vec<String>;

impl Writer {
    /// Creates the list when it is configured by name and missing, and with `zones`,
    /// adds the custom rule `ip.src in $<list>` to each zone unless one is there.
    ///
    /// # Errors
    /// The first request that fails, or a list configured by id that does not exist.
    pub(in crate::engine) async fn setup(
        &mut self,
        zones: &[String],
        action: &str,
    ) -> Result<SetupReport, Error> {
        let mut report = Vec::new();
        let list = match self.look_up_list().await {
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
                description: RULE_DESCRIPTION.into(),
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
    pub(in crate::engine) async fn cleanup(
        &mut self,
        token: CancellationToken,
    ) -> Result<usize, Error> {
        let list = self.look_up_list().await?;
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

impl Writer {
    /// Undoes `setup`: deletes from each zone the rule it added (its expression and
    /// description, so a rule the operator wrote is kept), then with `delete_list`
    /// deletes the list, which Cloudflare refuses while any rule still references it.
    ///
    /// # Errors
    /// The first request that fails.
    pub(in crate::engine) async fn teardown(
        &mut self,
        zones: &[String],
        delete_list: bool,
    ) -> Result<SetupReport, Error> {
        let mut report = Vec::new();
        let list = self.look_up_list().await?;
        let expression = format!("ip.src in ${}", list.name);
        for zone in zones {
            let Some(ruleset) = self.cloudflare.custom_rules(zone).await? else {
                report.push(format!("zone {zone}: no custom rules"));
                continue;
            };
            let ours = (ruleset.rules.iter()).filter(|rule| {
                rule.expression == expression && rule.description == RULE_DESCRIPTION
            });
            let mut removed = 0;
            for rule in ours {
                self.cloudflare
                    .delete_custom_rule(zone, &ruleset.id, &rule.id)
                    .await?;
                removed += 1;
            }
            let others = (ruleset.rules.iter())
                .filter(|rule| references(&rule.expression, &list.name))
                .count()
                - removed;
            report.push(match (removed, others) {
                (0, 0) => format!("zone {zone}: no rule uses ${}", list.name),
                (removed, 0) => {
                    format!("zone {zone}: removed the custom rule `{expression}` ({removed})")
                }
                (removed, others) => format!(
                    "zone {zone}: removed {removed} rule(s) setup added; {others} other rule(s) \
                     using ${} were not made by setup and are kept: remove them in the dashboard",
                    list.name
                ),
            });
        }
        if delete_list {
            self.cloudflare.delete_list(&list.id).await?;
            report.push(format!("deleted list {} ({})", list.name, list.id));
        }
        Ok(report)
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

#[cfg(test)]
mod tests {
    use super::*;

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
