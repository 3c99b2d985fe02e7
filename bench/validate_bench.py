"""How long `seamline validate` takes on a 50-flow spec (the issue asks for well under a second).

Writes a client spec with 50 flows (half with inline JSONata blocks, half with .jsonata files, all
five trigger kinds in rotation, lookups and templates) into a temp folder, then times:
  - validate_spec in-process (best of 5, after one warm-up), per backend;
  - the whole CLI, `seamline validate`, as a subprocess (Python start-up and imports included).
Usage:  python3 bench/validate_bench.py [--flows 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from engine.spec import validate_spec  # noqa: E402
from engine.transform import available_backends  # noqa: E402

MAPPING = (HERE / "mapping.jsonata").read_text(encoding="utf-8")

HEAD = """\
seamline: 1
client: bench
constants: { website_id: 1 }
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    auth: { basic: { username: api, password: "{{ secret.ERP_PASSWORD }}" } }
    limits: { rate: 5/s, concurrency: 2, timeout: 10s }
    endpoints:
      products: { path: /products }
      price: { path: /price, method: POST }
  shop:
    connector: magento
    url: "{{ env.SHOP_URL }}"
    auth: { bearer: { token: "{{ secret.SHOP_TOKEN }}" } }
  bus: { connector: amqp, url: "{{ secret.AMQP_URL }}" }
lookups:
  plants: { values: { DE01: stuttgart, DE02: leipzig } }
flows:
"""


def flow(i: int) -> str:
    kind = i % 3
    trigger = [
        '{ schedule: "0 */4 * * *" }',
        f"{{ event: {{ system: bus, queue: q{i} }} }}",
        f"{{ request: {{ path: /price{i}, cache: 60s }} }}",
    ][kind]
    source = [
        "    source: { system: erp, read: products, cursor: changed }\n",
        "",
        "    source: { system: erp, call: price }\n",
    ][kind]
    target = "" if kind == 2 else "    target: { system: shop, write: products, key: sku }\n"
    if i % 2:
        transform = f"    transform: transforms/t{i}.jsonata\n"
    else:
        block = "\n".join("      " + line for line in MAPPING.splitlines())
        transform = "    transform: |\n" + block + "\n"
    return f"  flow-{i}:\n    trigger: {trigger}\n{source}{transform}{target}"


def write_spec(root: Path, flows: int) -> Path:
    (root / "transforms").mkdir(parents=True, exist_ok=True)
    for i in range(flows):
        if i % 2:
            (root / "transforms" / f"t{i}.jsonata").write_text(MAPPING, encoding="utf-8")
    spec = root / "seamline.yaml"
    spec.write_text(HEAD + "".join(flow(i) for i in range(flows)), encoding="utf-8")
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_spec(Path(tmp), args.flows)
        print(f"{args.flows} flows, {len(spec.read_text().splitlines())} spec lines\n")
        print("| what | best of 5 |")
        print("|---|---:|")
        for backend in available_backends():
            os.environ["SEAMLINE_TRANSFORM_BACKEND"] = backend
            report = validate_spec(spec, environ={})
            assert report.ok, [d.render() for d in report.diagnostics if d.severity.value == "error"]
            best = float("inf")
            for _ in range(5):
                start = time.perf_counter()
                validate_spec(spec, environ={})
                best = min(best, time.perf_counter() - start)
            print(f"| validate_spec in-process, {backend} | {best * 1000:.0f} ms |")
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            subprocess.run(["seamline", "validate", str(spec)], capture_output=True, check=False)
            best = min(best, time.perf_counter() - start)
        print(f"| `seamline validate` CLI, whole process | {best * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
