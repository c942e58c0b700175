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
import json
import math
import random
import threading
import time
from pathlib import Path

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
        accepted, deleted = {}, {}
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
    finally:
        bouncer.close()
    values = {
        "add_p50_s": pct(add_lat, 50), "add_p95_s": pct(add_lat, 95), "add_max_s": max(add_lat),
        "del_p50_s": pct(del_lat, 50), "del_p95_s": pct(del_lat, 95), "del_max_s": max(del_lat),
        "adds_missed": len(missed.get("adds", {})), "removals_missed": len(missed.get("removals", {})),
        "requests": delta["requests"], "writes": delta["writes"],
        "status_polls": delta["status_polls"], "cpu_s": cpu, "peak_rss_mib": hwm,
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
        row("Cloudflare requests for 200 adds + 200 removes",
            f"{delta['requests']} ({delta['writes']} writes, {delta['status_polls']} status polls, "
            f"{delta['list_reads']} list reads, {delta['other']} other)"),
        row("bouncer CPU over the scenario", f"{cpu:.2f} s"),
    ]
    return {"rows": rows, "values": values,
            "settings": {"update_frequency": "1s", "op_latency_ms": ctx.op_latency_ms,
                         "batch_size": 1000, "capacity": 100_000, "max_requests_per_minute": 120}}


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
    names = [n for n in ("cold100k", "restart100k", "predecessor") if ctx.want(n)]
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


def cold(ctx, lapi, emu, key, want) -> dict:
    c0 = emu.counters()
    bouncer = Bouncer(ctx.work, "bouncer-cold", lapi, emu, key=key, **BIG)
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
    d = counter_delta(c0, emu.counters())
    floor = 2 * math.ceil(COLD_N / 1000)
    values = {"seconds": t1 - t0, "cpu_s": cpu, "peak_rss_mib": hwm, "rss_end_mib": rss, **d}
    rows = [
        row("start → all 100 000 on the list", fmt_s(t1 - t0), "", None,
            "seeded via SQLite; capacity 1 000 000 (bouncer and emulator), "
            "max_requests_per_minute 240, batch_size 1000"),
        row("bouncer CPU (utime+stime)", f"{cpu:.2f} s", "≤ 0.5 s", cpu <= 0.5),
        row("bouncer peak RSS (VmHWM)", f"{hwm:.1f} MiB", "≤ 40 MiB", hwm <= 40,
            f"RSS when done (VmRSS): {rss:.1f} MiB"),
        row("Cloudflare requests to fill the list", f"{d['requests']} ({d['writes']} writes, {d['status_polls']} "
            f"status polls, {d['list_reads']} list reads, {d['other']} other)",
            f"writes + polls ≤ {1.2 * floor:.0f}", d["writes"] + d["status_polls"] <= 1.2 * floor),
        row("item changes", str(d["item_changes"]), f"= {COLD_N}", d["item_changes"] == COLD_N),
    ]
    return {"rows": rows, "values": values, "settings": {"op_latency_ms": ctx.op_latency_ms, **BIG}}


def restart(ctx, lapi, emu, key, want) -> dict:
    c0 = emu.counters()
    bouncer = Bouncer(ctx.work, "bouncer-restart", lapi, emu, key=key, **BIG)
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
    d = counter_delta(c0, emu.counters())
    expected = math.ceil(COLD_N / PAGE) + 1
    values = {"seconds": t1 - t0, "cpu_s": cpu, "peak_rss_mib": hwm, "rss_end_mib": rss, **d}
    rows = [
        row("start → list read, idle", fmt_s(t1 - t0), "", None,
            "right after cold100k, LAPI and list in step; /status listed_items = 100000, "
            "nothing pending"),
        row("writes", str(d["writes"]), "= 0", d["writes"] == 0),
        row("Cloudflare requests", f"{d['requests']} ({d['list_reads']} list reads, "
            f"{d['other']} other, {d['status_polls']} status polls)",
            f"= {expected} ({expected - 1} pages + lookup)", d["requests"] == expected),
        row("bouncer CPU", f"{cpu:.2f} s"),
        row("bouncer peak RSS (VmHWM)", f"{hwm:.1f} MiB", "", None,
            f"RSS when idle (VmRSS): {rss:.1f} MiB"),
    ]
    return {"rows": rows, "values": values, "settings": {"op_latency_ms": ctx.op_latency_ms, **BIG}}


# ----------------------------------------------------------------------------- group C
ORIGIN_RANK = {"cscli": 0, "crowdsec": 1, "lists": 2, "CAPI": 3}


def million_decisions():
    """1M IPv4 bans: 30% cscli, 30% crowdsec, 40% CAPI, each with a distinct remaining
    duration (seconds), shuffled so neither address order nor origin order predicts it."""
    rng = random.Random(1_000_000)
    n_cscli, n_crowdsec = MILLION_N * 3 // 10, MILLION_N * 3 // 10
    origins = (["cscli"] * n_cscli + ["crowdsec"] * n_crowdsec
               + ["CAPI"] * (MILLION_N - n_cscli - n_crowdsec))
    rng.shuffle(origins)
    secs = [3600 + 2 * i for i in range(MILLION_N)]  # 1 h to ~24 days, 2 s apart
    rng.shuffle(secs)
    base = 0x66000001  # 102.0.0.1
    return [(v4(base + i), origins[i], secs[i]) for i in range(MILLION_N)]


def group_c(ctx: Context):
    if not ctx.want("million"):
        return
    log("== group C (million)")
    lapi = Lapi(ctx.work, "lapi-c")
    key_b = lapi.add_bouncer("cf-bouncer")
    lapi.start()
    fast = "50..200"
    emu = Emulator(ctx.work, "emu-c", op_latency_ms=fast, capacity=MILLION_CAPACITY)
    try:
        run_scenario(ctx, "million", lambda: million(ctx, lapi, emu, key_b, fast))
    finally:
        emu.close()
        lapi.close()


def million(ctx, lapi, emu, key, fast) -> dict:
    rows_in = million_decisions()
    t = time.monotonic()
    lapi.seed(iter(rows_in), scenario="bench/million")
    log(f"million: seeded {MILLION_N} decisions in {time.monotonic() - t:.1f} s")
    ranked = sorted(rows_in, key=lambda r: (ORIGIN_RANK[r[1]], -r[2]))
    want = {r[0] for r in ranked[:MILLION_CAPACITY]}
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
        bouncer.wait_quietly("million: the bouncer to fill the list and be idle",
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
        bouncer.wait_quietly("million: one reconcile", lambda: bouncer.log_count(
            "full pull from LAPI") > pulls and bouncer.in_step(MILLION_CAPACITY), 300, every=5)
        cpu_rec = bouncer.cpu() - cpu
        hwm_rec, rss_rec = bouncer.peak_rss_mib(), bouncer.rss_mib()
    finally:
        bouncer.close()
    log(f"million: the bouncer reports {MILLION_CAPACITY} listed after {t1 - t0:.1f} s; checking the list")
    on_list = emu.items("crowdsec_ban")
    d = counter_delta(c0, c1)
    missing, extra = len(want - on_list), len(on_list - want)
    values = {"seconds": t1 - t0, "cpu_s": cpu, "peak_rss_mib": hwm, "rss_end_mib": rss,
              "reconcile_cpu_s": cpu_rec, "reconcile_peak_rss_mib": hwm_rec,
              "reconcile_rss_end_mib": rss_rec, "missing": missing,
              "extra": extra, "left_out": st.get("left_out") if st else None, **d}
    note = (f"1 000 000 IPv4 bans (30% cscli, 30% crowdsec, 40% CAPI, distinct durations); "
            f"capacity 500 000 (bouncer and emulator); emulator op latency {fast} ms and "
            f"batch_size 10000 to fit the time budget (RSS/CPU are the figures here, not wall "
            f"time); crowdsec.request_timeout 10m")
    rows = [
        row("bouncer peak RSS (VmHWM)", f"{hwm:.1f} MiB", "≤ 256 MiB", hwm <= 256, note),
        row("bouncer RSS when done (VmRSS)", f"{rss:.1f} MiB"),
        row("bouncer CPU (utime+stime)", f"{cpu:.2f} s", "≤ 5 s", cpu <= 5),
        row("then one full reconcile: peak RSS / RSS after / CPU",
            f"{hwm_rec:.1f} MiB / {rss_rec:.1f} MiB / {cpu_rec:.2f} s", "≤ 256 MiB",
            hwm_rec <= 256, f"reconcile_interval {MILLION_RECONCILE_S} s; the pull is parsed into "
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
    values = {"parse_mb_s": mbps, "parse_body_bytes": nbytes, "canon_ns": canon_ns,
              "diff_ms": diff_ms}
    rows = [
        row("parse a 100 000-decision stream body", f"{mbps:.0f} MB/s", "≥ 200 MB/s", mbps >= 200,
            f"body {nbytes / 1e6:.1f} MB in LAPI's exact shape; StreamBody::parse + new_decisions(); "
            f"Criterion's estimate (slope, else mean), 10 samples, warm-up 1 s, measurement 3 s"),
        row("canonicalise one decision value", f"{canon_ns:.0f} ns", "", None,
            "Item::from_decision(value, 64) over 100 000 values (IPv4, ranges, IPv6)"),
        row("diff 100 000 items", f"{diff_ms:.1f} ms", "", None,
            "SyncState: replace_desired(100k) + replace_list(100k, half shared) + "
            "take_batch(1000) until None"),
    ]
    return {"rows": rows, "values": values, "settings": {}}
