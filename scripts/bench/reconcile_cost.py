#!/usr/bin/env python3
"""What one reconcile costs LAPI and the bouncer, by where it reads LAPI's active decisions:
a `startup=true` stream pull, or `GET /v1/decisions` (docs/lapi.md §9.3).

A real LAPI holds 100 000 active and 100 000 expired decisions (seeded through SQLite). For
each endpoint, three reads with the bouncer's key: bytes, wall time and LAPI's CPU. Then the
release bouncer runs with capacity 1 (so the list read is one page and nothing but the pull
varies): its CPU for the start-up pull (a stream) and per reconcile (`GET /v1/decisions`).

    python3 scripts/bench/reconcile_cost.py        # after `cargo build --release --workspace`

Prints a Markdown table; nothing is written.
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

ACTIVE = 100_000
EXPIRED = 100_000


def timed_read(url: str, key: str, lapi_pid: int) -> tuple[int, float, float]:
    cpu0, t0 = h.proc_cpu_seconds(lapi_pid), time.monotonic()
    req = urllib.request.Request(url, headers={"X-Api-Key": key})
    with urllib.request.urlopen(req, timeout=300) as resp:
        size = len(resp.read())
    return size, time.monotonic() - t0, h.proc_cpu_seconds(lapi_pid) - cpu0


def print_reads(rows) -> None:
    print(f"LAPI with {ACTIVE:,} active and {EXPIRED:,} expired decisions (median of 3 reads):\n")
    print("| read | bytes | wall time | LAPI CPU |")
    print("|---|---|---|---|")
    for name, size, wall, cpu in rows:
        print(f"| {name} | {size / 1e6:.1f} MB | {wall:.2f} s | {cpu:.2f} s |", flush=True)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="reconcile-cost-"))
    lapi = h.Lapi(work, "lapi")
    lapi.start()
    try:
        active = h.ipv4_block("11.0.0.1", ACTIVE)
        expired = h.ipv4_block("12.0.0.1", EXPIRED)
        lapi.seed((v, "crowdsec", 4 * 3600) for v in active)
        lapi.seed(((v, "crowdsec", -3600) for v in expired), scenario="bench/expired")
        key = lapi.add_bouncer("reconcile-cost")
        rows = []
        for name, path in [
            ("stream `startup=true`", "/v1/decisions/stream?scopes=ip,range&startup=true"),
            ("`GET /v1/decisions`", "/v1/decisions"),
        ]:
            runs = [timed_read(lapi.url + path, key, lapi.proc.pid) for _ in range(3)]
            size = runs[-1][0]
            wall = statistics.median(r[1] for r in runs)
            cpu = statistics.median(r[2] for r in runs)
            rows.append((name, size, wall, cpu))

        print_reads(rows)
        emu = h.Emulator(work, "emulator", op_latency_ms="20..80", capacity=10_000)
        bouncer = h.Bouncer(work, "bouncer", lapi, emu, key=lapi.add_bouncer("rc-bouncer"),
                            update_frequency="2s", capacity=1, reconcile="6s")
        bouncer.start()
        try:
            log = bouncer.dir / "bouncer.log"
            full = re.compile(r"full pull from LAPI")

            def pulls() -> int:
                return len(full.findall(log.read_text(errors="replace"))) if log.exists() else 0

            h.wait_until("the start-up pull", lambda: pulls() >= 1, timeout=120,
                         last=lambda: bouncer.log_tail())
            time.sleep(1.0)
            start_cpu = bouncer.cpu()
            h.wait_until("three reconciles", lambda: pulls() >= 4, timeout=120,
                         last=lambda: bouncer.log_tail())
            # The deltas in between (27-byte answers) are included.
            per_reconcile = (bouncer.cpu() - start_cpu) / 3
        finally:
            bouncer.close()
            emu.close()
    finally:
        lapi.close()

    print(f"\nBouncer CPU: start-up (stream pull, process start included) {start_cpu:.2f} s; "
          f"per reconcile (`GET /v1/decisions`, 1-page list read) {per_reconcile:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
