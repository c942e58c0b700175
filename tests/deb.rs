//! The Debian package, installed for real on this machine: `dpkg -i` with a real LAPI and
//! its cscli on the PATH (no systemd running, as in CI), the files and the registration
//! checked, then `dpkg -r` and `dpkg -P`.
//!
//! It installs into the system, so it runs only when `CFBOUNCER_DEB` names the package
//! (`scripts/test.sh` builds it with `scripts/package-deb.sh` and sets it), as root, with
//! the package not installed already.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use common::lapi::Lapi;

const NAME: &str = "crowdsec-cloudflare-iplist-bouncer";
const BIN: &str = "/usr/bin/crowdsec-cloudflare-iplist-bouncer";
const UNIT: &str = "/lib/systemd/system/crowdsec-cloudflare-iplist-bouncer.service";
const FALLBACKS: &str = "/usr/share/crowdsec-cloudflare-iplist-bouncer/systemd";
const CONFIG: &str = "/etc/crowdsec/bouncers/crowdsec-cloudflare-iplist-bouncer.toml";
const ID_FILE: &str = "/etc/crowdsec/bouncers/crowdsec-cloudflare-iplist-bouncer.toml.id";
const KEY_PLACEHOLDER: &str = "api_key = \"<LAPI bouncer key>\"";

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Runs `dpkg ARGS` with `path` as PATH; panics unless it succeeds.
fn dpkg(args: &[&str], path: &str) -> String {
    let out = Command::new("dpkg")
        .args(args)
        .env("PATH", path)
        .output()
        .expect("dpkg runs");
    assert!(out.status.success(), "dpkg {args:?}:\n{}", text(&out));
    text(&out)
}

fn installed() -> bool {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", NAME])
        .output()
        .expect("dpkg-query runs");
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "installed"
}

/// Purges the package even when the test fails half-way.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["-P", NAME]).output();
    }
}

/// The bouncer names LAPI has registered (`-o raw` is CSV, a header line first).
fn bouncers(lapi: &Lapi) -> Vec<String> {
    lapi.cscli_ok(&["bouncers", "list", "-o", "raw"])
        .lines()
        .skip(1)
        .filter_map(|line| line.split(',').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_package_installs_registers_and_purges_without_systemd() {
    let Some(deb) = std::env::var_os("CFBOUNCER_DEB") else {
        eprintln!("CFBOUNCER_DEB is not set: the package is not installed (scripts/test.sh does)");
        return;
    };
    let deb = deb.to_str().expect("utf-8 path").to_owned();
    assert_eq!(unsafe { libc::geteuid() }, 0, "dpkg -i needs root");
    assert!(
        !installed(),
        "{NAME} is installed already: dpkg -P it first"
    );
    assert!(
        !Path::new("/run/systemd/system").exists(),
        "this test expects no running systemd (the package would start the service)"
    );

    // cscli on the PATH, talking to the test's LAPI.
    let lapi = Lapi::start().await;
    let tools = tempfile::tempdir().expect("temp dir");
    let cscli = tools.path().join("cscli");
    fs::write(
        &cscli,
        format!(
            "#!/bin/sh\nexec '{}' -c '{}' \"$@\"\n",
            lapi.cscli_bin().display(),
            lapi.config_path().display()
        ),
    )
    .expect("write cscli");
    fs::set_permissions(&cscli, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        tools.path().display()
    );
    let before = bouncers(&lapi);

    let _purge = PurgeOnDrop;
    let out = dpkg(&["-i", &deb], &path);
    assert!(out.contains("registered bouncer"), "{out}");
    assert!(out.contains("not started"), "{out}");

    // The binary, the units, the conffile.
    let meta = fs::metadata(BIN).expect("the binary");
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    let version = Command::new(BIN).arg("--version").output().expect("runs");
    assert!(
        text(&version).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        text(&version)
    );
    let unit = fs::read_to_string(UNIT).expect("the unit");
    let usr_bin = |unit: String| unit.replace(&format!("/usr/local/bin/{NAME}"), BIN);
    assert_eq!(unit, usr_bin(repo_file(&format!("systemd/{NAME}.service"))));
    for v in ["247", "245"] {
        let fallback = format!("{FALLBACKS}/systemd-{v}/{NAME}.service");
        let shipped = repo_file(&format!("systemd/fallback/systemd-{v}/{NAME}.service"));
        assert_eq!(
            fs::read_to_string(&fallback).expect(&fallback),
            usr_bin(shipped)
        );
    }
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no", UNIT])
        .output()
        .expect("systemd-analyze runs");
    let complaints: Vec<String> = text(&verify)
        .lines()
        .filter(|l| l.contains(&format!("{NAME}.service")))
        .map(str::to_owned)
        .collect();
    assert!(
        verify.status.success() && complaints.is_empty(),
        "{}",
        text(&verify)
    );
    assert!(
        !Path::new(&format!(
            "/etc/systemd/system/multi-user.target.wants/{NAME}.service"
        ))
        .exists(),
        "a service without a Cloudflare token must not be enabled"
    );
    let conffiles = Command::new("dpkg-query")
        .args(["-W", "-f=${Conffiles}", NAME])
        .output()
        .expect("dpkg-query runs");
    assert!(text(&conffiles).contains(CONFIG), "{}", text(&conffiles));
    let meta = fs::metadata(CONFIG).expect("the configuration");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    // The registration: a new bouncer whose key is in the configuration and works, and
    // LAPI's port taken from cscli.
    let name = fs::read_to_string(ID_FILE).expect("the .id file");
    let name = name.trim().to_owned();
    assert!(name.starts_with(&format!("{NAME}-")), "{name}");
    let registered = bouncers(&lapi);
    assert!(
        registered.contains(&name) && !before.contains(&name),
        "{registered:?}"
    );
    let written = fs::read_to_string(CONFIG).expect("the configuration");
    assert!(!written.contains(KEY_PLACEHOLDER), "the key is written in");
    let parsed: toml::Table = written.parse().expect("TOML");
    let key = parsed["crowdsec"]["api_key"]
        .as_str()
        .expect("api_key")
        .to_owned();
    let url = parsed["crowdsec"]["api_url"].as_str().expect("api_url");
    assert_eq!(url, lapi.url(), "LAPI's port, from cscli config show");
    let (status, body) = lapi
        .bouncer_get("v1/decisions/stream?startup=true", Some(&key))
        .await;
    assert_eq!(status, 200, "{body}");

    // Remove: the program goes, the configuration and its registration stay.
    dpkg(&["-r", NAME], &path);
    assert!(!Path::new(BIN).exists() && !Path::new(UNIT).exists());
    assert!(!Path::new(FALLBACKS).exists());
    assert_eq!(fs::read_to_string(CONFIG).expect("kept"), written);
    assert!(bouncers(&lapi).contains(&name));

    // Purge: the registration and the configuration go too.
    dpkg(&["-P", NAME], &path);
    assert!(!Path::new(CONFIG).exists() && !Path::new(ID_FILE).exists());
    assert!(!bouncers(&lapi).contains(&name), "{:?}", bouncers(&lapi));
    let (status, _) = lapi
        .bouncer_get("v1/decisions/stream?startup=true", Some(&key))
        .await;
    assert_eq!(status, 403, "the deleted key is refused");
    assert!(!installed());
}
