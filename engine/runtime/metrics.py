"""Prometheus metrics in the text exposition format, without a client library: a handful of series."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Metrics", "escape_label"]

BUCKETS: Sequence[float] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COUNTERS = {
    "received": "Records a trigger stored in the inbox",
    "duplicates": "Records a trigger saw again and skipped (idempotency key already known)",
    "written": "Target writes the target accepted",
    "skipped": "Records a transform filtered out (no write)",
    "failed": "Tries that failed: a transform error, or a target that refused or did not answer (each try counts)",
    "retried": "Transient failures given back for a retry",
    "dead_lettered": "Records sent to dead letters",
    "requests": "Request-trigger calls answered",
    "schedule_errors": "Schedule passes that failed (the source could not be read, or the pass broke)",
}
# Labelled counters, kept as "<family>/<label value>" names so processes report them like the others.
LABELLED = {
    "records": (
        "outcome",
        "Records read, by their one outcome: delivered, skipped (see seamline_skips_total), dead_lettered, rejected "
        "(rejected at read: never became a record)",
    ),
    "skips": (
        "reason",
        "Records skipped, by reason: duplicate (seen before), stale (older than the version delivered), empty "
        "(the transform gave nothing), discontinued, merged (joined an earlier record's group)",
    ),
}


class Metrics:
    def __init__(self, client: str) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str], float] = defaultdict(float)
        self._hist: dict[tuple[str, str], list[float]] = {}
        self._hist_sum: dict[tuple[str, str], float] = defaultdict(float)
        self._hist_count: dict[tuple[str, str], int] = defaultdict(int)
        self.gauges: dict[str, Callable[[], dict[str, float]]] = {}
        self._sources: dict[str, dict[str, Any]] = {}

    def inc(self, name: str, flow: str, amount: float = 1.0) -> None:
        with self._lock:
            self._counters[(name, flow)] += amount

    def get(self, name: str, flow: str) -> float:
        with self._lock:
            return self._counters.get((name, flow), 0.0)

    def observe(self, name: str, flow: str, seconds: float) -> None:
        key = (name, flow)
        with self._lock:
            buckets = self._hist.setdefault(key, [0.0] * len(BUCKETS))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self._hist_sum[key] += seconds
            self._hist_count[key] += 1

    def snapshot(self) -> dict[str, Any]:
        """Counters and histograms as plain JSON data (what a delivery process reports to the primary)."""
        with self._lock:
            return {
                "counters": [[name, flow, value] for (name, flow), value in self._counters.items()],
                "histograms": [
                    [name, flow, list(buckets), self._hist_sum[(name, flow)], self._hist_count[(name, flow)]]
                    for (name, flow), buckets in self._hist.items()
                ],
            }

    def absorb(self, source: str, snapshot: dict[str, Any]) -> None:
        """Another process's latest ``snapshot()``; /metrics shows the sum over this process and all sources.

        Counters stay monotonic when a source restarts: a new process reports under a new ``source``.
        """
        with self._lock:
            self._sources[source] = snapshot

    def _merged(self) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], tuple[list[float], float, int]]]:
        counters: dict[tuple[str, str], float] = defaultdict(float, self._counters)
        hist = {key: (list(b), self._hist_sum[key], self._hist_count[key]) for key, b in self._hist.items()}
        for snapshot in self._sources.values():
            for name, flow, value in snapshot.get("counters", []):
                counters[(name, flow)] += value
            for name, flow, buckets, total, count in snapshot.get("histograms", []):
                mine, mine_sum, mine_count = hist.get((name, flow), ([0.0] * len(BUCKETS), 0.0, 0))
                summed = [a + b for a, b in zip(mine, buckets, strict=True)]
                hist[(name, flow)] = (summed, mine_sum + total, mine_count + count)
        return counters, hist

    def total(self, name: str, flow: str) -> float:
        """A counter summed over this process and the processes it absorbs."""
        return self.totals().get((name, flow), 0.0)

    def totals(self) -> dict[tuple[str, str], float]:
        """Every counter, (name, flow) -> value, summed over this process and the processes it absorbs: merged
        once for whoever reads several."""
        with self._lock:
            return dict(self._merged()[0])

    def render(self) -> str:
        lines: list[str] = []
        client = escape_label(self.client)
        with self._lock:
            counters, hist = self._merged()
            for name, help_text in COUNTERS.items():
                metric = f"seamline_{name}_total"
                lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
                for (counter, flow), value in sorted(counters.items()):
                    if counter == name:
                        lines.append(f'{metric}{{client="{client}",flow="{escape_label(flow)}"}} {value:g}')
            for family, (label, help_text) in LABELLED.items():
                metric = f"seamline_{family}_total"
                lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
                for (counter, flow), value in sorted(counters.items()):
                    if counter.startswith(family + "/"):
                        labels = f'client="{client}",flow="{escape_label(flow)}"'
                        labels += f',{label}="{escape_label(counter.split("/", 1)[1])}"'
                        lines.append(f"{metric}{{{labels}}} {value:g}")
            for (name, flow), (buckets, total, count) in sorted(hist.items()):
                metric = f"seamline_{name}_seconds"
                labels = f'client="{client}",flow="{escape_label(flow)}"'
                lines += [f"# TYPE {metric} histogram"]
                for bound, in_bucket in zip(BUCKETS, buckets, strict=True):
                    lines.append(f'{metric}_bucket{{{labels},le="{bound:g}"}} {in_bucket:g}')
                lines.append(f'{metric}_bucket{{{labels},le="+Inf"}} {count}')
                lines.append(f"{metric}_sum{{{labels}}} {total:.6f}")
                lines.append(f"{metric}_count{{{labels}}} {count}")
        for metric, read in self.gauges.items():
            lines.append(f"# TYPE seamline_{metric} gauge")
            for label, value in sorted(read().items()):
                lines.append(f'seamline_{metric}{{client="{client}",{label}}} {value:g}')
        return "\n".join(lines) + "\n"


def escape_label(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
