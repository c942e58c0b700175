"""The benchmark scenarios. Each group shares one LAPI and one emulator:

  A: latency, burst, and the predecessor's latency and burst runs
  B: cold100k, restart100k, and the predecessor's cold run
  C: million
  micro: the Criterion benches

Each scenario returns a record {"rows": [...], "values": {...}, "settings": {...}};
a row is {"figure", "target", "result", "met", "notes"}.
"""

from __future__ import annotations

from http.client import HTTPConnection, HTTPException
import datetime as dt
import ipaddress
import json
import math
import os
import subprocess
import random
import threading
import time
from pathlib import Path

import harness
from harness import (
    REPO, Bouncer, BenchError, Emulator, Lapi, Predecessor, counter_delta, http, ipv4_block,
    log, v4, wait_until,
)

LATENCY_N = 200
LATENCY_MEAN_GAP = 0.5
BURST_N = 10_000
COLD_N = 100_000
MILLION_N = 1_000_000
MILLION_CAPACITY = 500_000
MILLION_RECONCILE_S = 75  # after the list is full (about 50 s), so measured on its own
PAGE = 500
PREDECESSOR_SCHEDULE = 120.0  # it runs every 2 minutes


def row(figure, result, target="", met=None, notes=""):
    return {"figure": figure, "target": target, "result": result, "met": met, "notes": notes}


def pct(values, p):
    """Percentile with linear interpolation between closest ranks."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    if math.isinf(s[hi]):
        return s[hi] if k > lo or math.isinf(s[lo]) else s[lo]
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def fmt_s(x):
    return f"{x:.2f} s"


class Context:
    def __init__(self, work: Path, selected: set[str], op_latency_ms: str, previous: dict):
        self.work = work
        self.selected = selected
        self.op_latency_ms = op_latency_ms
        self.previous = previous  # scenarios of the existing BENCHMARKS.json
        self.results: dict[str, dict] = {}
        self.errors: dict[str, str] = {}
        self.pred_values: dict = {}
        self.part_seconds: dict[str, float] = {}

    def want(self, name):
        return name in self.selected

    def value(self, scenario, key):
        """A figure of this run, else of the stored results (for the predecessor's ratios)."""
        for source in (self.results, self.previous):
            rec = source.get(scenario) or {}
            if key in rec.get("values", {}):
                return rec["values"][key], source is self.results
        return None, False


# ----------------------------------------------------------------------------- polling
class ListWatcher:
    """Background thread polling /__emulator/state every ~20 ms over one keep-alive
    connection; records when each watched IP first appears on / disappears from the list."""

    def __init__(self, emu: Emulator, list_name="crowdsec_ban", period=0.02):
        self.emu, self.list_name, self.period = emu, list_name, period
        self.want_on: set[str] = set()
        self.want_off: set[str] = set()
        self.seen_on: dict[str, float] = {}
        self.seen_off: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.error: Exception | None = None
        self.polls = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(timeout=10)

    def watch_on(self, ip):
        with self.lock:
            self.want_on.add(ip)

    def watch_off(self, ip):
        with self.lock:
            self.want_off.add(ip)

    def _run(self):
        try:
            self._poll()
        except Exception as err:  # noqa: BLE001 - reported by wait(), never lost
            self.error = err

    def _poll(self):
        conn = None
        while not self.stop_flag.is_set():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = HTTPConnection("127.0.0.1", self.emu.port, timeout=10)
                conn.request("GET", "/__emulator/state")
                body = conn.getresponse().read()
                now = time.monotonic()
                state = json.loads(body)
            except (OSError, HTTPException, json.JSONDecodeError) as err:
                if conn is not None:
                    conn.close()
                conn = None
                if self.emu.proc.poll() is not None:
                    self.error = err
                    return
                time.sleep(0.05)
                continue
            self.polls += 1
            items = set()
            for lst in state["lists"]:
                if lst["name"] == self.list_name:
                    items = {i["ip"] for i in lst["items"]}
            with self.lock:
                for ip in self.want_on - self.seen_on.keys():
                    if ip in items:
                        self.seen_on[ip] = now
                for ip in self.want_off - self.seen_off.keys():
                    if ip not in items:
                        self.seen_off[ip] = now
            delay = self.period - (time.monotonic() - started)
            if delay > 0:
                time.sleep(delay)

    def wait(self, what, kind, ips, timeout):
        seen = self.seen_on if kind == "on" else self.seen_off

        def done():
            if self.error:
                raise BenchError(f"{what}: polling the emulator failed: {self.error}")
            with self.lock:
                return all(ip in seen for ip in ips)

        def last():
            with self.lock:
                return f"{sum(ip in seen for ip in ips)}/{len(ips)} {kind} the list"

        wait_until(what, done, timeout, 0.05, last=last)


def wait_list_complete(emu: Emulator, want: set[str], what: str, timeout: float,
                       interval: float, bouncer: Bouncer | None = None):
    """Waits until the bouncer's list on the emulator holds exactly `want`; returns the
    time it matched. Small lists: the emulator's state every `interval` seconds. Large ones
    (`bouncer` given): the state is fetched when the bouncer logs that it caught up, or
    every 10 s, so that neither the bouncer nor the emulator is kept busy by the polling."""
    last = {}

    def check():
        items = emu.items("crowdsec_ban")
        last["items"] = len(items)
        return time.monotonic() if items == want else None

    if bouncer is not None:
        return bouncer.wait_quietly(what, check, timeout, markers=("caught up",))
    return wait_until(what, check, timeout, interval,
                      last=lambda: f"{last.get('items')} items on the list of {len(want)}")


def lat_decision(ip, origin="cscli", duration="4h"):
    return {"duration": duration, "origin": origin, "scenario": "bench/latency",
            "scope": "Ip", "type": "ban", "value": ip}


# ----------------------------------------------------------------------------- group A
def group_a(ctx: Context):
    names = [n for n in ("latency", "burst", "predecessor") if ctx.want(n)]
    if not names:
        return
    log(f"== group A ({', '.join(names)}): one LAPI, one emulator")
    lapi = Lapi(ctx.work, "lapi-a")
    key_b, key_p, key_probe, key_lat_probe = (
        lapi.add_bouncer(n) for n in ("cf-bouncer", "kv-sync", "probe", "stream-probe"))
    lapi.start()
    emu = Emulator(ctx.work, "emu-a", op_latency_ms=ctx.op_latency_ms, capacity=100_000)
    pred_values = {}
    try:
        if ctx.want("latency"):
            run_scenario(ctx, "latency", lambda: latency(ctx, lapi, emu, key_b, key_lat_probe))
        if ctx.want("predecessor"):
            run_part(ctx, "predecessor", lambda: pred_values.update(
                predecessor_latency(ctx, lapi, emu, key_p, key_probe)))
        if ctx.want("burst"):
            run_scenario(ctx, "burst", lambda: burst(ctx, lapi, emu, key_b, key_probe))
        if ctx.want("predecessor"):
            if not ctx.want("burst"):
                lapi.seed(((ip, "crowdsec", 4 * 3600) for ip in ipv4_block("34.0.0.1", BURST_N)),
                          scenario="bench/burst")
            run_part(ctx, "predecessor", lambda: pred_values.update(
                predecessor_burst(ctx, lapi, emu, key_p, key_probe)))
    finally:
        emu.close()
        lapi.close()
        ctx.pred_values.update(pred_values)


def run_scenario(ctx, name, fn):
    if name in ctx.errors:
        return
    log(f"-- {name}")
    started = time.monotonic()
    try:
        rec = fn()
    except BenchError as err:
        ctx.errors[name] = str(err)
        log(f"{name} BROKE: {err}")
        return
    rec["duration_s"] = round(time.monotonic() - started, 1)
    ctx.results[name] = rec
    log(f"-- {name} done in {rec['duration_s']} s")


def run_part(ctx, name, fn):
    """A part of a scenario spread over groups (the predecessor)."""
    if name in ctx.errors:
        return
    started = time.monotonic()
    try:
        fn()
        ctx.part_seconds[name] = ctx.part_seconds.get(name, 0.0) + time.monotonic() - started
    except BenchError as err:
        ctx.errors[name] = str(err)
        log(f"{name} BROKE: {err}")


def start_bouncer(ctx, name, lapi, emu, key, listed, what, timeout=120, **settings):
    bouncer = Bouncer(ctx.work, name, lapi, emu, key=key, **settings)
    bouncer.start()
    bouncer.wait_in_step(listed, f"{what}: the bouncer to start in step ({listed} items)", timeout)
    return bouncer


class StreamProbe:
    """A plain stream follower on its own bouncer key, polling every second like the
    bouncer: which decisions LAPI's deltas carried at all (to tell a decision LAPI never
    delivered from one the bouncer dropped)."""

    def __init__(self, lapi: Lapi, key: str):
        self.lapi, self.key = lapi, key
        self.new: set[str] = set()
        self.deleted: set[str] = set()
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._pull("?startup=true")
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(timeout=10)

    def _pull(self, query=""):
        status, body = http_get(f"{self.lapi.url}/v1/decisions/stream{query}", self.key)
        if status == 200:
            data = json.loads(body)
            self.new.update(d["value"] for d in data.get("new") or [])
            self.deleted.update(d["value"] for d in data.get("deleted") or [])

    def _run(self):
        while not self.stop_flag.wait(1.0):
            try:
                self._pull()
            except (OSError, json.JSONDecodeError):
                pass


def http_get(url, key):
    return http("GET", url, headers={"X-Api-Key": key}, timeout=30)


def latency(ctx: Context, lapi: Lapi, emu: Emulator, key: str, probe_key: str) -> dict:
    rng = random.Random(20261122)
    ips = ipv4_block("45.33.0.1", LATENCY_N, stride=3)
    bouncer = start_bouncer(ctx, "bouncer-latency", lapi, emu, key, 0, "latency",
                            capacity=100_000, env={"RUST_LOG": "info,cfbouncer::engine=debug"})
    missed, views = {}, {}
    try:
        c0, cpu0 = emu.counters(), bouncer.cpu()
        accepted, deleted, accepted_wall = {}, {}, {}
        with ListWatcher(emu) as watcher, StreamProbe(lapi, probe_key) as probe:
            for phase, action, stamps, kind in (
                ("adds", lambda ip: lapi.post_alert([lat_decision(ip)]), accepted, "on"),
                ("removals", lapi.delete_ip, deleted, "off"),
            ):
                log(f"latency: {LATENCY_N} {phase}, exponential gaps (mean {LATENCY_MEAN_GAP} s)")
                targets = [ip for ip in ips if kind == "on" or ip in watcher.seen_on]
                due = time.monotonic()
                for i, ip in enumerate(ips):
                    due += rng.expovariate(1 / LATENCY_MEAN_GAP)
                    time.sleep(max(0.0, due - time.monotonic()))
                    (watcher.watch_on if kind == "on" else watcher.watch_off)(ip)
                    action(ip)
                    stamps[ip] = time.monotonic()
                    if kind == "on":
                        accepted_wall[ip] = time.time()
                    if (i + 1) % 50 == 0:
                        log(f"latency: {i + 1}/{LATENCY_N} {phase} sent")
                try:
                    watcher.wait(f"latency: all {phase} reflected on the list", kind, targets, 30)
                except BenchError:
                    seen = watcher.seen_on if kind == "on" else watcher.seen_off
                    lost = [ip for ip in targets if ip not in seen]
                    probe_saw = probe.new if kind == "on" else probe.deleted
                    missed[phase] = {ip: ip in probe_saw for ip in lost}
                    st = bouncer.status() or {}
                    views[phase] = (f"the bouncer's /status then: {st.get('decisions')} decisions, "
                                    f"{st.get('desired_items')} desired, {st.get('listed_items')} "
                                    f"listed, pending +{st.get('pending_adds')} "
                                    f"-{st.get('pending_removes')}")
                    log(f"latency: {len(lost)} {phase} not reflected 30 s after the last one: "
                        f"{', '.join(lost[:5])} (a plain stream follower saw "
                        f"{sum(missed[phase].values())} of them in LAPI's deltas; "
                        f"{views[phase]})")
            polls = watcher.polls
            inf = float("inf")
            add_lat = [watcher.seen_on.get(ip, inf) - accepted[ip] for ip in ips]
            del_lat = [watcher.seen_off.get(ip, inf) - deleted[ip] for ip in ips
                       if ip in watcher.seen_on]
        if not missed:
            bouncer.wait_in_step(0, "latency: the bouncer to settle", 60)
        delta = counter_delta(c0, emu.counters())
        cpu = bouncer.cpu() - cpu0
        hwm = bouncer.peak_rss_mib()
        timeline = emu.operations()
    finally:
        bouncer.close()
    parts = decompose(accepted_wall, timeline, bouncer.log_path)
    values = {
        "add_p50_s": pct(add_lat, 50), "add_p95_s": pct(add_lat, 95), "add_max_s": max(add_lat),
        "del_p50_s": pct(del_lat, 50), "del_p95_s": pct(del_lat, 95), "del_max_s": max(del_lat),
        "adds_missed": len(missed.get("adds", {})), "removals_missed": len(missed.get("removals", {})),
        "requests": delta["requests"], "writes": delta["writes"],
        "status_polls": delta["status_polls"], "cpu_s": cpu, "peak_rss_mib": hwm,
        "decomposition": parts["p50"], "decomposed": parts["n"],
    }
    note = (f"{LATENCY_N} decisions, one alert each (POST /v1/alerts → 201), gaps exponential "
            f"mean {LATENCY_MEAN_GAP} s; removals by DELETE /v1/decisions?ip= (soft delete); "
            f"list polled every ~20 ms ({polls} polls)")
    rows = [
        row("add → on the list, p50", fmt_lat(values["add_p50_s"]), "≤ 2.0 s",
            values["add_p50_s"] <= 2.0, note),
        row("add → on the list, p95", fmt_lat(values["add_p95_s"]), "≤ 3.5 s",
            values["add_p95_s"] <= 3.5),
        row("add → on the list, max", fmt_lat(values["add_max_s"])),
        row("remove → off the list, p50", fmt_lat(values["del_p50_s"]), "≤ 2.0 s",
            values["del_p50_s"] <= 2.0),
        row("remove → off the list, p95", fmt_lat(values["del_p95_s"]), "≤ 3.5 s",
            values["del_p95_s"] <= 3.5),
        row("remove → off the list, max", fmt_lat(values["del_max_s"])),
    ]
    for phase, lost in missed.items():
        rows.append(row(f"{phase} never reflected (30 s after the last)", str(len(lost)), "0",
                        False, f"{', '.join(sorted(lost))}; a plain stream follower on another key "
                        f"saw {sum(lost.values())} of them in LAPI's deltas; {views[phase]} "
                        f"(counted as infinite latency above; the 10-minute reconcile would "
                        f"repair them)"))
    rows += [
    ]
    rows += decomposition_rows(parts)
    rows += [
        row("Cloudflare requests for 200 adds + 200 removes",
            f"{delta['requests']} ({delta['writes']} writes, {delta['status_polls']} status polls, "
            f"{delta['list_reads']} list reads, {delta['other']} other)"),
        row("bouncer CPU over the scenario", f"{cpu:.2f} s"),
    ]
    return {"rows": rows, "values": values,
            "settings": {"update_frequency": "1s", "op_latency_ms": ctx.op_latency_ms,
                         "batch_size": 1000, "capacity": 100_000, "max_requests_per_minute": 120}}


def log_times(path, marker):
    """Unix times of the bouncer's log lines (text format, RFC 3339 UTC first) holding
    `marker` and a `new=` other than 0."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if marker not in line or " new=0 " in line + " ":
            continue
        stamp = line.split(" ", 1)[0].rstrip("Z")
        try:
            t = dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
        out.append(t.timestamp())
    return sorted(out)


def decompose(accepted: dict, timeline: list, log_path) -> dict:
    """Per add, where its time went: waiting for the pull that carried it (the first
    delta with new decisions after LAPI accepted it, from the bouncer's debug log),
    waiting behind a pending operation (pull → its operation submitted: the writer busy
    with the one before, and that one's completion yet to be detected), the operation
    (submitted → ended, from the emulator's timeline), and the detection of its
    completion (ended → first status poll that saw it; it delays the next change, not
    this one)."""
    pulls = log_times(log_path, "delta from LAPI")
    op_of = {}
    for op in timeline:
        for ip in op.get("ips") or []:
            op_of.setdefault(ip, op)
    rows = []
    for ip, t_a in accepted.items():
        op = op_of.get(ip)
        if op is None or op.get("ended") is None:
            continue
        pull = next((t for t in pulls if t > t_a), None)
        if pull is None or pull > op["submitted"]:
            pull = min(op["submitted"], max(t_a, pull or t_a))
        rows.append({
            "pull_wait_s": pull - t_a,
            "behind_pending_s": op["submitted"] - pull,
            "operation_s": op["ended"] - op["submitted"],
            "detection_s": (op["seen_ended"] or op["ended"]) - op["ended"],
            "total_s": op["ended"] - t_a,
            "floor_s": (pull - t_a) + (op["ended"] - op["submitted"]),
        })
    keys = ["pull_wait_s", "behind_pending_s", "operation_s", "detection_s", "total_s", "floor_s"]
    p50 = {k: pct([r[k] for r in rows], 50) for k in keys}
    mean = {k: (sum(r[k] for r in rows) / len(rows)) if rows else float("nan") for k in keys}
    return {"n": len(rows), "p50": p50, "mean": mean}


def decomposition_rows(parts) -> list:
    p, m = parts["p50"], parts["mean"]
    if not parts["n"]:
        return [row("add latency decomposed", "n/a (no operation timeline)")]
    gap = p["total_s"] - p["floor_s"]
    return [
        row("add latency decomposed, p50 (mean): wait for the pull / behind a pending "
            "operation / the operation / detection of its completion",
            f"{p['pull_wait_s']:.2f} ({m['pull_wait_s']:.2f}) / {p['behind_pending_s']:.2f} "
            f"({m['behind_pending_s']:.2f}) / {p['operation_s']:.2f} ({m['operation_s']:.2f}) / "
            f"{p['detection_s']:.2f} ({m['detection_s']:.2f}) s", "", None,
            f"{parts['n']} adds; the pull from the bouncer's debug log (first delta with new "
            "decisions after LAPI's 201), the operation from the emulator's timeline "
            "(/__emulator/operations: submitted, ended, first poll that saw it ended). "
            "Detection delays the next change, not this one"),
        row("add latency p50 vs its floor (p50 of pull wait + operation)",
            f"{p['total_s']:.2f} s vs {p['floor_s']:.2f} s: +{gap:.2f} s", "≤ +0.15 s",
            gap <= 0.15, "the floor is what an idle writer would reach: the pull's wait "
            "(update_frequency 1s) and the operation itself"),
    ]


def fmt_lat(x):
    return "never (> 30 s)" if x == float("inf") else fmt_s(x)


def burst(ctx: Context, lapi: Lapi, emu: Emulator, key: str, probe: str) -> dict:
    active = lapi.active_ip_bans(probe)
    bouncer = start_bouncer(ctx, "bouncer-burst", lapi, emu, key, len(active), "burst",
                            capacity=100_000)
    try:
        want = active | set(ipv4_block("34.0.0.1", BURST_N))
        c0, cpu0 = emu.counters(), bouncer.cpu()
        log(f"burst: inserting {BURST_N} decisions into LAPI's database")
        lapi.seed(((ip, "crowdsec", 4 * 3600) for ip in ipv4_block("34.0.0.1", BURST_N)),
                  scenario="bench/burst")
        t0 = time.monotonic()
        t1 = wait_list_complete(emu, want, f"burst: all {BURST_N} on the list",
                                timeout=300, interval=0.1)
        log(f"burst: all on the list after {t1 - t0:.1f} s")
        bouncer.wait_in_step(len(want), "burst: the bouncer to be idle", 60)
        delta = counter_delta(c0, emu.counters())
        cpu = bouncer.cpu() - cpu0
        hwm = bouncer.peak_rss_mib()
    finally:
        bouncer.close()
    floor = 2 * math.ceil(BURST_N / 1000)
    wp = delta["writes"] + delta["status_polls"]
    values = {"seconds": t1 - t0, "requests": delta["requests"], "writes": delta["writes"],
              "status_polls": delta["status_polls"], "list_reads": delta["list_reads"],
              "other": delta["other"], "item_changes": delta["item_changes"],
              "cpu_s": cpu, "peak_rss_mib": hwm}
    rows = [
        row(f"{BURST_N:,} decisions inserted → all on the list".replace(",", " "), fmt_s(t1 - t0), "",
            None, "inserted in one SQLite transaction while LAPI runs; update_frequency 1s"),
        row("writes + status polls", f"{wp} ({delta['writes']} + {delta['status_polls']})",
            f"≤ {1.2 * floor:.0f} (1.2 × {floor})", wp <= 1.2 * floor),
        row("Cloudflare requests, all", f"{delta['requests']} ({delta['list_reads']} list reads, "
            f"{delta['other']} other, {delta['rejected_writes']} rejected writes)"),
        row("item changes", str(delta["item_changes"]), f"= {BURST_N}",
            delta["item_changes"] == BURST_N),
        row("bouncer CPU for the burst", f"{cpu:.2f} s"),
        row("bouncer peak RSS (whole life)", f"{hwm:.1f} MiB"),
    ]
    return {"rows": rows, "values": values,
            "settings": {"update_frequency": "1s", "op_latency_ms": ctx.op_latency_ms,
                         "batch_size": 1000, "capacity": 100_000, "max_requests_per_minute": 120}}


def predecessor_latency(ctx, lapi, emu, key, probe) -> dict:
    """Run times of the predecessor for a one-decision change (an add, then its removal)."""
    log("predecessor: runs for a small change (latency model)")
    pred = Predecessor(ctx.work, lapi, emu, key)
    pred.converge(lapi.active_ip_bans(probe), emu, "predecessor (initial sync)")
    runs = []
    for i, ip in enumerate(ipv4_block("45.34.0.1", 3)):
        for action in ("add", "remove"):
            if action == "add":
                lapi.post_alert([lat_decision(ip)])
            else:
                lapi.delete_ip(ip)
            want = lapi.active_ip_bans(probe)
            run = pred.run_once()
            on_list = emu.items("kv_sync_ban")
            if on_list != want or run["rc"] != 0:
                raise BenchError(f"predecessor latency run ({action} {ip}) left the list "
                                 f"out of step (exit {run['rc']}, {len(on_list)} vs {len(want)})")
            runs.append(run["wall"])
            log(f"predecessor: {action} run {run['wall']:.2f} s")
    rng = random.Random(7)
    model = [rng.uniform(0, PREDECESSOR_SCHEDULE) + rng.choice(runs) for _ in range(200_000)]
    return {"lat_runs_s": runs, "lat_p50_s": pct(model, 50), "lat_p95_s": pct(model, 95)}


def predecessor_burst(ctx, lapi, emu, key, probe) -> dict:
    log(f"predecessor: syncing the {BURST_N}-decision burst")
    pred = Predecessor(ctx.work, lapi, emu, key)
    want = lapi.active_ip_bans(probe)
    c0 = emu.counters()
    tot = pred.converge(want, emu, "predecessor burst")
    d = counter_delta(c0, emu.counters())
    return {"burst": {**tot, **d}}


# ----------------------------------------------------------------------------- group B
def group_b(ctx: Context):
    names = [n for n in ("cold100k", "restart100k", "cold100k_sized", "once100k", "pacing",
                         "predecessor") if ctx.want(n)]
    if not names:
        return
    log(f"== group B ({', '.join(names)}): 100 000 decisions")
    lapi = Lapi(ctx.work, "lapi-b")
    key_b, key_p, key_probe = (lapi.add_bouncer(n) for n in ("cf-bouncer", "kv-sync", "probe"))
    lapi.start()
    emu = Emulator(ctx.work, "emu-b", op_latency_ms=ctx.op_latency_ms, capacity=1_000_000)
    try:
        t = time.monotonic()
        n = lapi.seed(((ip, "crowdsec", 4 * 3600) for ip in ipv4_block("101.0.0.1", COLD_N)),
                      scenario="bench/cold")
        log(f"seeded {n} decisions in {time.monotonic() - t:.1f} s")
        want = set(ipv4_block("101.0.0.1", COLD_N))
        if ctx.want("cold100k") or ctx.want("restart100k"):
            run_scenario(ctx, "cold100k", lambda: cold(ctx, lapi, emu, key_b, want))
            if not ctx.want("cold100k"):  # only the setup of restart100k
                ctx.results.pop("cold100k", None)
                if "cold100k" in ctx.errors:
                    ctx.errors["restart100k"] = "setup (cold sync): " + ctx.errors.pop("cold100k")
            if ctx.want("restart100k") and "cold100k" not in ctx.errors:
                run_scenario(ctx, "restart100k", lambda: restart(ctx, lapi, emu, key_b, want))
        if ctx.want("cold100k_sized"):
            run_scenario(ctx, "cold100k_sized", lambda: cold_sized(ctx, lapi, key_b, want))
        if ctx.want("once100k"):
            run_scenario(ctx, "once100k", lambda: once100k(ctx, lapi, key_b, want))
        if ctx.want("pacing"):
            if emu.items("crowdsec_ban") != want:  # pacing alone: fill the list first
                cold_once(ctx, lapi, emu, key_b, want)
            run_scenario(ctx, "pacing", lambda: pacing(ctx, lapi, emu, key_b, want))
        if ctx.want("predecessor"):
            def pred_cold():
                log(f"predecessor: syncing {COLD_N} decisions from an empty list")
                pred = Predecessor(ctx.work, lapi, emu, key_p)
                c0 = emu.counters()
                tot = pred.converge(want, emu, "predecessor cold100k", max_runs=8, timeout=900)
                ctx.pred_values["cold"] = {**tot, **counter_delta(c0, emu.counters())}
            run_part(ctx, "predecessor", pred_cold)
    finally:
        emu.close()
        lapi.close()


BIG = dict(capacity=1_000_000, max_rpm=240)


RUNS = 3  # cold100k and restart100k: one run's CPU varies by ±15% here; see summarise()


def median(values):
    return sorted(values)[len(values) // 2]


def runs_note(runs, key, unit="s", digits=2):
    return f"median of {len(runs)} runs: " + ", ".join(f"{r[key]:.{digits}f}" for r in runs) + f" {unit}"


def summarise(runs, rss_when="done") -> dict:
    """The figures of repeated runs: the median CPU and wall time, the highest peak RSS
    (what memory must be sized for), the median RSS at the end; with their notes."""
    peaks = ", ".join(f"{r['peak_rss_mib']:.1f}" for r in runs)
    rss = median([r["rss_end_mib"] for r in runs])
    return {"seconds": median([r["seconds"] for r in runs]),
            "cpu_s": median([r["cpu_s"] for r in runs]),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "rss_end_mib": rss,
            "peak_note": f"the highest of {peaks} MiB; RSS when {rss_when} (VmRSS): "
                         f"{rss:.1f} MiB (median)"}


def cold_once(ctx, lapi, emu, key, want, name="bouncer-cold") -> dict:
    """One cold start: the bouncer fills `emu`'s empty list; its figures and requests."""
    c0 = emu.counters()
    bouncer = Bouncer(ctx.work, name, lapi, emu, key=key, **BIG)
    t0 = time.monotonic()
    bouncer.start()
    try:
        t1 = wait_list_complete(emu, want, "cold100k: all 100 000 on the list",
                                timeout=600, interval=0, bouncer=bouncer)
        log(f"cold100k: all on the list after {t1 - t0:.1f} s")
        cpu, hwm, rss = bouncer.cpu(), bouncer.peak_rss_mib(), bouncer.rss_mib()
        bouncer.wait_in_step(len(want), "cold100k: the bouncer to be idle", 60)
    finally:
        bouncer.close()
    return {"seconds": t1 - t0, "cpu_s": cpu, "peak_rss_mib": hwm, "rss_end_mib": rss,
            **counter_delta(c0, emu.counters())}


def cold(ctx, lapi, emu, key, want) -> dict:
    """RUNS cold starts, each into an empty list: the first ones into emulators of their
    own, the last into `emu` (which restart100k then reads)."""
    runs = []
    for i in range(RUNS):
        own = emu if i == RUNS - 1 else Emulator(ctx.work, f"emu-cold{i}", capacity=1_000_000,
                                                 op_latency_ms=ctx.op_latency_ms)
        try:
            runs.append(cold_once(ctx, lapi, own, key, want, name=f"bouncer-cold{i}"))
        finally:
            if own is not emu:
                own.close()
    return cold_record(runs, ctx.op_latency_ms)


def cold_record(runs, op_latency_ms) -> dict:
    """cold100k's record from its runs: the median of CPU and wall time, the highest peak
    (what memory must be sized for)."""
    d, fig = runs[-1], summarise(runs)
    seconds, cpu, hwm = fig["seconds"], fig["cpu_s"], fig["peak_rss_mib"]
    floor = 2 * math.ceil(COLD_N / 1000)
    values = {**d, "seconds": seconds, "cpu_s": cpu, "peak_rss_mib": hwm,
              "rss_end_mib": fig["rss_end_mib"], "runs": runs}
    rows = [
        row("start → all 100 000 on the list", fmt_s(seconds), "≤ 30 s", seconds <= 30,
            f"{runs_note(runs, 'seconds')}; seeded via SQLite; capacity 1 000 000 (bouncer and "
            "emulator), max_requests_per_minute 240, batch_size 1000 growing to max_batch 10000 "
            "while full batches succeed; emulator operation time size-blind (0 µs an item)"),
        row("bouncer CPU (utime+stime)", f"{cpu:.2f} s", "≤ 0.25 s", cpu <= 0.25,
            runs_note(runs, "cpu_s")),
        row("bouncer peak RSS (VmHWM)", f"{hwm:.1f} MiB", "≤ 40 MiB", hwm <= 40,
            fig["peak_note"]),
        row("Cloudflare requests to fill the list", f"{d['requests']} ({d['writes']} writes, {d['status_polls']} "
            f"status polls, {d['list_reads']} list reads, {d['other']} other)",
            f"writes + polls ≤ {1.2 * floor:.0f}", d["writes"] + d["status_polls"] <= 1.2 * floor,
            "the last run; the others: " + ", ".join(str(r["requests"]) for r in runs[:-1])),
        row("item changes", str(d["item_changes"]), f"= {COLD_N}",
            all(r["item_changes"] == COLD_N for r in runs),
            "the last run; the others: " + ", ".join(str(r["item_changes"]) for r in runs[:-1])),
    ]
    return {"rows": rows, "values": values,
            "settings": {"op_latency_ms": op_latency_ms, "op_item_cost_us": 0, **BIG,
                         "max_batch": 10_000, "runs": len(runs)}}


SIZED_COST_US = 100  # 0.1 ms an item: a 10 000-item operation takes 1 s more


def cold_sized(ctx, lapi, key, want) -> dict:
    """cold100k again, on an emulator whose operations take 0.1 ms longer per item."""
    emu = Emulator(ctx.work, "emu-b-sized", op_latency_ms=ctx.op_latency_ms, capacity=1_000_000,
                   op_item_cost_us=SIZED_COST_US)
    try:
        c0 = emu.counters()
        bouncer = Bouncer(ctx.work, "bouncer-cold-sized", lapi, emu, key=key, **BIG)
        t0 = time.monotonic()
        bouncer.start()
        try:
            t1 = wait_list_complete(emu, want, "cold100k_sized: all 100 000 on the list",
                                    timeout=600, interval=0, bouncer=bouncer)
            cpu = bouncer.cpu()
            bouncer.wait_in_step(len(want), "cold100k_sized: the bouncer to be idle", 60)
        finally:
            bouncer.close()
        d = counter_delta(c0, emu.counters())
    finally:
        emu.close()
    log(f"cold100k_sized: all on the list after {t1 - t0:.1f} s")
    values = {"seconds": t1 - t0, "cpu_s": cpu, **d}
    rows = [
        row("start → all 100 000 on the list, operations 0.1 ms longer per item", fmt_s(t1 - t0),
            "≤ 30 s", t1 - t0 <= 30,
            f"as cold100k, on a fresh emulator with --op-item-cost-us {SIZED_COST_US}: an "
            f"operation takes {ctx.op_latency_ms} ms + 0.1 ms per item (a 10 000-item one "
            f"1 s more); Cloudflare's real scaling is unknown"),
        row("Cloudflare requests to fill the list", f"{d['requests']} ({d['writes']} writes, "
            f"{d['status_polls']} status polls, {d['list_reads']} list reads, {d['other']} other)"),
        row("bouncer CPU (utime+stime)", f"{cpu:.2f} s"),
    ]
    return {"rows": rows, "values": values,
            "settings": {"op_latency_ms": ctx.op_latency_ms, "op_item_cost_us": SIZED_COST_US,
                         **BIG, "max_batch": 10_000}}


def once100k(ctx, lapi, key, want) -> dict:
    """`once` against an empty list: a full pull, a list read, the writes, then its
    verification read; CPU and RSS of the process by wait4."""
    emu = Emulator(ctx.work, "emu-b-once", op_latency_ms=ctx.op_latency_ms, capacity=1_000_000)
    try:
        bouncer = Bouncer(ctx.work, "bouncer-once", lapi, emu, key=key, **BIG)
        c0 = emu.counters()
        t0 = time.monotonic()
        with open(bouncer.log_path, "ab") as out:
            # BENCH_WRAP as for the daemon (the figures are then the profiler's).
            wrap = os.environ.get("BENCH_WRAP", "").split()
            proc = subprocess.Popen([*wrap, str(harness.BOUNCER_BIN), "-c", str(bouncer.config), "once"],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        harness.CHILDREN.append(proc)
        try:
            deadline = t0 + 600
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise BenchError("once100k: `once` did not end within 600 s")
                time.sleep(0.05)
        finally:
            if not pid:
                harness.stop(proc)
        harness.CHILDREN.remove(proc)
        wall = time.monotonic() - t0
        rc = os.waitstatus_to_exitcode(status)
        d = counter_delta(c0, emu.counters())
        on_list = emu.items("crowdsec_ban")
    finally:
        emu.close()
    if rc != 0 or on_list != want:
        raise BenchError(f"once100k: exit {rc}, {len(on_list)} of {len(want)} on the list; "
                         f"log {bouncer.log_path}")
    cpu, maxrss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024
    log(f"once100k: {wall:.1f} s wall, {cpu:.2f} s CPU")
    values = {"seconds": wall, "cpu_s": cpu, "peak_rss_mib": maxrss, **d}
    rows = [
        row("`once` at 100 000, empty list: CPU (user+sys)", f"{cpu:.2f} s", "≤ 0.5 s",
            cpu <= 0.5, "full pull, list read, the writes, then the verification read of the "
            "whole list; the process measured by wait4"),
        row("`once`: wall / peak RSS", f"{wall:.2f} s / {maxrss:.1f} MiB"),
        row("`once`: Cloudflare requests", f"{d['requests']} ({d['writes']} writes, "
            f"{d['status_polls']} status polls, {d['list_reads']} list reads, {d['other']} other)"),
    ]
    return {"rows": rows, "values": values,
            "settings": {"op_latency_ms": ctx.op_latency_ms, **BIG, "max_batch": 10_000}}


PACING_QUOTA, PACING_WINDOW_S, PACING_HOG_SHARE = 600, 60, 0.8
PACING_TIMEOUT_S = 200


class Hog:
    """Another client of the same token: GET the account's lists at a steady rate, a
    share of the quota; counts its own answers by status."""

    def __init__(self, emu: Emulator, per_s: float):
        self.emu, self.period = emu, 1 / per_s
        self.statuses: dict[int, int] = {}
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(timeout=10)

    def _run(self):
        conn, due = None, time.monotonic()
        path = f"/client/v4/accounts/{self.emu.account_id}/rules/lists"
        headers = {"Authorization": f"Bearer {self.emu.token}"}
        while not self.stop_flag.is_set():
            due += self.period
            try:
                if conn is None:
                    conn = HTTPConnection("127.0.0.1", self.emu.port, timeout=10)
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
            except (OSError, HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            self.stop_flag.wait(max(0.0, due - time.monotonic()))


def pacing_run(ctx, lapi, emu, key, want, headers: bool) -> dict:
    """A restart (201 requests of list reads) while the hog spends 80% of the quota."""
    label = "on" if headers else "off"
    emu.switch(rate_limit={"limit": PACING_QUOTA, "window_secs": PACING_WINDOW_S},
               rate_limit_headers=headers)
    c0 = emu.counters()
    hog_rate = PACING_QUOTA * PACING_HOG_SHARE / PACING_WINDOW_S
    with Hog(emu, hog_rate) as hog:
        time.sleep(2)  # the hog first
        bouncer = Bouncer(ctx.work, f"bouncer-pacing-{label}", lapi, emu, key=key, **BIG)
        t0 = time.monotonic()
        bouncer.start()
        try:
            try:
                bouncer.wait_quietly(f"pacing ({label}): the restart's list read",
                                     lambda: bouncer.in_step(len(want)), PACING_TIMEOUT_S, every=5)
                t1 = time.monotonic()
            except BenchError:
                t1 = None
            cpu = bouncer.cpu()
        finally:
            bouncer.close()
        hog_statuses = dict(hog.statuses)
    d = counter_delta(c0, emu.counters())
    hog_429 = hog_statuses.get(429, 0)
    emu.switch(rate_limit={"limit": 1200, "window_secs": 300}, rate_limit_headers=True)
    return {"seconds": None if t1 is None else t1 - t0, "bouncer_429": d["rate_limited"] - hog_429,
            "hog_429": hog_429, "hog_requests": sum(hog_statuses.values()),
            "bouncer_requests": d["requests"] - sum(hog_statuses.values()), "cpu_s": cpu}


def pacing(ctx, lapi, emu, key, want) -> dict:
    on = pacing_run(ctx, lapi, emu, key, want, headers=True)
    off = pacing_run(ctx, lapi, emu, key, want, headers=False)
    log(f"pacing: headers on {on}; off {off}")

    def took(run):
        return fmt_s(run["seconds"]) if run["seconds"] is not None else f"not in step after {PACING_TIMEOUT_S} s"

    note = (f"emulator quota {PACING_QUOTA} requests per {PACING_WINDOW_S} s for the token; "
            f"another client of the same token spends {PACING_HOG_SHARE:.0%} of it at a steady "
            f"rate ({PACING_QUOTA * PACING_HOG_SHARE / PACING_WINDOW_S:.0f}/s) from 2 s before "
            f"the bouncer starts; the bouncer (max_requests_per_minute 240, its ceiling) "
            f"restarts on the 100 000-item list: 200 pages + a lookup")
    values = {"headers_on": on, "headers_off": off}
    rows = [
        row("restart under another client's load, with Ratelimit headers: bouncer 429s",
            str(on["bouncer_429"]), "= 0", on["bouncer_429"] == 0, note),
        row("… with headers: start → in step / bouncer requests / other client's 429s",
            f"{took(on)} / {on['bouncer_requests']} / {on['hog_429']} of {on['hog_requests']}"),
        row("… without headers (only Retry-After): bouncer 429s", str(off["bouncer_429"]), "", None,
            "the same run with the emulator's --rate-limit-headers off: the pace is blind to "
            "the other client until a 429"),
        row("… without headers: start → in step / bouncer requests / other client's 429s",
            f"{took(off)} / {off['bouncer_requests']} / {off['hog_429']} of {off['hog_requests']}"),
    ]
    return {"rows": rows, "values": values,
            "settings": {"quota": f"{PACING_QUOTA}/{PACING_WINDOW_S}s",
                         "other_client_share": PACING_HOG_SHARE, **BIG}}


def restart_once(ctx, lapi, emu, key, want, name) -> dict:
    """One restart in step: the bouncer reads `emu`'s full list and finds nothing to do."""
    c0 = emu.counters()
    bouncer = Bouncer(ctx.work, name, lapi, emu, key=key, **BIG)
    t0 = time.monotonic()
    bouncer.start()
    try:
        bouncer.wait_quietly("restart100k: the bouncer to read the list and be idle",
                             lambda: bouncer.in_step(len(want)), 300, every=5)
        t1 = time.monotonic()
        log(f"restart100k: in step and idle after {t1 - t0:.1f} s")
        time.sleep(1.5)  # a write, if any, would follow at once
        cpu, hwm, rss = bouncer.cpu(), bouncer.peak_rss_mib(), bouncer.rss_mib()
    finally:
        bouncer.close()
    return {"seconds": t1 - t0, "cpu_s": cpu, "peak_rss_mib": hwm, "rss_end_mib": rss,
            **counter_delta(c0, emu.counters())}


def restart(ctx, lapi, emu, key, want) -> dict:
    runs = [restart_once(ctx, lapi, emu, key, want, f"bouncer-restart{i}") for i in range(RUNS)]
    d, fig = runs[-1], summarise(runs, rss_when="idle")
    seconds, cpu, hwm = fig["seconds"], fig["cpu_s"], fig["peak_rss_mib"]
    expected = math.ceil(COLD_N / PAGE) + 1
    floor = page_floor(ctx, emu)
    values = {**d, "seconds": seconds, "cpu_s": cpu, "peak_rss_mib": hwm,
              "rss_end_mib": fig["rss_end_mib"], "runs": runs, "http_floor_cpu_s": floor["cpu_s"], "http_floor_pages": floor["pages"],
              "http_floor_bytes": floor["bytes"]}
    others = "; the others: " + ", ".join(f"{r['requests']} requests, {r['writes']} writes"
                                          for r in runs[:-1])
    rows = [
        row("start → list read, idle", fmt_s(seconds), "", None,
            f"{runs_note(runs, 'seconds')}; right after cold100k, LAPI and list in step; "
            "/status listed_items = 100000, nothing pending"),
        row("writes", str(d["writes"]), "= 0", all(r["writes"] == 0 for r in runs),
            "the last run" + others),
        row("Cloudflare requests", f"{d['requests']} ({d['list_reads']} list reads, "
            f"{d['other']} other, {d['status_polls']} status polls)",
            f"= {expected} ({expected - 1} pages + lookup)",
            all(r["requests"] == expected for r in runs), "the last run" + others),
        row("bouncer CPU (utime+stime)", f"{cpu:.2f} s", "≤ 0.12 s", cpu <= 0.12,
            runs_note(runs, "cpu_s")),
        row("bouncer peak RSS (VmHWM)", f"{hwm:.1f} MiB", "", None, fig["peak_note"]),
        row("HTTP floor of the list read", f"{floor['cpu_s']:.3f} s CPU", "", None,
            f"examples/page_floor: the same {floor['pages']} pages ({floor['bytes'] / 1e6:.1f} MB) "
            "fetched with the bouncer's client settings, each body read and dropped, nothing "
            "decoded, no pacing; its own getrusage"),
    ]
    return {"rows": rows, "values": values,
            "settings": {"op_latency_ms": ctx.op_latency_ms, **BIG, "runs": RUNS}}


def page_floor(ctx, emu) -> dict:
    """What fetching the list's pages costs with nothing done with them (examples/page_floor)."""
    res = subprocess.run(
        [str(harness.RELEASE / "examples/page_floor"), emu.url, emu.account_id,
         emu.list_ids["crowdsec_ban"]],
        env=dict(os.environ, CF_API_TOKEN=emu.token), capture_output=True, text=True, timeout=300)
    (ctx.work / "page_floor.log").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise BenchError(f"page_floor failed ({res.returncode}): {res.stderr[-800:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- group C
ORIGIN_RANK = {"cscli": 0, "crowdsec": 1, "lists": 2, "CAPI": 3}


def v6_host(i: int) -> str:
    """The i-th IPv6 host, each in a /64 of its own (under 2a01:4f8::/32)."""
    return str(ipaddress.IPv6Address((0x2A0104F8 << 96) | (i << 64) | ((i * 7919) % 0xFFFF + 1)))


def v6_item(i: int) -> str:
    """The list item of `v6_host(i)`: its /64, as the emulator prints it."""
    return str(ipaddress.IPv6Network(f"{v6_host(i)}/64", strict=False))


def million_decisions(v6: bool = False):
    """1M bans: 30% cscli, 30% crowdsec, 40% CAPI, each with a distinct remaining
    duration (seconds), shuffled so neither address order nor origin order predicts it.
    With `v6`, every other one is an IPv6 host in a /64 of its own. Rows are (value,
    origin, seconds, list item)."""
    rng = random.Random(1_000_000)
    n_cscli, n_crowdsec = MILLION_N * 3 // 10, MILLION_N * 3 // 10
    origins = (["cscli"] * n_cscli + ["crowdsec"] * n_crowdsec
               + ["CAPI"] * (MILLION_N - n_cscli - n_crowdsec))
    rng.shuffle(origins)
    secs = [3600 + 2 * i for i in range(MILLION_N)]  # 1 h to ~24 days, 2 s apart
    rng.shuffle(secs)
    base = 0x66000001  # 102.0.0.1
    if v6:
        return [(v6_host(i), origins[i], secs[i], v6_item(i)) if i % 2 else
                (v4(base + i), origins[i], secs[i], v4(base + i)) for i in range(MILLION_N)]
    return [(v4(base + i), origins[i], secs[i], v4(base + i)) for i in range(MILLION_N)]


def group_c(ctx: Context):
    for name, v6 in (("million", False), ("million_v6", True)):
        if not ctx.want(name):
            continue
        log(f"== group C ({name})")
        lapi = Lapi(ctx.work, f"lapi-{name}")
        key_b = lapi.add_bouncer("cf-bouncer")
        lapi.start()
        fast = "50..200"
        emu = Emulator(ctx.work, f"emu-{name}", op_latency_ms=fast, capacity=MILLION_CAPACITY)
        try:
            run_scenario(ctx, name, lambda: million(ctx, lapi, emu, key_b, fast, v6=v6))
        finally:
            emu.close()
            lapi.close()


def million(ctx, lapi, emu, key, fast, v6=False) -> dict:
    name = "million_v6" if v6 else "million"
    rows_in = million_decisions(v6)
    t = time.monotonic()
    lapi.seed((r[:3] for r in rows_in), scenario="bench/million")
    log(f"{name}: seeded {MILLION_N} decisions in {time.monotonic() - t:.1f} s")
    ranked = sorted(rows_in, key=lambda r: (ORIGIN_RANK[r[1]], -r[2]))
    want = {r[3] for r in ranked[:MILLION_CAPACITY]}
    boundary = (ranked[MILLION_CAPACITY - 1], ranked[MILLION_CAPACITY])
    del rows_in, ranked
    # The first reconcile comes after the list is full: measured on its own below.
    settings = dict(capacity=MILLION_CAPACITY, max_rpm=240, batch_size=10_000, lapi_timeout="10m",
                    reconcile=f"{MILLION_RECONCILE_S}s")
    c0 = emu.counters()
    bouncer = Bouncer(ctx.work, "bouncer-million", lapi, emu, key=key, **settings)
    t0 = time.monotonic()
    bouncer.start()
    try:
        bouncer.wait_quietly(f"{name}: the bouncer to fill the list and be idle",
                             lambda: bouncer.in_step(MILLION_CAPACITY), 900, every=15)
        t1 = time.monotonic()
        c1 = emu.counters()
        cpu, hwm, rss = bouncer.cpu(), bouncer.peak_rss_mib(), bouncer.rss_mib()
        st = bouncer.status()
        if t1 - t0 >= MILLION_RECONCILE_S:
            raise BenchError(f"the list filled after the first reconcile ({t1 - t0:.0f} s); "
                             f"raise MILLION_RECONCILE_S")
        # One reconcile at 1M: the new desired state is built beside the old one.
        pulls = bouncer.log_count("full pull from LAPI")
        bouncer.wait_quietly(f"{name}: one reconcile", lambda: bouncer.log_count(
            "full pull from LAPI") > pulls and bouncer.in_step(MILLION_CAPACITY), 300, every=5)
        cpu_rec = bouncer.cpu() - cpu
        hwm_rec, rss_rec = bouncer.peak_rss_mib(), bouncer.rss_mib()
    finally:
        bouncer.close()
    log(f"{name}: the bouncer reports {MILLION_CAPACITY} listed after {t1 - t0:.1f} s; checking the list")
    on_list = emu.items("crowdsec_ban")
    d = counter_delta(c0, c1)
    missing, extra = len(want - on_list), len(on_list - want)
    values = {"seconds": t1 - t0, "cpu_s": cpu, "peak_rss_mib": hwm, "rss_end_mib": rss,
              "reconcile_cpu_s": cpu_rec, "reconcile_peak_rss_mib": hwm_rec,
              "reconcile_rss_end_mib": rss_rec, "missing": missing,
              "extra": extra, "left_out": st.get("left_out") if st else None, **d}
    mix = ("half IPv4, half IPv6 hosts each in a /64 of its own (500 000 /64 items: the "
           "side-map case)") if v6 else "all IPv4"
    note = (f"1 000 000 bans, {mix} (30% cscli, 30% crowdsec, 40% CAPI, distinct durations); "
            f"capacity 500 000 (bouncer and emulator); emulator op latency {fast} ms and "
            f"batch_size 10000 to fit the time budget (RSS/CPU are the figures here, not wall "
            f"time); crowdsec.request_timeout 10m")
    peak_target = 200 if v6 else 150
    rows = [
        row("bouncer peak RSS (VmHWM)", f"{hwm:.1f} MiB", f"≤ {peak_target} MiB",
            hwm <= peak_target, note),
        row("bouncer RSS when done (VmRSS)", f"{rss:.1f} MiB"),
        row("bouncer CPU (utime+stime)", f"{cpu:.2f} s", "≤ 5 s", cpu <= 5),
        row("then one full reconcile: peak RSS / RSS after / CPU",
            f"{hwm_rec:.1f} MiB / {rss_rec:.1f} MiB / {cpu_rec:.2f} s", f"≤ {peak_target} MiB",
            hwm_rec <= peak_target, f"reconcile_interval {MILLION_RECONCILE_S} s; the pull is parsed into "
            "a new desired state beside the old one, then swapped in. Taken once the bouncer is "
            "in step again; the list read that follows a reconcile (1000 pages, 4 minutes at "
            "240 requests per minute) is not waited for: its new list view is about 23 MB"),
        row("list = the 500 000 highest-priority items",
            "yes" if missing == extra == 0 else f"no: {missing} missing, {extra} extra",
            "exact", missing == extra == 0,
            f"expected set: origin rank cscli > crowdsec > lists > CAPI, then remaining "
            f"duration; boundary {boundary[0][1]} {boundary[0][2]} s vs {boundary[1][1]} {boundary[1][2]} s"),
        row("start → list full, idle", fmt_s(t1 - t0), "", None, "wall time; not a target here"),
        row("Cloudflare requests to fill the list", f"{d['requests']} ({d['writes']} writes, {d['status_polls']} "
            f"status polls, {d['list_reads']} list reads, {d['other']} other); "
            f"{d['item_changes']} item changes"),
    ]
    return {"rows": rows, "values": values,
            "settings": {"op_latency_ms": fast, **settings}}


# ----------------------------------------------------------------------------- predecessor
def predecessor_record(ctx: Context) -> dict | None:
    pv = ctx.pred_values
    if "predecessor" in ctx.errors or not pv:
        return None
    values = {}
    rows = [row("what ran", "lapi_kv_sync.py, a copy patched only in per_page=1000 → 500 and "
                "CF_API → the emulator", "", None,
                "the Lists API refuses per_page over 500; run on the same LAPI and emulator as "
                "the bouncer (its own list, kv_sync_ban, in the same account; the bouncer "
                "stopped meanwhile), with a bouncer key, env LAPI_URL, LAPI_KEY, CF_ACCOUNT_ID, "
                "CF_API_TOKEN, CF_BAN_LIST_ID")]
    patch = "Its run times are measured on the same LAPI and emulator as the bouncer's latency."

    def ratio(num, scen, key, label):
        den, fresh = ctx.value(scen, key)
        if not den:
            return "n/a"
        return f"{num / den:.1f}×" + ("" if fresh else f" (bouncer {label} from an earlier run)")

    if "lat_p50_s" in pv:
        runs = pv["lat_runs_s"]
        values.update(lat_p50_s=pv["lat_p50_s"], lat_p95_s=pv["lat_p95_s"], lat_runs_s=runs)
        rows.append(row("latency p50 / p95 (modelled)",
                        f"{fmt_s(pv['lat_p50_s'])} / {fmt_s(pv['lat_p95_s'])}", "", None,
                        f"modelled: wait U(0, 120 s) for its 2-minute schedule + its measured run "
                        f"time for a one-decision change ({min(runs):.2f}–{max(runs):.2f} s over "
                        f"{len(runs)} runs). {patch}"))
        rows.append(row("ratio latency p50 (predecessor / bouncer)",
                        ratio(pv["lat_p50_s"], "latency", "add_p50_s", "latency")))
    for part, scen, n in (("burst", "burst", BURST_N), ("cold", "cold100k", COLD_N)):
        if part not in pv:
            continue
        p = pv[part]
        values[part] = {k: p[k] for k in ("runs", "wall", "cpu", "maxrss_mib", "requests",
                                          "writes", "status_polls", "list_reads", "item_changes")}
        label = f"{n:,}".replace(",", " ")
        rows.append(row(f"{scen}: {label} decisions → list matches",
                        f"{fmt_s(p['wall'])} wall, {p['runs']} run(s)", "", None,
                        "run time only (its 2-minute schedule adds up to 120 s before a run "
                        "starts); runs repeated until the list matched; exit codes " +
                        ", ".join(map(str, p["rcs"]))))
        rows.append(row(f"{scen}: CPU / peak RSS",
                        f"{p['cpu']:.2f} s / {p['maxrss_mib']:.1f} MiB", "", None,
                        "per child via wait4 (user+sys, ru_maxrss), summed over runs / max"))
        rows.append(row(f"{scen}: Cloudflare requests",
                        f"{p['requests']} ({p['writes']} writes, {p['status_polls']} status polls, "
                        f"{p['list_reads']} list reads); {p['item_changes']} item changes"))
        rows.append(row(f"{scen}: ratios requests / CPU / RSS (predecessor / bouncer)",
                        " / ".join([ratio(p["requests"], scen, "requests", "requests"),
                                    ratio(p["cpu"], scen, "cpu_s", "CPU"),
                                    ratio(p["maxrss_mib"], scen, "peak_rss_mib", "RSS")])))
    return {"rows": rows, "values": values, "settings": {"op_latency_ms": ctx.op_latency_ms},
            "duration_s": round(ctx.part_seconds.get("predecessor", 0.0), 1)}


# ----------------------------------------------------------------------------- micro
def micro(ctx: Context) -> dict:
    import subprocess
    log("micro: cargo bench --bench micro (Criterion, warm-up 1 s, measurement 3 s)")
    res = subprocess.run(
        ["cargo", "bench", "--locked", "--bench", "micro", "--",
         "--warm-up-time", "1", "--measurement-time", "3", "--noplot"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (ctx.work / "micro.log").write_text(res.stdout)
    if res.returncode != 0:
        raise BenchError(f"cargo bench failed ({res.returncode}): {res.stdout[-1500:]}")

    def estimate(group, name):
        path = REPO / "target/criterion" / group / name / "new/estimates.json"
        try:
            est = json.loads(path.read_text())
        except OSError as err:
            raise BenchError(f"micro: no Criterion estimate at {path}: {err}")
        point = (est.get("slope") or est["mean"])["point_estimate"]
        return point  # ns per iteration

    parse_ns = estimate("parse", "stream_100k")
    bench_meta = json.loads((REPO / "target/criterion/parse/stream_100k/new/benchmark.json").read_text())
    nbytes = (bench_meta.get("throughput") or {}).get("Bytes")
    if not nbytes:
        raise BenchError("micro: the parse bench reports no byte throughput")
    mbps = nbytes / (parse_ns / 1e9) / 1e6
    canon_ns = estimate("canonicalise", "values_100k") / 100_000
    diff_ms = estimate("diff", "items_100k") / 1e6
    pull_ms = estimate("restart", "full_pull_100k") / 1e6
    pages_ms = estimate("restart", "list_pages_200") / 1e6
    values = {"parse_mb_s": mbps, "parse_body_bytes": nbytes, "canon_ns": canon_ns,
              "diff_ms": diff_ms, "full_pull_ms": pull_ms, "list_pages_ms": pages_ms,
              "list_page_ms": pages_ms / 200}
    rows = [
        row("parse a 100 000-decision stream body", f"{mbps:.0f} MB/s", "≥ 200 MB/s", mbps >= 200,
            f"body {nbytes / 1e6:.1f} MB in LAPI's exact shape; StreamBody::parse + new_decisions(); "
            f"Criterion's estimate (slope, else mean), 10 samples, warm-up 1 s, measurement 3 s"),
        row("canonicalise one decision value", f"{canon_ns:.0f} ns", "", None,
            "Item::from_decision(value, 64) over 100 000 values (IPv4, ranges, IPv6)"),
        row("diff 100 000 items", f"{diff_ms:.1f} ms", "", None,
            "SyncState: replace_desired(100k) + replace_list(100k, half shared) + "
            "take_batch(1000) until None"),
        row("a full pull of 100 000 decisions, as it arrives", f"{pull_ms:.1f} ms", "", None,
            "the same body handed over in 16 KiB chunks to lapi::parse_reader (the parser "
            "behind stream_into), each decision into a new Desired"),
        row("read a 100 000-item list: 200 pages of 500", f"{pages_ms:.1f} ms "
            f"({pages_ms / 200:.2f} ms a page)", "", None,
            "answers in Cloudflare's shape (id, ip, comment, created_on, modified_on): "
            "decode_items_page, Item::from_cloudflare and ListView::insert for each item, "
            "then replace_list_with against a 100 000-item desired state"),
    ]
    return {"rows": rows, "values": values, "settings": {}}
