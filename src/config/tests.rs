//! Configuration parsing: defaults, every problem at once, secrets.

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

const MINIMAL: &str = r#"
[crowdsec]
api_key = "lapi-key"
[cloudflare]
api_token = "cf-token"
account_id = "0123456789abcdef0123456789abcdef"
list_name = "crowdsec_ban"
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let config = Config::parse(MINIMAL, &no_env).expect("minimal config is valid");
    assert_eq!(config.crowdsec.api_url, "http://127.0.0.1:8080/");
    assert_eq!(config.crowdsec.update_frequency, Duration::from_secs(10));
    assert_eq!(config.crowdsec.decision_types, ["ban"]);
    assert_eq!(config.crowdsec.scopes, ["ip", "range"]);
    assert!(config.crowdsec.origins.is_empty());
    assert_eq!(
        config.cloudflare.api_url,
        "https://api.cloudflare.com/client/v4"
    );
    assert_eq!(
        config.cloudflare.lists[0].list,
        ListRef::Name("crowdsec_ban".into())
    );
    assert_eq!(config.cloudflare.batch_size, 1000);
    assert_eq!(config.cloudflare.ipv6_prefix, 64);
    assert_eq!(config.sync.reconcile_interval, Duration::from_secs(600));
    assert_eq!(
        config.crowdsec.api_key.as_ref().map(Secret::expose),
        Some("lapi-key")
    );
}

#[test]
fn the_shipped_example_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example"))
        .expect("config.toml.example exists");
    let config = Config::parse(&text, &no_env).expect("config.toml.example is valid");
    assert_eq!(
        config.cloudflare.lists[0].list,
        ListRef::Name("crowdsec_ban".into())
    );
    assert_eq!(config.crowdsec.request_timeout, Duration::from_secs(120));
}

#[test]
fn reports_every_problem_at_once_naming_the_key() {
    let text = r#"
[crowdsec]
api_url = "localhost:8080"
update_frequency = "10 seconds"
scopes = "ip"
colour = "blue"
[cloudflare]
api_token = "t"
account_id = "nope"
batch_size = 0
ipv6_prefix = 129
[sync]
reconcile_interval = "-5m"
[extra]
"#;
    let problems = Config::parse(text, &no_env).expect_err("config is invalid");
    let expect = [
        "crowdsec.api_url: expected an http:// or https:// URL",
        "crowdsec.update_frequency: invalid duration",
        "crowdsec.scopes: expected a list of strings",
        "crowdsec.api_key: missing: register the bouncer with `cscli bouncers add",
        "crowdsec.colour: unknown key",
        "cloudflare.account_id: expected the 32-character",
        "cloudflare.list_id: missing",
        "cloudflare.batch_size: expected a whole number from 1 to 10000",
        "cloudflare.ipv6_prefix: expected a whole number from 12 to 128",
        "sync.reconcile_interval: invalid duration",
        "unknown section or key `extra`",
    ];
    for want in expect {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "missing problem {want:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");
}

#[test]
fn env_overrides_secrets_and_files_are_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token\n").expect("write token");
    let text = format!(
        r#"
[crowdsec]
api_key = "from-file-config"
[cloudflare]
api_token_file = "{}"
account_id = "0123456789abcdef0123456789abcdef"
list_id = "2c0fc9fa937b11eaa1b71c4d701ab86e"
"#,
        token_file.display()
    );
    let env = |name: &str| (name == ENV_LAPI_KEY).then(|| "from-env".to_owned());
    let config = Config::parse(&text, &env).expect("valid");
    assert_eq!(
        config.crowdsec.api_key.as_ref().map(Secret::expose),
        Some("from-env")
    );
    assert_eq!(config.cloudflare.api_token.expose(), "file-token");
    assert_eq!(
        config.cloudflare.lists[0].list,
        ListRef::Id("2c0fc9fa937b11eaa1b71c4d701ab86e".into())
    );
}

#[test]
fn missing_secret_file_is_named() {
    let text = MINIMAL.replace(
        "api_token = \"cf-token\"",
        "api_token_file = \"/nonexistent/token\"",
    );
    let problems = Config::parse(&text, &no_env).expect_err("invalid");
    assert!(
        problems[0].starts_with("cloudflare.api_token_file: cannot read /nonexistent/token"),
        "{problems:?}"
    );
}

#[test]
fn secrets_never_show_in_debug_output() {
    let config = Config::parse(MINIMAL, &no_env).expect("valid");
    let debug = format!("{config:?}");
    assert!(!debug.contains("lapi-key"), "{debug}");
    assert!(!debug.contains("cf-token"), "{debug}");
    assert!(debug.contains("[redacted]"));
}

#[test]
fn bad_toml_is_reported() {
    let problems = Config::parse("[crowdsec\napi_key=", &no_env).expect_err("invalid");
    assert!(problems[0].starts_with("not valid TOML"), "{problems:?}");
}

/// `parse`'s problems for `text` with `env`, which must be refused.
fn problems_of(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    Config::parse(text, env).expect_err("config is invalid")
}

#[test]
fn blank_secrets_are_refused_naming_key_and_source() {
    let blank_inline = MINIMAL.replace("\"lapi-key\"", "\"  \"");
    let problems = problems_of(&blank_inline, &no_env);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("crowdsec.api_key: is blank"),
        "{problems:?}"
    );

    // With certificate auth the key is optional, but a blank one is still a mistake.
    let with_cert = blank_inline.replace(
        "[cloudflare]",
        "cert_path = \"/c.pem\"\nkey_path = \"/k.pem\"\n[cloudflare]",
    );
    let problems = problems_of(&with_cert, &no_env);
    assert!(
        problems[0].starts_with("crowdsec.api_key: is blank"),
        "{problems:?}"
    );

    let env = |name: &str| (name == ENV_CF_TOKEN).then(|| " \t".to_owned());
    let problems = problems_of(MINIMAL, &env);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("cloudflare.api_token: env CLOUDFLARE_API_TOKEN is set but blank"),
        "{problems:?}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join(CREDENTIAL_LAPI_KEY), "\n").expect("write credential");
    let credentials = dir.path().display().to_string();
    let env = |name: &str| (name == ENV_CREDENTIALS_DIRECTORY).then(|| credentials.clone());
    let problems = problems_of(MINIMAL, &env);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("crowdsec.api_key: the systemd credential crowdsec_api_key"),
        "{problems:?}"
    );
    assert!(problems[0].contains("is blank"), "{problems:?}");

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, " \n").expect("write token");
    let text = MINIMAL.replace(
        "api_token = \"cf-token\"",
        &format!("api_token_file = \"{}\"", token_file.display()),
    );
    let problems = problems_of(&text, &no_env);
    assert!(
        problems[0].starts_with("cloudflare.api_token_file: ") && problems[0].contains("is blank"),
        "{problems:?}"
    );
}

#[test]
fn secrets_with_control_characters_are_refused_without_showing_them() {
    let inline = MINIMAL.replace("\"cf-token\"", "\"cf-\\u0001token\"");
    let problems = problems_of(&inline, &no_env);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("cloudflare.api_token: contains a control character"),
        "{problems:?}"
    );
    assert!(
        !problems[0].contains("cf-"),
        "never shows the value: {problems:?}"
    );

    let env = |name: &str| (name == ENV_LAPI_KEY).then(|| "secret-one\nsecret-two".to_owned());
    let problems = problems_of(MINIMAL, &env);
    assert!(
        problems[0].starts_with(
            "crowdsec.api_key: the value of env CROWDSEC_API_KEY contains a control character"
        ),
        "{problems:?}"
    );
    assert!(!problems[0].contains("secret-"), "{problems:?}");

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join(CREDENTIAL_CF_TOKEN), "s3cr\u{7f}et\n").expect("write");
    let credentials = dir.path().display().to_string();
    let env = |name: &str| (name == ENV_CREDENTIALS_DIRECTORY).then(|| credentials.clone());
    let problems = problems_of(MINIMAL, &env);
    assert!(
        problems[0]
            .starts_with("cloudflare.api_token: the systemd credential cloudflare_api_token")
            && problems[0].contains("contains a control character"),
        "{problems:?}"
    );
    assert!(!problems[0].contains("s3cr"), "{problems:?}");

    // The line break a file or credential usually ends with is not part of the secret.
    std::fs::write(dir.path().join(CREDENTIAL_CF_TOKEN), "from-credential\r\n").expect("write");
    let config = Config::parse(MINIMAL, &env).expect("valid");
    assert_eq!(config.cloudflare.api_token.expose(), "from-credential");
}

fn with_safety(safety: &str) -> String {
    format!("{MINIMAL}[safety]\n{safety}\n")
}

#[test]
fn an_allowlist_entry_covering_everything_is_refused() {
    for entry in ["0.0.0.0/0", "::/0", "10.1.2.3/0"] {
        let problems = problems_of(&with_safety(&format!("allowlist = [\"{entry}\"]")), &no_env);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].starts_with(&format!("safety.allowlist: \"{entry}\" covers every")),
            "{problems:?}"
        );
        assert!(
            problems[0].contains("nothing would ever be pushed"),
            "{problems:?}"
        );
    }
}

#[test]
fn an_allowlist_network_with_host_bits_is_masked_with_a_warning() {
    let text = with_safety("allowlist = [\"192.168.1.1/24\", \"10.0.0.0/8\", \"2001:db8::1\"]");
    let config = Config::parse(&text, &no_env).expect("valid");
    assert_eq!(
        config.safety.allowlist,
        ["192.168.1.0/24", "10.0.0.0/8", "2001:db8::1/128"]
            .map(|n| n.parse::<ipnet::IpNet>().expect("test network"))
    );
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(
        config.warnings[0].starts_with("safety.allowlist: \"192.168.1.1/24\" has host bits set")
            && config.warnings[0].contains("192.168.1.0/24"),
        "{:?}",
        config.warnings
    );
}

fn with_log_level(level: &str) -> String {
    format!("{MINIMAL}[log]\nlevel = {level:?}\n")
}

#[test]
fn log_levels_and_tracing_filters_are_accepted() {
    for level in [
        "trace",
        "debug",
        "info",
        "warn",
        "error",
        "off",
        "WARN",
        "cfbouncer=debug,info",
        "cfbouncer::engine=trace,reqwest=warn,info",
    ] {
        let config = Config::parse(&with_log_level(level), &no_env)
            .unwrap_or_else(|problems| panic!("{level:?}: {problems:?}"));
        assert_eq!(config.log.level, level);
    }
}

#[test]
fn an_invalid_log_level_names_the_key_and_the_accepted_values() {
    // "warning" and "verbose" would parse as tracing targets and silence every log.
    for level in [
        "verbose",
        "warning",
        "cfbouncer=verbose",
        "info,cfbouncer=loud",
        "",
        " ",
    ] {
        let problems = problems_of(&with_log_level(level), &no_env);
        assert_eq!(problems.len(), 1, "{level:?}: {problems:#?}");
        assert!(
            problems[0].starts_with(&format!("log.level: {level:?} is not")),
            "{problems:?}"
        );
        assert!(
            problems[0].contains("trace, debug, info, warn, error or off")
                && problems[0].contains("\"cfbouncer=debug,info\""),
            "{problems:?}"
        );
    }
}

#[test]
fn bad_toml_shows_line_column_and_the_line() {
    let text = "[crowdsec]\napi_url = \"http://127.0.0.1:8080/\"\nupdate_frequency = 10s\n";
    let problems = problems_of(text, &no_env);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let problem = &problems[0];
    assert!(
        problem.starts_with("not valid TOML at line 3, column 20: "),
        "{problem}"
    );
    assert!(
        problem.ends_with("\n    3 | update_frequency = 10s\n      |                    ^"),
        "{problem}"
    );
}

#[test]
fn bad_toml_in_a_file_names_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bouncer.toml");
    std::fs::write(&path, "[crowdsec]\r\napi_url = \"x\r\n").expect("write");
    let err = Config::load(&path).expect_err("invalid");
    assert_eq!(err.problems.len(), 1, "{err}");
    let want = format!("not valid TOML at {}:2:", path.display());
    assert!(err.problems[0].starts_with(&want), "{err}");
    assert!(
        err.problems[0].ends_with("\n    2 | api_url = \"x\n      |             ^"),
        "{err}"
    );
}

#[test]
fn bad_toml_never_quotes_a_secret() {
    for text in [
        "[crowdsec]\napi_key = \"s3cret\n",
        "[crowdsec]\n\"api_token\" = s3cret\n",
        "[crowdsec]\napi_key s3cret\n",
        "[crowdsec]\nx = \"\"\"\ns3cret = \"\n",
    ] {
        let problems = problems_of(text, &no_env);
        assert!(
            problems[0].starts_with("not valid TOML at line "),
            "{problems:?}"
        );
        assert!(!problems[0].contains("s3cret"), "{problems:?}");
    }
}

/// `Config::load` of `text` written to a file of mode `mode` in `dir`.
fn load_with_mode(dir: &Path, text: &str, mode: u32) -> Config {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("bouncer.toml");
    std::fs::write(&path, text).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    Config::load(&path).unwrap_or_else(|err| panic!("{err}"))
}

fn warns_readable(config: &Config) -> bool {
    config
        .warnings
        .iter()
        .any(|w| w.contains("holds a secret and is readable by group or others (mode 644)"))
}

#[test]
fn a_readable_file_holding_a_secret_is_warned_about_however_the_key_is_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-token\n").expect("write token");
    let quoted = MINIMAL
        .replace("api_key =", "\"api_key\" =")
        .replace("api_token =", "'api_token' =");
    let dotted = MINIMAL.replace("[crowdsec]\napi_key", "crowdsec.api_key");
    let inline_table = format!(
        "crowdsec = {{ api_key = \"lapi-key\" }}\n\
         cloudflare = {{ api_token_file = \"{}\", account_id = \"0123456789abcdef0123456789abcdef\", list_name = \"l\" }}\n",
        token_file.display()
    );
    for text in [MINIMAL, &quoted, &dotted, &inline_table] {
        let config = load_with_mode(dir.path(), text, 0o644);
        assert!(warns_readable(&config), "{text}: {:?}", config.warnings);
        let config = load_with_mode(dir.path(), text, 0o600);
        assert!(config.warnings.is_empty(), "{text}: {:?}", config.warnings);
    }

    // The secrets are elsewhere (a certificate, a file): nothing to warn about.
    let no_secret = format!(
        "[crowdsec]\ncert_path = \"/c.pem\"\nkey_path = \"/k.pem\"\n\
         [cloudflare]\napi_token_file = \"{}\"\naccount_id = \"0123456789abcdef0123456789abcdef\"\n\
         list_name = \"l\"\n",
        token_file.display()
    );
    let config = load_with_mode(dir.path(), &no_secret, 0o644);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

fn with_urls(lapi: &str, cloudflare: &str) -> String {
    MINIMAL
        .replace("[crowdsec]\n", &format!("[crowdsec]\napi_url = {lapi:?}\n"))
        .replace(
            "[cloudflare]\n",
            &format!("[cloudflare]\napi_url = {cloudflare:?}\n"),
        )
}

#[test]
fn urls_keep_their_normalisation() {
    for (lapi, want) in [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/"),
        (
            "https://lapi.example:8443/prefix",
            "https://lapi.example:8443/prefix/",
        ),
        ("http://[::1]:8080/", "http://[::1]:8080/"),
    ] {
        let text = with_urls(lapi, "https://api.cloudflare.com/client/v4/");
        let config = Config::parse(&text, &no_env).unwrap_or_else(|p| panic!("{lapi}: {p:?}"));
        assert_eq!(config.crowdsec.api_url, want);
        assert_eq!(
            config.cloudflare.api_url,
            "https://api.cloudflare.com/client/v4"
        );
    }
}

#[test]
fn urls_are_parsed_and_refused_naming_the_key_and_the_fix() {
    let ok = "http://127.0.0.1:8080/";
    for (url, want) in [
        ("ftp://127.0.0.1/", "expected an http:// or https:// URL"),
        ("http://", "not a valid URL"),
        ("http://127.0.0.1:99999/", "not a valid URL"),
        ("http://lapi^host/", "not a valid URL"),
        ("http://lapi host/", "must not contain spaces"),
        ("http://127.0.0.1:8080/?debug=1", "must not have a query"),
        ("http://127.0.0.1:8080/#top", "must not have a fragment"),
        (" http://127.0.0.1:8080/", "must not contain spaces"),
    ] {
        for (text, key) in [
            (
                with_urls(url, "https://api.cloudflare.com/client/v4"),
                "crowdsec.api_url",
            ),
            (with_urls(ok, url), "cloudflare.api_url"),
        ] {
            let problems = problems_of(&text, &no_env);
            assert_eq!(problems.len(), 1, "{url}: {problems:#?}");
            assert!(
                problems[0].starts_with(&format!("{key}: ")) && problems[0].contains(want),
                "{url}: want {want:?} in {problems:?}"
            );
        }
    }
}

#[test]
fn a_url_with_credentials_is_refused_without_showing_them() {
    for url in [
        "http://bouncer:pa55word@127.0.0.1:8080/",
        "https://pa55word@api.example/v4",
    ] {
        let problems = problems_of(
            &with_urls(url, "https://api.cloudflare.com/client/v4"),
            &no_env,
        );
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(
            problems[0].starts_with("crowdsec.api_url: must not carry a user name or password"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("pa55word"), "{problems:?}");
    }
}

/// Every duration key, its section, its bounds and the text they are written in.
const DURATION_BOUNDS: [(&str, &str, Duration, Duration, &str); 6] = [
    (
        "crowdsec",
        "update_frequency",
        Duration::from_millis(100),
        Duration::from_secs(60),
        "between 100ms and 1m",
    ),
    (
        "crowdsec",
        "request_timeout",
        Duration::from_secs(1),
        Duration::from_secs(600),
        "between 1s and 10m",
    ),
    (
        "crowdsec",
        "usage_metrics_interval",
        Duration::from_secs(600),
        Duration::from_secs(86_400),
        "between 10m and 24h, or \"0s\" to turn it off",
    ),
    (
        "cloudflare",
        "request_timeout",
        Duration::from_secs(1),
        Duration::from_secs(600),
        "between 1s and 10m",
    ),
    (
        "sync",
        "reconcile_interval",
        Duration::from_secs(1),
        Duration::from_secs(7 * 86_400),
        "between 1s and 168h",
    ),
    (
        "sync",
        "shutdown_grace",
        Duration::ZERO,
        Duration::from_secs(600),
        "between 0s and 10m",
    ),
];

fn with_key(section: &str, key: &str, value: &str) -> String {
    let line = format!("{key} = {value:?}\n");
    match section {
        "crowdsec" | "cloudflare" => {
            MINIMAL.replace(&format!("[{section}]\n"), &format!("[{section}]\n{line}"))
        }
        _ => format!("{MINIMAL}[{section}]\n{line}"),
    }
}

fn duration_of(config: &Config, section: &str, key: &str) -> Option<Duration> {
    match (section, key) {
        ("crowdsec", "update_frequency") => Some(config.crowdsec.update_frequency),
        ("crowdsec", "request_timeout") => Some(config.crowdsec.request_timeout),
        ("crowdsec", "usage_metrics_interval") => config.crowdsec.usage_metrics_interval,
        ("cloudflare", "request_timeout") => Some(config.cloudflare.request_timeout),
        ("sync", "reconcile_interval") => Some(config.sync.reconcile_interval),
        ("sync", "shutdown_grace") => Some(config.sync.shutdown_grace),
        _ => panic!("unknown duration key {section}.{key}"),
    }
}

#[test]
fn durations_are_bounded_per_key() {
    let defaults = Config::parse(MINIMAL, &no_env).expect("valid");
    for (section, key, min, max, range) in DURATION_BOUNDS {
        let default = duration_of(&defaults, section, key).expect("on by default");
        assert!((min..=max).contains(&default), "{section}.{key} default");
        for inside in [min, max] {
            let text = with_key(section, key, &format!("{}ms", inside.as_millis()));
            let config = Config::parse(&text, &no_env)
                .unwrap_or_else(|p| panic!("{section}.{key} = {inside:?}: {p:?}"));
            assert_eq!(duration_of(&config, section, key), Some(inside));
        }
        for (outside, word) in [
            (format!("{}ms", max.as_millis() + 1), "too long"),
            ("2562047h".to_owned(), "too long"),
            (
                format!("{}us", min.as_micros().saturating_sub(1)),
                "too short",
            ),
        ] {
            if min.is_zero() && word == "too short" {
                continue;
            }
            let problems = problems_of(&with_key(section, key, &outside), &no_env);
            assert_eq!(problems.len(), 1, "{problems:#?}");
            let want = format!("{section}.{key}: {outside:?} is {word}: expected {range}");
            assert_eq!(problems[0], want);
        }
    }
    let off = with_key("crowdsec", "usage_metrics_interval", "0s");
    let config = Config::parse(&off, &no_env).expect("valid");
    assert_eq!(config.crowdsec.usage_metrics_interval, None);
}

#[test]
fn origin_priority_defaults_rank_console_and_remediation_sync() {
    let config = Config::parse(MINIMAL, &no_env).expect("valid");
    let want = [
        "cscli",
        "console",
        "crowdsec",
        "lists",
        "remediation_sync",
        "CAPI",
    ];
    assert_eq!(config.cloudflare.origin_priority, want);
    let policy = crate::state::Policy::new(vec!["ban".into()], 64);
    assert_eq!(policy.origin_priority, want, "the state's default agrees");
}

#[test]
fn env_crowdsec_api_url_overrides_the_file_with_the_same_rules() {
    let text = with_urls(
        "http://127.0.0.1:8080/",
        "https://api.cloudflare.com/client/v4",
    );
    let env = |url: &'static str| move |name: &str| (name == ENV_LAPI_URL).then(|| url.to_owned());
    let config = Config::parse(&text, &env("http://10.1.2.3:8080")).expect("valid");
    assert_eq!(config.crowdsec.api_url, "http://10.1.2.3:8080/");
    // Without the key in the file too.
    let config = Config::parse(MINIMAL, &env("https://lapi.example/")).expect("valid");
    assert_eq!(config.crowdsec.api_url, "https://lapi.example/");
    // Refused as the file's value would be, naming the key and the variable, never the
    // password.
    for (url, want) in [
        ("", "expected an http:// or https:// URL"),
        ("http://10.1.2.3:99999/", "not a valid URL"),
        (
            "http://bouncer:pa55word@10.1.2.3:8080/",
            "user name or password",
        ),
    ] {
        let problems = problems_of(MINIMAL, &env(url));
        assert_eq!(problems.len(), 1, "{url:?}: {problems:#?}");
        assert!(
            problems[0].starts_with("crowdsec.api_url: env CROWDSEC_API_URL: ")
                && problems[0].contains(want),
            "{url:?}: want {want:?} in {problems:?}"
        );
        assert!(!problems[0].contains("pa55word"), "{problems:?}");
    }
}

#[test]
fn exclude_hosts_defaults_to_none_and_takes_host_names() {
    let config = Config::parse(MINIMAL, &no_env).expect("valid");
    assert!(config.cloudflare.exclude_hosts.is_empty());
    let text = format!("{MINIMAL}exclude_hosts = [\"auth.example.com\", \"login.example.com\"]\n");
    let config = Config::parse(&text, &no_env).expect("valid");
    assert_eq!(
        config.cloudflare.exclude_hosts,
        ["auth.example.com", "login.example.com"]
    );
}

#[test]
fn exclude_hosts_refuses_what_is_not_a_host_name_naming_the_key() {
    for (value, want) in [
        ("[\"\"]", "an empty host name"),
        ("[\"*.example.com\"]", "wildcards are not supported"),
        ("[\"Auth.example.com\"]", "lower case"),
        ("[\"auth example.com\"]", "expected a host name"),
        ("[\"auth\\\".example.com\"]", "expected a host name"),
        ("[\"{auth.example.com}\"]", "expected a host name"),
        ("\"auth.example.com\"", "expected a list of strings"),
    ] {
        let text = format!("{MINIMAL}exclude_hosts = {value}\n");
        let problems = problems_of(&text, &no_env);
        assert_eq!(problems.len(), 1, "{value}: {problems:#?}");
        assert!(
            problems[0].starts_with("cloudflare.exclude_hosts: ") && problems[0].contains(want),
            "{value}: want {want:?} in {problems:?}"
        );
    }
}

#[test]
fn exclude_hosts_may_not_make_the_rule_longer_than_cloudflare_takes() {
    // At most 4 096 characters (docs/cloudflare-lists.md §4.5); each host here has 248.
    let label = "a".repeat(60);
    let config_with = |count: usize| {
        let hosts: Vec<String> = (0..count)
            .map(|n| format!("\"{label}.{label}.{label}.{label}.h{n:02}\""))
            .collect();
        format!("{MINIMAL}exclude_hosts = [{}]\n", hosts.join(", "))
    };
    let config = Config::parse(&config_with(10), &no_env).expect("10 long hosts fit");
    assert_eq!(config.cloudflare.exclude_hosts.len(), 10);
    let problems = problems_of(&config_with(20), &no_env);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("cloudflare.exclude_hosts: the rule would be 5")
            && problems[0].contains("over Cloudflare's 4096"),
        "{problems:?}"
    );
}

const ACCOUNT: &str = r#"
[crowdsec]
api_key = "lapi-key"
[cloudflare]
api_token = "cf-token"
account_id = "0123456789abcdef0123456789abcdef"
"#;

#[test]
fn lists_map_decision_types_to_lists_actions_and_kinds() {
    let text = format!(
        r#"{ACCOUNT}
[[cloudflare.lists]]
name = "crowdsec_ban"
decision_types = ["ban"]
[[cloudflare.lists]]
name = "crowdsec_challenge"
decision_types = ["captcha"]
[[cloudflare.lists]]
id = "0123456789abcdef0123456789abcdef"
decision_types = ["ban"]
scope = "as"
action = "block"
[safety]
allowlist = ["192.0.2.0/24", "AS13335", "as64496"]
"#
    );
    let config = Config::parse(&text, &no_env).expect("valid");
    let lists = &config.cloudflare.lists;
    let summary: Vec<(&str, bool, Option<&str>)> = lists
        .iter()
        .map(|l| (l.label(), l.asn, l.action.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            ("crowdsec_ban", false, Some("block")),
            // A list of captchas challenges by default: a suspicion never hard-blocks.
            ("crowdsec_challenge", false, Some("managed_challenge")),
            ("0123456789abcdef0123456789abcdef", true, Some("block")),
        ]
    );
    assert_eq!(config.crowdsec.decision_types, ["ban", "captcha"]);
    // An ASN list pulls the AS scope too.
    assert_eq!(config.crowdsec.scopes, ["ip", "range", "as"]);
    assert_eq!(config.safety.allowlist_asns, [13335, 64496]);
    assert_eq!(config.safety.allowlist.len(), 1);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn one_list_by_name_keeps_taking_crowdsec_decision_types() {
    let text = MINIMAL.replace(
        "[crowdsec]\n",
        "[crowdsec]\ndecision_types = [\"ban\", \"captcha\"]\n",
    );
    let config = Config::parse(&text, &no_env).expect("valid");
    let list = &config.cloudflare.lists[..];
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].decision_types, ["ban", "captcha"]);
    assert_eq!((list[0].asn, list[0].action.as_deref()), (false, None));
}

#[test]
fn list_mappings_that_cannot_work_are_refused_naming_the_fix() {
    let cases = [
        (
            "[[cloudflare.lists]]\nname = \"a\"\ndecision_types = [\"ban\"]\n\
             [[cloudflare.lists]]\nname = \"b\"\ndecision_types = [\"ban\", \"captcha\"]\n",
            "ban decisions on IP items go to both a and b",
        ),
        (
            "[[cloudflare.lists]]\nname = \"a\"\ndecision_types = [\"ban\"]\nscope = \"country\"\n",
            "cloudflare.lists[0].scope: expected \"ip\"",
        ),
        (
            "[[cloudflare.lists]]\nname = \"a\"\ndecision_types = [\"ban\"]\naction = \"drop\"\n",
            "cloudflare.lists[0].action: expected one of block",
        ),
        (
            "[[cloudflare.lists]]\nname = \"a\"\n",
            "cloudflare.lists[0].decision_types: missing",
        ),
        (
            "[[cloudflare.lists]]\ndecision_types = [\"ban\"]\n",
            "cloudflare.lists[0].id: missing: set id, or name",
        ),
        (
            "[[cloudflare.lists]]\nname = \"a\"\ndecision_types = [\"ban\"]\ncolour = 1\n",
            "cloudflare.lists[0].colour: unknown key",
        ),
        (
            "list_name = \"x\"\n[[cloudflare.lists]]\nname = \"a\"\ndecision_types = [\"ban\"]\n",
            "cloudflare.list_name: set either [[cloudflare.lists]] or list_name/list_id",
        ),
        (
            "[[cloudflare.lists]]\nname = \"a\"\ndecision_types = [\"ban\"]\n\
             [[cloudflare.lists]]\nname = \"a\"\ndecision_types = [\"captcha\"]\n",
            "list a is named twice",
        ),
        ("lists = []\n", "expected 1 to 16"),
    ];
    for (lists, want) in cases {
        let problems = problems_of(&format!("{ACCOUNT}{lists}"), &no_env);
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "{lists}: want {want:?} in {problems:?}"
        );
    }
    // decision_types belongs to the lists once they are given; scopes must pull AS.
    let text = format!(
        "{}[[cloudflare.lists]]\nname = \"a\"\ndecision_types = [\"ban\"]\nscope = \"as\"\n",
        ACCOUNT.replace(
            "[crowdsec]\n",
            "[crowdsec]\ndecision_types = [\"ban\"]\nscopes = [\"ip\"]\n"
        )
    );
    let problems = problems_of(&text, &no_env);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("crowdsec.decision_types: with [[cloudflare.lists]]")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("crowdsec.scopes: the list a holds AS decisions")),
        "{problems:?}"
    );
}

#[test]
fn a_challenge_list_that_blocks_is_warned_about() {
    let text = format!(
        "{ACCOUNT}[[cloudflare.lists]]\nname = \"c\"\ndecision_types = [\"captcha\"]\naction = \"block\"\n"
    );
    let config = Config::parse(&text, &no_env).expect("valid, with a warning");
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("c takes only captcha decisions but its rule blocks")),
        "{:?}",
        config.warnings
    );
}

#[test]
fn an_allowlist_as_number_must_be_one() {
    let problems = problems_of(&with_safety("allowlist = [\"AS13x\"]"), &no_env);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("\"AS13x\" is not an AS number")),
        "{problems:?}"
    );
}

const ACCOUNTS: &str = r#"
[crowdsec]
api_key = "lapi-key"
[cloudflare]
capacity = 5000
exclude_hosts = ["auth.example.com"]
[[cloudflare.accounts]]
name = "main"
account_id = "0123456789abcdef0123456789abcdef"
api_token = "token-a"
list_name = "crowdsec_ban"
[[cloudflare.accounts]]
account_id = "fedcba9876543210fedcba9876543210"
api_token = "token-b"
capacity = 500000
exclude_hosts = []
[[cloudflare.accounts.lists]]
name = "crowdsec_challenge"
decision_types = ["captcha"]
[[cloudflare.accounts.lists]]
name = "crowdsec_asn"
decision_types = ["ban"]
scope = "as"
"#;

#[test]
fn several_accounts_each_with_token_lists_and_capacity() {
    let config = Config::parse(ACCOUNTS, &|key| {
        // The environment's token is the section's own: never an account's.
        (key == ENV_CF_TOKEN).then(|| "from-env".to_owned())
    })
    .expect("valid");
    let accounts = &config.accounts;
    assert_eq!(accounts.len(), 2);
    let a = &accounts[0];
    let b = &accounts[1];
    assert_eq!((a.name.as_str(), a.api_token.expose()), ("main", "token-a"));
    assert_eq!(
        (b.name.as_str(), b.api_token.expose()),
        ("fedcba9876543210fedcba9876543210", "token-b")
    );
    assert_eq!((a.capacity, b.capacity), (5000, 500_000));
    assert_eq!(a.exclude_hosts, ["auth.example.com"]);
    assert!(b.exclude_hosts.is_empty());
    assert_eq!(a.lists[0].decision_types, ["ban"]);
    assert_eq!(b.lists.len(), 2);
    assert_eq!(config.cloudflare.name, "main");
    assert_eq!(config.for_account(1).cloudflare.account_id, b.account_id);
    assert_eq!(config.crowdsec.scopes, ["ip", "range", "as"]);
    assert!(
        !format!("{config:?}").contains("token-"),
        "secrets never in Debug"
    );
}

#[test]
fn accounts_that_cannot_work_are_refused_naming_the_fix() {
    let cases = [
        (
            ACCOUNTS.replace("capacity = 5000\n", "capacity = 5000\naccount_id = \"x\"\n"),
            "cloudflare.account_id: with [[cloudflare.accounts]], each account sets its own",
        ),
        (
            ACCOUNTS.replace("fedcba9876543210fedcba9876543210", "0123456789abcdef0123456789abcdef"),
            "account 0123456789abcdef0123456789abcdef is named twice",
        ),
        (
            ACCOUNTS.replace("api_token = \"token-b\"\n", ""),
            "cloudflare.accounts[1].api_token: missing",
        ),
        (
            ACCOUNTS.replace("name = \"main\"", "name = \"main account\""),
            "cloudflare.accounts[0].name: expected 1 to 32 characters",
        ),
        (
            format!("{ACCOUNTS}[ha]\nlease = \"crowdsec/cf\"\nidentity = \"a\"\napi_server = \"https://10.0.0.1:443\"\ntoken_file = \"/dev/null\"\n"),
            "ha: high availability elects one writer for one account",
        ),
    ];
    for (text, want) in cases {
        let problems = problems_of(&text, &no_env);
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "want {want:?} in {problems:?}"
        );
    }
}
