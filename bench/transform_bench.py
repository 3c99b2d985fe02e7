"""Transform throughput: 10,000 SAP material records through a ~40-line mapping.

Runs, in one process and on the same records:
  - jsonata-python through seamline's Expression (dict in, dict out);
  - jlens through seamline's Expression, dict in and dict out;
  - jlens on JSON text end to end (Expression.evaluate_json: unread fields are skipped while parsing);
  - the same JSON-text path on 2 threads (jlens releases the GIL while it evaluates);
  - the JavaScript reference (npm jsonata 2.2.2 on node), when node and npm are present.

Usage:  python3 bench/transform_bench.py [--records 10000] [--passes 3] [--slow-records 2000]
Prints a markdown table (records/s and the ratio to the JavaScript reference). Not a test: nothing
here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from generate import generate  # noqa: E402

from engine.transform import Bindings, ExpressionSource, available_backends, compile_expression  # noqa: E402

MAPPING = HERE / "mapping.jsonata"


def best_of(passes: int, work: Callable[[], int]) -> tuple[float, int]:
    best, count = float("inf"), 0
    for _ in range(passes):
        start = time.perf_counter()
        count = work()
        best = min(best, time.perf_counter() - start)
    return best, count


def run_dicts(backend: str, lines: list[str], passes: int) -> float:
    expr = compile_expression(ExpressionSource(MAPPING.read_text(), str(MAPPING)), backend=backend)
    bindings = Bindings(client="bench", flow="catalog")
    records = [json.loads(line) for line in lines]  # parsing is not part of this row

    def work() -> int:
        for record in records:
            expr.evaluate(record, bindings)
        return len(records)

    seconds, count = best_of(passes, work)
    return count / seconds


def run_json_text(lines: list[str], passes: int, threads: int = 1) -> float:
    expr = compile_expression(ExpressionSource(MAPPING.read_text(), str(MAPPING)), backend="jlens")
    bindings = Bindings(client="bench", flow="catalog")

    def chunk(part: list[str]) -> int:
        total = 0
        for line in part:
            out = expr.evaluate_json(line, bindings)
            total += len(out or "")
        return total

    def work() -> int:
        if threads == 1:
            chunk(lines)
        else:
            size = (len(lines) + threads - 1) // threads
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(chunk, [lines[i : i + size] for i in range(0, len(lines), size)]))
        return len(lines)

    seconds, count = best_of(passes, work)
    return count / seconds


def run_bare_jlens(lines: list[str], passes: int) -> float:
    """jlens's own ``evaluate_json``, no engine around it: the most the engine's JSON-text path can reach."""
    import jlens

    expr = jlens.Expression(MAPPING.read_text())

    def work() -> int:
        for line in lines:
            expr.evaluate_json(line)
        return len(lines)

    seconds, count = best_of(passes, work)
    return count / seconds


def run_node(data: Path, passes: int) -> float | None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        return None
    js = HERE / "js"
    if not (js / "node_modules" / "jsonata").is_dir():
        subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund"], cwd=js, check=True)
    out = subprocess.run(
        [node, str(js / "bench.mjs"), str(MAPPING), str(data), str(passes)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout)
    return float(result["records"]) / float(result["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--slow-records", type=int, default=10_000, help="records for jsonata-python (slow)")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    lines = generate(args.records)
    data = HERE / ".data" / f"materials-{args.records}.jsonl"
    data.parent.mkdir(exist_ok=True)
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows: list[tuple[str, float]] = []
    reference = run_node(data, args.passes)
    if reference is not None:
        rows.append(("jsonata (npm 2.2.2, node), JSON text", reference))
    if "jsonata-python" in available_backends():
        rows.append(("jsonata-python, dict in/out", run_dicts("jsonata-python", lines[: args.slow_records], 1)))
    if "jlens" in available_backends():
        rows.append(("jlens, dict in/out", run_dicts("jlens", lines, args.passes)))
        rows.append(("jlens bare (its own evaluate_json, no engine), JSON text", run_bare_jlens(lines, args.passes)))
        rows.append(("jlens, JSON text end to end", run_json_text(lines, args.passes)))
        rows.append(("jlens, JSON text, 2 threads", run_json_text(lines, args.passes, threads=2)))
    print(f"{args.records} records, {MAPPING.name} ({len(MAPPING.read_text().splitlines())} lines)\n")
    print("| path | records/s | ratio to JS reference |")
    print("|---|---:|---:|")
    for name, rate in rows:
        ratio = f"{rate / reference:.2f}x" if reference else "n/a"
        print(f"| {name} | {rate:,.0f} | {ratio} |")


if __name__ == "__main__":
    main()
