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

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --locked --all-targets -- -D warnings

step "cargo test"
cargo test --locked

step "demo smoke test (scripts/demo.sh)"
bash scripts/demo.sh >target/demo.log 2>&1 || { cat target/demo.log; exit 1; }
tail -n 1 target/demo.log
