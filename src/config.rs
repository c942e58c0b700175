//! Configuration: a TOML file read in two phases. The file is parsed into a TOML table,
//! then every key is checked and converted into a typed [`Config`]; every problem is
//! collected and reported at once, each naming its key and the expected form.
//! After this module, no code re-validates configuration.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::godur;
use crate::item::MIN_IPV6_PREFIX;

mod ha;

pub use ha::HaConfig;

/// Where the bouncer looks for its configuration by default.
pub const DEFAULT_PATH: &str = "/etc/crowdsec/bouncers/crowdsec-cloudflare-iplist-bouncer.toml";
/// Environment variable that overrides `crowdsec.api_key`.
pub const ENV_LAPI_KEY: &str = "CROWDSEC_API_KEY";
/// Environment variable that overrides `cloudflare.api_token`.
pub const ENV_CF_TOKEN: &str = "CLOUDFLARE_API_TOKEN";
/// Environment variable that overrides `crowdsec.api_url` (same rules). In Kubernetes it
/// lets each replica reach LAPI by its own pod IP, so LAPI keeps a row per replica.
pub const ENV_LAPI_URL: &str = "CROWDSEC_API_URL";
/// systemd credential names read from `$CREDENTIALS_DIRECTORY` (`LoadCredential=`).
pub const CREDENTIAL_LAPI_KEY: &str = "crowdsec_api_key";
pub const CREDENTIAL_CF_TOKEN: &str = "cloudflare_api_token";
/// Environment variable systemd sets to the directory holding the unit's credentials.
pub const ENV_CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// The longest `crowdsec.update_frequency`: a longer one delays every ban, and the
/// delta pull is what tells the systemd watchdog (`WatchdogSec=120`) the bouncer is alive.
const MAX_UPDATE_FREQUENCY: Duration = Duration::from_secs(60);
/// The longest request timeout, for LAPI and Cloudflare alike.
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest `sync.reconcile_interval` (7 days): drift is fixed at least this often.
const MAX_RECONCILE_INTERVAL: Duration = Duration::from_secs(7 * 86_400);

/// One secret of the configuration: its key and the places it may come from.
struct SecretSpec {
    key: &'static str,
    env: &'static str,
    credential: &'static str,
    /// What the operator should put there, for messages.
    what: &'static str,
}

const LAPI_KEY: SecretSpec = SecretSpec {
    key: "api_key",
    env: ENV_LAPI_KEY,
    credential: CREDENTIAL_LAPI_KEY,
    what: "the bouncer key",
};

const CF_TOKEN: SecretSpec = SecretSpec {
    key: "api_token",
    env: ENV_CF_TOKEN,
    credential: CREDENTIAL_CF_TOKEN,
    what: "the API token",
};

/// Where a secret was read from, named in messages (the value never is).
enum SecretSource {
    Env,
    Credential(PathBuf),
    Inline,
    File(String),
}

/// The outcome of reading a secret.
enum SecretRead {
    Found(Secret),
    /// Set nowhere.
    Absent,
    /// Set but unusable; the problem is recorded.
    Refused,
}

impl SecretRead {
    fn found(self) -> Option<Secret> {
        match self {
            SecretRead::Found(secret) => Some(secret),
            SecretRead::Absent | SecretRead::Refused => None,
        }
    }
}

/// A secret string. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub crowdsec: CrowdsecConfig,
    /// The account this configuration is about: the first of `accounts`, or the one a
    /// per-account configuration was made for ([`Config::for_account`]).
    pub cloudflare: CloudflareConfig,
    /// Every account, the first first (one, unless `[[cloudflare.accounts]]` names more).
    pub accounts: Vec<CloudflareConfig>,
    pub sync: SyncConfig,
    pub safety: SafetyConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// `None`: high availability is off (one instance, always the writer).
    pub ha: Option<HaConfig>,
    /// Things worth telling the operator that do not stop the bouncer.
    pub warnings: Vec<String>,
    /// Secrets set nowhere this process can see, one line each naming the key
    /// (only from [`Config::load_offline`]; a strict load refuses them instead).
    pub missing_secrets: Vec<String>,
}

impl Config {
    /// This configuration as one account's engine sees it: `cloudflare` is that account.
    pub fn for_account(&self, index: usize) -> Config {
        let mut config = self.clone();
        if let Some(account) = self.accounts.get(index) {
            config.cloudflare = account.clone();
        }
        config
    }
}

/// Whether a secret set nowhere is a problem ([`Config::load`]) or only noted
/// ([`Config::load_offline`], for commands that send no secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Required,
    Deferred,
}

#[derive(Debug, Clone)]
pub struct CrowdsecConfig {
    /// LAPI base URL, always ending in `/`.
    pub api_url: String,
    /// `None` only when a client certificate authenticates the bouncer.
    pub api_key: Option<Secret>,
    pub update_frequency: Duration,
    pub decision_types: Vec<String>,
    pub scopes: Vec<String>,
    pub origins: Vec<String>,
    pub scenarios_containing: Vec<String>,
    pub scenarios_not_containing: Vec<String>,
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    pub ca_cert_path: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    pub request_timeout: Duration,
    /// How often to push usage metrics to LAPI (`None`: never).
    pub usage_metrics_interval: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct CloudflareConfig {
    /// The account's label in metrics, `/status` and logs: `name` of its
    /// `[[cloudflare.accounts]]` entry, else its account id.
    pub name: String,
    /// API base URL without a trailing `/` (`https://api.cloudflare.com/client/v4`).
    pub api_url: String,
    /// Blank only in a configuration from [`Config::load_offline`] that found no token.
    pub api_token: Secret,
    pub account_id: String,
    /// The account's lists, at least one: `[[cloudflare.lists]]`, or the one list of
    /// `list_name`/`list_id` taking `crowdsec.decision_types`.
    pub lists: Vec<ListConfig>,
    pub batch_size: usize,
    pub ipv6_prefix: u8,
    pub request_timeout: Duration,
    /// Items the account can hold across all its lists (10 000 below Enterprise).
    pub capacity: usize,
    /// Origins in priority order when the desired set exceeds capacity.
    pub origin_priority: Vec<String>,
    pub manage: Manage,
    /// First word of every comment the bouncer writes; marks its items in `tagged` mode.
    pub tag: String,
    /// Client-side budget shared by every Cloudflare request.
    pub max_requests_per_minute: u32,
    /// Hosts the rules `setup` writes never apply to (valid host names, as configured).
    pub exclude_hosts: Vec<String>,
}

/// Which list items the bouncer may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manage {
    /// The list is the bouncer's: anything LAPI does not ban is removed.
    All,
    /// Only items whose comment starts with the bouncer's tag are touched.
    Tagged,
}

/// Rails that keep one bad decision or one bad pull from hurting the edge.
#[derive(Debug, Clone)]
pub struct SafetyConfig {
    /// Networks never pushed, nor any range overlapping them.
    pub allowlist: Vec<ipnet::IpNet>,
    /// AS numbers never pushed to an ASN list (allowlist entries like `AS13335`).
    pub allowlist_asns: Vec<u32>,
    /// Ranges wider than these prefixes are refused.
    pub min_ipv4_prefix: u8,
    pub min_ipv6_prefix: u8,
    /// A reconcile removing more than this share of the list (and more than
    /// `mass_removal_min_items`) waits for the next reconcile to confirm it.
    pub mass_removal_share: f64,
    pub mass_removal_min_items: usize,
}

/// The admin HTTP listener: `/healthz`, `/readyz`, `/metrics`, `/status`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None`: disabled.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `debug`, `cfbouncer=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
}

/// Actions a rule `setup` writes may take (Cloudflare's custom rule actions that stop or
/// mark a request).
pub const RULE_ACTIONS: [&str; 5] = [
    "block",
    "managed_challenge",
    "js_challenge",
    "challenge",
    "log",
];

/// Most lists one account's configuration may name.
pub const MAX_LISTS: usize = 16;

/// One list of the account and what goes on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListConfig {
    pub list: ListRef,
    /// Decision types the list takes (each type goes to one list per kind).
    pub decision_types: Vec<String>,
    /// A list of kind `asn` for `AS` decisions; else kind `ip`, for `Ip` and `Range` ones.
    pub asn: bool,
    /// The action of the rule `setup` writes for the list; `None` for the one list of
    /// `list_name`/`list_id`, whose action is `setup --action`'s.
    pub action: Option<String>,
}

impl ListConfig {
    /// The list's name or id, for messages.
    pub fn label(&self) -> &str {
        match &self.list {
            ListRef::Id(id) | ListRef::Name(id) => id,
        }
    }
}

/// How the list is named in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListRef {
    Id(String),
    /// Looked up among the account's lists at start.
    Name(String),
}

#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub reconcile_interval: Duration,
    /// How long an in-flight bulk operation may keep shutdown waiting.
    pub shutdown_grace: Duration,
    /// Most items per bulk operation once operations succeed: the writer starts at
    /// `cloudflare.batch_size` and doubles after each full batch that succeeds, up to this.
    pub max_batch: usize,
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} problem{} in {}:",
            n,
            if n == 1 { "" } else { "s" },
            self.path.display()
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the file at `path`, with secrets overridable from the
    /// process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] listing every problem found.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load(path, Secrets::Required)
    }

    /// Like [`Config::load`], but a secret set nowhere (a systemd credential is only
    /// there for the service) is noted in [`Config::missing_secrets`], not refused, and
    /// the token is then blank: for commands that send no secret (`status`, `-t`).
    /// A secret that is set but unusable is still a problem.
    ///
    /// # Errors
    /// A [`ConfigError`] listing every problem found.
    pub fn load_offline(path: &Path) -> Result<Config, ConfigError> {
        load(path, Secrets::Deferred)
    }

    /// Validates configuration text; `env` looks up environment overrides.
    ///
    /// # Errors
    /// Every problem found, one line each.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, Vec<String>> {
        parse(text, env, None, Secrets::Required).map(|(config, _)| config)
    }
}

/// [`Config::load`] and [`Config::load_offline`].
fn load(path: &Path, secrets: Secrets) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        path: path.to_owned(),
        problems: vec![if err.kind() == std::io::ErrorKind::PermissionDenied {
            format!(
                "cannot read the configuration file: {err} (it holds secrets and is root's: \
                 run the command with sudo, or pass another file with -c FILE)"
            )
        } else {
            format!("cannot read the configuration file: {err} (pass another one with -c FILE)")
        }],
    })?;
    let (mut config, holds_secret) =
        parse(&text, &process_env, Some(path), secrets).map_err(|problems| ConfigError {
            path: path.to_owned(),
            problems,
        })?;
    if let Some(warning) = holds_secret.then(|| readable_by_others(path)).flatten() {
        config.warnings.push(warning);
    }
    Ok(config)
}

/// [`Config::parse`], naming `path` in a TOML syntax error when the text came from a file.
/// Also says whether the text holds a secret itself (`crowdsec.api_key`,
/// `cloudflare.api_token`), however the key is written.
fn parse(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    path: Option<&Path>,
    secrets: Secrets,
) -> Result<(Config, bool), Vec<String>> {
    let mut root: Table = text
        .parse()
        .map_err(|err: toml::de::Error| vec![toml_problem(&err, text, path)])?;
    let holds_secret = [(&LAPI_KEY, "crowdsec"), (&CF_TOKEN, "cloudflare")]
        .iter()
        .any(|(spec, section)| {
            root.get(*section)
                .and_then(Value::as_table)
                .is_some_and(|table| table.contains_key(spec.key))
        });
    let mut problems = Vec::new();
    let set_in_crowdsec = |key: &str| {
        (root.get("crowdsec").and_then(Value::as_table)).is_some_and(|t| t.contains_key(key))
    };
    let (types_set, scopes_set) = (set_in_crowdsec("decision_types"), set_in_crowdsec("scopes"));
    let mut crowdsec = Section::take(&mut root, "crowdsec", &mut problems);
    let mut missing_secrets = Vec::new();
    let crowdsec_config = read_crowdsec(&mut crowdsec, env, secrets, &mut missing_secrets);
    crowdsec.finish();
    let mut cloudflare = Section::take(&mut root, "cloudflare", &mut problems);
    let cloudflare_config = read_cloudflare(&mut cloudflare, env, secrets, &mut missing_secrets);
    cloudflare.finish();
    let mut safety = Section::take(&mut root, "safety", &mut problems);
    let mut warnings = Vec::new();
    let safety_config = read_safety(&mut safety, &mut warnings);
    safety.finish();
    let mut admin = Section::take(&mut root, "admin", &mut problems);
    let admin_config = read_admin(&mut admin);
    admin.finish();
    let mut log = Section::take(&mut root, "log", &mut problems);
    let log_config = read_log(&mut log);
    log.finish();
    let mut sync = Section::take(&mut root, "sync", &mut problems);
    let sync_config = SyncConfig {
        reconcile_interval: sync.duration(
            "reconcile_interval",
            "10m",
            Duration::from_secs(1),
            MAX_RECONCILE_INTERVAL,
        ),
        shutdown_grace: sync.duration(
            "shutdown_grace",
            "10s",
            Duration::ZERO,
            Duration::from_secs(600),
        ),
        max_batch: sync.uint("max_batch", 10_000, 1, 100_000) as usize,
    };
    sync.finish();
    let mut ha = Section::take(&mut root, "ha", &mut problems);
    let ha_config = ha::read_ha(&mut ha, env);
    ha.finish();
    for key in root.keys() {
        problems.push(format!(
            "unknown section or key `{key}` (expected [crowdsec], [cloudflare], [safety], \
             [sync], [admin], [log] and [ha])"
        ));
    }
    let (crowdsec_config, accounts) = match (crowdsec_config, cloudflare_config) {
        (Some(mut crowdsec), Some(mut accounts)) => {
            fit_lists(
                &mut crowdsec,
                &mut accounts,
                (types_set, scopes_set),
                &mut problems,
                &mut warnings,
            );
            (Some(crowdsec), Some(accounts))
        }
        other => other,
    };
    if ha_config.is_some() && accounts.as_ref().is_some_and(|a| a.len() > 1) {
        problems.push(
            "ha: high availability elects one writer for one account; with several \
             [[cloudflare.accounts]], run one set of replicas per account (each with its own \
             configuration and Lease)"
                .into(),
        );
    }
    match (crowdsec_config, accounts) {
        (Some(crowdsec), Some(accounts)) if problems.is_empty() && !accounts.is_empty() => Ok((
            Config {
                crowdsec,
                cloudflare: accounts[0].clone(),
                accounts,
                sync: sync_config,
                safety: safety_config,
                admin: admin_config,
                log: log_config,
                ha: ha_config,
                warnings,
                missing_secrets,
            },
            holds_secret,
        )),
        _ => Err(problems),
    }
}

/// Fits the lists and the LAPI pull together: the one list of `list_name`/`list_id` takes
/// `crowdsec.decision_types`; with `[[cloudflare.lists]]`, the types come from the lists
/// (`crowdsec.decision_types` may not be set), and an ASN list needs the `as` scope pulled.
fn fit_lists(
    crowdsec: &mut CrowdsecConfig,
    accounts: &mut [CloudflareConfig],
    (types_set, scopes_set): (bool, bool),
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) {
    let explicit = |account: &CloudflareConfig| account.lists.iter().any(|l| l.action.is_some());
    for account in accounts.iter_mut().filter(|a| !explicit(a)) {
        for list in &mut account.lists {
            list.decision_types = crowdsec.decision_types.clone();
        }
    }
    if !accounts.iter().any(explicit) {
        return;
    }
    if types_set && accounts.iter().all(explicit) {
        problems.push(
            "crowdsec.decision_types: with [[cloudflare.lists]], each list names its own \
             decision_types: remove this key"
                .into(),
        );
    }
    let all_lists = || accounts.iter().flat_map(|a| &a.lists);
    let mut types: Vec<String> = Vec::new();
    for kind in all_lists().flat_map(|l| &l.decision_types) {
        if !types.contains(kind) {
            types.push(kind.clone());
        }
    }
    crowdsec.decision_types = types;
    let pulls_as = crowdsec.scopes.iter().any(|s| s.eq_ignore_ascii_case("as"));
    if let Some(asn) = all_lists().find(|l| l.asn) {
        if !pulls_as && scopes_set {
            problems.push(format!(
                "crowdsec.scopes: the list {} holds AS decisions, but scopes leaves them out \
                 of the pull: add \"as\"",
                asn.label()
            ));
        } else if !pulls_as {
            crowdsec.scopes.push("as".into());
        }
    }
    for list in all_lists() {
        let weak = !list.decision_types.iter().any(|t| t == "ban");
        if weak && list.action.as_deref() == Some("block") {
            warnings.push(format!(
                "cloudflare.lists: {} takes only {} decisions but its rule blocks: a \
                 suspicion becomes a hard block (use action = \"managed_challenge\")",
                list.label(),
                list.decision_types.join(", ")
            ));
        }
    }
}

/// A TOML syntax error: where it is (`line 3, column 20`, or `FILE:3:20`), what is wrong,
/// and the line with a caret under the column. A line that may hold a secret is cut
/// before its value.
fn toml_problem(err: &toml::de::Error, text: &str, path: Option<&Path>) -> String {
    let message = err.message().replace('\n', "; ");
    let Some(offset) = err.span().map(|span| span.start.min(text.len())) else {
        return match path {
            Some(path) => format!("not valid TOML in {}: {message}", path.display()),
            None => format!("not valid TOML: {message}"),
        };
    };
    let offset = (0..=offset)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line_number = text[..line_start].matches('\n').count() + 1;
    let column = text[line_start..offset].chars().count() + 1;
    let place = match path {
        Some(path) => format!("{}:{line_number}:{column}", path.display()),
        None => format!("line {line_number}, column {column}"),
    };
    let mut problem = format!("not valid TOML at {place}: {message}");
    let line = text[line_start..line_end].trim_end_matches('\r');
    let gutter = line_number.to_string().len();
    match quotable(&text[..line_start], line) {
        Some(shown) => {
            let whole = shown.len() == line.len();
            let shown: String = shown
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let hidden = if whole {
                ""
            } else {
                " … (the rest is not shown)"
            };
            problem.push_str(&format!("\n    {line_number:>gutter$} | {shown}{hidden}"));
            // Past the end of a whole line (its line break): the caret goes just after it.
            let caret = if whole {
                column.min(shown.chars().count() + 1)
            } else {
                column
            };
            if caret <= shown.chars().count() + 1 {
                problem.push_str(&format!("\n    {:gutter$} | {:>caret$}", "", "^"));
            }
        }
        None => problem.push_str(&format!(
            "\n    {line_number:>gutter$} | (not shown: it may hold a secret)"
        )),
    }
    problem
}

/// The part of `line` an error message may show: all of it, or only up to the `=` after
/// a secret's key name; `None` inside a multi-line string, which may be a secret.
fn quotable<'a>(before: &str, line: &'a str) -> Option<&'a str> {
    const MAX: usize = 160;
    let in_multiline = |quotes: &str| before.matches(quotes).count() % 2 == 1;
    if in_multiline("\"\"\"") || in_multiline("'''") {
        return None;
    }
    let lower = line.to_ascii_lowercase();
    let secret_name = ["api_key", "api_token"]
        .iter()
        .filter_map(|name| lower.find(name).map(|at| at + name.len()))
        .min();
    let end = match secret_name {
        Some(name_end) => line[name_end..]
            .find('=')
            .map_or(name_end, |eq| name_end + eq + 1),
        None => line.len(),
    };
    let end = (0..=end.min(MAX))
        .rev()
        .find(|&i| line.is_char_boundary(i))
        .unwrap_or(0);
    Some(&line[..end])
}

/// Environment lookups. systemd credentials are read by [`Config::parse`] from the
/// directory named by `CREDENTIALS_DIRECTORY`, looked up here too.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A warning when group or others may read the file at `path`, which holds a secret.
fn readable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} holds a secret and is readable by group or others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

fn read_admin(s: &mut Section<'_>) -> AdminConfig {
    let listen = s.string("listen", "127.0.0.1:60620");
    if listen.is_empty() || listen == "off" {
        return AdminConfig { listen: None };
    }
    match listen.parse() {
        Ok(addr) => AdminConfig { listen: Some(addr) },
        Err(_) => {
            s.problem(
                "listen",
                &format!(
                    "expected ADDRESS:PORT like \"127.0.0.1:60620\", or \"off\"; found {listen:?}"
                ),
            );
            AdminConfig { listen: None }
        }
    }
}

fn read_log(s: &mut Section<'_>) -> LogConfig {
    let format = match s.string("format", "text").as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            s.problem(
                "format",
                &format!("expected \"text\" or \"json\", found {other:?}"),
            );
            LogFormat::Text
        }
    };
    let level = s.string("level", "info");
    if let Err(why) = check_log_filter(&level) {
        s.problem(
            "level",
            &format!(
                "{level:?} is not a log level or tracing filter ({why}): expected trace, debug, \
                 info, warn, error or off, or a filter like \"cfbouncer=debug,info\" \
                 (a target alone needs its level: \"cfbouncer=trace\")"
            ),
        );
    }
    LogConfig { format, level }
}

/// Whether `filter` is a tracing filter that logs what it seems to say. A bare word
/// that is not a level parses as a target and would silence every other log, so a
/// typo like `warning` is refused; so is an empty filter, which logs nothing.
fn check_log_filter(filter: &str) -> Result<(), String> {
    use tracing_subscriber::filter::LevelFilter;
    if filter.trim().is_empty() {
        return Err("it is empty; \"off\" turns logs off".into());
    }
    tracing_subscriber::EnvFilter::try_new(filter).map_err(|err| err.to_string())?;
    let directives = filter.split(',').map(str::trim).filter(|d| !d.is_empty());
    for directive in directives {
        if !directive.contains(['=', '[']) && directive.parse::<LevelFilter>().is_err() {
            return Err(format!("{directive:?} is neither a level nor TARGET=LEVEL"));
        }
    }
    Ok(())
}

fn read_safety(s: &mut Section<'_>, warnings: &mut Vec<String>) -> SafetyConfig {
    let mut allowlist = Vec::new();
    let mut allowlist_asns = Vec::new();
    for text in s.strings("allowlist", &[]) {
        if text.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("as")) {
            match crate::item::Item::from_asn_decision(&text).map(|item| item.asn()) {
                Ok(Some(asn)) => allowlist_asns.push(asn),
                _ => s.problem(
                    "allowlist",
                    &format!("{text:?} is not an AS number: write one like \"AS13335\""),
                ),
            }
            continue;
        }
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        let net = match parsed {
            Ok(net) => net,
            Err(_) => {
                s.problem(
                    "allowlist",
                    &format!("{text:?} is not an IP address, a CIDR or an AS number (AS13335)"),
                );
                continue;
            }
        };
        if net.prefix_len() == 0 {
            let family = if net.addr().is_ipv4() { "IPv4" } else { "IPv6" };
            s.problem(
                "allowlist",
                &format!(
                    "{text:?} covers every {family} address, so nothing would ever be pushed \
                     for {family}: remove it and list only the networks to keep unblocked"
                ),
            );
            continue;
        }
        let masked = net.trunc();
        if masked != net {
            warnings.push(format!(
                "safety.allowlist: {text:?} has host bits set; it is read as {masked} \
                 (write \"{masked}\" to silence this warning)"
            ));
        }
        allowlist.push(masked);
    }
    SafetyConfig {
        allowlist,
        allowlist_asns,
        min_ipv4_prefix: s.uint("min_ipv4_prefix", 16, 8, 32) as u8,
        min_ipv6_prefix: s.uint("min_ipv6_prefix", 32, u64::from(MIN_IPV6_PREFIX), 128) as u8,
        mass_removal_share: s.float("mass_removal_share", 0.5, 0.0, 1.0),
        mass_removal_min_items: s.uint("mass_removal_min_items", 10, 0, u64::from(u32::MAX))
            as usize,
    }
}

fn read_crowdsec(
    s: &mut Section<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
    missing: &mut Vec<String>,
) -> Option<CrowdsecConfig> {
    let api_url = match env(ENV_LAPI_URL) {
        Some(url) => s.url_from_env("api_url", ENV_LAPI_URL, url, "http://127.0.0.1:8080/"),
        None => s.url("api_url", "http://127.0.0.1:8080/"),
    };
    let api_url = api_url.map(|mut url| {
        if !url.ends_with('/') {
            url.push('/');
        }
        url
    });
    let cert_path = s.opt_path("cert_path");
    let key_path = s.opt_path("key_path");
    if cert_path.is_some() != key_path.is_some() {
        s.problem(
            "cert_path and key_path",
            "set both (client certificate and its key) or neither",
        );
    }
    let api_key = s.secret(&LAPI_KEY, env);
    if matches!(api_key, SecretRead::Absent) && cert_path.is_none() {
        let fix = format!(
            "register the bouncer with `cscli bouncers add crowdsec-cloudflare-iplist-bouncer` \
             and put the key in api_key, in a file named by api_key_file, or in env {ENV_LAPI_KEY} \
             (or set cert_path/key_path for certificate auth)"
        );
        s.missing_secret(&LAPI_KEY, &fix, secrets, missing);
    }
    let scopes = s.strings("scopes", &["ip", "range"]);
    if scopes.is_empty() {
        s.problem("scopes", "must not be empty (LAPI returns nothing for an empty scope list); use [\"ip\", \"range\"]");
    }
    let decision_types = s.strings("decision_types", &["ban"]);
    if decision_types.is_empty() {
        s.problem("decision_types", "must not be empty; use [\"ban\"]");
    }
    // Read every key before returning, so unread keys are not reported as unknown.
    let update_frequency = s.duration(
        "update_frequency",
        "10s",
        Duration::from_millis(100),
        MAX_UPDATE_FREQUENCY,
    );
    let origins = s.strings("origins", &[]);
    let scenarios_containing = s.strings("scenarios_containing", &[]);
    let scenarios_not_containing = s.strings("scenarios_not_containing", &[]);
    let ca_cert_path = s.opt_path("ca_cert_path");
    let insecure_skip_verify = s.bool("insecure_skip_verify", false);
    let request_timeout = s.duration(
        "request_timeout",
        "2m",
        Duration::from_secs(1),
        MAX_REQUEST_TIMEOUT,
    );
    let usage_metrics_interval = s.duration_or_off(
        "usage_metrics_interval",
        "30m",
        Duration::from_secs(600),
        Duration::from_secs(86_400),
    );
    Some(CrowdsecConfig {
        api_url: api_url?,
        api_key: api_key.found(),
        update_frequency,
        decision_types,
        scopes,
        origins,
        scenarios_containing,
        scenarios_not_containing,
        cert_path,
        key_path,
        ca_cert_path,
        insecure_skip_verify,
        request_timeout,
        usage_metrics_interval,
    })
}

/// Most accounts one configuration may name.
pub const MAX_ACCOUNTS: usize = 8;

/// `[cloudflare]`: the settings every account shares, and the accounts: the section's own
/// (`account_id`, `api_token`, its lists), or `[[cloudflare.accounts]]` entries. Returns
/// every account's configuration, the first first.
fn read_cloudflare(
    s: &mut Section<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
    missing: &mut Vec<String>,
) -> Option<Vec<CloudflareConfig>> {
    let api_url = s
        .url("api_url", "https://api.cloudflare.com/client/v4")
        .map(|url| url.trim_end_matches('/').to_owned());
    let entries = s.tables("accounts");
    let own = match &entries {
        None => Some(read_account(s, env, secrets, missing)),
        Some(_) => {
            for key in [
                "account_id",
                "api_token",
                "api_token_file",
                "list_name",
                "list_id",
                "lists",
            ] {
                if s.table.remove(key).is_some() {
                    s.problem(
                        key,
                        "with [[cloudflare.accounts]], each account sets its own: move this key \
                         into an account's entry",
                    );
                }
            }
            None
        }
    };
    let batch_size = s.uint("batch_size", 1000, 1, 10_000);
    let ipv6_prefix = s.uint("ipv6_prefix", 64, u64::from(MIN_IPV6_PREFIX), 128);
    let request_timeout = s.duration(
        "request_timeout",
        "30s",
        Duration::from_secs(1),
        MAX_REQUEST_TIMEOUT,
    );
    let capacity = s.uint("capacity", 10_000, 1, 10_000_000) as usize;
    // A person's decisions first (cscli, the console), then the engine's, then lists.
    let origin_priority = s.strings("origin_priority", &crate::state::DEFAULT_ORIGIN_PRIORITY);
    let manage = match s.string("manage", "all").as_str() {
        "all" => Manage::All,
        "tagged" => Manage::Tagged,
        other => {
            s.problem(
                "manage",
                &format!("expected \"all\" or \"tagged\", found {other:?}"),
            );
            Manage::All
        }
    };
    let tag = s.string("tag", "crowdsec");
    if tag.is_empty() || tag.contains(char::is_whitespace) || tag.len() > 64 {
        s.problem(
            "tag",
            "expected one word of at most 64 characters, like \"crowdsec\"",
        );
    }
    let max_requests_per_minute = s.uint("max_requests_per_minute", 120, 1, 240) as u32;
    let shared = CloudflareConfig {
        name: String::new(),
        api_url: api_url?,
        api_token: Secret::new(String::new()),
        account_id: String::new(),
        lists: Vec::new(),
        batch_size: batch_size as usize,
        ipv6_prefix: ipv6_prefix as u8,
        request_timeout,
        capacity,
        origin_priority,
        manage,
        tag,
        max_requests_per_minute,
        exclude_hosts: Vec::new(),
    };
    let Some(entries) = entries else {
        let (api_token, account_id, lists) = own?;
        let exclude_hosts = read_exclude_hosts(s, &lists);
        return Some(vec![CloudflareConfig {
            name: account_id.clone(),
            api_token: api_token?,
            account_id,
            lists: lists?,
            exclude_hosts,
            ..shared
        }]);
    };
    if entries.is_empty() || entries.len() > MAX_ACCOUNTS {
        s.problem(
            "accounts",
            &format!("expected 1 to {MAX_ACCOUNTS} [[cloudflare.accounts]] entries"),
        );
        return None;
    }
    let default_hosts = s.strings("exclude_hosts", &[]);
    let mut accounts = Vec::new();
    let mut ok = true;
    for (name, table) in entries {
        let mut entry = s.sub(name, table);
        // A token per account, never from the environment: that one is the section's.
        let (api_token, account_id, lists) = read_account(&mut entry, &|_| None, secrets, missing);
        // Another API URL for this account: a proxy in front of Cloudflare, or a test's
        // emulator (one account each).
        let api_url = if entry.table.contains_key("api_url") {
            entry
                .url("api_url", &shared.api_url)
                .map(|url| url.trim_end_matches('/').to_owned())
        } else {
            Some(shared.api_url.clone())
        };
        let label = entry.string("name", &account_id);
        if !is_account_label(&label) {
            entry.problem(
                "name",
                "expected 1 to 32 characters of a-z, A-Z, 0-9, _ and -, like \"main\": it labels \
                 the account's metrics and status",
            );
            ok = false;
        }
        let capacity = entry.uint("capacity", shared.capacity as u64, 1, 10_000_000) as usize;
        let per_minute = u64::from(shared.max_requests_per_minute);
        let max_requests_per_minute =
            entry.uint("max_requests_per_minute", per_minute, 1, 240) as u32;
        let exclude_hosts = if entry.table.contains_key("exclude_hosts") {
            read_exclude_hosts(&mut entry, &lists)
        } else {
            default_hosts.clone()
        };
        entry.finish();
        match (api_token, lists, api_url) {
            (Some(api_token), Some(lists), Some(api_url)) => accounts.push(CloudflareConfig {
                name: label,
                api_url,
                api_token,
                account_id,
                lists,
                capacity,
                max_requests_per_minute,
                exclude_hosts,
                ..shared.clone()
            }),
            _ => ok = false,
        }
    }
    for (i, account) in accounts.iter().enumerate() {
        for earlier in &accounts[..i] {
            if earlier.account_id == account.account_id && earlier.api_url == account.api_url {
                s.problem(
                    "accounts",
                    &format!(
                        "account {} is named twice: one writer per account, so merge its lists \
                         into one entry",
                        account.account_id
                    ),
                );
                ok = false;
            } else if earlier.name == account.name {
                s.problem(
                    "accounts",
                    &format!(
                        "two accounts are named {:?}: give each its own name",
                        account.name
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(accounts)
}

/// An account's own keys: its token, its id and its lists.
fn read_account(
    s: &mut Section<'_>,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
    missing: &mut Vec<String>,
) -> (Option<Secret>, String, Option<Vec<ListConfig>>) {
    let mut api_token = s.secret(&CF_TOKEN, env);
    if matches!(api_token, SecretRead::Absent) {
        let fix = format!(
            "create an API token with the permission Account > Account Filter Lists > Edit \
             and put it in api_token, in a file named by api_token_file, or in env {ENV_CF_TOKEN}"
        );
        s.missing_secret(&CF_TOKEN, &fix, secrets, missing);
        if secrets == Secrets::Deferred {
            api_token = SecretRead::Found(Secret::new(String::new()));
        }
    }
    let account_id = s.string("account_id", "");
    if account_id.len() != 32 || !account_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        s.problem(
            "account_id",
            "expected the 32-character hexadecimal account ID (dashboard: Account Home > the account's menu > Copy account ID)",
        );
    }
    let lists = read_lists(s);
    (api_token.found(), account_id, lists)
}

/// A name for an account's label: short, and safe in a metric label and a log line.
fn is_account_label(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `exclude_hosts`: each a host name, and the rule they make short enough for Cloudflare
/// (docs/cloudflare-lists.md §4.5), counted with the list's name or, for a list set by
/// id, the longest name a list can have.
fn read_exclude_hosts(s: &mut Section<'_>, lists: &Option<Vec<ListConfig>>) -> Vec<String> {
    let hosts = s.strings("exclude_hosts", &[]);
    for host in &hosts {
        if let Err(problem) = crate::cloudflare::check_host(host) {
            s.problem("exclude_hosts", &problem);
        }
    }
    let longest = (lists.iter().flatten())
        .map(|list| match &list.list {
            ListRef::Name(name) => (name.len(), list.asn),
            ListRef::Id(_) => (50, list.asn),
        })
        .max_by_key(|&(len, asn)| (len, asn));
    let (len, asn) = longest.unwrap_or((50, false));
    let length = crate::cloudflare::rule_expression(&"x".repeat(len), asn, &hosts)
        .chars()
        .count();
    let max = crate::cloudflare::MAX_EXPRESSION_CHARS;
    if length > max {
        s.problem(
            "exclude_hosts",
            &format!(
                "the rule would be {length} characters long, over Cloudflare's {max}: \
                 list fewer hosts"
            ),
        );
    }
    hosts
}

/// The account's lists: `[[cloudflare.lists]]` entries, or the one list of `list_name` /
/// `list_id` (whose decision types are `crowdsec.decision_types`, filled in later).
fn read_lists(s: &mut Section<'_>) -> Option<Vec<ListConfig>> {
    let Some(tables) = s.tables("lists") else {
        let list = read_list_ref(s, ("list_id", "list_name"))?;
        return Some(vec![ListConfig {
            list,
            decision_types: Vec::new(),
            asn: false,
            action: None,
        }]);
    };
    for key in ["list_id", "list_name"] {
        if s.table.remove(key).is_some() {
            s.problem(
                key,
                "set either [[cloudflare.lists]] or list_name/list_id, not both: \
                 move this list into a [[cloudflare.lists]] entry",
            );
        }
    }
    if tables.is_empty() || tables.len() > MAX_LISTS {
        s.problem(
            "lists",
            &format!("expected 1 to {MAX_LISTS} [[cloudflare.lists]] entries"),
        );
        return None;
    }
    let mut lists = Vec::new();
    let mut ok = true;
    for (name, table) in tables {
        let mut entry = s.sub(name, table);
        match read_list_entry(&mut entry) {
            Some(list) => lists.push(list),
            None => ok = false,
        }
        entry.finish();
    }
    // Each (type, kind) goes to one list; each list is named once.
    for (i, list) in lists.iter().enumerate() {
        for earlier in &lists[..i] {
            if earlier.list == list.list {
                s.problem(
                    "lists",
                    &format!(
                        "list {} is named twice: merge the two entries",
                        list.label()
                    ),
                );
                ok = false;
            }
            let shared = (list.decision_types.iter())
                .find(|t| earlier.asn == list.asn && earlier.decision_types.contains(t));
            if let Some(kind) = shared {
                let scope = if list.asn { "AS" } else { "IP" };
                s.problem(
                    "lists",
                    &format!(
                        "{kind} decisions on {scope} items go to both {} and {}: give each \
                         decision type one list of each kind",
                        earlier.label(),
                        list.label()
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(lists)
}

/// One `[[cloudflare.lists]]` entry.
fn read_list_entry(s: &mut Section<'_>) -> Option<ListConfig> {
    let list = read_list_ref(s, ("id", "name"));
    let decision_types = s.strings("decision_types", &[]);
    if decision_types.is_empty() {
        s.problem(
            "decision_types",
            "missing: the decision types this list takes, like [\"ban\"] or [\"captcha\"]",
        );
    }
    let asn = match s.string("scope", "ip").to_ascii_lowercase().as_str() {
        "ip" => false,
        "as" => true,
        other => {
            s.problem(
                "scope",
                &format!(
                    "expected \"ip\" (a list of kind ip, for Ip and Range decisions) or \"as\" \
                     (a list of kind asn, for AS decisions), found {other:?}"
                ),
            );
            false
        }
    };
    // A ban list blocks; a list of weaker remedies challenges, so that a suspicion
    // never becomes a hard block by default.
    let default = if decision_types.iter().any(|t| t == "ban") {
        "block"
    } else {
        "managed_challenge"
    };
    let action = s.string("action", default);
    if !RULE_ACTIONS.contains(&action.as_str()) {
        s.problem(
            "action",
            &format!(
                "expected one of {}, found {action:?}",
                RULE_ACTIONS.join(", ")
            ),
        );
    }
    if decision_types.is_empty() {
        return None;
    }
    Some(ListConfig {
        list: list?,
        decision_types,
        asn,
        action: Some(action),
    })
}

/// A list named by `name` (`list_name` in the section itself) or `id` (`list_id`).
fn read_list_ref(s: &mut Section<'_>, (id_key, name_key): (&str, &str)) -> Option<ListRef> {
    let list_id = s.string(id_key, "");
    let list_name = s.string(name_key, "");
    match (list_id.is_empty(), list_name.is_empty()) {
        (false, true) if list_id.len() == 32 => Some(ListRef::Id(list_id)),
        (false, true) => {
            s.problem(
                id_key,
                &format!("expected the 32-character list ID (or set {name_key} instead)"),
            );
            None
        }
        (true, false) if is_list_name(&list_name) => Some(ListRef::Name(list_name)),
        (true, false) => {
            s.problem(
                name_key,
                "expected 1 to 50 characters of a-z, 0-9 and _ (e.g. \"crowdsec_ban\")",
            );
            None
        }
        (true, true) => {
            s.problem(
                id_key,
                &format!(
                    "missing: set {id_key}, or {name_key} = \"crowdsec_ban\" to look it up at start"
                ),
            );
            None
        }
        (false, false) => {
            s.problem(&format!("{id_key} and {name_key}"), "set only one of them");
            None
        }
    }
}

fn is_list_name(name: &str) -> bool {
    (1..=50).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Why `text` is not a usable base URL; `example` is the key's default. The URL is
/// quoted without any user name or password.
fn check_base_url(text: &str, example: &str) -> Result<(), String> {
    let shown = without_userinfo(text);
    if text.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "must not contain spaces or control characters: found {shown:?}"
        ));
    }
    if !(text.starts_with("http://") || text.starts_with("https://")) {
        return Err(format!(
            "expected an http:// or https:// URL, found {shown:?}"
        ));
    }
    let url = url::Url::parse(text).map_err(|err| {
        format!("{shown:?} is not a valid URL ({err}): expected one like {example:?}")
    })?;
    if url.host().is_none() {
        return Err(format!(
            "{shown:?} has no host: expected one like {example:?}"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry a user name or password (they would show in logs): remove the \
             part before `@`; the bouncer authenticates with api_key or api_token"
                .to_owned(),
        );
    }
    if url.query().is_some() {
        return Err(format!(
            "must not have a query (`?...`): remove it from {shown:?}"
        ));
    }
    if url.fragment().is_some() {
        return Err(format!(
            "must not have a fragment (`#...`): remove it from {shown:?}"
        ));
    }
    Ok(())
}

/// `text` with anything before an `@` in its authority replaced by `...`.
fn without_userinfo(text: &str) -> String {
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), text),
    };
    let authority = rest.find(['/', '?', '#']).map_or(rest, |end| &rest[..end]);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}...@{}", &rest[at + 1..]),
        None => text.to_owned(),
    }
}

/// One `[section]` being read: typed getters that record problems instead of failing,
/// and [`Section::finish`] to report keys nobody asked for.
struct Section<'p> {
    name: String,
    table: Table,
    problems: &'p mut Vec<String>,
}

impl<'p> Section<'p> {
    fn take(root: &mut Table, name: &'static str, problems: &'p mut Vec<String>) -> Section<'p> {
        let table = match root.remove(name) {
            Some(Value::Table(table)) => table,
            Some(_) => {
                problems.push(format!("`{name}` must be a section ([{name}])"));
                Table::new()
            }
            None => Table::new(),
        };
        Section {
            name: name.to_owned(),
            table,
            problems,
        }
    }

    /// `[[NAME.key]]`: each table of the array, with its name `NAME.key[i]`; `None` when
    /// the key is absent (or not an array of tables: a problem).
    fn tables(&mut self, key: &str) -> Option<Vec<(String, Table)>> {
        let tables = match self.table.remove(key)? {
            Value::Array(values) if values.iter().all(Value::is_table) => values,
            other => {
                let found = other.type_str();
                let name = self.name.clone();
                self.problem(
                    key,
                    &format!("expected tables ([[{name}.{key}]] sections), found {found}"),
                );
                return None;
            }
        };
        let tables = (tables.into_iter().enumerate()).filter_map(|(i, value)| match value {
            Value::Table(table) => Some((format!("{}.{key}[{i}]", self.name), table)),
            _ => None,
        });
        Some(tables.collect())
    }

    /// A section for one of [`Section::tables`], reporting to the same problems.
    fn sub(&mut self, name: String, table: Table) -> Section<'_> {
        Section {
            name,
            table,
            problems: self.problems,
        }
    }

    fn problem(&mut self, key: &str, message: &str) {
        self.problems
            .push(format!("{}.{key}: {message}", self.name));
    }

    /// A secret set nowhere: a problem when secrets are required, else a note. Either
    /// says how a shell command gets a secret the service loads as a systemd credential.
    fn missing_secret(
        &mut self,
        spec: &SecretSpec,
        fix: &str,
        secrets: Secrets,
        missing: &mut Vec<String>,
    ) {
        let message = format!(
            "missing: {fix}. A systemd credential ({}) is there only for the service: \
             run this command with it, e.g. `sudo systemd-run --pipe --wait \
             -p LoadCredential={}:FILE crowdsec-cloudflare-iplist-bouncer COMMAND`, \
             or set env {}",
            spec.credential, spec.credential, spec.env
        );
        match secrets {
            Secrets::Required => self.problem(spec.key, &message),
            Secrets::Deferred => missing.push(format!("{}.{}: {message}", self.name, spec.key)),
        }
    }

    fn finish(self) {
        for key in self.table.keys() {
            self.problems.push(format!(
                "{}.{key}: unknown key (see config.toml.example for the valid ones)",
                self.name
            ));
        }
    }

    fn string(&mut self, key: &str, default: &str) -> String {
        match self.table.remove(key) {
            None => default.to_owned(),
            Some(Value::String(s)) => s,
            Some(other) => {
                self.problem(
                    key,
                    &format!("expected a string, found {}", other.type_str()),
                );
                default.to_owned()
            }
        }
    }

    /// A string, or `None` when the key is absent (or not a string: a problem).
    fn opt_string(&mut self, key: &str) -> Option<String> {
        match self.table.remove(key) {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                self.problem(
                    key,
                    &format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn opt_path(&mut self, key: &str) -> Option<PathBuf> {
        let value = self.string(key, "");
        (!value.is_empty()).then(|| PathBuf::from(value))
    }

    /// A base URL, kept as written (callers normalise its trailing `/`): http or https,
    /// with a host, and without what does not belong in a base URL: a user name or
    /// password (they would show in logs), a query or a fragment.
    fn url(&mut self, key: &str, default: &str) -> Option<String> {
        let text = self.string(key, default);
        match check_base_url(&text, default) {
            Ok(()) => Some(text),
            Err(why) => {
                self.problem(key, &why);
                None
            }
        }
    }

    /// `key` overridden by the environment variable `var` holding `value`: the file's value
    /// is read (so it is not reported as unknown) and ignored; `value` obeys [`Self::url`]'s
    /// rules, and a problem names both.
    fn url_from_env(
        &mut self,
        key: &str,
        var: &str,
        value: String,
        example: &str,
    ) -> Option<String> {
        let _ignored = self.string(key, example);
        match check_base_url(&value, example) {
            Ok(()) => Some(value),
            Err(why) => {
                self.problem(key, &format!("env {var}: {why}"));
                None
            }
        }
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.table.remove(key) {
            None => default,
            Some(Value::Boolean(b)) => b,
            Some(other) => {
                self.problem(
                    key,
                    &format!("expected true or false, found {}", other.type_str()),
                );
                default
            }
        }
    }

    fn uint(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.table.remove(key) {
            None => default,
            Some(Value::Integer(n)) if (min as i64..=max as i64).contains(&n) => n as u64,
            Some(other) => {
                self.problem(
                    key,
                    &format!("expected a whole number from {min} to {max}, found {other}"),
                );
                default
            }
        }
    }

    fn float(&mut self, key: &str, default: f64, min: f64, max: f64) -> f64 {
        let value = match self.table.remove(key) {
            None => return default,
            Some(Value::Float(f)) => f,
            Some(Value::Integer(n)) => n as f64,
            Some(other) => {
                self.problem(
                    key,
                    &format!("expected a number from {min} to {max}, found {other}"),
                );
                return default;
            }
        };
        if (min..=max).contains(&value) {
            return value;
        }
        self.problem(
            key,
            &format!("expected a number from {min} to {max}, found {value}"),
        );
        default
    }

    fn strings(&mut self, key: &str, default: &[&str]) -> Vec<String> {
        let as_strings = |values: &[Value]| -> Option<Vec<String>> {
            values
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        let default: Vec<String> = default.iter().map(|s| (*s).to_owned()).collect();
        match self.table.remove(key) {
            None => default,
            Some(Value::Array(values)) => as_strings(&values).unwrap_or_else(|| {
                self.problem(key, "expected a list of strings, like [\"a\", \"b\"]");
                default
            }),
            Some(other) => {
                self.problem(
                    key,
                    &format!(
                        "expected a list of strings, like [\"a\", \"b\"], found {}",
                        other.type_str()
                    ),
                );
                default
            }
        }
    }

    /// A duration from `min` to `max`.
    fn duration(&mut self, key: &str, default: &str, min: Duration, max: Duration) -> Duration {
        let range = format!("between {} and {}", godur::format(min), godur::format(max));
        self.bounded_duration(key, default, |d| (min..=max).contains(&d), &range)
            .unwrap_or(min)
    }

    /// A duration from `min` to `max`, or `0s` for off (`None`).
    fn duration_or_off(
        &mut self,
        key: &str,
        default: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let range = format!(
            "between {} and {}, or \"0s\" to turn it off",
            godur::format(min),
            godur::format(max)
        );
        let within = |d: Duration| d.is_zero() || (min..=max).contains(&d);
        let d = self.bounded_duration(key, default, within, &range)?;
        (!d.is_zero()).then_some(d)
    }

    /// A duration accepted by `within`, else the default (`None` if that is refused too).
    fn bounded_duration(
        &mut self,
        key: &str,
        default: &str,
        within: impl Fn(Duration) -> bool,
        range: &str,
    ) -> Option<Duration> {
        let text = self.string(key, default);
        let default = godur::parse_std(default).ok().filter(|&d| within(d));
        match godur::parse_std(&text) {
            Ok(d) if within(d) => Some(d),
            Ok(d) => {
                let word = match default {
                    Some(default) if d < default => "too short",
                    _ => "too long",
                };
                self.problem(key, &format!("{text:?} is {word}: expected {range}"));
                default
            }
            Err(err) => {
                self.problem(key, &err.to_string());
                default
            }
        }
    }

    /// A secret from its environment variable, else its systemd credential, else
    /// `<key>` inline, else the file named by `<key>_file`. Surrounding whitespace (a
    /// file's final line break) is trimmed; a blank value or one holding a control
    /// character is refused.
    fn secret(&mut self, spec: &SecretSpec, env: &dyn Fn(&str) -> Option<String>) -> SecretRead {
        let key = spec.key;
        let inline = self.opt_string(key);
        let file_key = format!("{key}_file");
        let file = self.opt_string(&file_key).filter(|f| !f.is_empty());
        if inline.is_some() && file.is_some() {
            self.problem(&format!("{key} and {file_key}"), "set only one of them");
        }
        if let Some(value) = env(spec.env) {
            return self.check_secret(spec, &value, &SecretSource::Env);
        }
        if let Some(dir) = env(ENV_CREDENTIALS_DIRECTORY).filter(|d| !d.is_empty()) {
            let path = Path::new(&dir).join(spec.credential);
            match std::fs::read_to_string(&path) {
                Ok(value) => {
                    return self.check_secret(spec, &value, &SecretSource::Credential(path))
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    self.problem(
                        key,
                        &format!(
                            "cannot read the systemd credential {} ({}): {err}",
                            spec.credential,
                            path.display()
                        ),
                    );
                    return SecretRead::Refused;
                }
            }
        }
        if let Some(value) = inline {
            return self.check_secret(spec, &value, &SecretSource::Inline);
        }
        let Some(file) = file else {
            return SecretRead::Absent;
        };
        match std::fs::read_to_string(&file) {
            Ok(value) => self.check_secret(spec, &value, &SecretSource::File(file)),
            Err(err) => {
                self.problem(&file_key, &format!("cannot read {file}: {err}"));
                SecretRead::Refused
            }
        }
    }

    /// Refuses a blank secret or one with a control character, naming where it came from.
    fn check_secret(
        &mut self,
        spec: &SecretSpec,
        value: &str,
        source: &SecretSource,
    ) -> SecretRead {
        let value = value.trim();
        let blank = value.is_empty();
        if !blank && !value.chars().any(char::is_control) {
            return SecretRead::Found(Secret::new(value));
        }
        let (key, what) = (spec.key, spec.what);
        let file_key = format!("{key}_file");
        let (key, message) = match (source, blank) {
            (SecretSource::Env, true) => (
                key,
                format!(
                    "env {} is set but blank: set it to {what}, or unset it",
                    spec.env
                ),
            ),
            (SecretSource::Env, false) => (
                key,
                format!(
                    "the value of env {} contains a control character (a line break inside it?): \
                     set it to {what} alone",
                    spec.env
                ),
            ),
            (SecretSource::Credential(path), true) => (
                key,
                format!(
                    "the systemd credential {} ({}) is blank: put {what} in it",
                    spec.credential,
                    path.display()
                ),
            ),
            (SecretSource::Credential(path), false) => (
                key,
                format!(
                    "the systemd credential {} ({}) contains a control character \
                     (a line break inside it?): it must hold {what} alone, on one line",
                    spec.credential,
                    path.display()
                ),
            ),
            (SecretSource::Inline, true) => (
                key,
                format!("is blank: put {what} in it, or remove the line"),
            ),
            (SecretSource::Inline, false) => (
                key,
                format!(
                    "contains a control character (a line break or \\u escape inside it?): \
                     put {what} alone in the string"
                ),
            ),
            (SecretSource::File(file), true) => (
                file_key.as_str(),
                format!("{file} is blank: put {what} in it"),
            ),
            (SecretSource::File(file), false) => (
                file_key.as_str(),
                format!(
                    "{file} contains a control character (a line break inside it?): \
                     it must hold {what} alone, on one line"
                ),
            ),
        };
        self.problem(key, &message);
        SecretRead::Refused
    }
}

#[cfg(test)]
mod tests;
