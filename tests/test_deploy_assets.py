"""deploy/: the Prometheus alert rules and the Grafana dashboard name only metrics a daemon serves.

A real daemon runs on loopback with traffic that makes every series appear (a delivery, a retry, a duplicate, a
record the transform drops, a body that is not JSON, a request, a failing schedule), and its /metrics is
scraped. Every ``seamline_*`` metric named in the rules' and the dashboard's expressions must be one of its
series, every label they match on or group by must be one it carries, and every literal label value they
match (``status="pending"``, ``outcome="rejected"``) one it has.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from connectors.http.fake import FakeHttpServer, FakeRequest, FakeResponse
from engine.runtime.daemon import Daemon, DaemonOptions
from engine.runtime.guards import Backoff

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "seamline-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "seamline-dashboard.json"

SPEC = """\
seamline: 1
client: scraped
systems:
  erp:
    connector: http
    url: "{{ env.ERP_URL }}"
    endpoints:
      products: { path: /products }
      price: { path: /price, method: POST }
  shop:
    connector: http
    url: "{{ env.SHOP_URL }}"
    endpoints:
      products: { path: "/products/{sku}", method: PUT }
flows:
  orders:
    trigger: { event: { webhook: /hooks/orders, id: sku } }
    transform: 'sku != "SKIP" ? $'
    target: { system: shop, write: products, key: sku }
  catalog:
    trigger: { schedule: 1h }
    source: { system: erp, read: products, cursor: changed, id: sku }
    target: { system: shop, write: products, key: sku }
  price:
    trigger: { request: { path: /price, timeout: 2s } }
    source: { system: erp, call: price }
"""


# -- what the daemon serves ------------------------------------------------------------------------------


@dataclass
class Scrape:
    """/metrics as series: metric name -> the label sets of its samples."""

    series: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls()
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line)
            assert match, f"not a sample line: {line!r}"
            labels = dict(re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            scrape.series.setdefault(match.group(1), []).append(labels)
        return scrape

    def labels(self, metric: str) -> set[str]:
        return {name for labels in self.series.get(metric, []) for name in labels}

    def values(self, metric: str, label: str) -> set[str]:
        return {labels[label] for labels in self.series.get(metric, []) if label in labels}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    root = tmp_path_factory.mktemp("scraped")
    (root / "seamline.yaml").write_text(SPEC, encoding="utf-8")
    with FakeHttpServer(port=0) as erp, FakeHttpServer(port=0) as shop:
        erp.route("POST", "/price", lambda request: _price(request))
        erp.fail_next("all", status=500, path="/products")  # the schedule's pass fails: schedule_errors
        shop.fail_next(1, status=503)  # the first write fails once: failed, retried
        env = {**os.environ, "ERP_URL": erp.url, "SHOP_URL": shop.url}
        yield asyncio.run(_traffic_then_scrape(root, env, shop))


def _price(request: FakeRequest) -> FakeResponse:
    return FakeResponse(200, {"sku": request.json()["sku"], "net": 1.0})


async def _traffic_then_scrape(root: Path, env: dict[str, str], shop: FakeHttpServer) -> Scrape:
    options = DaemonOptions(
        port=free_port(),
        dev=True,
        workers=2,
        drain_timeout=5,
        state_url=f"sqlite:///{root / 's.db'}",
        backoff=Backoff(base=0.01, cap=0.02),
    )
    daemon = Daemon(root / "seamline.yaml", options, environ=env, log_stream=io.StringIO())
    await daemon.start()
    base = f"http://127.0.0.1:{options.port}"
    try:
        async with httpx.AsyncClient() as client:
            for body, message_id in (({"sku": "A"}, "m-1"), ({"sku": "A"}, "m-1"), ({"sku": "SKIP"}, "m-2")):
                answer = await client.post(f"{base}/hooks/orders", json=body, headers={"X-Message-Id": message_id})
                assert answer.status_code == 202, answer.text
            assert (await client.post(f"{base}/hooks/orders", content=b"not json")).status_code == 202
            assert (await client.post(f"{base}/price", json={"sku": "P"})).status_code == 200
            deadline = time.monotonic() + 10
            while not (shop.writes("/products/A") and daemon.metrics.total("schedule_errors", "catalog")):
                assert time.monotonic() < deadline, "the traffic did not go through"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # the last record's outcome counted
            answer = await client.get(f"{base}/metrics")
            assert answer.status_code == 200
            return Scrape.parse(answer.text)
    finally:
        await daemon.stop()


# -- what the assets name --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    where: str
    text: str


def rule_expressions() -> list[Expression]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    out = []
    for group in document["groups"]:
        for rule in group["rules"]:
            out.append(Expression(f"{RULES.name}: {rule['alert']}", str(rule["expr"])))
    return out


def dashboard_expressions() -> list[Expression]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out: list[Expression] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            here = f"{DASHBOARD.name}: {node['title']}" if isinstance(node.get("title"), str) else where
            for key, value in node.items():
                if key in ("expr", "definition", "query") and isinstance(value, str):
                    out.append(Expression(here, value))
                else:
                    walk(value, here)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk(document, DASHBOARD.name)
    return out


# `up{job="seamline"}` is Prometheus' own; the data source variable's query is the plugin's name.
EXPRESSIONS = [e for e in rule_expressions() + dashboard_expressions() if "seamline_" in e.text]
_SELECTOR = re.compile(r"\b(seamline_[a-zA-Z0-9_]+)\b(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!=|!~|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def metrics_in(expression: Expression) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(metric, its label matchers) for every seamline_* selector of ``expression``."""
    return [(m.group(1), _MATCHER.findall(m.group(2) or "")) for m in _SELECTOR.finditer(expression.text)]


def test_the_assets_parse_and_name_metrics() -> None:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for rule in rules["groups"][0]["rules"]:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(rule["annotations"])
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
    named = {metric for e in EXPRESSIONS for metric, _ in metrics_in(e)}
    assert len(named) >= 12, sorted(named)  # every family the daemon serves is charted or alerted on


@pytest.mark.parametrize("expression", EXPRESSIONS, ids=lambda e: f"{e.where}: {e.text[:60]}")
def test_every_metric_label_and_value_named_is_served(expression: Expression, scrape: Scrape) -> None:
    served = sorted(scrape.series)
    found = metrics_in(expression)
    for metric, matchers in found:
        assert metric in scrape.series, f"{expression.where}: {metric} is not served; /metrics has {served}"
        for label, operator, value in matchers:
            assert label in scrape.labels(metric), f"{expression.where}: {metric} has no label {label}"
            if "$" in value or operator.startswith("!"):
                continue  # a dashboard variable, or a negation: any value is fine
            wanted = value.split("|") if operator == "=~" else [value]
            missing = [v for v in wanted if v not in scrape.values(metric, label)]
            assert not missing, f"{expression.where}: {metric}{{{label}}} never is {missing}"
    carried = set().union(*(scrape.labels(metric) for metric, _ in found))
    for grouping in _GROUPING.findall(expression.text):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            assert label in carried, f"{expression.where}: grouped by {label}, which none of its metrics carries"
