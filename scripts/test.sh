#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Debian's
# crowdsec binaries, unpacked under target/ without touching the system), then runs the
# format and lint checks, every test (unit, real-LAPI integration, binary contract), and
# the demo as a smoke test. CI runs exactly this (.ci/run).
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

step "alert rules: promtool check rules + test rules (Debian's prometheus, unpacked under target/)"
bash scripts/install-prometheus.sh
target/prometheus/usr/bin/promtool check rules deploy/prometheus/alerts.yaml
target/prometheus/usr/bin/promtool test rules deploy/prometheus/alerts_test.yaml

step "cargo test --workspace"
cargo test --locked --workspace

step "demo smoke test (scripts/demo.sh)"
bash scripts/demo.sh >target/demo.log 2>&1 || { cat target/demo.log; exit 1; }
tail -n 1 target/demo.log
