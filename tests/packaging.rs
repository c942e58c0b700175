//! The operator packaging: the systemd unit (checked by `systemd-analyze`), the install and
//! uninstall scripts (run against a temp root with a fake `cscli`), the Dockerfile and the
//! Kubernetes manifests (structural checks). No test touches the network or the host's
//! systemd.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cfbouncer::config::{self, Config};

const BIN: &str = env!("CARGO_BIN_EXE_crowdsec-cloudflare-iplist-bouncer");
const NAME: &str = "crowdsec-cloudflare-iplist-bouncer";
const UNIT: &str = "systemd/crowdsec-cloudflare-iplist-bouncer.service";
/// Every unit shipped, with the oldest systemd it is for (install.sh and the package's
/// postinst pick by `systemctl --version`).
const UNITS: [(&str, u32); 3] = [
    (UNIT, 250),
    (
        "systemd/fallback/systemd-247/crowdsec-cloudflare-iplist-bouncer.service",
        247,
    ),
    (
        "systemd/fallback/systemd-245/crowdsec-cloudflare-iplist-bouncer.service",
        245,
    ),
];
/// The systemd release that introduced each directive the units use (systemd's NEWS and
/// man pages); a directive missing here fails the test, so a new one gets checked.
const DIRECTIVE_SINCE: &[(&str, u32)] = &[
    ("Description", 1),
    ("After", 1),
    ("Wants", 1),
    ("WantedBy", 1),
    ("Type", 1),
    ("NotifyAccess", 1),
    ("ExecStartPre", 1),
    ("ExecStart", 1),
    ("Restart", 1),
    ("RestartSec", 1),
    ("TimeoutStopSec", 188),
    ("WatchdogSec", 186),
    ("UMask", 1),
    ("CapabilityBoundingSet", 1),
    ("NoNewPrivileges", 187),
    ("PrivateTmp", 1),
    ("PrivateDevices", 209),
    ("DevicePolicy", 1),
    ("ProtectHome", 214),
    ("SystemCallArchitectures", 209),
    ("SystemCallErrorNumber", 209),
    ("RestrictAddressFamilies", 211),
    ("AmbientCapabilities", 229),
    ("MemoryDenyWriteExecute", 231),
    ("RestrictRealtime", 231),
    // With the @system-service group.
    ("SystemCallFilter", 231),
    ("DynamicUser", 232),
    // =strict
    ("ProtectSystem", 232),
    ("PrivateUsers", 232),
    ("ProtectKernelTunables", 232),
    ("ProtectKernelModules", 232),
    ("ProtectControlGroups", 232),
    ("RemoveIPC", 232),
    ("RestrictNamespaces", 233),
    ("LockPersonality", 235),
    ("KeyringMode", 235),
    ("PrivateMounts", 239),
    ("ProtectHostname", 242),
    ("RestrictSUIDSGID", 242),
    ("ProtectKernelLogs", 244),
    ("ProtectClock", 245),
    ("LoadCredential", 247),
    ("ProtectProc", 247),
    ("ProcSubset", 247),
    ("PrivateIPC", 248),
];
/// Where scripts/install.sh puts the binary, and so where the unit runs it from.
const INSTALLED_BIN: &str = "/usr/local/bin/crowdsec-cloudflare-iplist-bouncer";
const MAX_EXPOSURE: f64 = 2.0;
/// What the fake cscli prints for `bouncers add`: `+` and `/` as in real base64 keys.
const FAKE_KEY: &str = "fAkE+k3y/0123456789=";
/// What the fake cscli reports as LAPI's port: install.sh writes it into api_url.
const FAKE_LAPI_PORT: u16 = 8181;
const KEY_PLACEHOLDER: &str = "api_key = \"<LAPI bouncer key>\"";

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_file(relative);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn systemd_analyze(args: &[&str]) -> Output {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is missing: install it with `apt-get install systemd` \
             (scripts/test.sh does)"
        ),
        Err(err) => panic!("cannot run systemd-analyze: {err}"),
    }
}

/// The value of every `Key=` line of the unit, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .collect()
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (relative, _) in UNITS {
        let unit = read(relative);
        assert!(
            unit.contains(&format!("ExecStart={INSTALLED_BIN} ")),
            "{relative}: ExecStart must run {INSTALLED_BIN}"
        );
        // `verify` insists that the executable exists: point the unit at the one cargo built.
        let path = dir.path().join(format!("{NAME}.service"));
        fs::write(&path, unit.replace(INSTALLED_BIN, BIN)).expect("write the unit");
        let path = path.to_str().expect("utf-8 path");
        let out = systemd_analyze(&["verify", "--man=no", path]);
        let report = text(&out);
        // verify exits 0 on unknown keys and bad values too; those lines name the unit.
        let complaints: Vec<&str> = report
            .lines()
            .filter(|line| line.contains(&format!("{NAME}.service")))
            .collect();
        assert!(
            out.status.success() && complaints.is_empty(),
            "systemd-analyze verify {relative} ({}):\n{report}",
            out.status
        );
    }
}

/// A unit's non-comment, non-blank lines.
fn unit_lines(unit: &str) -> Vec<&str> {
    unit.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .collect()
}

/// The keys of a unit's `Key=value` lines.
fn directives(unit: &str) -> Vec<&str> {
    unit_lines(unit)
        .into_iter()
        .filter_map(|line| line.split_once('=').map(|(key, _)| key.trim()))
        .collect()
}

#[test]
fn each_unit_uses_only_what_its_oldest_systemd_knows() {
    for (relative, floor) in UNITS {
        let unit = read(relative);
        let keys = directives(&unit);
        for key in &keys {
            let since = DIRECTIVE_SINCE
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, since)| *since)
                .unwrap_or_else(|| panic!("{relative}: add {key}= to DIRECTIVE_SINCE"));
            assert!(
                since <= floor,
                "{relative} is for systemd {floor} but {key}= needs {since}"
            );
        }
        // ProcSubset=pid with ProtectKernelTunables= fails the start before systemd 250.
        if keys.contains(&"ProcSubset") && keys.contains(&"ProtectKernelTunables") {
            assert!(
                floor >= 250,
                "{relative}: ProcSubset= with ProtectKernelTunables="
            );
        }
    }
    // The 247 fallback gives up only what its systemd lacks: it is the main unit without
    // PrivateIPC= and ProcSubset=.
    let main = read(UNIT);
    let wanted: Vec<&str> = unit_lines(&main)
        .into_iter()
        .filter(|l| !l.starts_with("PrivateIPC=") && !l.starts_with("ProcSubset="))
        .collect();
    assert_eq!(unit_lines(&read(UNITS[1].0)), wanted);
    // The 245 one reads the configuration itself, as root without capabilities.
    let old = read(UNITS[2].0);
    assert_eq!(
        unit_values(&old, "ExecStart"),
        [format!("{INSTALLED_BIN} -c {} run", config::DEFAULT_PATH)]
    );
    assert_eq!(unit_values(&old, "CapabilityBoundingSet"), [""]);
    assert!(unit_values(&old, "DynamicUser").is_empty());
}

#[test]
fn every_unit_has_an_exposure_of_at_most_two() {
    for (relative, _) in UNITS {
        let path = repo_file(relative);
        let path = path.to_str().expect("utf-8 path");
        let out = systemd_analyze(&["security", "--offline=true", "--no-pager", path]);
        let report = text(&out);
        let exposure = report
            .lines()
            .find(|line| line.contains("Overall exposure level"))
            .and_then(|line| line.rsplit(':').next())
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse::<f64>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{relative}: no exposure level in the output ({}):\n{report}",
                    out.status
                )
            });
        assert!(
            exposure <= MAX_EXPOSURE,
            "{relative}: exposure {exposure} > {MAX_EXPOSURE}:\n{report}"
        );
    }
}

#[test]
fn unit_runs_the_daemon_as_the_binary_expects() {
    let unit = read(UNIT);
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "always"),
        ("RestartSec", "10"),
        ("DynamicUser", "yes"),
    ] {
        assert_eq!(unit_values(&unit, key), [value], "{key}=");
    }
    assert!(
        !unit_values(&unit, "WatchdogSec").is_empty(),
        "WatchdogSec="
    );
    // SIGTERM lets an in-flight bulk operation finish within sync.shutdown_grace (10 s).
    let stop: Vec<u64> = unit_values(&unit, "TimeoutStopSec")
        .iter()
        .map(|v| v.parse().expect("TimeoutStopSec in seconds"))
        .collect();
    assert!(
        matches!(stop[..], [s] if s > 10),
        "TimeoutStopSec= {stop:?}"
    );
    // The config is handed over as a credential, read from the binary's default path.
    assert_eq!(
        unit_values(&unit, "LoadCredential"),
        [format!("config:{}", config::DEFAULT_PATH)]
    );
    let config_arg = "-c ${CREDENTIALS_DIRECTORY}/config";
    assert_eq!(
        unit_values(&unit, "ExecStartPre"),
        [format!("{INSTALLED_BIN} {config_arg} -t")]
    );
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        [format!("{INSTALLED_BIN} {config_arg} run")]
    );
    for credential in [config::CREDENTIAL_LAPI_KEY, config::CREDENTIAL_CF_TOKEN] {
        assert!(
            unit.contains(&format!("LoadCredential={credential}:")),
            "the unit's comments show how to load {credential}"
        );
    }
}

/// The binary accepts the unit's command lines: with `$CREDENTIALS_DIRECTORY` empty, `run`
/// fails on the missing config (exit 2) and `-t` reports it as a problem (exit 1), not on
/// the arguments.
#[test]
fn unit_command_lines_are_accepted_by_the_binary() {
    let unit = read(UNIT);
    let dir = tempfile::tempdir().expect("temp dir");
    let credentials = dir.path().to_str().expect("utf-8 path");
    let help = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("the binary runs");
    let has_test_config = text(&help).contains("--test-config");
    for (key, code) in [("ExecStartPre", 1), ("ExecStart", 2)] {
        if key == "ExecStartPre" && !has_test_config {
            eprintln!("this binary has no -t/--test-config: ExecStartPre not run");
            continue;
        }
        let line = unit_values(&unit, key)[0].replace("${CREDENTIALS_DIRECTORY}", credentials);
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let out = Command::new(BIN)
            .args(&args)
            .env_remove(config::ENV_LAPI_KEY)
            .env_remove(config::ENV_CF_TOKEN)
            .output()
            .expect("the binary runs");
        assert_eq!(out.status.code(), Some(code), "{key}: {}", text(&out));
        assert!(
            text(&out).contains("cannot read the configuration file"),
            "{key}: {}",
            text(&out)
        );
    }
}

/// Dockerfile instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines().map(str::trim) {
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged_without_secrets() {
    let instructions = dockerfile_instructions();
    let word = |i: &String| i.split_whitespace().next().unwrap_or("").to_uppercase();
    let stages: Vec<usize> = (0..instructions.len())
        .filter(|&n| word(&instructions[n]) == "FROM")
        .collect();
    assert!(stages.len() >= 2, "a multi-stage build: {instructions:#?}");
    // Each stage's base, its `${ARG}` replaced by the ARG's default.
    let base = |n: usize| -> String {
        let image = instructions[n].split_whitespace().nth(1).unwrap_or("");
        match image.strip_prefix("${").and_then(|i| i.strip_suffix('}')) {
            None => image.to_owned(),
            Some(arg) => instructions
                .iter()
                .find_map(|i| i.strip_prefix(&format!("ARG {arg}=")))
                .unwrap_or_else(|| panic!("ARG {arg} has no default"))
                .to_owned(),
        }
    };
    for &n in &stages {
        let image = base(n);
        let digest = image.split_once("@sha256:").map(|(_, d)| d).unwrap_or("");
        assert!(
            digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
            "base image pinned by digest: {image}"
        );
    }
    // glibc of the builder must match the final image's.
    assert!(base(stages[0]).contains("bookworm"), "builder on Debian 12");
    let last = *stages.last().expect("a FROM");
    assert!(
        ["debian12", "bookworm"]
            .iter()
            .any(|d| base(last).contains(d)),
        "final image on Debian 12: {}",
        base(last)
    );
    let build = &instructions[..last];
    assert!(
        build.iter().any(|i| i.contains("cargo build")
            && i.contains("--release")
            && i.contains("--locked")),
        "cargo build --release --locked"
    );
    let final_stage = &instructions[last..];
    let users: Vec<&String> = final_stage.iter().filter(|i| word(i) == "USER").collect();
    let user = users.last().expect("a USER in the final stage");
    let name = user
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("");
    assert!(!["", "root", "0"].contains(&name), "non-root USER: {user}");
    assert!(
        final_stage
            .iter()
            .any(|i| word(i) == "COPY" && i.contains("--from=") && i.contains(NAME)),
        "the binary is copied from the build stage"
    );
    let expected = [
        format!("ENTRYPOINT [\"{INSTALLED_BIN}\"]"),
        format!("CMD [\"-c\", \"{}\"]", config::DEFAULT_PATH),
        "EXPOSE 60620".to_owned(),
    ];
    for wanted in &expected {
        assert!(final_stage.contains(wanted), "missing {wanted}");
    }
    for i in instructions
        .iter()
        .filter(|i| ["ENV", "ARG"].contains(&word(i).as_str()))
    {
        let upper = i.to_uppercase();
        for secret in ["API_KEY", "TOKEN", "SECRET", "PASSWORD"] {
            assert!(!upper.contains(secret), "secret baked into the image: {i}");
        }
    }
    let ignore = read(".dockerignore");
    for entry in ["target", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim_end_matches('/') == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

/// Which `cscli` the install scripts get.
#[derive(Clone, Copy)]
enum Cscli {
    /// The fake: logs its arguments, prints FAKE_KEY for `bouncers add`.
    Fake,
    /// CSCLI="": none available.
    Absent,
}

/// A temp root for the install scripts and a fake `cscli` that logs its arguments.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().expect("temp dir");
        let cscli = dir.path().join("cscli");
        let script = format!(
            "#!/bin/sh\necho \"$*\" >>\"$(dirname \"$0\")/cscli.log\"\n\
             case \"$*\" in *'bouncers add'*) echo '{FAKE_KEY}' ;;\n\
             *'config show'*) echo '127.0.0.1:{FAKE_LAPI_PORT}' ;; esac\n"
        );
        fs::write(&cscli, script).expect("write the fake cscli");
        fs::set_permissions(&cscli, fs::Permissions::from_mode(0o755)).expect("chmod");
        Host { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn path(&self, absolute: &str) -> PathBuf {
        self.root().join(absolute.trim_start_matches('/'))
    }

    fn config(&self) -> PathBuf {
        self.path(config::DEFAULT_PATH)
    }

    fn id_file(&self) -> PathBuf {
        self.path(&format!("{}.id", config::DEFAULT_PATH))
    }

    fn cscli_calls(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("cscli.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs scripts/<script> with ROOT set.
    fn run(&self, script: &str, args: &[&str], cscli: Cscli) -> String {
        self.run_script(&repo_file(&format!("scripts/{script}")), args, cscli, &[])
    }

    /// Runs the script at `path` with ROOT and `env` set.
    fn run_script(&self, path: &Path, args: &[&str], cscli: Cscli, env: &[(&str, &str)]) -> String {
        let fake = self.dir.path().join("cscli");
        let out = Command::new("bash")
            .arg(path)
            .args(args)
            .env("ROOT", self.root())
            .env(
                "CSCLI",
                match cscli {
                    Cscli::Fake => fake.as_os_str(),
                    Cscli::Absent => OsStr::new(""),
                },
            )
            .envs(env.iter().copied())
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "{} {args:?} failed:\n{}",
            path.display(),
            text(&out)
        );
        text(&out)
    }
}

fn mode(path: &Path) -> u32 {
    let meta = fs::metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    meta.permissions().mode() & 0o777
}

#[test]
fn install_registers_once_keeps_the_config_and_uninstall_deletes_the_bouncer() {
    let host = Host::new();
    host.run("install.sh", &[BIN], Cscli::Fake);

    let installed = host.path(INSTALLED_BIN);
    assert_eq!(mode(&installed), 0o755);
    assert_eq!(
        fs::read(&installed).expect("binary"),
        fs::read(BIN).expect("cargo's binary")
    );
    let unit = host.path(&format!("/etc/systemd/system/{NAME}.service"));
    assert_eq!(fs::read_to_string(&unit).expect("unit"), read(UNIT));

    // The config: the example with the key cscli printed and LAPI's port, private, and
    // parsed as written.
    let cfg = host.config();
    assert_eq!(mode(&cfg), 0o600);
    let written = fs::read_to_string(&cfg).expect("config");
    let key_line = format!("api_key = \"{FAKE_KEY}\"");
    let expected = read("config.toml.example")
        .replace(KEY_PLACEHOLDER, &key_line)
        .replace(
            "api_url = \"http://127.0.0.1:8080/\"",
            &format!("api_url = \"http://127.0.0.1:{FAKE_LAPI_PORT}/\""),
        );
    assert_eq!(written, expected);
    let parsed = Config::parse(&written, &|_| None).expect("the installed config is valid");
    let key = parsed.crowdsec.api_key.as_ref().map(|k| k.expose());
    assert_eq!(key, Some(FAKE_KEY));
    let url = parsed.crowdsec.api_url.to_string();
    assert!(url.contains(&format!(":{FAKE_LAPI_PORT}/")), "{url}");
    let name = fs::read_to_string(host.id_file()).expect(".id file");
    let name = name.trim();
    assert_eq!(mode(&host.id_file()), 0o600);
    let suffix = name.strip_prefix(&format!("{NAME}-")).expect("name prefix");
    assert!(suffix.chars().all(|c| c.is_ascii_digit()), "{name}");
    let add = format!("-oraw bouncers add {name}");
    assert_eq!(host.cscli_calls().iter().filter(|c| **c == add).count(), 1);

    // Again: the config and the registration stay as they are.
    host.run("install.sh", &[BIN], Cscli::Fake);
    assert_eq!(fs::read_to_string(&cfg).expect("config"), written);
    let adds = |host: &Host| {
        host.cscli_calls()
            .iter()
            .filter(|c| c.contains("bouncers add"))
            .count()
    };
    assert_eq!(adds(&host), 1, "{:?}", host.cscli_calls());

    // Uninstall: the bouncer is deleted, the config kept with the dead key taken out.
    host.run("uninstall.sh", &[], Cscli::Fake);
    assert!(host
        .cscli_calls()
        .contains(&format!("bouncers delete {name}")));
    assert!(!installed.exists() && !unit.exists());
    assert!(!host.id_file().exists());
    assert_eq!(mode(&cfg), 0o600);
    let kept = fs::read_to_string(&cfg).expect("config kept");
    assert_eq!(kept, written.replace(&key_line, KEY_PLACEHOLDER));

    // So installing again registers a fresh bouncer; --purge removes everything.
    host.run("install.sh", &[BIN], Cscli::Fake);
    assert_eq!(adds(&host), 2, "{:?}", host.cscli_calls());
    host.run("uninstall.sh", &["--purge"], Cscli::Fake);
    let deletes = host
        .cscli_calls()
        .iter()
        .filter(|c| c.contains("bouncers delete"))
        .count();
    assert_eq!(deletes, 2, "{:?}", host.cscli_calls());
    assert!(!cfg.exists() && !host.id_file().exists());
}

#[test]
fn install_without_cscli_leaves_the_key_to_the_operator() {
    let host = Host::new();
    let out = host.run("install.sh", &[BIN], Cscli::Absent);
    assert!(out.contains("cscli bouncers add"), "{out}");
    let written = fs::read_to_string(host.config()).expect("config");
    assert_eq!(written, read("config.toml.example"));
    assert!(!host.id_file().exists());
    assert!(host.cscli_calls().is_empty());
}

#[test]
fn install_picks_the_unit_for_the_hosts_systemd() {
    let unit_path = format!("/etc/systemd/system/{NAME}.service");
    for (version, wanted) in [
        ("252", UNITS[0].0),
        ("250", UNITS[0].0),
        ("249", UNITS[1].0),
        ("247", UNITS[1].0),
        ("246", UNITS[2].0),
        ("245", UNITS[2].0),
    ] {
        let host = Host::new();
        let install = repo_file("scripts/install.sh");
        host.run_script(
            &install,
            &[BIN],
            Cscli::Absent,
            &[("SYSTEMD_VERSION", version)],
        );
        let installed = fs::read_to_string(host.path(&unit_path)).expect("unit");
        assert_eq!(installed, read(wanted), "systemd {version}");
    }
    // Older than 245: refused, nothing installed.
    let host = Host::new();
    let out = Command::new("bash")
        .arg(repo_file("scripts/install.sh"))
        .arg(BIN)
        .env("ROOT", host.root())
        .env("CSCLI", "")
        .env("SYSTEMD_VERSION", "241")
        .output()
        .expect("bash runs");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("245 or later"), "{}", text(&out));
    assert!(!host.path(&unit_path).exists() && !host.path(INSTALLED_BIN).exists());
}

#[test]
fn the_release_tarball_installs_from_its_own_tree() {
    let host = Host::new();
    // A small stand-in binary: the tarball's layout is under test, not the build.
    let bin = host.dir.path().join("bouncer-binary");
    fs::write(&bin, "#!/bin/sh\necho stand-in\n").expect("write");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Command::new("bash")
        .arg(repo_file("scripts/release-tarball.sh"))
        .arg(&bin)
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tarball = stdout.lines().last().expect("the tarball's path");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        tarball.ends_with(&format!(
            "{NAME}-{version}-{}.tar.gz",
            std::env::consts::ARCH
        )),
        "{tarball}"
    );
    let unpacked = host.dir.path().join("unpacked");
    fs::create_dir(&unpacked).expect("mkdir");
    let untar = Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(&unpacked)
        .output()
        .expect("tar runs");
    assert!(untar.status.success(), "{}", text(&untar));
    let top = unpacked.join(format!("{NAME}-{version}"));
    for file in [
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "config.toml.example",
    ] {
        assert_eq!(
            fs::read(top.join(file)).expect(file),
            fs::read(repo_file(file)).expect(file)
        );
    }
    // Its install.sh takes the binary and the units from the tarball's tree.
    host.run_script(
        &top.join("scripts/install.sh"),
        &[],
        Cscli::Fake,
        &[("SYSTEMD_VERSION", "247")],
    );
    assert_eq!(
        fs::read(host.path(INSTALLED_BIN)).expect("installed binary"),
        fs::read(&bin).expect("stand-in")
    );
    assert_eq!(mode(&host.path(INSTALLED_BIN)), 0o755);
    let unit = fs::read_to_string(host.path(&format!("/etc/systemd/system/{NAME}.service")));
    assert_eq!(unit.expect("unit"), read(UNITS[1].0));
    assert_eq!(mode(&host.config()), 0o600);
    assert!(fs::read_to_string(host.config())
        .expect("config")
        .contains(&format!("api_key = \"{FAKE_KEY}\"")));
    host.run_script(
        &top.join("scripts/uninstall.sh"),
        &["--purge"],
        Cscli::Fake,
        &[],
    );
    assert!(!host.path(INSTALLED_BIN).exists() && !host.config().exists());
}

const MANIFESTS: [&str; 2] = [
    "deploy/kubernetes/sidecar.yaml",
    "deploy/kubernetes/standalone.yaml",
];
const HELM_VALUES: &str = "deploy/kubernetes/helm-values.yaml";
/// Where the manifests mount the Secret's files.
const SECRETS_DIR: &str = "/var/run/secrets/crowdsec-cloudflare-iplist-bouncer";
const ADMIN_PORT: u16 = 60620;
/// The Kubernetes release the manifests are validated against: native sidecars
/// (`restartPolicy: Always` on an init container) are on by default from 1.29.
const KUBERNETES_VERSION: &str = "1.29.0";
const VALIDATOR_HINT: &str =
    "install it with `pip install kubernetes-validate` (scripts/test.sh does)";

/// The YAML documents of a file as JSON (PyYAML comes with kubernetes-validate).
fn yaml_documents(relative: &str) -> Vec<serde_json::Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
                  print(json.dumps(docs))";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(repo_file(relative))
        .output()
        .unwrap_or_else(|err| panic!("cannot run python3: {err}"));
    assert!(
        out.status.success(),
        "{relative} is not valid YAML (or no PyYAML: {VALIDATOR_HINT}):\n{}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

fn kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The bouncer's config embedded in a manifest's ConfigMap.
fn embedded_config(docs: &[serde_json::Value]) -> String {
    kind(docs, "ConfigMap")["data"][format!("{NAME}.toml")]
        .as_str()
        .expect("a ConfigMap with the config")
        .to_owned()
}

/// The Lease the Role grants, as NAMESPACE/NAME.
fn granted_lease(docs: &[serde_json::Value]) -> String {
    let role = kind(docs, "Role");
    let rules = role["rules"].as_array().expect("rules");
    let lease_rules: Vec<&serde_json::Value> = rules
        .iter()
        .filter(|r| r["apiGroups"] == serde_json::json!(["coordination.k8s.io"]))
        .filter(|r| r["resources"] == serde_json::json!(["leases"]))
        .collect();
    assert_eq!(
        lease_rules.len(),
        rules.len(),
        "the Role grants leases only"
    );
    let named: Vec<_> = lease_rules
        .iter()
        .filter(|r| !r["resourceNames"].is_null())
        .collect();
    assert_eq!(named.len(), 1, "{rules:?}");
    assert_eq!(named[0]["verbs"], serde_json::json!(["get", "update"]));
    let names = named[0]["resourceNames"].as_array().expect("names");
    assert_eq!(names.len(), 1, "one Lease");
    // create cannot be restricted by name; it is the only unnamed verb.
    let unnamed: Vec<_> = lease_rules
        .iter()
        .filter(|r| r["resourceNames"].is_null())
        .collect();
    assert_eq!(unnamed.len(), 1, "{rules:?}");
    assert_eq!(unnamed[0]["verbs"], serde_json::json!(["create"]));
    format!(
        "{}/{}",
        role["metadata"]["namespace"].as_str().expect("namespace"),
        names[0].as_str().expect("name")
    )
}

#[test]
fn manifests_configure_the_bouncer_validly() {
    for manifest in MANIFESTS {
        let docs = yaml_documents(manifest);
        let table: toml::Table = embedded_config(&docs).parse().expect("TOML");
        let listen = table["admin"]["listen"].as_str().expect("admin.listen");
        assert_eq!(
            listen,
            format!("0.0.0.0:{ADMIN_PORT}"),
            "{manifest}: the kubelet probes the pod IP"
        );
        for (section, secret) in [("crowdsec", "api_key"), ("cloudflare", "api_token")] {
            assert!(
                table[section].get(secret).is_none(),
                "{manifest}: secrets are files from the Secret"
            );
            let file = table[section][format!("{secret}_file")].as_str();
            assert!(
                file.is_some_and(|f| f.starts_with(SECRETS_DIR)),
                "{manifest}: {section}.{secret}_file under {SECRETS_DIR}"
            );
        }
        // [ha] (HA layout only), to the letter of its specification: the Lease is the one
        // the Role grants.
        let ha = table.get("ha").cloned();
        if manifest.ends_with("sidecar.yaml") {
            let ha = ha.expect("[ha] in the HA layout");
            assert_eq!(ha["lease"].as_str(), Some(granted_lease(&docs).as_str()));
            assert!(ha.get("identity").is_none(), "the identity is POD_NAME");
            for (key, value) in [
                ("lease_duration", "15s"),
                ("renew_deadline", "10s"),
                ("retry_period", "2s"),
            ] {
                assert_eq!(ha[key].as_str(), Some(value), "{manifest}: ha.{key}");
            }
        } else {
            assert!(
                ha.is_none(),
                "{manifest}: no Lease in the standalone layout"
            );
        }
        // The rest as the bouncer reads it, with the Secret's files in place.
        let secrets = tempfile::tempdir().expect("temp dir");
        for (file, value) in [("lapi-key", "k3y"), ("cloudflare-api-token", "t0ken")] {
            let path = secrets.path().join(file);
            fs::write(&path, value).expect("write");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let toml_text = toml::to_string(&table)
            .expect("TOML")
            .replace(SECRETS_DIR, secrets.path().to_str().expect("utf-8"));
        // The pod's environment: its IP in the LAPI URL, its name, the API server.
        let pod_url = |name: &str| match name {
            config::ENV_LAPI_URL if manifest.ends_with("sidecar.yaml") => {
                Some("http://10.244.1.7:8080/".to_owned())
            }
            "POD_NAME" => Some("crowdsec-lapi-7d9f-abcde".to_owned()),
            "KUBERNETES_SERVICE_HOST" => Some("10.96.0.1".to_owned()),
            "KUBERNETES_SERVICE_PORT" => Some("443".to_owned()),
            _ => None,
        };
        let config = Config::parse(&toml_text, &pod_url)
            .unwrap_or_else(|problems| panic!("{manifest}: {problems:#?}"));
        assert_eq!(config.admin.listen.map(|a| a.port()), Some(ADMIN_PORT));
        assert_eq!(
            config.crowdsec.api_key.as_ref().map(|k| k.expose()),
            Some("k3y")
        );
        assert_eq!(config.cloudflare.api_token.expose(), "t0ken");
        if manifest.ends_with("sidecar.yaml") {
            assert_eq!(config.crowdsec.api_url, "http://10.244.1.7:8080/");
            let ha = config.ha.as_ref().expect("high availability on");
            assert_eq!(ha.identity, "crowdsec-lapi-7d9f-abcde", "the pod's name");
            assert_eq!(ha.api_server, "https://10.96.0.1:443");
        } else {
            assert!(config.ha.is_none());
        }
    }
}

#[test]
fn manifests_pass_kubernetes_validate() {
    // The Helm values' sidecar, as the chart puts it into the LAPI pod.
    let values = &yaml_documents(HELM_VALUES)[0]["lapi"];
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "crowdsec-lapi", "namespace": "crowdsec"},
        "spec": {
            "initContainers": values["extraInitContainers"],
            "containers": [{"name": "crowdsec-lapi", "image": "crowdsecurity/crowdsec", "env": values["env"]}],
            "volumes": values["extraVolumes"],
        },
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let helm_pod = dir.path().join("helm-values-pod.json");
    fs::write(&helm_pod, pod.to_string()).expect("write");
    let mut files: Vec<PathBuf> = MANIFESTS.iter().map(|m| repo_file(m)).collect();
    files.push(helm_pod);
    let out = match Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .args(&files)
        .output()
    {
        Ok(out) => out,
        Err(err) => panic!("cannot run kubernetes-validate ({err}): {VALIDATOR_HINT}"),
    };
    assert!(
        out.status.success() && !text(&out).contains("ERROR"),
        "kubernetes-validate ({}):\n{}",
        out.status,
        text(&out)
    );
}

/// The bouncer container of a pod spec: in the containers, or a native sidecar.
fn bouncer_in(pod: &serde_json::Value) -> &serde_json::Value {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|list| pod[*list].as_array())
        .flatten()
        .find(|c| c["image"].as_str().is_some_and(|i| i.contains(NAME)))
        .expect("the bouncer container")
}

fn assert_hardened(manifest: &str, container: &serde_json::Value, pod: &serde_json::Value) {
    let ctx = &container["securityContext"];
    let either = |key: &str| {
        if ctx[key].is_null() {
            &pod["securityContext"][key]
        } else {
            &ctx[key]
        }
    };
    assert_eq!(either("runAsNonRoot"), true, "{manifest}");
    assert_eq!(
        either("seccompProfile")["type"],
        "RuntimeDefault",
        "{manifest}"
    );
    assert_eq!(ctx["readOnlyRootFilesystem"], true, "{manifest}");
    assert_eq!(ctx["allowPrivilegeEscalation"], false, "{manifest}");
    assert_eq!(
        ctx["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{manifest}"
    );
    let resources = &container["resources"];
    assert!(resources["requests"]["memory"].is_string(), "{manifest}");
    assert!(resources["limits"]["memory"].is_string(), "{manifest}");
}

/// The env entries of a container by name, in order.
fn env_of(container: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    container["env"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|e| (e["name"].as_str().unwrap_or("").to_owned(), e.clone()))
        .collect()
}

/// The sidecar's own LAPI address: POD_IP from the downward API, then CROWDSEC_API_URL
/// built from it (Kubernetes expands `$(VAR)` of earlier entries only), and POD_NAME.
fn assert_reaches_lapi_by_pod_ip(what: &str, bouncer: &serde_json::Value) {
    let env = env_of(bouncer);
    let at = |name: &str| {
        env.iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{what}: env {name}"))
    };
    let field = |name: &str| env[at(name)].1["valueFrom"]["fieldRef"]["fieldPath"].clone();
    assert_eq!(field("POD_IP"), "status.podIP", "{what}");
    assert_eq!(field("POD_NAME"), "metadata.name", "{what}");
    assert!(at("POD_IP") < at(config::ENV_LAPI_URL), "{what}: order");
    assert_eq!(
        env[at(config::ENV_LAPI_URL)].1["value"],
        "http://$(POD_IP):8080/",
        "{what}"
    );
    for secret in [config::ENV_LAPI_KEY, config::ENV_CF_TOKEN] {
        assert!(
            env.iter().all(|(n, _)| n != secret),
            "{what}: secrets are files, not {secret}"
        );
    }
    assert_eq!(
        bouncer["restartPolicy"], "Always",
        "{what}: a native sidecar"
    );
    assert!(
        bouncer["readinessProbe"].is_null(),
        "{what}: a sidecar's readiness would be LAPI's"
    );
}

/// The Secret behind the files the bouncer reads, and its key holding the LAPI key.
fn mounted_secret(pod: &serde_json::Value, bouncer: &serde_json::Value) -> String {
    let mount = bouncer["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == SECRETS_DIR)
        .expect("the Secret's mount");
    assert_eq!(mount["readOnly"], true);
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    volume["secret"]["secretName"]
        .as_str()
        .expect("a Secret volume")
        .to_owned()
}

/// The NetworkPolicy of these pods lets only selected peers reach the admin port.
fn assert_admin_port_fenced(
    manifest: &str,
    docs: &[serde_json::Value],
    pod_labels: &serde_json::Value,
) {
    let policy = kind(docs, "NetworkPolicy");
    assert_eq!(
        &policy["spec"]["podSelector"]["matchLabels"], pod_labels,
        "{manifest}"
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    let rules = policy["spec"]["ingress"].as_array().expect("ingress rules");
    let admin: Vec<_> = rules
        .iter()
        .filter(|r| {
            r["ports"]
                .as_array()
                .is_none_or(|ports| ports.iter().any(|p| p["port"] == ADMIN_PORT))
        })
        .collect();
    assert_eq!(admin.len(), 1, "{manifest}: one rule opens the admin port");
    let from = admin[0]["from"].as_array().expect("from");
    assert!(
        !from.is_empty() && from.iter().all(|peer| peer["podSelector"].is_object()),
        "{manifest}: only selected pods reach the admin port: {from:?}"
    );
}

#[test]
fn manifests_probe_harden_and_share_the_key() {
    for manifest in MANIFESTS {
        let docs = yaml_documents(manifest);
        let workload = if manifest.ends_with("sidecar.yaml") {
            kind(&docs, "Deployment")
        } else {
            kind(&docs, "StatefulSet")
        };
        let pod = &workload["spec"]["template"]["spec"];
        let bouncer = bouncer_in(pod);
        let probe = |kind: &str| bouncer[kind]["httpGet"]["path"].clone();
        assert_eq!(probe("livenessProbe"), "/healthz", "{manifest}");
        assert_eq!(
            bouncer["ports"][0]["containerPort"], ADMIN_PORT,
            "{manifest}"
        );
        assert_eq!(bouncer["livenessProbe"]["httpGet"]["port"], "admin");
        assert_hardened(manifest, bouncer, pod);
        let secret = mounted_secret(pod, bouncer);
        let labels = &workload["spec"]["template"]["metadata"]["labels"];
        assert_admin_port_fenced(manifest, &docs, labels);
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace");
        assert!(grace > 10, "{manifest}: above sync.shutdown_grace");
        if manifest.ends_with("sidecar.yaml") {
            // Three LAPI replicas, a sidecar each, all allowed to use the Lease.
            assert_eq!(workload["spec"]["replicas"], 3, "{manifest}");
            assert!(pod["containers"]
                .as_array()
                .expect("containers")
                .iter()
                .all(|c| !c["image"].as_str().unwrap_or("").contains(NAME)));
            assert_reaches_lapi_by_pod_ip(manifest, bouncer);
            let binding = kind(&docs, "RoleBinding");
            assert_eq!(
                binding["roleRef"]["name"],
                kind(&docs, "Role")["metadata"]["name"]
            );
            assert_eq!(
                binding["subjects"][0]["name"], pod["serviceAccountName"],
                "{manifest}: the pods' ServiceAccount may use the Lease"
            );
            assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
            // LAPI registers the key the bouncer reads from its file.
            let lapi = pod["containers"]
                .as_array()
                .expect("containers")
                .iter()
                .find(|c| {
                    c["image"]
                        .as_str()
                        .is_some_and(|i| i.contains("crowdsecurity/crowdsec"))
                })
                .expect("the crowdsec container");
            let registered = env_of(lapi)
                .into_iter()
                .find(|(n, _)| n == "BOUNCER_KEY_cloudflare_iplist")
                .expect("BOUNCER_KEY_cloudflare_iplist")
                .1;
            let key_ref = &registered["valueFrom"]["secretKeyRef"];
            assert_eq!(key_ref["name"], secret.as_str());
            let key_file = format!("{SECRETS_DIR}/{}", key_ref["key"].as_str().expect("key"));
            assert!(
                embedded_config(&docs).contains(&format!("api_key_file = \"{key_file}\"")),
                "{manifest}: the bouncer reads {key_file}"
            );
        } else {
            // At most one pod, even under eviction or node loss: a StatefulSet of one.
            assert!(docs.iter().all(|d| d["kind"] != "Deployment"), "{manifest}");
            assert_eq!(workload["spec"]["replicas"], 1, "{manifest}");
            assert_eq!(probe("readinessProbe"), "/readyz", "{manifest}");
            assert_eq!(pod["automountServiceAccountToken"], false);
        }
    }
}

#[test]
fn the_helm_values_run_the_same_sidecar() {
    let values = &yaml_documents(HELM_VALUES)[0]["lapi"];
    assert_eq!(values["replicas"], 3);
    let pod = serde_json::json!({
        "initContainers": values["extraInitContainers"],
        "volumes": values["extraVolumes"],
    });
    let bouncer = bouncer_in(&pod);
    assert_reaches_lapi_by_pod_ip(HELM_VALUES, bouncer);
    assert_hardened(HELM_VALUES, bouncer, &pod);
    let secret = mounted_secret(&pod, bouncer);
    let registered = values["env"]
        .as_array()
        .expect("lapi.env")
        .iter()
        .find(|e| e["name"] == "BOUNCER_KEY_cloudflare_iplist")
        .expect("BOUNCER_KEY_cloudflare_iplist");
    assert_eq!(
        registered["valueFrom"]["secretKeyRef"]["name"],
        secret.as_str()
    );
    // The same container as the raw manifest's, but for the secret files' mode.
    let sidecar = yaml_documents(MANIFESTS[0]);
    let raw = bouncer_in(&kind(&sidecar, "Deployment")["spec"]["template"]["spec"]);
    for key in [
        "args",
        "env",
        "ports",
        "securityContext",
        "resources",
        "volumeMounts",
    ] {
        assert_eq!(bouncer[key], raw[key], "{HELM_VALUES}: {key}");
    }
}
