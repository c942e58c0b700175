"""Processes the benchmark drives: a real CrowdSec LAPI (API-only, in a temp dir, like
scripts/demo.sh), the Cloudflare Lists API emulator, the bouncer, and the predecessor
script. Python 3.11 standard library only.

Every child is started in its own process group, recorded in CHILDREN, and stopped by
PID (SIGTERM, then SIGKILL) in `stop_all`, which bench.py runs at exit. Nothing is ever
killed by name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CROWDSEC_BIN = REPO / "target/crowdsec/usr/bin"
RELEASE = REPO / "target/release"
BOUNCER_BIN = RELEASE / "crowdsec-cloudflare-iplist-bouncer"
EMULATOR_BIN = RELEASE / "cf-lists-emulator"
CLK_TCK = os.sysconf("SC_CLK_TCK")

CHILDREN: list[subprocess.Popen] = []


class BenchError(Exception):
    """Something broke (not a missed target): the run exits non-zero."""


def log(msg: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv, *, log_path: Path, cwd=None, env=None, stdout=None) -> subprocess.Popen:
    out = open(log_path, "ab")
    proc = subprocess.Popen(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else out,
        stderr=out,
        start_new_session=True,
    )
    out.close()
    CHILDREN.append(proc)
    return proc


def stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """SIGTERM by PID, SIGKILL after `timeout`; reaps it."""
    if proc is None or proc.poll() is not None:
        if proc in CHILDREN:
            CHILDREN.remove(proc)
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
    if proc in CHILDREN:
        CHILDREN.remove(proc)


def stop_all() -> None:
    for proc in list(reversed(CHILDREN)):
        try:
            stop(proc, timeout=10)
        except Exception as err:  # keep stopping the others
            log(f"could not stop pid {proc.pid}: {err}")


def http(method, url, *, body=None, headers=None, timeout=30.0):
    """(status, bytes). HTTP errors are returned, not raised; transport errors raise."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_until(what: str, check, timeout: float, interval: float = 0.1, last=lambda: ""):
    """Calls check() until it returns a truthy value; BenchError after `timeout` seconds,
    naming what was awaited and what was last seen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except (OSError, urllib.error.URLError, json.JSONDecodeError) as err:
            value = None
            seen = f"error: {err}"
        else:
            seen = None
        if value:
            return value
        if time.monotonic() > deadline:
            extra = seen or last()
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}; last seen: {extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------- process stats
def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {key} in /proc/{pid}/status")


# --------------------------------------------------------------------------- LAPI
LAPI_CONFIG = """common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: .
config_paths:
  config_dir: {d}/
  data_dir: {d}/data/
  simulation_path: {d}/simulation.yaml
  hub_dir: {d}/hub/
  index_path: {d}/hub/.index.json
  notification_dir: {d}/notifications/
  plugin_dir: {plugins}/
cscli:
  output: human
  color: "no"
db_config:
  log_level: warning
  type: sqlite
  db_path: {d}/data/crowdsec.db
  use_wal: true
api:
  client:
    insecure_skip_verify: false
    credentials_path: {d}/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:{port}
    profiles_path: {d}/profiles.yaml
    trusted_ips:
      - 127.0.0.1
      - "::1"
prometheus:
  enabled: false
"""

PROFILES = (
    "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && "
    'Alert.GetScope() == "Ip"\ndecisions:\n - type: ban\n   duration: 4h\non_success: break\n'
)

MACHINE_ID = "bench-machine"
MACHINE_PASSWORD = "bench-machine-password-0123456789"
GO_TIME = "%Y-%m-%d %H:%M:%S.%f+00:00"  # what Go writes in the SQLite text columns


def go_time(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime(GO_TIME)


def ip_ints(ip: str) -> tuple[int, int, int, int, int]:
    """(ip_size, start_ip, end_ip, start_suffix, end_suffix) as types.Addr2Ints stores them."""
    shift = 9223372036854775807
    if ":" not in ip:
        a, b, c, d = map(int, ip.split("."))
        n = (a << 24 | b << 16 | c << 8 | d) - shift
        return 4, n, n, -shift, -shift
    value = int(ipaddress.ip_address(ip))
    hi, lo = (value >> 64) - shift, (value & ((1 << 64) - 1)) - shift
    return 16, hi, hi, lo, lo


class Lapi:
    """A real LAPI in its own temp dir. Start with `start()`; `close()` stops it."""

    def __init__(self, workdir: Path, name: str):
        self.dir = workdir / name
        for sub in ("data", "hub", "notifications"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.jwt: str | None = None
        self.jwt_at = 0.0
        plugins = REPO / "target/crowdsec/usr/lib/crowdsec/plugins"
        (self.dir / "config.yaml").write_text(
            LAPI_CONFIG.format(d=self.dir, plugins=plugins, port=self.port)
        )
        (self.dir / "profiles.yaml").write_text(PROFILES)
        (self.dir / "simulation.yaml").write_text("simulation: off\n")
        self.cscli(
            "machines", "add", MACHINE_ID, "--password", MACHINE_PASSWORD, "--force",
            "-f", self.dir / "local_api_credentials.yaml", "--url", self.url + "/",
        )
        self.db_path = self.dir / "data/crowdsec.db"

    def cscli(self, *args) -> str:
        argv = [CROWDSEC_BIN / "cscli", "-c", self.dir / "config.yaml", "--error", *args]
        res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise BenchError(f"cscli {' '.join(map(str, args))} failed: {res.stderr.strip()}")
        return res.stdout

    def add_bouncer(self, name: str) -> str:
        key = self.cscli("bouncers", "add", name, "-o", "raw").strip()
        if not key:
            raise BenchError(f"cscli bouncers add {name} printed no key")
        return key

    def start(self) -> None:
        log(f"starting LAPI on {self.url} (dir {self.dir})")
        log_path = self.dir / "lapi.log"
        self.proc = spawn(
            [CROWDSEC_BIN / "crowdsec", "-c", self.dir / "config.yaml", "-no-cs", "-no-capi"],
            log_path=log_path,
            cwd=self.dir,
        )

        def ready():
            if self.proc.poll() is not None:
                raise BenchError(f"LAPI exited during start: {log_path.read_text()[-2000:]}")
            text = log_path.read_text(errors="replace")
            if "address already in use" in text:
                raise BenchError(f"LAPI port {self.port} taken: {text[-500:]}")
            if "Local API listening on" not in text:
                return False
            status, body = http("GET", self.url + "/health", timeout=2)
            return status == 200 and b'"up"' in body

        wait_until("LAPI /health", ready, timeout=60, last=lambda: log_path.read_text()[-500:])
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise BenchError(f"LAPI died right after start: {log_path.read_text()[-2000:]}")

    def close(self) -> None:
        stop(self.proc)
        self.proc = None

    # --- machine API (docs/lapi.md §5.1)
    def token(self) -> str:
        if self.jwt is None or time.monotonic() - self.jwt_at > 1800:
            status, body = http(
                "POST", self.url + "/v1/watchers/login",
                body={"machine_id": MACHINE_ID, "password": MACHINE_PASSWORD},
            )
            if status != 200:
                raise BenchError(f"LAPI login failed: {status} {body[:300]!r}")
            self.jwt = json.loads(body)["token"]
            self.jwt_at = time.monotonic()
        return self.jwt

    def post_alert(self, decisions: list[dict], scenario="bench/latency") -> None:
        """One alert carrying `decisions`; returns when LAPI answered 201."""
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        first = decisions[0]
        alert = [{
            "scenario": scenario, "scenario_hash": "", "scenario_version": "",
            "message": "bench", "events_count": 1, "events": [], "capacity": 0,
            "leakspeed": "0", "simulated": False, "start_at": now, "stop_at": now,
            "source": {"scope": first.get("scope", "Ip"), "value": first["value"]},
            "decisions": decisions,
        }]
        status, body = http(
            "POST", self.url + "/v1/alerts", body=alert,
            headers={"Authorization": f"Bearer {self.token()}"}, timeout=120,
        )
        if status != 201:
            raise BenchError(f"POST /v1/alerts answered {status}: {body[:300]!r}")

    def delete_ip(self, ip: str) -> None:
        """Soft delete (until = now) of every decision on `ip`."""
        status, body = http(
            "DELETE", f"{self.url}/v1/decisions?ip={ip}",
            headers={"Authorization": f"Bearer {self.token()}"},
        )
        if status != 200:
            raise BenchError(f"DELETE /v1/decisions?ip={ip} answered {status}: {body[:300]!r}")

    def active_ip_bans(self, key: str) -> set[str]:
        """Active Ip-scope ban values through the live endpoint (the predecessor's view)."""
        status, body = http(
            "GET", self.url + "/v1/decisions", headers={"X-Api-Key": key}, timeout=300
        )
        if status != 200:
            raise BenchError(f"GET /v1/decisions answered {status}")
        return {
            d["value"] for d in (json.loads(body) or [])
            if d.get("scope", "").lower() == "ip" and d.get("type") == "ban"
        }

    # --- direct SQLite seeding (docs/lapi.md §6), safe while LAPI runs (WAL)
    def seed(self, rows, scenario="bench/seed") -> int:
        """Inserts decisions straight into the DB in one transaction. `rows` yields
        (value, origin, seconds_left); every one is an Ip-scope ban. Returns the count."""
        now = dt.datetime.now(dt.timezone.utc)
        stamp = go_time(now)
        con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout = 60000")
            # Up to 1 GB of page cache: the three decision indexes then stay in memory,
            # which halves the time of a 1M-row insert (16 s -> 9 s here).
            con.execute("PRAGMA cache_size = -1000000")
            con.execute("BEGIN IMMEDIATE")
            cur = con.execute(
                "INSERT INTO alerts (created_at, updated_at, scenario, bucket_id, message,"
                " events_count, started_at, stopped_at, source_ip, source_range, source_as_number,"
                " source_as_name, source_country, source_latitude, source_longitude, source_scope,"
                " source_value, capacity, leak_speed, scenario_version, scenario_hash, simulated)"
                " VALUES (?, ?, ?, '', 'bench seed', 1, ?, ?, '', '', '', '', '', 0, 0, 'Ip',"
                " '', 0, '0', '', '', 0)",
                (stamp, stamp, scenario, stamp, stamp),
            )
            alert_id = cur.lastrowid
            base = now
            # created_at one second ahead: a bouncer poll that starts while this transaction
            # is open sets its last_pull after `now`; a created_at behind it would hide the
            # rows from every later delta. Ahead, they show in a delta or two (idempotent).
            stamp = go_time(now + dt.timedelta(seconds=1))

            epoch = base.timestamp()

            def gen():
                for value, origin, seconds_left in rows:
                    size, s_ip, e_ip, s_sfx, e_sfx = ip_ints(value)
                    yield (stamp, stamp, epoch + seconds_left, scenario, "ban", s_ip, e_ip,
                           s_sfx, e_sfx, size, "Ip", value, origin, alert_id)

            # `until` in Go's text form, whole seconds (as LAPI stores API-created ones).
            cur = con.executemany(
                "INSERT INTO decisions (created_at, updated_at, until, scenario, type,"
                " start_ip, end_ip, start_suffix, end_suffix, ip_size, scope, value, origin,"
                " simulated, alert_decisions) VALUES (?, ?,"
                " strftime('%Y-%m-%d %H:%M:%S', ?, 'unixepoch') || '+00:00',"
                " ?,?,?,?,?,?,?,?,?,?,0,?)",
                gen(),
            )
            count = cur.rowcount
            con.execute("COMMIT")
        finally:
            con.close()
        return count


def ipv4_block(start: str, count: int, stride: int = 1) -> list[str]:
    """`count` distinct public-looking IPv4 addresses from `start`."""
    base = int(ipaddress.IPv4Address(start))
    return [v4(base + i * stride) for i in range(count)]


def v4(n: int) -> str:
    return f"{n >> 24}.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


# --------------------------------------------------------------------------- emulator
class Emulator:
    """cf-lists-emulator with two lists: `crowdsec_ban` (the bouncer's) and `kv_sync_ban`
    (the predecessor's), sharing one account as both would on Cloudflare."""

    def __init__(self, workdir: Path, name: str, *, op_latency_ms: str, capacity: int,
                 op_item_cost_us: int = 0):
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.admin = f"http://127.0.0.1:{self.port}/__emulator"
        out = self.dir / "emulator.out"
        log(f"starting emulator on 127.0.0.1:{self.port} (op latency {op_latency_ms} ms "
            f"+ {op_item_cost_us} µs an item, capacity {capacity})")
        with open(out, "wb") as stdout:
            self.proc = spawn(
                [EMULATOR_BIN, "--listen", f"127.0.0.1:{self.port}", "--list-name", "crowdsec_ban",
                 "--list-name", "kv_sync_ban", "--op-latency-ms", op_latency_ms,
                 "--op-item-cost-us", str(op_item_cost_us), "--capacity", str(capacity)],
                log_path=self.dir / "emulator.log", stdout=stdout,
            )

        def started():
            if self.proc.poll() is not None:
                raise BenchError(f"emulator exited: {(self.dir / 'emulator.log').read_text()[-1000:]}")
            return out.read_text().strip()

        line = wait_until("the emulator's start line", started, timeout=30)
        fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        self.url, self.account_id, self.token = fields["url"], fields["account_id"], fields["token"]
        state = self.state()
        self.list_ids = {lst["name"]: lst["id"] for lst in state["lists"]}

    def state(self, timeout=120.0) -> dict:
        status, body = http("GET", self.admin + "/state", timeout=timeout)
        if status != 200:
            raise BenchError(f"emulator state answered {status}")
        return json.loads(body)

    def counters(self) -> dict:
        return self.state()["counters"]

    def operations(self) -> list:
        """The timeline of every bulk operation (see the emulator's admin docs)."""
        status, body = http("GET", self.admin + "/operations", timeout=60)
        if status != 200:
            raise BenchError(f"emulator operations answered {status}")
        return json.loads(body)["operations"]

    def switch(self, **faults) -> None:
        """POST /__emulator/faults with these switches (e.g. rate_limit, rate_limit_headers)."""
        status, body = http("POST", self.admin + "/faults", body=faults)
        if status != 200:
            raise BenchError(f"emulator faults {faults} answered {status}: {body[:200]!r}")

    def items(self, list_name: str, state: dict | None = None) -> set[str]:
        state = state or self.state()
        for lst in state["lists"]:
            if lst["name"] == list_name:
                return {item["ip"] for item in lst["items"]}
        raise BenchError(f"emulator has no list {list_name}")

    def close(self) -> None:
        stop(self.proc)


COUNTER_KEYS = ("requests", "writes", "status_polls", "list_reads", "other", "item_changes",
                "rejected_writes", "writes_while_pending", "rate_limited", "per_page_over_max")


def counter_delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in COUNTER_KEYS}


# --------------------------------------------------------------------------- bouncer
BOUNCER_CONFIG = """[crowdsec]
api_url = "{lapi}/"
api_key = "{key}"
update_frequency = "{update_frequency}"
request_timeout = "{lapi_timeout}"

[cloudflare]
api_url = "{cf_url}"
api_token = "{cf_token}"
account_id = "{account}"
list_id = "{list_id}"
batch_size = {batch_size}
capacity = {capacity}
max_requests_per_minute = {max_rpm}

[admin]
listen = "127.0.0.1:{admin_port}"

[sync]
reconcile_interval = "{reconcile}"
max_batch = {max_batch}
"""


class Bouncer:
    def __init__(self, workdir: Path, name: str, lapi: Lapi, emu: Emulator, *, key: str,
                 update_frequency="1s", lapi_timeout="2m", batch_size=1000, capacity=10000,
                 max_rpm=120, reconcile="10m", max_batch=10_000, env: dict | None = None):
        self.env = dict(os.environ, **(env or {})) if env else None
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.admin_port = free_port()
        self.settings = dict(update_frequency=update_frequency, lapi_timeout=lapi_timeout,
                             batch_size=batch_size, capacity=capacity, max_rpm=max_rpm,
                             reconcile=reconcile, max_batch=max_batch)
        self.config = self.dir / "bouncer.toml"
        self.config.write_text(BOUNCER_CONFIG.format(
            lapi=lapi.url, key=key, cf_url=emu.url, cf_token=emu.token, account=emu.account_id,
            list_id=emu.list_ids["crowdsec_ban"], admin_port=self.admin_port, **self.settings))
        self.config.chmod(0o600)
        self.log_path = self.dir / "bouncer.log"
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> None:
        log(f"starting the bouncer (admin on 127.0.0.1:{self.admin_port}, log {self.log_path})")
        self.started_at = time.monotonic()
        # BENCH_WRAP runs the bouncer under a profiler, e.g. "heaptrack -o /tmp/bouncer"
        # (CPU and RSS figures are then the profiler's, not the bouncer's).
        wrap = os.environ.get("BENCH_WRAP", "").split()
        self.proc = spawn([*wrap, BOUNCER_BIN, "-c", self.config, "run"], log_path=self.log_path,
                          env=self.env)

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"the bouncer exited; its log ends: {self.log_tail()}")

    def log_count(self, marker: str) -> int:
        """How many lines of the bouncer's log contain `marker`."""
        try:
            return self.log_path.read_text(errors="replace").count(marker)
        except OSError:
            return 0

    def log_tail(self, n=15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def status(self) -> dict | None:
        self.alive()
        try:
            status, body = http("GET", f"http://127.0.0.1:{self.admin_port}/status", timeout=5)
        except OSError:
            return None
        return json.loads(body) if status == 200 else None

    def metrics(self) -> str:
        status, body = http("GET", f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5)
        return body.decode() if status == 200 else ""

    def wait_quietly(self, what: str, check, timeout: float, markers=("caught up", "read the list"),
                     every: float = 10.0):
        """Waits for check() without disturbing the bouncer's CPU figures: /status costs it
        about a millisecond per call with 100k decisions (a scan of its state), so check()
        runs only when the bouncer logs one of `markers` (then every 0.25 s for 5 s), and
        otherwise every `every` seconds as a backstop. Returns check()'s value."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        deadline = time.monotonic() + timeout
        last_check, eager_until, seen = time.monotonic(), 0.0, ""
        while True:
            self.alive()
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk.endswith(b"\n") or len(chunk) > 1 << 20:
                offset += len(chunk)
                text = chunk.decode(errors="replace")
                if any(m in text for m in markers):
                    eager_until = time.monotonic() + 5
            now = time.monotonic()
            period = 0.25 if now < eager_until else every
            if now - last_check >= period:
                last_check = now
                value = check()
                if value:
                    return value
                seen = str(value)
            if now > deadline:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}; "
                                 f"bouncer log: {self.log_tail(5)}")
            time.sleep(0.05)

    def in_step(self, listed: int) -> dict | None:
        st = self.status()
        if st is None:
            return None
        primed = st["ready"] or not (st.get("reason") or "").startswith("not synced")
        return st if (primed and st["listed_items"] == listed and st["pending_adds"] == 0
                      and st["pending_removes"] == 0
                      and st["desired_items"] - st["left_out"] == listed
                      and st["last_lapi_poll_seconds_ago"] is not None) else None

    def wait_in_step(self, listed: int, what: str, timeout: float, interval=0.1) -> dict:
        """Polls /status until the bouncer is primed (a full pull and a list read done),
        has `listed` items on the list, all it admits listed, and nothing pending."""
        last = {}

        def check():
            last["status"] = st = self.in_step(listed)
            return st

        return wait_until(what, check, timeout, interval,
                          last=lambda: f"{self.status()}; bouncer log: {self.log_tail(5)}")

    def cpu(self) -> float:
        self.alive()
        return proc_cpu_seconds(self.proc.pid)

    def peak_rss_mib(self) -> float:
        self.alive()
        return proc_status_kib(self.proc.pid, "VmHWM") / 1024

    def rss_mib(self) -> float:
        self.alive()
        return proc_status_kib(self.proc.pid, "VmRSS") / 1024

    def close(self) -> None:
        stop(self.proc, timeout=30)
        self.proc = None


# --------------------------------------------------------------------------- predecessor
PREDECESSOR_SRC = Path(os.environ.get(
    "BENCH_PREDECESSOR", REPO.parent / "shared/reference/lapi_kv_sync.py"))


def patch_predecessor(dest: Path, cf_api: str) -> Path:
    """A copy of lapi_kv_sync.py changed in exactly two values: per_page=1000 -> 500 (the
    Lists API refuses more than 500) and CF_API -> the emulator."""
    if not PREDECESSOR_SRC.exists():
        raise BenchError(f"predecessor script not found at {PREDECESSOR_SRC} (set BENCH_PREDECESSOR)")
    src = PREDECESSOR_SRC.read_text()
    old_api = 'CF_API = "https://api.cloudflare.com/client/v4"'
    if src.count("per_page=1000") != 1 or src.count(old_api) != 1:
        raise BenchError("lapi_kv_sync.py changed: cannot find the two values to patch")
    src = src.replace("per_page=1000", "per_page=500").replace(old_api, f'CF_API = "{cf_api}"')
    dest.write_text(src)
    return dest


class Predecessor:
    """Runs the patched lapi_kv_sync.py as a child and measures each run with wait4:
    wall time, CPU (user+sys) and peak RSS of that child alone."""

    def __init__(self, workdir: Path, lapi: Lapi, emu: Emulator, key: str):
        self.dir = workdir / "predecessor"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.script = patch_predecessor(self.dir / "lapi_kv_sync.py", emu.url)
        self.env = dict(os.environ, LAPI_URL=lapi.url, LAPI_KEY=key,
                        CF_ACCOUNT_ID=emu.account_id, CF_API_TOKEN=emu.token,
                        CF_BAN_LIST_ID=emu.list_ids["kv_sync_ban"])
        self.env.pop("PUSHGATEWAY_URL", None)
        self.log_path = self.dir / "runs.log"

    def run_once(self, timeout: float = 300.0) -> dict:
        start = time.monotonic()
        with open(self.log_path, "ab") as out:
            proc = subprocess.Popen([sys.executable, str(self.script)], env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        CHILDREN.append(proc)
        deadline = start + timeout
        pid = 0
        try:
            while True:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"predecessor run did not end within {timeout:.0f}s")
                time.sleep(0.02)
        finally:
            if not pid:
                stop(proc)
        proc.returncode = os.waitstatus_to_exitcode(status)
        CHILDREN.remove(proc)
        return {"wall": time.monotonic() - start, "cpu": ru.ru_utime + ru.ru_stime,
                "maxrss_mib": ru.ru_maxrss / 1024, "rc": proc.returncode}

    def converge(self, desired: set[str], emu: Emulator, what: str, max_runs=8,
                 timeout: float = 600.0) -> dict:
        """Runs it until the kv_sync_ban list equals `desired`; totals over the runs."""
        total = {"runs": 0, "wall": 0.0, "cpu": 0.0, "maxrss_mib": 0.0, "rcs": []}
        deadline = time.monotonic() + timeout
        while True:
            run = self.run_once(timeout=max(30.0, deadline - time.monotonic()))
            total["runs"] += 1
            total["wall"] += run["wall"]
            total["cpu"] += run["cpu"]
            total["maxrss_mib"] = max(total["maxrss_mib"], run["maxrss_mib"])
            total["rcs"].append(run["rc"])
            on_list = emu.items("kv_sync_ban")
            log(f"{what}: predecessor run {total['runs']}: {run['wall']:.1f}s wall, "
                f"{run['cpu']:.2f}s CPU, exit {run['rc']}, list {len(on_list)}/{len(desired)}")
            if on_list == desired:
                return total
            if total["runs"] >= max_runs or time.monotonic() > deadline:
                raise BenchError(
                    f"{what}: the predecessor's list never converged after {total['runs']} runs "
                    f"({len(on_list)} items, {len(desired)} wanted, missing "
                    f"{len(desired - on_list)}, extra {len(on_list - desired)}); log {self.log_path}")
