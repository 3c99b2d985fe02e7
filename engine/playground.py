"""`seamline map`: run one flow's mapping on one record, and again on every save with --watch."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from engine.errors import SpecError, TransformError
from engine.flow import load_client
from engine.preview import SampleError, preview_file
from engine.testing import GoldenInputError
from engine.transform import canonical_json

__all__ = ["play", "watch_and_play"]

Echo = Callable[[str], None]


def play(spec: Path, flow_name: str, input_path: Path, *, backend: str | None, now: str | None, echo: Echo) -> bool:
    """Print what the flow makes of the input, read as the daemon reads the flow's source; on a broken
    mapping, the error with its position. False when a record would be rejected or dead-lettered."""
    try:
        client = load_client(spec, backend=backend, now=now)
        flow = client.flow(flow_name)
        previews, single = preview_file(flow, input_path)
    except SpecError as exc:
        for diagnostic in exc.diagnostics:
            if diagnostic.severity.value == "error":
                echo(diagnostic.render())
        return False
    except (TransformError, GoldenInputError, SampleError) as exc:
        echo(f"error: {exc}")
        return False
    delivered = [p.payloads for p in previews if p.payloads is not None]
    if single and len(previews) == 1:
        if delivered:
            echo(canonical_json(delivered[0]))
    else:
        echo(canonical_json(delivered))
    ok = True
    for preview in previews:
        if preview.problem:
            ok = ok and preview.problem.startswith("skipped")
            kind = "note" if preview.problem.startswith("skipped") else "error"
            echo(f"{kind}: record {preview.record}: {preview.problem}")
    return ok


def _watched_files(spec: Path, input_path: Path) -> list[Path]:
    files = {spec, input_path}
    try:
        client = load_client(spec)
    except Exception:  # a broken spec still gets watched through its own file and the input
        return sorted(files)
    files.update(Path(f) for f in client.report.merged.chain)
    for flow in client.flows.values():
        files.update(Path(f) for f in flow.mapping_files)
    spec_dirs = {Path(f).parent for f in client.report.merged.chain}
    for directory in spec_dirs:
        files.update(directory.glob("lookups/*"))
    return sorted(files)


def _stamps(files: list[Path]) -> dict[Path, float]:
    out = {}
    for path in files:
        try:
            out[path] = path.stat().st_mtime
        except OSError:
            out[path] = -1.0
    return out


def watch_and_play(
    spec: Path,
    flow_name: str,
    input_path: Path,
    *,
    backend: str | None,
    now: str | None,
    echo: Echo,
    interval: float = 0.3,
    max_runs: int | None = None,
) -> None:
    """Re-run on every change of the input, the spec chain, a mapping or a code table; Ctrl-C stops."""
    runs = 0
    files = _watched_files(spec, input_path)
    seen = _stamps(files)
    try:
        while True:
            echo(f"── {datetime.now().strftime('%H:%M:%S')}  {flow_name} on {input_path} ──")
            play(spec, flow_name, input_path, backend=backend, now=now, echo=echo)
            runs += 1
            if max_runs is not None and runs >= max_runs:
                return
            while True:
                time.sleep(interval)
                files = _watched_files(spec, input_path)
                current = _stamps(files)
                if current != seen:
                    seen = current
                    break
    except KeyboardInterrupt:
        echo("stopped")
