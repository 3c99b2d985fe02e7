"""Products through the magento connection's write into FakeMagento: one PUT per product vs bulk async.

::

    python3 bench/magento_bench.py                 # 100,000 products, both paths
    python3 bench/magento_bench.py --count 2000    # a quick look

The fake runs in a child process (its own GIL; answers are not schema-checked there, so the fake's
self-check does not slow it down), on loopback. This process opens one ``MagentoConnection`` per path
and calls ``write("products", ...)`` the way the runtime's workers do, with a fixed number of writes
in flight: 16 for PUT (the pool's connections), more for bulk (so the connection can fill batches).
The floor is the same PUTs sent with a bare ``aiohttp.ClientSession`` (a maintained client, with none
of the kit's session, auth, schema check or error translation), same bodies, same 16 in flight: what
the PUT path would cost with nothing of ours in it.
Requests are counted by the fake, which sees every one (PUT, bulk POST, status GET); "applied" is its
write log (one entry per product saved, a bulk's operations included). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from connectors.magento import CONNECTOR, MagentoOptions
from connectors.magento.fake import FakeMagento
from engine.connector import ConnectContext

TOKEN = "bench-integration-token"


def serve(pipe: Pipe) -> None:
    """The child: a FakeMagento answering until told to stop; ``stats`` and ``reset`` over the pipe."""
    with FakeMagento(port=0, integration_token=TOKEN, check_responses=False) as shop:
        pipe.send(shop.port)
        while True:
            command = pipe.recv()
            if command == "stop":
                return
            if command == "reset":
                shop.reset()
                pipe.send("ok")
            elif command == "stats":
                requests = shop.requests()
                cpu = os.times()
                pipe.send(
                    {
                        "requests": len(requests),
                        "puts": sum(1 for r in requests if r["method"] == "PUT"),
                        "bulk_posts": sum(1 for r in requests if "/async/bulk/" in r["path"]),
                        "status_gets": sum(1 for r in requests if r["path"].endswith("/status")),
                        "failed": sum(1 for r in requests if r["status"] >= 300),
                        "applied": shop.applied_count("/V1/products"),
                        "products": len(shop.products),
                        "cpu": cpu.user + cpu.system,
                    }
                )


def product(n: int) -> dict[str, Any]:
    """A product shaped like the catalog flow's output (golden/acme/catalog), ~500 bytes of JSON."""
    return {
        "sku": f"BENCH-{n:07d}",
        "name": f"Check valve DN{25 + n % 50} stainless, variant {n}",
        "attribute_set_id": 4,
        "type_id": "simple",
        "price": round(10 + (n % 997) * 0.37, 2),
        "status": 1,
        "visibility": 4,
        "weight": round(0.5 + (n % 40) * 0.125, 3),
        "extension_attributes": {"website_ids": [1]},
        "custom_attributes": [
            {"attribute_code": "color", "value": f"RAL {5000 + n % 30}"},
            {"attribute_code": "material_grade", "value": "1.4404"},
            {"attribute_code": "sales_unit", "value": "ST"},
            {"attribute_code": "pieces_per_unit", "value": "1"},
            {"attribute_code": "gtin", "value": f"4006381{n:06d}"},
        ],
    }


async def push(port: int, count: int, in_flight: int, extra: dict[str, Any]) -> tuple[float, float, int]:
    """Write ``count`` products with ``in_flight`` writes at a time; (seconds, client CPU seconds, errors)."""
    options = MagentoOptions.model_validate(
        {
            "connector": "magento",
            "url": f"http://127.0.0.1:{port}",
            "auth": {"bearer": {"token": TOKEN}},
            "limits": {"concurrency": 16, "timeout": "120s"},
            **extra,
        }
    )
    conn = CONNECTOR.open(options, ConnectContext(system="commerce", client="bench"))
    numbers: Iterator[int] = iter(range(count))
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for n in numbers:
            try:
                await conn.write("products", product(n), key=None, mode="upsert", idempotency_key=f"bench-{n}")
            except Exception as exc:  # counted and shown once; a benchmark run goes on
                if errors == 0:
                    print(f"first error: {exc}", file=sys.stderr)
                errors += 1

    started, cpu = time.perf_counter(), time.process_time()
    try:
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    finally:
        await conn.close()
    return time.perf_counter() - started, time.process_time() - cpu, errors


async def floor(port: int, count: int, in_flight: int) -> tuple[float, float, int]:
    """The same PUTs on a bare aiohttp session: no connector, no httpx model, no error translation."""
    numbers: Iterator[int] = iter(range(count))
    errors = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=16)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector, headers=headers) as client:

        async def worker() -> None:
            nonlocal errors
            for n in numbers:
                record = product(n)
                path = f"/rest/default/V1/products/{record['sku']}"
                async with client.put(path, json={"product": record}) as answer:
                    await answer.read()
                    errors += answer.status != 200

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return time.perf_counter() - started, time.process_time() - cpu, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=100_000, help="products per path (default 100,000)")
    parser.add_argument("--put-in-flight", type=int, default=16, help="writes in flight on the PUT path")
    parser.add_argument("--bulk-size", type=int, default=500, help="records per bulk request")
    parser.add_argument("--bulk-in-flight", type=int, default=2000, help="writes in flight on the bulk path")
    parser.add_argument("--only", choices=["floor", "put", "bulk"], help="run one path only")
    args = parser.parse_args(argv)

    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe()
    child = context.Process(target=serve, args=(theirs,), daemon=True)
    child.start()
    port = int(mine.recv())
    bulk = {"bulk": True, "bulk_size": args.bulk_size, "bulk_wait": "50ms", "bulk_poll": "50ms"}
    paths: list[tuple[str, str, int, dict[str, Any]]] = [
        ("floor", "floor: bare aiohttp PUTs, no connector", args.put_in_flight, {}),
        ("put", "one PUT per product", args.put_in_flight, {}),
        ("bulk", f"bulk async ({args.bulk_size} per request)", args.bulk_in_flight, bulk),
    ]
    if args.only is not None:
        paths = [path for path in paths if path[0] == args.only]
    rows = []
    try:
        for name, label, in_flight, extra in paths:
            mine.send("reset")
            mine.recv()
            mine.send("stats")
            before = mine.recv()
            if name == "floor":
                seconds, client_cpu, errors = asyncio.run(floor(port, args.count, in_flight))
            else:
                seconds, client_cpu, errors = asyncio.run(push(port, args.count, in_flight, extra))
            mine.send("stats")
            after = mine.recv()
            rows.append((label, in_flight, seconds, client_cpu, after["cpu"] - before["cpu"], errors, after))
            print(f"{label}: {args.count / seconds:,.0f} products/s", file=sys.stderr, flush=True)
    finally:
        mine.send("stop")
        child.join(10)

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"\n{args.count:,} products per path; fake in a child process on loopback; load average at the end {load}\n")
    print(
        "| path | writes in flight | products/s | HTTP requests | requests per 1,000 products | "
        "applied | errors | client CPU s | fake CPU s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, in_flight, seconds, client_cpu, fake_cpu, errors, stats in rows:
        print(
            f"| {label} | {in_flight:,} | {args.count / seconds:,.0f} | {stats['requests']:,} | "
            f"{1000 * stats['requests'] / args.count:,.1f} | {stats['applied']:,} | {errors:,} | "
            f"{client_cpu:.1f} | {fake_cpu:.1f} |"
        )
    for label, *_rest, stats in rows:
        print(
            f"\n{label}: {stats['puts']:,} PUT, {stats['bulk_posts']:,} bulk POST, "
            f"{stats['status_gets']:,} status GET, {stats['failed']:,} answered >= 300; "
            f"{stats['products']:,} products in the fake"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
