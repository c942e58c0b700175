//! The `setup` and `cleanup` commands: writes, so the writer's.
//!
//! `setup` keeps one custom rule per (list, action) pair in each zone it is given
//! (docs/cloudflare-lists.md §9): one per configured list, with the list's action (the
//! one list of `list_name`/`list_id` takes `--action`), and
//! `cleanup --rules` removes those rules and no other. A rule is setup's when its
//! description ends with [`MARK`] and its expression is one [`rule_expression`] writes
//! for the list: rules made by hand, even with the same expression, are left alone.

use tokio_util::sync::CancellationToken;

use super::Writer;
use crate::cloudflare::{self, is_rule_expression, rule_expression, Rule, Ruleset};
use crate::engine::Error;

/// The end of the description of every rule `setup` writes, by which it and `cleanup
/// --rules` know their own. The rule of earlier versions, described
/// "CrowdSec bans (crowdsec-cloudflare-iplist-bouncer)", ends with it too.
const MARK: &str = "(crowdsec-cloudflare-iplist-bouncer)";

/// What `setup` found and did, one line each.
pub type SetupReport = Vec<String>;

/// A rule `setup` keeps in each zone: requests from an address of `list` get `action`,
/// except on the hosts of `cloudflare.exclude_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneRule {
    pub list: String,
    /// An ASN list: its rule matches `ip.src.asnum`.
    pub asn: bool,
    pub action: String,
}

impl ZoneRule {
    /// The rule as `setup` writes it.
    fn rule(&self, exclude_hosts: &[String], enabled: bool) -> Rule {
        Rule {
            id: String::new(),
            expression: rule_expression(&self.list, self.asn, exclude_hosts),
            action: self.action.clone(),
            description: format!("CrowdSec decisions in list {} {MARK}", self.list),
            enabled,
        }
    }

    /// Whether `rule` is one `setup` wrote for this rule's list.
    fn is_ours(&self, rule: &Rule) -> bool {
        rule.description.ends_with(MARK)
            && is_rule_expression(&rule.expression, &self.list, self.asn)
    }
}

/// What a zone's rules need for one [`ZoneRule`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// No rule uses the list: add setup's.
    Add(Rule),
    /// Setup's rule is there with another expression or action: rewrite it in place.
    Update { id: String, rule: Rule },
    /// Setup's rule is there as it should be.
    InPlace(Rule),
    /// Only rules made by hand use the list: they are left alone and none is added.
    HandMade(Vec<Rule>),
}

/// What `wanted` needs of a zone with the rules `existing`, and how many rules not made by
/// setup also use its list. Setup's rule keeps its `enabled` (an operator may have
/// switched it off).
fn plan(existing: &[Rule], wanted: &ZoneRule, exclude_hosts: &[String]) -> (Step, usize) {
    let (ours, others): (Vec<&Rule>, Vec<&Rule>) = existing
        .iter()
        .filter(|rule| references(&rule.expression, &wanted.list))
        .partition(|rule| wanted.is_ours(rule));
    let step = match ours.first() {
        Some(found) => {
            let rule = wanted.rule(exclude_hosts, found.enabled);
            if found.expression == rule.expression && found.action == rule.action {
                Step::InPlace((*found).clone())
            } else {
                let id = found.id.clone();
                Step::Update { id, rule }
            }
        }
        None if !others.is_empty() => {
            Step::HandMade(others.iter().map(|rule| (*rule).clone()).collect())
        }
        None => Step::Add(wanted.rule(exclude_hosts, true)),
    };
    let hand_made = if ours.is_empty() { 0 } else { others.len() };
    (step, hand_made)
}

impl Writer {
    /// Creates the list when it is configured by name and missing, and with `zones`,
    /// keeps in each zone the custom rule for the list and `action` (see [`ZoneRule`]).
    ///
    /// # Errors
    /// The first request that fails, or a list configured by id that does not exist.
    pub(in crate::engine) async fn setup(
        &mut self,
        zones: &[String],
        action: &str,
    ) -> Result<SetupReport, Error> {
        let mut report = Vec::new();
        let all = self.cloudflare.lists().await?;
        let mut wanted = Vec::new();
        for config in self.config.cloudflare.lists.clone() {
            let kind = if config.asn {
                cloudflare::ListKind::Asn
            } else {
                cloudflare::ListKind::Ip
            };
            let list = match cloudflare::choose_list_of_kind(&all, &config.list, kind) {
                Ok(list) => {
                    report.push(format!(
                        "list {} ({}, kind {}) exists, {} items",
                        list.name, list.id, list.kind, list.num_items
                    ));
                    list
                }
                Err(
                    cloudflare::Error::ListNotFound(name)
                    | cloudflare::Error::AsnListNotFound(name),
                ) if matches!(config.list, crate::config::ListRef::Name(_)) => {
                    let description = format!(
                        "CrowdSec {} decisions, kept in step by crowdsec-cloudflare-iplist-bouncer",
                        config.decision_types.join(", ")
                    );
                    let list = (self.cloudflare)
                        .create_list(&name, config.asn, &description)
                        .await?;
                    report.push(format!(
                        "created list {} ({}, kind {})",
                        list.name, list.id, list.kind
                    ));
                    list
                }
                Err(err) => return Err(err.into()),
            };
            wanted.push(ZoneRule {
                list: list.name,
                asn: config.asn,
                action: config.action.unwrap_or_else(|| action.to_owned()),
            });
        }
        for zone in zones {
            self.keep_zone_rules(zone, &wanted, &mut report).await?;
        }
        Ok(report)
    }

    /// Brings one zone's rules in step with `wanted`, one report line per rule.
    async fn keep_zone_rules(
        &mut self,
        zone: &str,
        wanted: &[ZoneRule],
        report: &mut SetupReport,
    ) -> Result<(), Error> {
        let exclude_hosts = self.config.cloudflare.exclude_hosts.clone();
        let mut ruleset: Option<Ruleset> = self.cloudflare.custom_rules(zone).await?;
        for wanted in wanted {
            let existing = ruleset.as_ref().map_or(&[][..], |rs| &rs.rules[..]);
            let (step, hand_made) = plan(existing, wanted, &exclude_hosts);
            let list = &wanted.list;
            let line = match step {
                Step::Add(rule) => {
                    let added = (self.cloudflare)
                        .add_custom_rule(zone, ruleset.as_ref(), &rule)
                        .await?;
                    ruleset = Some(added);
                    format!(
                        "zone {zone}: added the custom rule `{}` → {}",
                        rule.expression, rule.action
                    )
                }
                Step::Update { id, rule } => {
                    let ruleset_id = ruleset.as_ref().map(|rs| rs.id.clone()).unwrap_or_default();
                    let updated = (self.cloudflare)
                        .update_custom_rule(zone, &ruleset_id, &id, &rule)
                        .await?;
                    ruleset = Some(updated);
                    format!(
                        "zone {zone}: updated the custom rule setup added to `{}` → {}",
                        rule.expression, rule.action
                    )
                }
                Step::InPlace(rule) => {
                    let disabled = if rule.enabled {
                        ""
                    } else {
                        " (disabled in the dashboard: left disabled)"
                    };
                    format!(
                        "zone {zone}: the custom rule `{}` → {} is in place{disabled}",
                        rule.expression, rule.action
                    )
                }
                Step::HandMade(rules) => format!(
                    "zone {zone}: a custom rule not made by setup already uses ${list} \
                     (`{}` → {}): left as it is, and none added",
                    rules[0].expression, rules[0].action
                ),
            };
            report.push(line);
            if hand_made > 0 {
                report.push(format!(
                    "zone {zone}: {hand_made} other rule(s) using ${list} were not made by \
                     setup: kept as they are"
                ));
            }
        }
        Ok(())
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
        let lists = self.look_up_lists().await?;
        let targets: Vec<super::Target> = lists.iter().map(super::Target::from).collect();
        {
            let mut state = self.shared.state();
            state.disable_mass_removal_guard();
            state.trust_full_pulls();
            state.replace_desired([], std::time::Instant::now());
        }
        self.read_list(&targets).await?;
        let before = self.shared.state().managed_listed_items().len();
        self.drain_once(&targets, &token).await?;
        let after = self.shared.state().managed_listed_items().len();
        Ok(before - after)
    }
}

impl Writer {
    /// Undoes `setup`: deletes from each zone the rules it wrote for the list (see
    /// [`ZoneRule::is_ours`]: rules the operator wrote are kept and counted), then with
    /// `delete_list` deletes the list, which Cloudflare refuses while any rule still
    /// references it.
    ///
    /// # Errors
    /// The first request that fails.
    pub(in crate::engine) async fn teardown(
        &mut self,
        zones: &[String],
        delete_list: bool,
    ) -> Result<SetupReport, Error> {
        let mut report = Vec::new();
        let lists = self.look_up_lists().await?;
        let rules: Vec<ZoneRule> = (lists.iter())
            .map(|list| ZoneRule {
                list: list.name.clone(),
                asn: list.kind == cloudflare::ListKind::Asn.as_str(),
                // The action plays no part in knowing setup's rule.
                action: String::new(),
            })
            .collect();
        for zone in zones {
            self.remove_zone_rules(zone, &rules, &mut report).await?;
        }
        if delete_list {
            for list in &lists {
                self.cloudflare.delete_list(&list.id).await?;
                report.push(format!("deleted list {} ({})", list.name, list.id));
            }
        }
        Ok(report)
    }
}

impl Writer {
    /// Deletes from one zone the rules setup wrote for `lists`, one report line per list.
    async fn remove_zone_rules(
        &mut self,
        zone: &str,
        lists: &[ZoneRule],
        report: &mut SetupReport,
    ) -> Result<(), Error> {
        let Some(ruleset) = self.cloudflare.custom_rules(zone).await? else {
            report.push(format!("zone {zone}: no custom rules"));
            return Ok(());
        };
        for wanted in lists {
            let list = &wanted.list;
            let (ours, others): (Vec<&Rule>, Vec<&Rule>) = (ruleset.rules.iter())
                .filter(|rule| references(&rule.expression, list))
                .partition(|rule| wanted.is_ours(rule));
            for rule in &ours {
                self.cloudflare
                    .delete_custom_rule(zone, &ruleset.id, &rule.id)
                    .await?;
            }
            report.push(match (ours.as_slice(), others.len()) {
                ([], 0) => format!("zone {zone}: no rule uses ${list}"),
                ([rule], 0) => {
                    format!("zone {zone}: removed the custom rule `{}`", rule.expression)
                }
                (ours, 0) => format!("zone {zone}: removed the {} rules setup added", ours.len()),
                ([], others) => format!(
                    "zone {zone}: removed no rule: the {others} rule(s) using ${list} were not \
                     made by setup and are kept"
                ),
                (ours, others) => format!(
                    "zone {zone}: removed {} rule(s) setup added; {others} other rule(s) \
                     using ${list} were not made by setup and are kept: remove them in the \
                     dashboard",
                    ours.len()
                ),
            });
        }
        Ok(())
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

    fn rule(id: &str, expression: &str, action: &str, description: &str) -> Rule {
        Rule {
            id: id.into(),
            expression: expression.into(),
            action: action.into(),
            description: description.into(),
            enabled: true,
        }
    }

    fn ban(action: &str) -> ZoneRule {
        ZoneRule {
            list: "crowdsec_ban".into(),
            asn: false,
            action: action.into(),
        }
    }

    const OLD_DESCRIPTION: &str = "CrowdSec bans (crowdsec-cloudflare-iplist-bouncer)";

    #[test]
    fn a_zone_without_rules_gets_setup_s_rule() {
        let hosts = ["auth.example.com".to_owned()];
        let (step, hand_made) = plan(&[], &ban("block"), &hosts);
        let want = rule(
            "",
            "(ip.src in $crowdsec_ban) and not (http.host in {\"auth.example.com\"})",
            "block",
            "CrowdSec decisions in list crowdsec_ban (crowdsec-cloudflare-iplist-bouncer)",
        );
        assert_eq!((step, hand_made), (Step::Add(want), 0));
    }

    #[test]
    fn setup_s_own_rule_is_kept_or_rewritten_in_place() {
        let old = rule("r1", "ip.src in $crowdsec_ban", "block", OLD_DESCRIPTION);
        let (step, _) = plan(std::slice::from_ref(&old), &ban("block"), &[]);
        assert_eq!(
            step,
            Step::InPlace(old.clone()),
            "a rule of earlier versions is ours"
        );

        let hosts = ["auth.example.com".to_owned()];
        let (step, _) = plan(std::slice::from_ref(&old), &ban("block"), &hosts);
        let Step::Update { id, rule: new } = step else {
            panic!("expected an update, got {step:?}");
        };
        assert_eq!(id, "r1");
        assert_eq!(
            new.expression,
            rule_expression("crowdsec_ban", false, &hosts)
        );

        let mut disabled = old.clone();
        disabled.enabled = false;
        let (step, _) = plan(&[disabled], &ban("managed_challenge"), &[]);
        let Step::Update { rule: new, .. } = step else {
            panic!("expected an update, got {step:?}");
        };
        assert_eq!(new.action, "managed_challenge");
        assert!(!new.enabled, "an operator's switch stays");
    }

    #[test]
    fn rules_made_by_hand_are_never_setup_s() {
        let same_text = rule("h1", "ip.src in $crowdsec_ban", "block", "mine");
        let (step, hand_made) = plan(std::slice::from_ref(&same_text), &ban("block"), &[]);
        assert_eq!(
            (step, hand_made),
            (Step::HandMade(vec![same_text.clone()]), 0)
        );

        // Setup's description, a condition added by hand: not setup's any more.
        let edited = rule(
            "h2",
            "ip.src in $crowdsec_ban and http.host eq \"a.example\"",
            "block",
            OLD_DESCRIPTION,
        );
        let ours = rule("r1", "ip.src in $crowdsec_ban", "block", OLD_DESCRIPTION);
        let other_list = rule("h3", "ip.src in $crowdsec_ban_v2", "block", OLD_DESCRIPTION);
        let existing = [edited, same_text, ours.clone(), other_list];
        let (step, hand_made) = plan(&existing, &ban("block"), &[]);
        assert_eq!((step, hand_made), (Step::InPlace(ours), 2));
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
