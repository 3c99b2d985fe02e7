"""Prometheus metrics in the text exposition format, without a client library: a handful of series."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

__all__ = ["Metrics"]

BUCKETS: Sequence[float] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COUNTERS = {
    "received": "Records a trigger stored in the inbox",
    "duplicates": "Records a trigger saw again and skipped (idempotency key already known)",
    "written": "Target writes the target accepted",
    "skipped": "Records a transform filtered out (no write)",
    "retried": "Transient failures given back for a retry",
    "dead_lettered": "Records sent to dead letters",
    "requests": "Request-trigger calls answered",
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

    def render(self) -> str:
        lines: list[str] = []
        client = _label(self.client)
        with self._lock:
            for name, help_text in COUNTERS.items():
                metric = f"seamline_{name}_total"
                lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
                for (counter, flow), value in sorted(self._counters.items()):
                    if counter == name:
                        lines.append(f'{metric}{{client="{client}",flow="{_label(flow)}"}} {value:g}')
            for (name, flow), buckets in sorted(self._hist.items()):
                metric = f"seamline_{name}_seconds"
                labels = f'client="{client}",flow="{_label(flow)}"'
                lines += [f"# TYPE {metric} histogram"]
                for bound, count in zip(BUCKETS, buckets, strict=True):
                    lines.append(f'{metric}_bucket{{{labels},le="{bound:g}"}} {count:g}')
                lines.append(f'{metric}_bucket{{{labels},le="+Inf"}} {self._hist_count[(name, flow)]}')
                lines.append(f"{metric}_sum{{{labels}}} {self._hist_sum[(name, flow)]:.6f}")
                lines.append(f"{metric}_count{{{labels}}} {self._hist_count[(name, flow)]}")
        for metric, read in self.gauges.items():
            lines.append(f"# TYPE seamline_{metric} gauge")
            for label, value in sorted(read().items()):
                lines.append(f'seamline_{metric}{{client="{client}",{label}}} {value:g}')
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
