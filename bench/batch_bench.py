"""A big catalog batch: files dropped by the ERP -> `seamline run --once` -> the 41-line mapping -> one PUT each.

Issue 17, item 3: a pass must deliver at >= 2/3 of the transform-only rate measured in the same run, with flat
memory. One sitting measures, on the same records:

- **transform only**: the engine's compiled flow over the records of one file, on one thread, as the worker
  runs it (JSON text in, text out: ``CompiledFlow.transform_json``), and on Python values for comparison;
  the JavaScript reference (npm ``jsonata``, node) on the same file for the ratio to node;
- **floor**: the same transform and one PUT per record with no engine (no inbox, no ledger): a loop in one
  process that reads the lines, transforms each and PUTs it over 16 keep-alive connections
  (``bench/wire.py``'s raw client), the least a hand-written batch job costs;
- **engine**: ``seamline run DIR --once`` as a subprocess over the dropped files (hard links into the drop
  folder; the generated files are kept in ``bench/.data`` for the next run), its wall time, its peak resident
  memory (sampled every 0.2 s over its process tree) and its exit code; the sink (``bench/wire.py sink
  --counts-only``, a process of its own) must have taken every record exactly once.

The sink runs on the same two cores: every microsecond it spends per write is taken from the engine and the
floor alike, which is why the floor is in the table.

    python3 bench/batch_bench.py                         # 1,000,000 records, SQLite (durability full)
    python3 bench/batch_bench.py --records 50000 --state sqlite-relaxed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import runtime_bench as rb  # noqa: E402
import wire  # noqa: E402
from generate import material  # noqa: E402
from transform_bench import best_of, run_node  # noqa: E402

from engine.flow import load_client  # noqa: E402

SPEC = """\
seamline: 1
client: batchbench
systems:
  erp:
    connector: file
    directory: drop
    poll: 1s
    settle: 0s
    drops:
      materials: { pattern: "materials-*.jsonl", format: jsonl }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    limits: { concurrency: 16, timeout: 30s }
    endpoints:
      products: { path: "/products/{sku}", method: PUT }
flows:
  catalog:
    trigger: { schedule: 1h }
    source: { system: erp, read: materials, id: Product, page_size: 500 }
    transform: mapping.jsonata
    target: { system: shop, write: products, key: sku }
"""


class Sink(rb.Helper):
    def __init__(self) -> None:
        super().__init__("sink", "--counts-only")

    def stats(self) -> dict[str, int]:
        return dict(asyncio.run(wire.call(f"{self.url}/__stats")))

    def reset_counts(self) -> None:
        asyncio.run(wire.call(f"{self.url}/__reset", "POST"))


def data_files(records: int, per_file: int) -> list[Path]:
    """The batch as files of ``per_file`` records (one JSON per line), generated once and kept."""
    folder = HERE / ".data" / f"batch-{per_file}"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for n in range((records + per_file - 1) // per_file):
        path = folder / f"materials-{n:04d}.jsonl"
        count = min(per_file, records - n * per_file)
        if not path.exists() or _lines(path) != count:
            rnd = random.Random(n)
            text = "\n".join(json.dumps(material(n * per_file + i, rnd)) for i in range(count)) + "\n"
            path.write_text(text, encoding="utf-8")
        files.append(path)
    return files


def _lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def spec_dir(root: Path, state_line: str) -> Path:
    (root / "drop").mkdir(parents=True)
    (root / "mapping.jsonata").write_text((HERE / "mapping.jsonata").read_text(encoding="utf-8"), encoding="utf-8")
    (root / "seamline.yaml").write_text(SPEC + state_line, encoding="utf-8")
    return root


def transform_only(root: Path, lines: list[str], passes: int = 3) -> dict[str, float]:
    """Records/s of the flow's own transform on one thread: the JSON-text path the worker takes, and on values."""
    flow = load_client(root / "seamline.yaml", environ={"SHOP_URL": "http://127.0.0.1:9"}).flows["catalog"]

    def on_text() -> int:
        for line in lines:
            flow.transform_json(line)
        return len(lines)

    def on_values() -> int:
        for line in lines:
            flow.transform(json.loads(line))
        return len(lines)

    rates = {}
    for name, work in (("text", on_text), ("values", on_values)):
        seconds, count = best_of(passes, work)
        rates[name] = count / seconds
    return rates


async def _floor(root: Path, files: list[Path], url: str, concurrency: int = 16) -> tuple[int, float]:
    flow = load_client(root / "seamline.yaml", environ={"SHOP_URL": url}).flows["catalog"]
    lanes = [await wire.connect(url) for _ in range(concurrency)]

    def shaped() -> Any:
        for path in files:
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    text = flow.transform_json(line)
                    if text is not None:
                        sku = json.loads(text)["sku"]
                        yield wire.request("PUT", f"/floor/{sku}", text.encode(), {"Idempotency-Key": sku})

    requests = shaped()
    sent = 0

    async def lane(protocol: wire.ClientProtocol) -> None:
        nonlocal sent
        for request in requests:
            status, _ = await protocol.send(request)
            assert status == 200, status
            sent += 1

    began = time.perf_counter()
    await asyncio.gather(*(lane(p) for p in lanes))
    seconds = time.perf_counter() - began
    for protocol in lanes:
        assert protocol.transport is not None
        protocol.transport.close()
    return sent, seconds


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its children, now (each process once)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if status.parent.name == str(pid) or fields.get("PPid", "").strip() == str(pid):
            total += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    return total


def engine(
    root: Path,
    files: list[Path],
    state_url: str,
    sink: Sink,
    deadline: str,
    processes: int,
    workers: int,
    profile: str | None,
) -> dict[str, Any]:
    for path in files:
        os.link(path, root / "drop" / path.name)
    # the delivery processes too (--subprocesses); a name not ending in .svg gets collapsed stacks to add up
    kind = "flamegraph" if profile is not None and profile.endswith(".svg") else "raw"
    spy = (
        ["py-spy", "record", "--subprocesses", "--rate", "200", "--format", kind, "-o", profile, "--"]
        if profile
        else []
    )
    command = [
        *spy,
        sys.executable,
        "-m",
        "engine.cli",
        "run",
        str(root),
        "--once",
        "--state",
        state_url,
        "--deadline",
        deadline,
        "--processes",
        str(processes),
        "--workers",
        str(workers),
    ]
    log = (root / "once.log").open("wb")
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ, "SHOP_URL": sink.url})
    peak = cpu = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        cpu = max(cpu, rb.tree_cpu(proc.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - began
    log.close()
    return {"seconds": seconds, "peak": peak, "cpu": cpu, "code": proc.returncode, "log": root / "once.log"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--generate-only", action="store_true", help="write the batch's files and stop")
    parser.add_argument("--per-file", type=int, default=10_000, help="records per dropped file")
    parser.add_argument("--floor-records", type=int, default=100_000, help="records the no-engine floor sends")
    parser.add_argument("--state", choices=sorted(rb.STATES), default="sqlite")
    parser.add_argument("--postgres-url", default=rb.POSTGRES_URL)
    parser.add_argument("--deadline", default="2h", help="the pass's --deadline")
    parser.add_argument("--processes", type=int, default=2, help="the pass's --processes (the machine's cores)")
    parser.add_argument(
        "--workers", type=int, default=64, help="the pass's --workers (per process; the daemon's default)"
    )
    parser.add_argument("--skip-node", action="store_true")
    parser.add_argument(
        "--profile",
        metavar="OUT.svg",
        help="record the pass and its delivery processes with py-spy (.svg: a flame graph, else collapsed stacks)",
    )
    args = parser.parse_args()

    files = data_files(args.records, args.per_file)
    if args.generate_only:
        return
    cores = rb.parallel_capacity()
    with tempfile.TemporaryDirectory(prefix="seamline-batch-") as tmp:
        work = Path(tmp)
        state = rb.State(args.state, work, args.postgres_url)
        root = spec_dir(work / "client", "state: { durability: relaxed }\n" if state.durability == "relaxed" else "")
        print(rb.machine(cores, work))
        print(state.describe())
        first = files[0].read_text(encoding="utf-8").splitlines()
        rates = transform_only(root, first)
        node = None if args.skip_node else run_node(files[0], 3)
        sink = Sink()
        try:
            floor_files = files[: max(1, (args.floor_records + args.per_file - 1) // args.per_file)]
            sent, floor_seconds = asyncio.run(_floor(root, floor_files, sink.url))
            sink.reset_counts()
            run = engine(
                root, files, state.url("batch"), sink, args.deadline, args.processes, args.workers, args.profile
            )
            taken = sink.stats()
        finally:
            sink.stop()
            state.drop()
        tail = run["log"].read_text(encoding="utf-8", errors="replace")[-3000:]
    rate = args.records / run["seconds"]
    floor = sent / floor_seconds
    print()
    print(
        f"{args.records:,} records in {len(files)} files of {args.per_file:,} "
        f"(~{files[0].stat().st_size // args.per_file:,} bytes each); `seamline run --once` exit code {run['code']}; "
        f"the sink took {taken['count']:,} writes, "
        f"{taken['distinct']:,} distinct, {taken['duplicates']:,} repeated"
    )
    rb.table(
        ["path", "records/s", "ratio to transform only (text)", "peak memory", "CPU s"],
        [
            ["transform only, JSON text (the worker's path), 1 thread", f"{rates['text']:,.0f}", "1.00x", "", ""],
            [
                "transform only, Python values",
                f"{rates['values']:,.0f}",
                f"{rates['values'] / rates['text']:.2f}x",
                "",
                "",
            ],
            *(
                [["jsonata (npm, node), JSON text", f"{node:,.0f}", f"{node / rates['text']:.2f}x", "", ""]]
                if node
                else []
            ),
            [
                f"floor: transform + PUT, no engine ({sent:,} records)",
                f"{floor:,.0f}",
                f"{floor / rates['text']:.2f}x",
                "",
                "",
            ],
            [
                f"engine: run --once --processes {args.processes} ({state.durability})",
                f"{rate:,.0f}",
                f"{rate / rates['text']:.2f}x",
                f"{run['peak'] / 2**20:,.0f} MiB",
                f"{run['cpu']:,.1f}",
            ],
        ],
    )
    print(
        f"\nengine / floor: {rate / floor:.2f}x"
        + (f"; transform only (text) / node: {rates['text'] / node:.2f}x" if node else "")
    )
    if run["code"] != 0 or taken["distinct"] != args.records or taken["duplicates"]:
        print("\nthe pass did not deliver every record exactly once; the end of its log:\n" + tail)


if __name__ == "__main__":
    main()
