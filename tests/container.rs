//! The container image, built from the project's Dockerfile and run for real with podman:
//! a mounted configuration, uid 65532, a read-only root, `/healthz`, and a ban reaching the
//! (emulated) Cloudflare list from a real LAPI.
//!
//! No image registry can be reached here, so both base images are stand-ins passed as the
//! Dockerfile's build arguments: the runtime is a minimal Debian 12 root (glibc, libgcc,
//! CA certificates; what distroless `cc-debian12` carries, plus a shell) bootstrapped from
//! Debian's packages, not the published distroless image; the builder is that root with
//! the host-built release binary already where `cargo build --release` leaves it, and a
//! `cargo` that only checks it is called as the Dockerfile calls it. So this tests the
//! Dockerfile's final stage and the image's behaviour, not the Rust build inside it.
//!
//! Runs only when `CFBOUNCER_CONTAINER_BASE` names the local base image and
//! `CFBOUNCER_RELEASE_BIN` the release binary (`scripts/test.sh` sets both when podman
//! works on the machine).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::hostile::{free_port, get};
use common::lapi::NewDecision;
use common::world::World;

const NAME: &str = "crowdsec-cloudflare-iplist-bouncer";
const CONFIG_IN_IMAGE: &str = "/etc/crowdsec/bouncers/crowdsec-cloudflare-iplist-bouncer.toml";
const BUILDER_IMAGE: &str = "localhost/cfbouncer-test-builder";
const IMAGE: &str = "localhost/cfbouncer-test-image";
const CONTAINER: &str = "cfbouncer-test";
/// On the stand-in builder, so the build stage it leaves behind can be found and removed.
const TEST_LABEL: &str = "cfbouncer-test=1";
const TEST_LABEL_FILTER: &str = "label=cfbouncer-test=1";
/// How podman runs here (docs of the test machine): runc, as crun refuses this cgroup
/// setup, and explicit ulimits, as raising them is denied.
const RUNTIME: [&str; 2] = ["--runtime", "runc"];
const LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

const STAND_IN_CARGO: &str = "#!/bin/sh\n\
# Stand-in for the Rust image's cargo: the binary was built on the host and put where\n\
# `cargo build --release` leaves it. Only the Dockerfile's own call is accepted.\n\
[ \"$*\" = \"build --release --locked --bin crowdsec-cloudflare-iplist-bouncer\" ] || \
{ echo \"stand-in cargo: unexpected arguments: $*\" >&2; exit 1; }\n\
test -x /src/target/release/crowdsec-cloudflare-iplist-bouncer\n";

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `podman --runtime runc ARGS`; panics unless it succeeds; returns stdout.
fn podman(args: &[&str]) -> String {
    let out = Command::new("podman")
        .args(RUNTIME)
        .args(args)
        .output()
        .expect("podman runs");
    assert!(out.status.success(), "podman {args:?}:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the container and the test images, even when the test fails.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        // The Dockerfile's build stage is left as an unnamed image carrying the stand-in
        // builder's label.
        for args in [
            &["rm", "-f", CONTAINER][..],
            &["rmi", "-f", IMAGE, BUILDER_IMAGE][..],
            &["image", "prune", "-f", "--filter", TEST_LABEL_FILTER][..],
        ] {
            let _ = Command::new("podman").args(RUNTIME).args(args).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_runs_unprivileged_on_a_read_only_root_and_syncs() {
    let (Some(base), Some(bin)) = (
        std::env::var_os("CFBOUNCER_CONTAINER_BASE"),
        std::env::var_os("CFBOUNCER_RELEASE_BIN"),
    ) else {
        eprintln!(
            "CFBOUNCER_CONTAINER_BASE / CFBOUNCER_RELEASE_BIN unset: no image built \
             (scripts/test.sh sets them when podman works)"
        );
        return;
    };
    let base = base.to_str().expect("utf-8").to_owned();
    let _cleanup = Cleanup;

    // The stand-in builder.
    let context = tempfile::tempdir().expect("temp dir");
    fs::copy(&bin, context.path().join("bouncer")).expect("copy the binary");
    fs::write(context.path().join("cargo"), STAND_IN_CARGO).expect("write cargo");
    fs::set_permissions(
        context.path().join("cargo"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    fs::write(
        context.path().join("Containerfile"),
        format!(
            "FROM {base}\nLABEL {TEST_LABEL}\nCOPY bouncer /src/target/release/{NAME}\nCOPY cargo /usr/local/bin/cargo\n"
        ),
    )
    .expect("write Containerfile");
    let ctx = context.path().to_str().expect("utf-8");
    let mut build = vec!["build", "--network", "host"];
    build.extend(LIMITS);
    podman(&[&build[..], &["-t", BUILDER_IMAGE, ctx]].concat());

    // The project's Dockerfile, on the stand-ins.
    let repo = env!("CARGO_MANIFEST_DIR");
    let dockerfile = format!("{repo}/Dockerfile");
    let builder_arg = format!("BUILD_IMAGE={BUILDER_IMAGE}");
    let runtime_arg = format!("RUNTIME_IMAGE={base}");
    podman(
        &[
            &build[..],
            &["--build-arg", &builder_arg, "--build-arg", &runtime_arg],
            &["-f", &dockerfile, "-t", IMAGE, repo],
        ]
        .concat(),
    );
    let user = podman(&["image", "inspect", "-f", "{{.Config.User}}", IMAGE]);
    assert_eq!(user, "65532:65532");

    // A real LAPI and the emulator; the configuration mounted read-only, owned by the
    // image's user and private, as the README says.
    let mut world = World::start("container").await;
    let admin_port = free_port();
    world.admin_listen = format!("127.0.0.1:{admin_port}");
    let config_dir = tempfile::tempdir().expect("temp dir");
    let config = config_dir.path().join("bouncer.toml");
    fs::write(&config, world.config_text()).expect("write config");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&config, Some(65532), Some(65532)).expect("chown");
    let mount = format!("{}:{CONFIG_IN_IMAGE}:ro", config.display());
    let mut run = vec!["run", "-d", "--name", CONTAINER, "--network", "host"];
    run.extend(LIMITS);
    run.extend(["--read-only", "-v", &mount, IMAGE]);
    podman(&run);

    let healthz = format!("http://127.0.0.1:{admin_port}/healthz");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = get(&healthz).await;
    while last.0 != 200 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = get(&healthz).await;
    }
    let up = last.0 == 200;
    let logs = || podman(&["logs", CONTAINER]);
    assert!(
        up,
        "/healthz never answered 200 (last {last:?}); logs:\n{}",
        logs()
    );

    // uid 65532 and a read-only root, seen from the host.
    let pid = podman(&["inspect", "-f", "{{.State.Pid}}", CONTAINER]);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let uids = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    assert_eq!(
        uids.split_whitespace().collect::<Vec<_>>(),
        ["65532"; 4],
        "{uids}"
    );
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("the root mount");
    let options = root.split_whitespace().nth(5).unwrap_or("");
    assert!(
        options.split(',').any(|o| o == "ro"),
        "root mounted {options}"
    );

    // And it does its job from inside the container.
    world
        .lapi
        .add_decisions(&[NewDecision::ban_ip("192.0.2.77")])
        .await;
    world.expect_list(&["192.0.2.77"]).await;
    let out = Command::new("podman")
        .args(RUNTIME)
        .args(["stop", "-t", "20", CONTAINER])
        .output()
        .expect("podman runs");
    assert!(out.status.success(), "{}", text(&out));
    let exit = podman(&["inspect", "-f", "{{.State.ExitCode}}", CONTAINER]);
    assert_eq!(exit, "0", "a requested stop exits 0; logs:\n{}", logs());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    world.lapi.stop().await;
}
