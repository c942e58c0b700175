#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Debian's
# crowdsec binaries, unpacked under target/ without touching the system; kubernetes-validate
# in a venv under target/; cargo-deny, cargo-deb, podman when missing), then runs the
# format and lint checks, the supply-chain policy (cargo deny), every test (unit, real-LAPI
# integration, binary contract, packaging), the Debian package installed and purged for
# real, the container image run with podman, and the demo as a smoke test. CI runs exactly
# this (.ci/run). ADVISORY_DB=DIR adds `cargo audit` against that local advisory database.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

step() { printf '\n== %s\n' "$*"; }

step "install crowdsec (for a real LAPI in tests)"
bash scripts/install-crowdsec.sh

step "install systemd-analyze (for the unit's verification and security score)"
if ! command -v systemd-analyze >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd >/dev/null; }
    else
        echo "systemd-analyze is missing: run 'apt-get install systemd'" >&2
        exit 1
    fi
fi
systemd-analyze --version | head -n 1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "kubernetes-validate (for the manifests' validation), in target/k8s-venv"
venv="$repo/target/k8s-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
        python3 -m venv "$venv"
    }
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
export PATH="$venv/bin:$PATH"
kubernetes-validate --version

step "cargo deny check licenses bans sources"
if ! cargo deny --version >/dev/null 2>&1; then
    cargo install --locked --quiet cargo-deny@0.20.2
fi
cargo deny --locked check licenses bans sources

# Advisories need the RustSec database, which comes from the network: only with a local copy.
if [ -n "${ADVISORY_DB:-}" ]; then
    step "cargo audit against $ADVISORY_DB"
    if ! cargo audit --version >/dev/null 2>&1; then
        cargo install --locked --quiet cargo-audit
    fi
    cargo audit --no-fetch --db "$ADVISORY_DB"
fi

step "alert rules: promtool check rules + test rules (Debian's prometheus, unpacked under target/)"
bash scripts/install-prometheus.sh
target/prometheus/usr/bin/promtool check rules deploy/prometheus/alerts.yaml
target/prometheus/usr/bin/promtool test rules deploy/prometheus/alerts_test.yaml

step "cargo test --workspace"
cargo test --locked --workspace

step "Debian package: build (scripts/package-deb.sh), dpkg -i, -r, -P against a real LAPI"
if [ "$(id -u)" -eq 0 ] && [ ! -d /run/systemd/system ]; then
    deb="$(bash scripts/package-deb.sh)"
    CFBOUNCER_DEB="$deb" cargo test --locked --test deb
else
    echo "skipped: needs root and no running systemd (the package would start the service)"
fi

step "container image: built from the Dockerfile and run with podman"
container_base=localhost/cfbouncer-base:bookworm
podman_ok() {
    command -v podman >/dev/null && command -v mmdebstrap >/dev/null && command -v runc >/dev/null
}
if [ "$(id -u)" -eq 0 ] && ! podman_ok; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc mmdebstrap >/dev/null 2>&1 || true
fi
if podman_ok && ! podman --runtime runc image exists "$container_base"; then
    base_tar="$(mktemp --suffix=.tar)"
    # A minimal Debian 12 root (glibc, libgcc, CA certificates) stands in for the
    # distroless base, which no registry here serves.
    if mmdebstrap --quiet --variant=essential --include=ca-certificates --mode=root bookworm "$base_tar"; then
        podman --runtime runc import --quiet "$base_tar" "$container_base" >/dev/null || true
    fi
    rm -f "$base_tar"
fi
if podman_ok && podman --runtime runc run --rm --network host --read-only \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$container_base" true 2>/dev/null; then
    cargo build --release --locked --bin crowdsec-cloudflare-iplist-bouncer
    CFBOUNCER_CONTAINER_BASE="$container_base" \
        CFBOUNCER_RELEASE_BIN="$repo/target/release/crowdsec-cloudflare-iplist-bouncer" \
        cargo test --locked --test container
else
    echo "skipped: podman cannot run containers here (the Dockerfile's structure is still tested)"
fi

step "demo smoke test (scripts/demo.sh)"
bash scripts/demo.sh >target/demo.log 2>&1 || { cat target/demo.log; exit 1; }
tail -n 1 target/demo.log
