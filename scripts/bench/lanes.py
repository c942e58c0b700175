"""Benchmark scenarios of several lists and several accounts (driven by bench.py):

- `lists`: one account with a ban list, a challenge list and an ASN list. The latency of
  captcha decisions (to the challenge list) and of AS decisions (to the ASN list); a cold
  start and a burst with two lists sharing the account's capacity (bans kept first).
- `accounts`: two accounts on one LAPI; a cold start with both healthy, then with one of
  them failing (a refused token), and the latency of the healthy one meanwhile.
"""

from __future__ import annotations

import json
import random
import threading
import time
from http.client import HTTPConnection, HTTPException

import scenarios as sc
from harness import BenchError, Bouncer, Emulator, Lapi, http, ipv4_block, log, wait_until

LISTS_LATENCY_N = 60
LISTS_MEAN_GAP = 0.5
LISTS_CAPACITY = 8_000
LISTS_BANS = 6_000
LISTS_CAPTCHAS = 4_000
LISTS_BURST = 2_000
ACCOUNTS_N = 10_000
ACCOUNTS_LATENCY_N = 30
ALERT_SIZE = 1_000


def lists_config(lists: str, asn: bool = True) -> str:
    text = (
        '[[cloudflare.lists]]\nname = "crowdsec_ban"\ndecision_types = ["ban"]\n'
        '[[cloudflare.lists]]\nname = "crowdsec_challenge"\ndecision_types = ["captcha"]\n'
    )
    if asn:
        text += '[[cloudflare.lists]]\nname = "crowdsec_asn"\ndecision_types = ["ban"]\nscope = "as"\n'
    return lists.replace("LISTS", text)


class ListsBouncer(Bouncer):
    """The harness's bouncer, its `[cloudflare]` list replaced by `[[cloudflare.lists]]`
    (or its account by `[[cloudflare.accounts]]`)."""

    def __init__(self, *args, cloudflare: str, **kwargs):
        super().__init__(*args, **kwargs)
        text = self.config.read_text()
        head, rest = text.split("[cloudflare]\n", 1)
        shared, tail = rest.split("\n[admin]\n", 1)
        keep = [line for line in shared.splitlines()
                if line.split(" = ")[0] in ("batch_size", "capacity", "max_requests_per_minute")]
        body = cloudflare.replace("SHARED", "\n".join(keep))
        self.config.write_text(f"{head}[cloudflare]\n{body}\n[admin]\n{tail}")


def create_list(emu: Emulator, name: str, kind: str) -> str:
    status, body = http(
        "POST", f"{emu.url}/accounts/{emu.account_id}/rules/lists",
        body={"name": name, "kind": kind},
        headers={"Authorization": f"Bearer {emu.token}"},
    )
    if status != 200:
        raise BenchError(f"creating list {name}: {status} {body[:300]!r}")
    return json.loads(body)["result"]["id"]


def entries(state: dict, name: str) -> set[str]:
    for lst in state["lists"]:
        if lst["name"] == name:
            return {i["ip"] if "ip" in i else f"AS{i['asn']}" for i in lst["items"]}
    raise BenchError(f"emulator has no list {name}")


class Watcher:
    """Polls /__emulator/state every ~20 ms; records when each watched (list, value) first
    appears."""

    def __init__(self, emu: Emulator):
        self.emu = emu
        self.want: set[tuple[str, str]] = set()
        self.seen: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(timeout=10)

    def watch(self, name, value):
        with self.lock:
            self.want.add((name, value))

    def _run(self):
        conn = None
        while not self.stop_flag.is_set():
            try:
                if conn is None:
                    conn = HTTPConnection("127.0.0.1", self.emu.port, timeout=10)
                conn.request("GET", "/__emulator/state")
                state = json.loads(conn.getresponse().read())
                now = time.monotonic()
            except (OSError, HTTPException, json.JSONDecodeError) as err:
                if conn is not None:
                    conn.close()
                conn = None
                if self.emu.proc.poll() is not None:
                    self.error = err
                    return
                time.sleep(0.05)
                continue
            lists = {lst["name"]: lst for lst in state["lists"]}
            with self.lock:
                for name, value in self.want - self.seen.keys():
                    lst = lists.get(name)
                    if lst and value in {i["ip"] if "ip" in i else f"AS{i['asn']}"
                                         for i in lst["items"]}:
                        self.seen[(name, value)] = now
            time.sleep(0.02)

    def wait(self, what, keys, timeout):
        def done():
            if self.error:
                raise BenchError(f"{what}: polling the emulator failed: {self.error}")
            with self.lock:
                return all(k in self.seen for k in keys)

        wait_until(what, done, timeout, 0.05)


def post_many(lapi: Lapi, decisions: list[dict], scenario: str) -> None:
    for at in range(0, len(decisions), ALERT_SIZE):
        lapi.post_alert(decisions[at:at + ALERT_SIZE], scenario=scenario)


def decision(value, kind="ban", scope="Ip", origin="cscli"):
    return {"duration": "4h", "origin": origin, "scenario": "bench/lists", "scope": scope,
            "type": kind, "value": value}


def latency_of(lapi: Lapi, emu: Emulator, rng, adds: list[tuple[str, dict]]) -> list[float]:
    """Posts each decision (exponential gaps), returns add → on its list, in seconds."""
    posted = {}
    with Watcher(emu) as watcher:
        due = time.monotonic()
        for name, d in adds:
            due += rng.expovariate(1 / LISTS_MEAN_GAP)
            time.sleep(max(0.0, due - time.monotonic()))
            value = d["value"] if d["scope"] == "Ip" else f"AS{d['value']}"
            watcher.watch(name, value)
            lapi.post_alert([d], scenario="bench/lists")
            posted[(name, value)] = time.monotonic()
        watcher.wait("every decision on its list", list(posted), 60)
        return [watcher.seen[k] - t for k, t in posted.items()]


def wait_lists(emu: Emulator, want: dict[str, int], what: str, timeout: float) -> float:
    last = {}

    def check():
        state = emu.state()
        last["got"] = {n: len(entries(state, n)) for n in want}
        return time.monotonic() if last["got"] == want else None

    return wait_until(what, check, timeout, 0.25, last=lambda: f"{last.get('got')}")


def lists(ctx) -> dict:
    rows, values = [], {}
    lapi = Lapi(ctx.work, "lapi-lists")
    key_lat, key_cold = (lapi.add_bouncer(n) for n in ("cf-lists-latency", "cf-lists-cold"))
    lapi.start()
    rng = random.Random(20261203)
    try:
        # --- latency of captcha and AS decisions
        emu = Emulator(ctx.work, "emu-lists-latency", op_latency_ms=ctx.op_latency_ms,
                       capacity=100_000)
        create_list(emu, "crowdsec_challenge", "ip")
        create_list(emu, "crowdsec_asn", "asn")
        bouncer = ListsBouncer(ctx.work, "bouncer-lists-latency", lapi, emu, key=key_lat,
                               capacity=100_000, cloudflare=lists_config(
                                   f'api_url = "{emu.url}"\napi_token = "{emu.token}"\n'
                                   f'account_id = "{emu.account_id}"\nSHARED\nLISTS'))
        try:
            bouncer.start()
            bouncer.wait_in_step(0, "lists: the bouncer to start in step", 60)
            c0 = emu.counters()
            captchas = [("crowdsec_challenge", decision(ip, kind="captcha"))
                        for ip in ipv4_block("46.33.0.1", LISTS_LATENCY_N, stride=3)]
            log(f"lists: {LISTS_LATENCY_N} captcha decisions, gaps mean {LISTS_MEAN_GAP} s")
            lat_captcha = latency_of(lapi, emu, rng, captchas)
            asns = [("crowdsec_asn", decision(str(64512 + i), scope="AS"))
                    for i in range(LISTS_LATENCY_N)]
            log(f"lists: {LISTS_LATENCY_N} AS decisions")
            lat_as = latency_of(lapi, emu, rng, asns)
            c1 = emu.counters()
        finally:
            bouncer.close()
            emu.close()
        for label, lat, key in (("captcha → challenge list", lat_captcha, "captcha"),
                                ("AS ban → ASN list", lat_as, "as")):
            p50, p95 = sc.pct(lat, 50), sc.pct(lat, 95)
            values[f"{key}_p50_s"], values[f"{key}_p95_s"] = p50, p95
            met = p50 <= 2.0 and p95 <= 3.5
            rows.append(sc.row(f"latency, {label}: p50 / p95", f"{p50:.2f} s / {p95:.2f} s",
                               "≤ 2.0 s / ≤ 3.5 s", met,
                               f"{LISTS_LATENCY_N} decisions, one alert each, exponential gaps "
                               f"mean {LISTS_MEAN_GAP} s; update_frequency 1s"))
        writes = c1["writes"] - c0["writes"]
        rows.append(sc.row("latency: Cloudflare writes for the 120 adds", str(writes), "", None,
                           "three lists of one account, one writer: one bulk operation at a time"))
        values["latency_writes"] = writes

        # --- cold start and burst, two lists sharing the capacity
        emu = Emulator(ctx.work, "emu-lists-cold", op_latency_ms=ctx.op_latency_ms,
                       capacity=LISTS_CAPACITY)
        create_list(emu, "crowdsec_challenge", "ip")
        bans = [decision(ip, origin="CAPI") for ip in ipv4_block("47.0.0.1", LISTS_BANS)]
        captchas = [decision(ip, kind="captcha")
                    for ip in ipv4_block("48.0.0.1", LISTS_CAPTCHAS)]
        log(f"lists: {LISTS_BANS} bans (CAPI) and {LISTS_CAPTCHAS} captchas (cscli), "
            f"capacity {LISTS_CAPACITY}")
        post_many(lapi, captchas, "bench/lists-captcha")
        post_many(lapi, bans, "bench/lists-ban")
        bouncer = ListsBouncer(ctx.work, "bouncer-lists-cold", lapi, emu, key=key_cold,
                               capacity=LISTS_CAPACITY, max_rpm=240, cloudflare=lists_config(
                                   f'api_url = "{emu.url}"\napi_token = "{emu.token}"\n'
                                   f'account_id = "{emu.account_id}"\nSHARED\nLISTS', asn=False))
        try:
            started = time.monotonic()
            bouncer.start()
            want = {"crowdsec_ban": LISTS_BANS,
                    "crowdsec_challenge": LISTS_CAPACITY - LISTS_BANS}
            done = wait_lists(emu, want, "lists: cold start fills both lists", 180)
            cold_s = done - started
            cold_cpu = bouncer.cpu()
            c0 = emu.counters()
            log(f"lists: a burst of {LISTS_BURST} more bans, displacing the captchas")
            burst_at = time.monotonic()
            post_many(lapi, [decision(ip, origin="CAPI")
                             for ip in ipv4_block("49.0.0.1", LISTS_BURST)], "bench/lists-burst")
            done = wait_lists(emu, {"crowdsec_ban": LISTS_CAPACITY, "crowdsec_challenge": 0},
                              "lists: the burst's bans replace the captchas", 120)
            burst_s = done - burst_at
            c1 = emu.counters()
            burst_cpu = bouncer.cpu() - cold_cpu
            peak = bouncer.peak_rss_mib()
        finally:
            bouncer.close()
            emu.close()
        rows.append(sc.row(
            f"cold start: {LISTS_BANS} bans + {LISTS_CAPTCHAS} captchas → ban list {LISTS_BANS}, "
            f"challenge list {LISTS_CAPACITY - LISTS_BANS}", f"{cold_s:.2f} s", "", None,
            f"account capacity {LISTS_CAPACITY}: bans (CAPI) kept before captchas (cscli); "
            f"CPU {cold_cpu:.2f} s"))
        rows.append(sc.row(
            f"burst: {LISTS_BURST} more bans → ban list {LISTS_CAPACITY}, challenge list 0",
            f"{burst_s:.2f} s", "", None,
            f"writes {c1['writes'] - c0['writes']}, status polls "
            f"{c1['status_polls'] - c0['status_polls']}; CPU {burst_cpu:.2f} s; "
            f"peak RSS {peak:.1f} MiB"))
        rejected = c1["rejected_writes"]
        rows.append(sc.row("writes Cloudflare refused for capacity", str(rejected), "= 0",
                           rejected == 0, "the account's limit is never exceeded"))
        values.update(cold_s=cold_s, cold_cpu_s=cold_cpu, burst_s=burst_s, burst_cpu_s=burst_cpu,
                      burst_writes=c1["writes"] - c0["writes"], rejected_writes=rejected,
                      peak_rss_mib=peak)
    finally:
        lapi.close()
    return {"rows": rows, "values": values}


def accounts(ctx) -> dict:
    rows, values = [], {}
    lapi = Lapi(ctx.work, "lapi-accounts")
    keys = [lapi.add_bouncer(f"cf-accounts-{i}") for i in range(2)]
    lapi.start()
    rng = random.Random(20261204)
    post_many(lapi, [decision(ip) for ip in ipv4_block("50.0.0.1", ACCOUNTS_N)],
              "bench/accounts")
    try:
        for run, (key, b_token) in enumerate(((keys[0], None), (keys[1], "a-refused-token"))):
            a = Emulator(ctx.work, f"emu-accounts-a{run}", op_latency_ms=ctx.op_latency_ms,
                         capacity=100_000)
            b = Emulator(ctx.work, f"emu-accounts-b{run}", op_latency_ms=ctx.op_latency_ms,
                         capacity=100_000)
            account = ('[[cloudflare.accounts]]\nname = "{name}"\napi_url = "{url}"\n'
                       'account_id = "{account}"\napi_token = "{token}"\nlist_name = "crowdsec_ban"\n')
            text = "SHARED\n" + account.format(name="a", url=a.url, account=a.account_id,
                                               token=a.token)
            text += account.format(name="b", url=b.url, account=b.account_id,
                                   token=b_token or b.token)
            bouncer = ListsBouncer(ctx.work, f"bouncer-accounts-{run}", lapi, a, key=key,
                                   capacity=100_000, max_rpm=240, cloudflare=text)
            try:
                started = time.monotonic()
                bouncer.start()
                want = {ip for ip in ipv4_block("50.0.0.1", ACCOUNTS_N)}

                def filled(emu):
                    return emu.items("crowdsec_ban") == want

                done = wait_until(f"accounts run {run}: account a filled",
                                  lambda: time.monotonic() if filled(a) else None, 180, 0.25)
                a_s = done - started
                if b_token is None:
                    done = wait_until("accounts: account b filled",
                                      lambda: time.monotonic() if filled(b) else None, 180, 0.25)
                    b_s = done - started
                    rows.append(sc.row(
                        f"both accounts healthy: {ACCOUNTS_N} decisions → account a / b filled",
                        f"{a_s:.2f} s / {b_s:.2f} s", "", None,
                        "one LAPI stream, two writers; emulators of one account each"))
                    values.update(healthy_a_s=a_s, healthy_b_s=b_s)
                    continue
                lat = latency_of(lapi, a, rng, [
                    ("crowdsec_ban", decision(ip))
                    for ip in ipv4_block("51.0.0.1", ACCOUNTS_LATENCY_N, stride=3)])
                st = bouncer.status() or {}
                b_status = next((x for x in st.get("accounts", []) if x.get("name") == "b"), {})
                b_items = len(b.items("crowdsec_ban"))
                p50 = sc.pct(lat, 50)
                rows.append(sc.row(
                    f"account b refusing the token: {ACCOUNTS_N} decisions → account a filled",
                    f"{a_s:.2f} s", f"≈ healthy ({values['healthy_a_s']:.2f} s)",
                    a_s <= values["healthy_a_s"] * 1.5 + 2,
                    f"account b: {b_items} items, ready {b_status.get('ready')}, "
                    f"error {str(b_status.get('cloudflare_error'))[:80]}"))
                rows.append(sc.row(
                    "… meanwhile, account a's latency p50 / p95",
                    f"{p50:.2f} s / {sc.pct(lat, 95):.2f} s", "≤ 2.0 s / ≤ 3.5 s",
                    p50 <= 2.0 and sc.pct(lat, 95) <= 3.5,
                    f"{ACCOUNTS_LATENCY_N} adds, exponential gaps mean {LISTS_MEAN_GAP} s"))
                values.update(failing_a_s=a_s, failing_latency_p50_s=p50, failing_b_items=b_items)
            finally:
                bouncer.close()
                a.close()
                b.close()
    finally:
        lapi.close()
    return {"rows": rows, "values": values}
