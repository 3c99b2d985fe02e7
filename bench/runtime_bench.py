"""The daemon end to end: events/s, event-to-write latency, and request-trigger latency.

The daemon, `seamline run --dev --processes 2` by default, runs as a real subprocess with its own
state store (--state, below). Its target, the shop, is `bench/wire.py sink` in a process of its own (a lean
HTTP server: the contract fakes cost ~200 us of CPU per request, taken from the daemon on a 2-core
machine); the erp answering `/price` is a FakeHttpServer in this process. Then:

  1. throughput: N events (default 10,000, distinct SKUs) posted to the webhook by a lean load
     generator (bench/wire.py: asyncio protocols, C keep-alive connections, each sending when its last
     post was answered), each through the durable inbox, a JSONata transform and a PUT to the shop
     with the ledger; timed from the first post to the last write the shop took (its own clock
     stamp). Every write is checked to have arrived exactly once. References, in the same run:
     - harness alone: the generator PUTs straight to the shop (what the harness can do);
     - the floor, "the same work with no engine": `bench/wire.py relay`, an aiohttp server that takes
       the same webhook, shapes the event in Python and PUTs it to the shop with aiohttp, then answers
       202 (no inbox, no transform language, no ledger; uvloop like the daemon). Twice: in one process,
       and in as many processes as the daemon's --processes. The engine's ratio that counts is to the
       second: the same cores for the same work. Those relays share one port with SO_REUSEPORT, as a
       hand-written service scaled to N cores would behind one webhook URL (the daemon has one URL too);
       the kernel spreads the generator's connections over them by a hash of their addresses, about
       C/N each, give or take a few. The split need not be even: a relay answers after its PUT, so with
       a dozen or more connections each it is kept busy, and a closed loop moves as fast as the relays
       together can serve. (Dealing the connections to N ports in turn from the generator would split
       them exactly, but would give the floor a load balancer the engine does not get.)
  2. latency at a fixed rate (default 500 events/s for 10 s, open loop, aiohttp): each event carries
     its send time (`sent_at`), the transform passes it through, and the shop stamps the arrival;
     p50/p99 of the difference (same machine, same clock).
  3. a request trigger with a 60 s cache: sequential requests, 2,000 hits on one warmed key and
     500 misses on distinct keys (each a call to the erp fake), timed at the client.
  4. inbox history: idle CPU of the daemon after runs 1-3, then a daemon for one flow (--flow stock)
     on a state store holding 100,000 delivered rows: its idle CPU and events/s.

--only throughput runs part 1 alone (harness, both floors, the engine): enough to compare the three
state settings in one sitting.

--state says where the daemons keep their state, each daemon a fresh store:
  sqlite          a SQLite file with the engine's default durability, full (synchronous=FULL: a WAL
                  fsync per commit, so a webhook answered 202 survives a power cut);
  sqlite-relaxed  the same with `state: { durability: relaxed }` in the spec (synchronous=NORMAL: it
                  survives a crash of the process, not of the machine);
  postgres        a schema of its own on --postgres-url (default: the loopback server), dropped at the
                  end; the server's own settings decide durability, and the "State:" line names them.
                  The CPU of the backends serving the daemon has a column of its own (found by
                  the application_name the state URL gives them; the rest of the server is "other").
Events/s follow the machine, so the output starts with a "Machine:" line (CPU model, cores, how many
cores two busy processes really get, the fsync time of the disk the SQLite files are on) that a README
row copies with its figures.

CPU columns are shares of one core from /proc (a daemon's includes its delivery processes, the
N-process floor's its N relays); "other" is the rest of the machine's load during the run (it should be
~0%: the numbers mean little on a busy machine).

Usage:  python3 bench/runtime_bench.py [--events 10000] [--passes 2] [--concurrency 32] [--workers 64]
        [--processes 2] [--state sqlite|sqlite-relaxed|postgres] [--postgres-url URL]
        [--only all|throughput] [--rate 500] [--seconds 10] [--hits 2000] [--misses 500]
        [--history-rows 100000] [--profile daemon.svg]
Prints markdown tables (about a minute on 2 cores). Not a test: nothing here asserts a time.
--profile records the daemon and its delivery processes with py-spy (when installed) during the
throughput passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import wire  # noqa: E402

from connectors.http.fake import FakeHttpServer, FakeRequest, FakeResponse  # noqa: E402
from engine.state import NewItem, open_store  # noqa: E402

SPEC = """\
seamline: 1
client: runbench
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    limits: { timeout: 2s }
    endpoints:
      price: { path: /price, method: POST }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    limits: { timeout: 10s }
    endpoints:
      stock: { path: "/stock/{sku}", method: PUT }
flows:
  stock:
    trigger: { event: { webhook: /hooks/stock, id: material } }
    transform: '{ "sku": material, "qty": $number(qty), "plant": plant, "sent_at": sent_at }'
    target: { system: shop, write: stock, key: sku }
  price:
    trigger: { request: { path: /price, timeout: 2s, cache: 60s } }
    source: { system: erp, call: price }
    transform: '{ "sku": sku, "customer": customer, "price": $round(net * 1.0, 2) }'
"""
JSON = {"Content-Type": "application/json"}
WARM_REQUESTS = 50


# -- helpers ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if condition():
            return
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def event(prefix: str, i: int) -> dict[str, Any]:
    return {"material": f"{prefix}{i:06d}", "qty": str(i % 997), "plant": "1000", "sent_at": 0.0}


def shaped(record: dict[str, Any]) -> dict[str, Any]:
    """What the flow's transform makes of an event (the floor sends this without the engine)."""
    return {
        "sku": record["material"],
        "qty": int(record["qty"]),
        "plant": record["plant"],
        "sent_at": record["sent_at"],
    }


def tree_cpu(pid: int) -> float:
    """CPU time of ``pid`` and its child processes (a daemon run with --processes)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += cpu_seconds(int(stat.parent.name))
    return total


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of this process, or of ``pid`` (Linux /proc)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds all processes on the machine have used since boot (Linux /proc/stat; nan elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Helper:
    """``bench/wire.py sink|relay`` in a process of its own (off this process's core and GIL)."""

    def __init__(self, role: str, *extra: str) -> None:
        command = [sys.executable, str(HERE / "wire.py"), role, "--port", str(free_port()), *extra]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            self.stop()
            raise SystemExit(f"bench/wire.py {role} did not start")
        self.url = f"http://127.0.0.1:{line[1]}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Shop(Helper):
    """The target: ``bench/wire.py sink``, counting and stamping the writes it takes."""

    def __init__(self) -> None:
        super().__init__("sink")

    def reset(self) -> None:
        asyncio.run(wire.call(f"{self.url}/__reset", "POST"))

    def stats(self, prefix: str) -> dict[str, int]:
        return dict(asyncio.run(wire.call(f"{self.url}/__stats?prefix={prefix}")))

    def writes(self, prefix: str) -> list[dict[str, Any]]:
        return list(asyncio.run(wire.call(f"{self.url}/__writes?prefix={prefix}")))

    def wait(self, prefix: str, count: int, timeout: float) -> list[dict[str, Any]]:
        """Every write under ``prefix`` once ``count`` distinct paths arrived; exactly-once is checked."""
        wait_for(lambda: self.stats(prefix)["distinct"] >= count, timeout, f"{count} writes at the shop", 0.25)
        writes = self.writes(prefix)
        if len(writes) != count:
            raise SystemExit(f"the shop took {len(writes)} writes for {count} events: not exactly once")
        return writes


class Daemon:
    """`seamline run --dev` as a subprocess, the way an operator starts it."""

    def __init__(self, root: Path, state: str, env: dict[str, str], workers: int, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / f"daemon-{self.port}.log"
        self.state = state
        command = [
            sys.executable,
            "-m",
            "engine.cli",
            "run",
            str(root),
            "--dev",
            "--port",
            str(self.port),
            "--state",
            state,
            "--workers",
            str(workers),
            *extra,
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ, **env})
        try:
            wait_for(self.ready, 30, f"the daemon to be ready (log: {self.log_path})")
        except BaseException:
            self.stop()
            raise

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# -- state -----------------------------------------------------------------------------------------
STATES = {"sqlite": "full", "sqlite-relaxed": "relaxed", "postgres": "postgres"}  # --state: durability shown
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


class State:
    """Where the run's daemons keep their state (--state): a fresh store for each, gone at the end.

    SQLite files live in the run's temporary directory; PostgreSQL schemas are named at random (runs
    and tests may share the server) and dropped by ``drop``, once the daemons using them have stopped.
    """

    def __init__(self, kind: str, root: Path, postgres_url: str) -> None:
        self.kind, self.root, self.postgres_url = kind, root, postgres_url
        self.durability = STATES[kind]
        self.schemas: list[str] = []
        self.server = postgres_server(postgres_url) if kind == "postgres" else ""

    def spec(self) -> str:
        """The bench spec, with ``state: { durability: relaxed }`` for sqlite-relaxed (full is the default)."""
        return SPEC + "state: { durability: relaxed }\n" if self.durability == "relaxed" else SPEC

    def url(self, name: str) -> str:
        """A new store for one daemon: ``name``.db in the run's directory, or a schema of its own."""
        if self.kind != "postgres":
            return f"sqlite:///{self.root / name}.db"
        schema = f"bench_{name}_{secrets.token_hex(4)}"
        self.schemas.append(schema)
        # The engine passes the URL's other parameters to libpq: the name tells this daemon's backends apart.
        query = f"schema={schema}&application_name={schema}"
        return f"{self.postgres_url}{'&' if '?' in self.postgres_url else '?'}{query}"

    def watch(self, url: str) -> dict[str, tuple[int, ...]]:
        """Processes whose CPU the engine's rows count apart: the PostgreSQL backends serving the daemon on
        ``url`` (connected by now; each process of the daemon keeps its connection), when they run here."""
        if self.kind != "postgres":
            return {}
        import psycopg

        name = parse_qs(urlsplit(url).query)["application_name"][0]
        with psycopg.connect(self.postgres_url, autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchall()
        pids = tuple(int(pid) for (pid,) in rows if Path(f"/proc/{pid}").exists())
        return {"postgres": pids} if pids else {}

    def describe(self) -> str:
        if self.kind == "postgres":
            return (
                f"durability: postgres. {self.server}; a fresh schema per daemon, dropped after. "
                "PostgreSQL CPU: the backends serving the daemon (the server's WAL writer, checkpointer and "
                "other clients are in other CPU)."
            )
        pragma = "FULL: an fsync of the WAL per commit" if self.durability == "full" else "NORMAL: no fsync per commit"
        return f"durability: {self.durability}. A SQLite file per daemon (WAL, synchronous={pragma})."

    def drop(self) -> None:
        if not self.schemas:
            return
        import psycopg

        with psycopg.connect(self.postgres_url, autocommit=True) as conn:
            for schema in self.schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self.schemas.clear()


def postgres_server(url: str) -> str:
    """The server's version and the settings that decide its durability (a commit's fsync)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'), "
            "current_setting('fsync'), current_setting('wal_sync_method')"
        ).fetchone()
    assert row is not None
    version, synchronous, fsync, method = row
    host = urlsplit(url).netloc.rsplit("@", 1)[-1]
    return f"PostgreSQL {version} on {host} (synchronous_commit={synchronous}, fsync={fsync}, wal_sync_method={method})"


# -- load generators -------------------------------------------------------------------------------
async def post_event(session: aiohttp.ClientSession, url: str, record: dict[str, Any], message_id: str) -> float:
    """Post one event until it is accepted (202); returns the seconds the accepted post took."""
    while True:
        started = time.perf_counter()
        async with session.post(url, data=json.dumps(record), headers={**JSON, "X-Message-Id": message_id}) as r:
            await r.read()
            if r.status == 202:
                return time.perf_counter() - started
        await asyncio.sleep(0.05)


def webhook_posts(path: str, prefix: str) -> Callable[[int], bytes]:
    """Request bytes for event ``i``, made when it is sent (``sent_at`` is the send time)."""

    def make(i: int) -> bytes:
        body = json.dumps(dict(event(prefix, i), sent_at=time.time())).encode()
        return wire.request("POST", path, body, {"X-Message-Id": f"{prefix}-{i}"})

    return make


# -- 1. throughput ---------------------------------------------------------------------------------
class Meter:
    """CPU of this process, of the processes named (each a process tree, or a group of them), and of
    everything else on the machine, over a run."""

    def __init__(self, **pids: int | tuple[int, ...]) -> None:
        self.pids = {name: (pid,) if isinstance(pid, int) else pid for name, pid in pids.items()}
        self.began = {name: self.used(group) for name, group in self.pids.items()}
        self.own, self.busy = cpu_seconds(), machine_busy()

    @staticmethod
    def used(group: tuple[int, ...]) -> float:
        return sum(tree_cpu(pid) for pid in group)

    def shares(self, seconds: float) -> dict[str, float]:
        used = {name: self.used(group) - self.began[name] for name, group in self.pids.items()}
        own = cpu_seconds() - self.own
        other = machine_busy() - self.busy - own - sum(used.values())
        return {
            **{f"cpu_{name}": value / seconds for name, value in used.items()},
            "cpu_self": own / seconds,
            "cpu_other": max(0.0, other) / seconds,
        }


def harness(shop: Shop, events: int, concurrency: int) -> dict[str, float]:
    """The generator PUTs shaped bodies straight to the sink: what the harness alone can do."""
    shop.reset()
    meter = Meter(shop=shop.proc.pid)

    def make(i: int) -> bytes:
        body = shaped(dict(event("D", i), sent_at=time.time()))
        return wire.request("PUT", f"/stock/{body['sku']}", json.dumps(body).encode(), {"Idempotency-Key": f"D{i}"})

    started, _, _ = asyncio.run(wire.closed_loop(shop.url, concurrency, events, make, 200))
    seconds = max(w["at"] for w in shop.wait("/stock/D", events, 60)) - started
    return {"events_s": events / seconds, **meter.shares(seconds)}


def through(
    url: str, pid: int, shop: Shop, prefix: str, events: int, concurrency: int, **watch: tuple[int, ...]
) -> dict[str, float]:
    """``events`` webhooks into ``url`` (the daemon or the relay), timed to the last write at the shop;
    ``watch`` names more processes whose CPU to count apart (the daemon's PostgreSQL backends)."""
    shop.reset()
    meter = Meter(daemon=pid, shop=shop.proc.pid, **watch)
    make = webhook_posts("/hooks/stock", prefix)
    started, accepted, _ = asyncio.run(wire.closed_loop(url, concurrency, events, make, 202))
    writes = shop.wait(f"/stock/{prefix}", events, 300)
    seconds = max(w["at"] for w in writes) - started
    return {"events_s": events / seconds, "ingest_s": events / (accepted - started), **meter.shares(seconds)}


def relay_floor(shop: Shop, events: int, concurrency: int, passes: int, processes: int) -> dict[str, float]:
    """The best of ``passes`` through ``processes`` bare relays on one port (after a warm-up pass)."""
    relay = Helper("relay", "--target", shop.url, "--processes", str(processes))
    try:
        through(relay.url, relay.proc.pid, shop, "RW", 1000, concurrency)
        return max(
            (through(relay.url, relay.proc.pid, shop, f"R{n}", events, concurrency) for n in range(passes)),
            key=lambda r: r["events_s"],
        )
    finally:
        relay.stop()


def engine(
    daemon: Daemon, shop: Shop, prefix: str, events: int, concurrency: int, **watch: tuple[int, ...]
) -> dict[str, float]:
    return through(daemon.url, daemon.proc.pid, shop, prefix, events, concurrency, **watch)


# -- 2. latency at a fixed rate --------------------------------------------------------------------
def fixed_rate(daemon: Daemon, shop: Shop, prefix: str, rate: float, seconds: float) -> dict[str, float]:
    shop.reset()
    hook = f"{daemon.url}/hooks/stock"
    count = int(rate * seconds)
    acks: list[float] = []
    lag: list[float] = []
    meter, started = Meter(daemon=daemon.proc.pid, shop=shop.proc.pid), time.time()

    async def run() -> None:
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = []
            start = time.perf_counter() + 0.05
            for i in range(count):
                due = start + i / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                lag.append(time.perf_counter() - due)
                record = dict(event(prefix, i), sent_at=time.time())
                tasks.append(asyncio.create_task(post_event(session, hook, record, f"{prefix}-{i}")))
            acks.extend(await asyncio.gather(*tasks))

    asyncio.run(run())
    latencies = [w["at"] - w["body"]["sent_at"] for w in shop.wait(f"/stock/{prefix}", count, 120)]
    other = meter.shares(time.time() - started)["cpu_other"]
    return {
        "count": count,
        "p50": 1000 * statistics.median(latencies),
        "p99": 1000 * percentile(latencies, 0.99),
        "max": 1000 * max(latencies),
        "ack_p50": 1000 * statistics.median(acks),
        "ack_p99": 1000 * percentile(acks, 0.99),
        "lag_p99": 1000 * percentile(lag, 0.99),
        "cpu_other": other,
    }


# -- 3. request trigger ----------------------------------------------------------------------------
def requests(daemon: Daemon, erp_calls: list[float], hits: int, misses: int) -> dict[str, list[float]]:
    url = f"{daemon.url}/price"

    async def run() -> dict[str, list[float]]:
        times: dict[str, list[float]] = {"hit": [], "miss": []}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:

            async def ask(body: dict[str, Any], expect: str) -> None:
                started = time.perf_counter()
                async with session.post(url, data=json.dumps(body), headers=JSON) as r:
                    await r.read()
                    elapsed = time.perf_counter() - started
                    if r.status != 200 or r.headers.get("X-Seamline-Cache") != expect:
                        raise SystemExit(
                            f"/price answered {r.status} ({r.headers.get('X-Seamline-Cache')}), not {expect}"
                        )
                times[expect].append(elapsed)

            for i in range(WARM_REQUESTS):  # warm the path (connections, both fakes) with keys used nowhere else
                await ask({"sku": f"W{i}", "customer": "C0"}, "miss")
            times["miss"].clear()
            for i in range(misses):
                await ask({"sku": f"S{i:05d}", "customer": "C1"}, "miss")
            await ask({"sku": "HOT", "customer": "C1"}, "miss")
            times["miss"].pop()
            for _ in range(hits):
                await ask({"customer": "C1", "sku": "HOT"}, "hit")
        return times

    before = len(erp_calls)
    times = asyncio.run(run())
    assert len(erp_calls) - before == WARM_REQUESTS + misses + 1, "every miss, and only the misses, asked the erp"
    return times


# -- 4. inbox history -----------------------------------------------------------------------------
def prefill(state: str, rows: int) -> None:
    """``rows`` delivered events in the inbox, as after a day of traffic, through the store's own API."""
    store = open_store(state)
    try:
        source = "webhook:/hooks/stock"
        store.enqueue([NewItem("stock", f"H{i:06d}@h-{i}", f"H{i:06d}", event("H", i), source) for i in range(rows)])
        while items := store.claim("prefill", 5000, 3600.0, ["stock"]):
            for item in items:
                store.complete(item.id)
    finally:
        store.close()


def idle_cpu(daemon: Daemon, seconds: float = 3.0) -> float:
    """Share of one core the daemon uses with nothing to do."""
    before = cpu_seconds(daemon.proc.pid)
    time.sleep(seconds)
    return (cpu_seconds(daemon.proc.pid) - before) / seconds


def price_route(calls: list[float]) -> Callable[[FakeRequest], FakeResponse]:
    def answer(request: FakeRequest) -> FakeResponse:
        calls.append(time.time())
        body = request.json() or {}
        return FakeResponse(200, {"sku": body.get("sku"), "customer": body.get("customer"), "net": 12.345})

    return answer


def _burn(n: int) -> float:
    started = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i
    return time.perf_counter() - started


def parallel_capacity(n: int = 10_000_000) -> float:
    """How many cores' worth two busy processes really get (a shared or throttled host gives less than 2)."""
    import multiprocessing

    one = _burn(n)
    with multiprocessing.Pool(2) as pool:
        started = time.perf_counter()
        pool.map(_burn, [n, n])
        both = time.perf_counter() - started
    return 2 * one / both


def cpu_model() -> str:
    """The CPU's model name, family and model numbers and clock (/proc/cpuinfo), or the platform's guess."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    details = [
        f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model")) if key in fields
    ]
    if "cpu MHz" in fields:
        details.append(f"{float(fields['cpu MHz']):,.0f} MHz")
    return f"{fields.get('model name', platform.machine())} ({', '.join(details)})"


def filesystem(path: Path) -> str:
    """The type of the filesystem ``path`` is on (/proc/mounts: the longest mount point above it)."""
    best, kind, where = "", "?", path.resolve()
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, point, fstype, *_ = line.split()
            if where.is_relative_to(point) and len(point) > len(best):
                best, kind = point, fstype
    except (OSError, ValueError):
        pass
    return kind


def fsync_ms(directory: Path, count: int = 50) -> float:
    """Median ms to append 4 KB to a file in ``directory`` and fdatasync it: the price of one commit
    with durability full (SQLite syncs its WAL at every commit; a tmpfs or a lying disk says ~0)."""
    path = directory / "fsync.probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(count):
            os.write(fd, b"\0" * 4096)
            started = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return 1000 * statistics.median(times)


def machine(cores: float, directory: Path) -> str:
    """The "Machine:" line: events/s follow the machine, so a figure is only comparable with its own."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} cores ({usable} usable); two CPU-bound processes ran "
        f"{cores:.2f}x as fast as one (2.00x: two whole cores); fdatasync of 4 KB p50 "
        f"{fsync_ms(directory):.2f} ms ({filesystem(directory)}); Python {platform.python_version()}."
    )


def profile(daemon: Daemon, out: str) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed (pip install py-spy); no profile", file=sys.stderr)
        return None
    kind = "flamegraph" if out.endswith(".svg") else "raw"  # raw: collapsed stacks, one per line
    command = [
        spy,
        "record",
        "-o",
        out,
        "-f",
        kind,
        "--pid",
        str(daemon.proc.pid),
        "--rate",
        "200",
        "--nonblocking",
        "--subprocesses",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# -- main ------------------------------------------------------------------------------------------
Result = dict[str, float]


def table(head: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def processes_named(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def print_throughput(
    args: argparse.Namespace, state: State, bare: Result, floors: dict[int, Result], run: Result
) -> None:
    """Part 1's table, then one "Result:" line to quote: the engine against each floor, the widest first
    (the same cores for the same work: the ratio that counts)."""
    widest = max(floors)
    counts = sorted(floors, reverse=True)
    names = ["cpu_daemon", *(["cpu_postgres"] if "cpu_postgres" in run else []), "cpu_shop", "cpu_self", "cpu_other"]

    def cpu(result: Result, name: str) -> str:
        return f"{result[name]:.0%}" if name in result else "-"

    def row(path: str, result: Result, ratios: bool = True) -> list[str]:
        shares = [cpu(result, n) for n in names]
        per_event = f"{1000 * result['cpu_daemon'] / result['events_s']:.2f}" if "cpu_daemon" in result else "-"
        ratio = [f"{result['events_s'] / floors[n]['events_s']:.2f}x" if ratios else "" for n in counts]
        return [path, f"{result['events_s']:,.0f}", *ratio, shares[0], per_event, *shares[1:]]

    def floor(n: int) -> str:
        if n == 1:
            return "floor, 1 process: bare relay (aiohttp webhook -> PUT; no state, no transform)"
        return f"floor, {n} processes: {n} bare relays on one port (SO_REUSEPORT)"

    print(
        f"## 1. Throughput: {args.events:,} events, generator concurrency {args.concurrency}, "
        f"daemon --workers {args.workers}, best of {args.passes}; durability: {state.durability}\n"
    )
    head = ["path", "events/s", *(f"ratio to floor, {processes_named(n)}" for n in counts)]
    head += ["daemon or relay CPU", "its CPU ms per event"]
    head += ["PostgreSQL CPU"] if "cpu_postgres" in run else []
    head += ["shop CPU", "generator CPU", "other CPU"]
    engine_path = (
        f"engine, {processes_named(args.processes)}, durability: {state.durability}: "
        "webhook -> inbox -> transform -> PUT -> ledger"
    )
    table(
        head,
        [
            row("harness alone: generator PUTs straight to the shop", bare, ratios=False),
            *(row(floor(n), floors[n]) for n in counts),
            row(engine_path, run),
            ["engine, webhooks answered (202) in the same run", f"{run['ingest_s']:,.0f}", *[""] * (len(head) - 2)],
        ],
    )
    against = [
        f"{run['events_s'] / floors[n]['events_s']:.2f}x the {n}-process floor ({floors[n]['events_s']:,.0f}/s)"
        for n in counts
    ]
    per_event = f"daemon {1000 * run['cpu_daemon'] / run['events_s']:.2f} ms"
    if "cpu_postgres" in run:
        per_event += f" + PostgreSQL {1000 * run['cpu_postgres'] / run['events_s']:.2f} ms"
    print(
        f"\nResult: durability: {state.durability}; engine, {processes_named(args.processes)}: "
        f"{run['events_s']:,.0f} events/s, {', '.join(against)}; CPU per event: {per_event}."
    )
    ratio = run["events_s"] / floors[widest]["events_s"]
    met = run["events_s"] >= 2000 and ratio >= 0.5
    print(
        "\nCPU: share of one core (2 in all); other processes: anything else running on the machine meanwhile "
        "(a quiet machine shows ~0%). Goal >= 2,000 events/s and >= 50% of the "
        f"{widest}-process floor: " + ("met." if met else "NOT met.")
    )


def print_latency(args: argparse.Namespace, steady: Result) -> None:
    print(
        f"\n## 2. Event -> write latency: {steady['count']:,.0f} events at {args.rate:g}/s "
        f"for {args.seconds:g} s, open loop\n"
    )
    table(
        ["what", "p50 ms", "p99 ms", "max ms"],
        [
            [
                "event sent -> write applied at the target",
                f"{steady['p50']:.1f}",
                f"{steady['p99']:.1f}",
                f"{steady['max']:.1f}",
            ],
            ["webhook answered 202, at the generator", f"{steady['ack_p50']:.1f}", f"{steady['ack_p99']:.1f}", ""],
        ],
    )
    print(
        f"\nThe generator sent its events at most {steady['lag_p99']:.1f} ms late (p99); "
        f"other processes used {steady['cpu_other']:.0%} of a core meanwhile."
    )


def print_requests(args: argparse.Namespace, times: dict[str, list[float]]) -> None:
    print(
        f"\n## 3. Request trigger /price, cache 60s: sequential, {args.hits:,} hits on one key, "
        f"{args.misses:,} misses\n"
    )
    rows = []
    for name in ("hit", "miss"):
        values = [1000 * v for v in times[name]]
        rows.append(
            [
                f"cache {name}",
                f"{statistics.median(values):.2f}",
                f"{percentile(values, 0.99):.2f}",
                f"{max(values):.2f}",
            ]
        )
    table(["request", "p50 ms", "p99 ms", "max ms"], rows)
    hit_p99 = 1000 * percentile(times["hit"], 0.99)
    print(f"\nGoal p99 < 10 ms on a hit: {'met' if hit_p99 < 10 else 'NOT met'}.")


def print_history(args: argparse.Namespace, history: Result, run: Result) -> None:
    print("\n## 4. Inbox history: the same daemon with delivered rows in its inbox\n")
    table(
        ["daemon", "delivered rows in the inbox", "idle CPU", "events/s"],
        [
            [
                "all flows (stock, price)",
                f"~{history['main_rows']:,.0f}",
                f"{history['main_idle']:.0%}",
                f"{run['events_s']:,.0f} (run 1)",
            ],
            [
                "`--flow stock`",
                f"{args.history_rows:,}",
                f"{history['single_idle']:.0%}",
                f"{history['single_events_s']:,.0f} ({args.events // 2:,} events)",
            ],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--passes", type=int, default=2, help="throughput passes (floors and engine); best is kept")
    parser.add_argument("--concurrency", type=int, default=32, help="load generator connections")
    parser.add_argument("--workers", type=int, default=64, help="the daemon's --workers (its default)")
    parser.add_argument(
        "--processes", type=int, default=2, help="the daemon's --processes, and the relays of the wider floor"
    )
    parser.add_argument(
        "--state", choices=list(STATES), default="sqlite", help="the daemons' state store (default: sqlite)"
    )
    parser.add_argument(
        "--postgres-url", default=POSTGRES_URL, help=f"--state postgres: the database (default: {POSTGRES_URL})"
    )
    parser.add_argument(
        "--only",
        choices=["all", "throughput"],
        default="all",
        help="throughput: part 1 alone (harness, floors, engine)",
    )
    parser.add_argument("--rate", type=float, default=500.0, help="events/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--hits", type=int, default=2000)
    parser.add_argument("--misses", type=int, default=500)
    parser.add_argument("--history-rows", type=int, default=100_000, help="delivered rows for run 4 (0: skip)")
    parser.add_argument(
        "--profile", help="py-spy profile of the daemon during the throughput run (.svg, else collapsed stacks)"
    )
    args = parser.parse_args()
    began = time.monotonic()
    everything = args.only == "all"
    cores = parallel_capacity()
    erp_calls: list[float] = []
    history: Result = {}
    shop = Shop()
    try:
        with tempfile.TemporaryDirectory(prefix="runtime-bench-") as tmp, FakeHttpServer() as erp:
            root = Path(tmp)
            host = machine(cores, root)
            state = State(args.state, root, args.postgres_url)
            try:
                (root / "seamline.yaml").write_text(state.spec(), encoding="utf-8")
                erp.route("POST", "/price", price_route(erp_calls))
                env = {"ERP_URL": erp.url, "SHOP_URL": shop.url}
                extra = ["--processes", str(args.processes)] if args.processes > 1 else []

                # Before the daemon starts: nothing else busy. The harness alone, then the relay floors.
                harness(shop, 1000, args.concurrency)
                bare = max(
                    (harness(shop, args.events, args.concurrency) for _ in range(args.passes)),
                    key=lambda r: r["events_s"],
                )
                floors = {
                    n: relay_floor(shop, args.events, args.concurrency, args.passes, n)
                    for n in sorted({1, args.processes})
                }
                daemon = Daemon(root, state.url("main"), env, args.workers, *extra)
                try:
                    engine(daemon, shop, "WARM", 1000, args.concurrency)  # connections, compiled mapping, pages
                    watch = state.watch(daemon.state)
                    spy = profile(daemon, args.profile) if args.profile else None
                    runs = [
                        engine(daemon, shop, f"E{n}", args.events, args.concurrency, **watch)
                        for n in range(args.passes)
                    ]
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(30)
                    run = max(runs, key=lambda r: r["events_s"])
                    if everything:
                        steady = fixed_rate(daemon, shop, "L", args.rate, args.seconds)
                        times = requests(daemon, erp_calls, args.hits, args.misses)
                        history["main_rows"] = 1000 + args.passes * args.events + int(args.rate * args.seconds)
                        history["main_idle"] = idle_cpu(daemon)
                finally:
                    daemon.stop()
                if everything and args.history_rows:
                    url = state.url("history")
                    prefill(url, args.history_rows)
                    single = Daemon(root, url, env, args.workers, "--flow", "stock", *extra)
                    try:
                        history["single_idle"] = idle_cpu(single)
                        engine(single, shop, "WARM", 500, args.concurrency)
                        history["single_events_s"] = engine(single, shop, "H", args.events // 2, args.concurrency)[
                            "events_s"
                        ]
                    finally:
                        single.stop()
            finally:
                state.drop()
    finally:
        shop.stop()

    print(f"{host}\nState: {state.describe()}\n")
    print_throughput(args, state, bare, floors, run)
    if everything:
        print_latency(args, steady)
        print_requests(args, times)
        if args.history_rows:
            print_history(args, history, run)
    print(f"\nWhole run: {time.monotonic() - began:.0f} s.")


if __name__ == "__main__":
    main()
