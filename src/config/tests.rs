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
    assert_eq!(config.cloudflare.list, ListRef::Name("crowdsec_ban".into()));
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
    assert_eq!(config.cloudflare.list, ListRef::Name("crowdsec_ban".into()));
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
        config.cloudflare.list,
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
