//! Zone rulesets (docs/cloudflare-lists.md §9): per zone, at most one ruleset, the entry point of
//! phase `http_request_firewall_custom`, holding the WAF custom rules. That is all a `setup`
//! command touches; other phases and account-level rulesets are not emulated.
//!
//! Rules reference lists by name (`ip.src in $crowdsec_ban`), which ties this module to the
//! list store: a rule may only name an existing list, and a referenced list cannot be
//! deleted (`handlers.rs`, error 10031). Nothing here knows about HTTP or time.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::envelope::{code, ApiError};
use super::store::{new_id, Store};
use super::{Emulator, Rule};

/// The only phase emulated.
pub(crate) const PHASE: &str = "http_request_firewall_custom";
/// Actions of WAF custom rules (docs/cloudflare-lists.md §9; `log` is Enterprise-only, accepted
/// anyway).
const ACTIONS: [&str; 6] = [
    "block",
    "managed_challenge",
    "js_challenge",
    "challenge",
    "skip",
    "log",
];
/// Rule expression limit (docs/cloudflare-lists.md §4.5, observed).
const MAX_EXPRESSION_CHARS: usize = 4096;

/// A zone's entry point ruleset for [`PHASE`].
#[derive(Clone, Debug)]
pub(crate) struct Ruleset {
    pub id: String,
    pub name: String,
    pub description: String,
    /// Bumped by every change ("creates a new version of the ruleset",
    /// docs/cloudflare-lists.md §9).
    pub version: u64,
    pub rules: Vec<StoredRule>,
    pub last_updated: String,
}

#[derive(Clone, Debug)]
pub(crate) struct StoredRule {
    pub rule: Rule,
    /// 1 when added, bumped by every update of the rule.
    pub version: u64,
    pub last_updated: String,
}

/// A validated rule body, before it gets an id.
#[derive(Clone, Debug)]
pub(crate) struct NewRule {
    pub expression: String,
    pub action: String,
    pub description: String,
    pub enabled: bool,
}

/// The entry points of every zone touched so far, by zone id. Any zone id of the right
/// shape exists: there is no zone registry.
#[derive(Debug)]
pub(crate) struct Zones {
    pub entrypoints: BTreeMap<String, Ruleset>,
    /// Draws ruleset and rule ids.
    rng: fastrand::Rng,
}

impl Default for Zones {
    fn default() -> Zones {
        Zones {
            entrypoints: BTreeMap::new(),
            rng: fastrand::Rng::new(),
        }
    }
}

impl Zones {
    /// The ruleset `ruleset_id` of `zone_id`.
    pub(crate) fn ruleset(&self, zone_id: &str, ruleset_id: &str) -> Option<&Ruleset> {
        let ruleset = self.entrypoints.get(zone_id)?;
        (ruleset.id == ruleset_id).then_some(ruleset)
    }

    /// Creates the entry point of `zone_id` (replacing any), with `rules`.
    pub(crate) fn create(&mut self, zone_id: &str, new: NewRuleset, now: &str) -> &Ruleset {
        let id = new_id(&mut self.rng);
        let mut ruleset = Ruleset::new(id, new.name, new.description, now);
        ruleset.push(new.rules, &mut self.rng, now);
        self.entrypoints.insert(zone_id.to_owned(), ruleset);
        &self.entrypoints[zone_id]
    }

    /// Appends `rules` to the ruleset `ruleset_id` of `zone_id`; `None` if there is none.
    pub(crate) fn append(
        &mut self,
        zone_id: &str,
        ruleset_id: &str,
        rules: Vec<NewRule>,
        now: &str,
    ) -> Option<&Ruleset> {
        let ruleset = self.entrypoints.get_mut(zone_id)?;
        if ruleset.id != ruleset_id {
            return None;
        }
        ruleset.push(rules, &mut self.rng, now);
        ruleset.touch(now);
        Some(ruleset)
    }

    /// Removes the rule `rule_id` from the ruleset `ruleset_id` of `zone_id`.
    pub(crate) fn remove_rule(
        &mut self,
        zone_id: &str,
        ruleset_id: &str,
        rule_id: &str,
        now: &str,
    ) -> Result<&Ruleset, ApiError> {
        let ruleset = self.entrypoints.get_mut(zone_id);
        let ruleset = ruleset.filter(|ruleset| ruleset.id == ruleset_id);
        let ruleset = ruleset.ok_or_else(|| ApiError::not_found("ruleset"))?;
        let position = ruleset
            .rules
            .iter()
            .position(|stored| stored.rule.id == rule_id);
        let position = position.ok_or_else(|| ApiError::not_found("rule"))?;
        ruleset.rules.remove(position);
        ruleset.touch(now);
        Ok(ruleset)
    }

    /// Replaces the definition of the rule `rule_id` (docs/cloudflare-lists.md §9: `PATCH`
    /// takes the whole new definition); its id and place stay, its version and the
    /// ruleset's are bumped.
    pub(crate) fn update_rule(
        &mut self,
        zone_id: &str,
        ruleset_id: &str,
        rule_id: &str,
        new: NewRule,
        now: &str,
    ) -> Result<&Ruleset, ApiError> {
        let ruleset = self.entrypoints.get_mut(zone_id);
        let ruleset = ruleset.filter(|ruleset| ruleset.id == ruleset_id);
        let ruleset = ruleset.ok_or_else(|| ApiError::not_found("ruleset"))?;
        let stored = (ruleset.rules.iter_mut()).find(|stored| stored.rule.id == rule_id);
        let stored = stored.ok_or_else(|| ApiError::not_found("rule"))?;
        stored.rule.expression = new.expression;
        stored.rule.action = new.action;
        stored.rule.description = new.description;
        stored.rule.enabled = new.enabled;
        stored.version += 1;
        stored.last_updated = now.to_owned();
        ruleset.touch(now);
        Ok(ruleset)
    }

    /// Replaces every rule of the entry point of `zone_id`, creating it if missing.
    pub(crate) fn replace(&mut self, zone_id: &str, new: NewRuleset, now: &str) -> &Ruleset {
        if !self.entrypoints.contains_key(zone_id) {
            return self.create(zone_id, new, now);
        }
        let ruleset = self
            .entrypoints
            .get_mut(zone_id)
            .expect("the entry point exists: checked above");
        ruleset.rules.clear();
        ruleset.push(new.rules, &mut self.rng, now);
        ruleset.touch(now);
        ruleset
    }

    /// Rules of every zone whose expression references the list `name`.
    pub(crate) fn referencing(&self, name: &str) -> usize {
        let rules = self.entrypoints.values().flat_map(|ruleset| &ruleset.rules);
        let refs = |rule: &&StoredRule| list_refs(&rule.rule.expression).any(|r| r == name);
        rules.filter(refs).count()
    }
}

/// A validated ruleset body (create, or PUT entry point).
#[derive(Clone, Debug)]
pub(crate) struct NewRuleset {
    pub name: String,
    pub description: String,
    pub rules: Vec<NewRule>,
}

impl Ruleset {
    pub(crate) fn new(id: String, name: String, description: String, now: &str) -> Ruleset {
        Ruleset {
            id,
            name,
            description,
            version: 1,
            rules: Vec::new(),
            last_updated: now.to_owned(),
        }
    }

    /// Appends rules, each new at version 1; the caller bumps the ruleset version.
    fn push(&mut self, rules: Vec<NewRule>, rng: &mut fastrand::Rng, now: &str) {
        for new in rules {
            let rule = Rule {
                id: new_id(rng),
                expression: new.expression,
                action: new.action,
                description: new.description,
                enabled: new.enabled,
            };
            let last_updated = now.to_owned();
            self.rules.push(StoredRule {
                rule,
                version: 1,
                last_updated,
            });
        }
    }

    /// A new version of the ruleset.
    fn touch(&mut self, now: &str) {
        self.version += 1;
        self.last_updated = now.to_owned();
    }

    /// The ruleset object (docs/cloudflare-lists.md §9 example): versions are strings there.
    pub(crate) fn json(&self) -> Value {
        let rules: Vec<Value> = self.rules.iter().map(StoredRule::json).collect();
        let mut value = self.summary_json();
        if let Some(map) = value.as_object_mut() {
            map.insert("rules".into(), Value::Array(rules));
        }
        value
    }

    /// The ruleset without its rules, as GET rulesets lists it.
    pub(crate) fn summary_json(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "description": self.description,
            "kind": "zone", "phase": PHASE, "version": self.version.to_string(),
            "last_updated": self.last_updated,
        })
    }
}

impl StoredRule {
    fn json(&self) -> Value {
        let rule = &self.rule;
        json!({
            "id": rule.id, "version": self.version.to_string(), "action": rule.action,
            "expression": rule.expression, "description": rule.description,
            "last_updated": self.last_updated, "ref": rule.id, "enabled": rule.enabled,
        })
    }
}

/// The list names an expression references: `$name`, managed lists (`$cf.…`) excluded.
pub(crate) fn list_refs(expression: &str) -> impl Iterator<Item = &str> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    expression.split('$').skip(1).filter_map(move |rest| {
        let end = rest.find(|c| !name_char(c)).unwrap_or(rest.len());
        let name = &rest[..end];
        (!name.is_empty() && !name.starts_with("cf.")).then_some(name)
    })
}

/// Validates one rule object of a request body against the lists of the account.
pub(crate) fn parse_rule(raw: &Value, store: &Store) -> Result<NewRule, ApiError> {
    let Value::Object(object) = raw else {
        return Err(ApiError::invalid("a rule must be a JSON object"));
    };
    let invalid_rule = |message: String| ApiError::bad_request(code::INVALID_RULE, message);
    let expression = match object.get("expression") {
        Some(Value::String(text)) if !text.trim().is_empty() => text.clone(),
        _ => return Err(invalid_rule("rule expression is required".to_owned())),
    };
    if expression.chars().count() > MAX_EXPRESSION_CHARS {
        let message = format!("rule expression is longer than {MAX_EXPRESSION_CHARS} characters");
        return Err(invalid_rule(message));
    }
    let action = match object.get("action") {
        Some(Value::String(action)) if ACTIONS.contains(&action.as_str()) => action.clone(),
        _ => {
            let message = format!("rule action must be one of {}", ACTIONS.join(", "));
            return Err(invalid_rule(message));
        }
    };
    if let Some(name) = list_refs(&expression).find(|name| !store.has_list_named(name)) {
        let message = format!("could not find list {name} referenced by the rule expression");
        return Err(ApiError::bad_request(code::UNKNOWN_LIST, message));
    }
    Ok(NewRule {
        expression,
        action,
        description: optional(object, "description", Value::as_str)?
            .unwrap_or_default()
            .to_owned(),
        enabled: optional(object, "enabled", Value::as_bool)?.unwrap_or(true),
    })
}

/// Validates the `rules` array of a ruleset body; absent means none.
pub(crate) fn parse_rules(body: &Value, store: &Store) -> Result<Vec<NewRule>, ApiError> {
    match body.get("rules") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(rules)) => rules.iter().map(|rule| parse_rule(rule, store)).collect(),
        Some(_) => Err(ApiError::invalid("rules must be an array")),
    }
}

/// An optional field of type `T`; present with another type is a 400.
pub(crate) fn optional<'a, T>(
    object: &'a Map<String, Value>,
    field: &str,
    as_type: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => as_type(value)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("{field} has the wrong type"))),
    }
}

impl Emulator {
    /// The rules of `zone_id`'s `http_request_firewall_custom` entry point, in order; empty
    /// if the zone has none.
    pub fn zone_rules(&self, zone_id: &str) -> Vec<Rule> {
        let state = self.state();
        let rules = state.zones.entrypoints.get(zone_id).map(|rs| &rs.rules);
        let rules = rules.into_iter().flatten();
        rules.map(|stored| stored.rule.clone()).collect()
    }

    /// Appends an enabled rule to `zone_id`'s entry point, creating it if missing, as a user
    /// would in the dashboard: no counters. Returns the rule id.
    ///
    /// # Panics
    /// If the rule is invalid: unknown action, empty or too long expression, or a `$name`
    /// that is not a list of the account (test helper).
    pub fn insert_zone_rule(
        &self,
        zone_id: &str,
        expression: &str,
        action: &str,
        description: &str,
    ) -> String {
        let mut state = self.state();
        let body = json!({"expression": expression, "action": action, "description": description});
        let rule = parse_rule(&body, &state.store)
            .unwrap_or_else(|err| panic!("insert_zone_rule: {}", err.message));
        let now = state.now_text(Instant::now());
        let ruleset = match state.zones.entrypoints.get(zone_id).map(|rs| rs.id.clone()) {
            Some(ruleset_id) => state.zones.append(zone_id, &ruleset_id, vec![rule], &now),
            None => {
                let new = NewRuleset {
                    name: "default".to_owned(),
                    description: String::new(),
                    rules: vec![rule],
                };
                Some(state.zones.create(zone_id, new, &now))
            }
        };
        let last = ruleset.and_then(|ruleset| ruleset.rules.last());
        last.map(|stored| stored.rule.id.clone())
            .expect("the entry point exists and got the rule")
    }
}

#[cfg(test)]
mod tests {
    use super::list_refs;

    #[test]
    fn list_references_are_found() {
        let refs = |text| list_refs(text).collect::<Vec<_>>();
        assert_eq!(refs("ip.src in $crowdsec_ban"), vec!["crowdsec_ban"]);
        assert_eq!(
            refs("(ip.src in $a) or not ip.src in $b_2 or ip.src in $cf.open_proxies"),
            vec!["a", "b_2"]
        );
        assert!(refs("ip.src eq 1.2.3.4 and $").is_empty());
    }
}
