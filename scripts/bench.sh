#!/usr/bin/env bash
# Benchmarks: builds in release mode, then runs a real CrowdSec LAPI (Debian's crowdsec,
# API-only, in a temp dir), the Cloudflare Lists API emulator and the bouncer through the
# scenarios below, and writes BENCHMARKS.md and BENCHMARKS.json at the repository root.
#
# Usage: scripts/bench.sh [SCENARIO...] [--op-latency-ms MIN..MAX] [--keep]
#   SCENARIO: latency burst cold100k cold100k_sized once100k restart100k pacing million
#             million_v6 lists accounts predecessor micro (default: all;
#             a partial run replaces only those scenarios' rows)
#   --op-latency-ms: emulator bulk-operation latency (default 300..1200)
#   --keep: keep the temp dir with every log and database
#   BENCH_WRAP: a command the bouncer runs under, e.g. BENCH_WRAP="heaptrack -o /tmp/b" or
#               "perf record -e cpu-clock -o /tmp/b.data" (its CPU and RSS are then the
#               profiler's: for profiles, not for figures)
#
# Targets are reported, never enforced: exit 0 when the scenarios ran, 1 when something
# broke (e.g. a list never converged). Progress goes to stderr. All of it takes under
# 15 minutes on a 2-core machine. Python 3.11 standard library only.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export BENCH_STARTED="$(date +%s)"

for arg in "$@"; do
    case "$arg" in -h | --help) exec python3 scripts/bench/bench.py --help ;; esac
done

echo "[bench] installing crowdsec binaries (unpacked under target/) and building in release mode" >&2
bash scripts/install-crowdsec.sh >&2
cargo build --release --locked --workspace --bins --examples >&2

exec python3 scripts/bench/bench.py "$@"
