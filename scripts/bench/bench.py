#!/usr/bin/env python3
"""Benchmark driver behind scripts/bench.sh (which installs crowdsec and builds first).

Usage: bench.py [SCENARIO ...] [--op-latency-ms MIN..MAX] [--keep]
Scenarios: latency burst cold100k cold100k_sized once100k restart100k pacing million
million_v6 lists accounts predecessor micro (default: all).
Writes BENCHMARKS.json and BENCHMARKS.md at the repository root; a partial run replaces
only the rows of the scenarios it ran. Exit 0 when every selected scenario ran (whether
or not it met its targets), 1 when one broke, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import lanes  # noqa: E402
import scenarios as sc  # noqa: E402
from harness import REPO, log  # noqa: E402

ORDER = ["latency", "burst", "cold100k", "cold100k_sized", "once100k", "restart100k", "pacing",
         "million", "million_v6", "lists", "accounts", "predecessor", "micro"]
TITLES = {
    "latency": "1. latency",
    "burst": "2. burst",
    "cold100k": "3. cold100k",
    "cold100k_sized": "3b. cold100k_sized",
    "once100k": "3c. once100k",
    "restart100k": "4. restart100k",
    "pacing": "4b. pacing",
    "million": "5. million",
    "million_v6": "5b. million_v6",
    "lists": "7. lists",
    "accounts": "8. accounts",
    "predecessor": "6. predecessor",
    "micro": "micro",
}
PROFILES_NOTE = (Path(__file__).resolve().parent / "profiles.md").read_text()
JSON_PATH = REPO / "BENCHMARKS.json"
MD_PATH = REPO / "BENCHMARKS.md"


def machine() -> dict:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True,
                               cwd=REPO).stdout.strip()
    except OSError:
        rustc = "rustc ?"
    load = os.getloadavg()
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(), "rustc": rustc,
            "load_at_start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"}


def machine_line(m: dict) -> str:
    return f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, {m['rustc']}"


def load_previous() -> dict:
    try:
        return json.loads(JSON_PATH.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def render_md(doc: dict) -> str:
    machines: list[str] = []
    lines = [
        "# Benchmarks",
        "",
        "Produced by `scripts/bench.sh` (all scenarios, about 25 minutes on a 2-core machine) or",
        "`scripts/bench.sh SCENARIO...` (only those rows are replaced). Scenarios: `latency`, `burst`,",
        "`cold100k`, `cold100k_sized`, `once100k`, `restart100k`, `pacing`, `million`, `million_v6`, `lists`, `accounts`,",
        "`predecessor`, `micro`. It builds in release mode, runs a real LAPI (Debian's crowdsec,",
        "API-only, SQLite in a temp dir) and `cf-lists-emulator` (bulk operations take",
        "`--op-latency-ms`, default `300..1200`: uniformly 0.3–1.2 s, plus `--op-item-cost-us` per",
        "item where a scenario says so), and drives the bouncer with `update_frequency = \"1s\"` in",
        "every scenario (default 10s). Targets are reported, never enforced: the script fails only",
        "when something broke. The machine has 2 cores, shared with other builds while this ran:",
        "CPU time (user+sys of the process) is the honest measure of the bouncer's work under such",
        "load; wall times include the waits the scenarios are made of. One run's CPU moves by",
        "±15% here, so `cold100k` and `restart100k` run three times and report the median",
        "CPU and wall time and the highest peak RSS (each run's figure in the notes); the first",
        "cold start after LAPI's own start is usually the highest.",
        "The same numbers, machine-readable: [`BENCHMARKS.json`](BENCHMARKS.json).",
        "",
        "| scenario | figure | target | result | met | machine |",
        "|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for name in ORDER:
        rec = doc.get("scenarios", {}).get(name)
        if not rec:
            continue
        mline = machine_line(rec["machine"])
        if mline not in machines:
            machines.append(mline)
        mref = f"M{machines.index(mline) + 1}, {rec['ran_at'][:16].replace('T', ' ')}"
        if rec.get("error"):
            lines.append(f"| {TITLES[name]} | **did not complete** | | {esc(rec['error'])} | | {mref} |")
            continue
        for r in rec["rows"]:
            met = {True: "yes", False: "**no**", None: ""}[r["met"]]
            lines.append(f"| {TITLES[name]} | {esc(r['figure'])} | {esc(r['target'])} | "
                         f"{esc(r['result'])} | {met} | {mref} |")
            if r.get("notes"):
                notes.append(f"- **{TITLES[name]}**, {r['figure']}: {r['notes']}")
        settings = ", ".join(f"{k} {v}" for k, v in rec.get("settings", {}).items())
        notes.append(f"- **{TITLES[name]}** settings: {settings or 'n/a'}; took "
                     f"{rec.get('duration_s', '?')} s; load average at the run's start "
                     f"{rec['machine'].get('load_at_start', '?')}")
    lines += ["", "## Notes", ""] + notes
    lines += ["", PROFILES_NOTE.strip()]
    lines += ["", "## Machines", ""]
    lines += [f"- M{i + 1}: {m}" for i, m in enumerate(machines)]
    total = doc.get("last_run", {})
    if total:
        lines += ["", f"Last run: `{total.get('command')}`, {total.get('seconds')} s in all, "
                      f"finished {total.get('finished')}."]
    return "\n".join(lines) + "\n"


def clean(obj):
    """JSON-safe and readable: floats rounded, infinities (never happened) as null."""
    if isinstance(obj, float):
        return None if obj != obj or obj in (float("inf"), float("-inf")) else round(obj, 4)
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def esc(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def main() -> int:
    ap = argparse.ArgumentParser(description="Benchmarks of the bouncer (see BENCHMARKS.md)")
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                    help=f"any of {', '.join(ORDER)}; default all")
    ap.add_argument("--op-latency-ms", default="300..1200",
                    help="emulator bulk-operation latency MIN..MAX (default 300..1200)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, DBs)")
    args = ap.parse_args()
    selected = set(args.scenarios or ORDER)
    unknown = selected - set(ORDER)
    if unknown:
        ap.error(f"unknown scenario(s): {', '.join(sorted(unknown))}; known: {', '.join(ORDER)}")
    if not re.fullmatch(r"\d+\.\.\d+", args.op_latency_ms):
        ap.error("--op-latency-ms must be MIN..MAX in milliseconds")
    for binary in (harness.BOUNCER_BIN, harness.EMULATOR_BIN, harness.CROWDSEC_BIN / "crowdsec"):
        if not binary.exists():
            log(f"missing {binary}: run scripts/bench.sh (it installs crowdsec and builds)")
            return 1

    work = Path(tempfile.mkdtemp(prefix="cfbouncer-bench-"))
    atexit.register(harness.stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(130))
    started = time.monotonic()
    # bench.sh exports its start, so the total counts the build too.
    t_started = float(os.environ.get("BENCH_STARTED", time.time()))
    previous = load_previous()
    ctx = sc.Context(work, selected, args.op_latency_ms, previous.get("scenarios", {}))
    log(f"scenarios: {' '.join(n for n in ORDER if n in selected)}; work dir {work}")
    mach = machine()
    stamps: dict[str, str] = {}
    try:
        if "micro" in selected:
            sc.run_scenario(ctx, "micro", lambda: sc.micro(ctx))
        sc.group_a(ctx)
        sc.group_b(ctx)
        sc.group_c(ctx)
        for name, fn in (("lists", lanes.lists), ("accounts", lanes.accounts)):
            if name in selected:
                sc.run_scenario(ctx, name, lambda fn=fn: fn(ctx))
        if "predecessor" in selected:
            rec = sc.predecessor_record(ctx)
            if rec is not None:
                ctx.results["predecessor"] = rec
    finally:
        harness.stop_all()
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    doc = previous if isinstance(previous.get("scenarios"), dict) else {"scenarios": {}}
    doc["schema"] = 1
    for name in ORDER:
        if name not in selected:
            continue
        rec = ctx.results.get(name)
        if rec is None:
            rec = {"error": ctx.errors.get(name, "did not run"), "rows": [], "values": {}}
        rec["machine"] = mach
        rec["ran_at"] = now
        doc["scenarios"][name] = rec
        stamps[name] = now
    seconds = round(time.time() - t_started)
    doc["last_run"] = {"command": "scripts/bench.sh " + " ".join(args.scenarios or []),
                       "seconds": seconds, "finished": now,
                       "op_latency_ms": args.op_latency_ms}
    doc["last_run"]["command"] = doc["last_run"]["command"].strip()
    doc["scenarios"] = {n: doc["scenarios"][n] for n in ORDER if n in doc["scenarios"]}
    JSON_PATH.write_text(json.dumps(clean(doc), indent=2, ensure_ascii=False) + "\n")
    MD_PATH.write_text(render_md(doc))
    log(f"wrote {MD_PATH.name} and {JSON_PATH.name} ({seconds} s)")
    for name, err in ctx.errors.items():
        log(f"BROKE: {name}: {err}")
    if args.keep or ctx.errors:
        log(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(n in selected for n in ctx.errors) or ctx.errors else 0


if __name__ == "__main__":
    sys.exit(main())
