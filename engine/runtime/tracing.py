"""Traces (OpenTelemetry): one per record, from its trigger to every target; off unless the environment asks.

A record's trace, span by span::

    receive <flow>          PRODUCER  the trigger hands the record to the inbox; a child of the webhook's (or
                                      queue message's) W3C ``traceparent`` when it came with one
      deliver <flow>        CONSUMER  one worker attempt, in whichever process claimed it (a retry is another)
        transform <flow>              the flow's transform
        write <target>      CLIENT    one target: its own transform, checks and the write; every HTTP request
                                      made meanwhile carries this span as its ``traceparent`` (the HTTP kit)

The trace crosses the inbox, and with ``--processes`` the process boundary, as a W3C traceparent stored on the
inbox row (``NewItem.traceparent``): the store keeps the text, never reads it. Attributes say the flow, the
business key, the target system and its write operation, and the outcome; a skip, a retry and a dead letter are
span events (the last two with an error status). Log lines written while a span is current carry its
``trace_id`` (engine/runtime/logs.py), and a dead letter keeps it (``DeadLetter.trace_id``).

Off by default: until a provider is installed every helper here returns at its first line (one global read),
nothing is stored on the inbox row and no header is sent. :func:`configure` installs one when the standard
OpenTelemetry variables ask for an exporter: ``OTEL_TRACES_EXPORTER=otlp`` (or ``console``), or an
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``; ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`` and ``OTEL_SDK_DISABLED`` mean what they always mean. (Unlike the
SDK's own default, no exporter is assumed: a daemon without those variables exports nothing.) The daemon calls
it once per process at start (a delivery process of ``--processes`` too) and :func:`shutdown` when it stops, to
flush; tests install an SDK provider with an in-memory exporter instead (:func:`install`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from engine.errors import UsageError
from engine.state import InboxItem, NewItem

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

__all__ = [
    "Received",
    "configure",
    "current_trace_id",
    "delivering",
    "enabled",
    "event",
    "inject",
    "install",
    "outcome",
    "received",
    "shutdown",
    "step",
    "traceparent_of",
    "writing",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_EXPORTERS = ("otlp", "console", "none")
_PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()  # reusable: what a step is when tracing is off

_tracer: Tracer | None = None  # None: tracing is off, and every helper returns at once
_configured: TracerProvider | None = None  # the provider configure() made, flushed and shut down by shutdown()


# -- setup -------------------------------------------------------------------------------------------------


def configure(environ: Mapping[str, str], *, client: str = "") -> TracerProvider | None:
    """Install a provider exporting as the standard ``OTEL_*`` variables in ``environ`` ask; None when they do
    not ask (tracing stays as it was: off, unless a test or an embedding program installed a provider).

    Raises UsageError for an exporter or OTLP protocol this seamline cannot use (the daemon then does not start,
    rather than run without the traces someone asked for).
    """
    names = _exporters(environ)
    if not names:
        return None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    global _configured
    provider = TracerProvider(resource=_resource(environ, client))
    for name in names:
        # batched, on the SDK's own thread: exporting never holds a worker
        processor: SpanProcessor = BatchSpanProcessor(_exporter(name, environ))
        provider.add_span_processor(processor)
    shutdown()  # a daemon configured again (a test, a reload) does not leave the last provider's thread behind
    install(provider)
    _configured = provider
    return provider


def install(provider: trace.TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (None: tracing off). Process-wide: OpenTelemetry's global provider
    is left alone (it can be set only once per process, and may be an embedding program's)."""
    global _tracer
    _tracer = provider.get_tracer("seamline") if provider is not None else None


def shutdown() -> None:
    """Flush and stop the provider :func:`configure` made, and stop tracing (an installed one is its owner's)."""
    global _configured
    provider, _configured = _configured, None
    if provider is not None:
        if _tracer is not None:
            install(None)
        provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


def _exporters(environ: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for; none unless it names one or gives an OTLP endpoint."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    asked = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    unknown = [n for n in asked if n not in _EXPORTERS]
    if unknown:
        raise UsageError(
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: this seamline exports traces with "
            "otlp (OTLP over HTTP), console or none"
        )
    if not asked and _endpoint(environ):
        asked = ["otlp"]  # an endpoint given is an exporter asked for
    return [n for n in dict.fromkeys(asked) if n != "none"]


def _endpoint(environ: Mapping[str, str]) -> str | None:
    """The OTLP/HTTP traces URL: the traces endpoint as given, else the base endpoint + /v1/traces (the spec's
    rule), else None (the exporter's default, http://localhost:4318/v1/traces)."""
    traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if traces:
        return traces
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return base.rstrip("/") + "/v1/traces" if base else None


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip()
    if protocol not in ("", "http/protobuf"):
        raise UsageError(
            f"OTLP protocol '{protocol}' is not available: this seamline exports OTLP over HTTP (http/protobuf); "
            "point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.util.re import parse_env_headers

    headers = environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or environ.get("OTEL_EXPORTER_OTLP_HEADERS")
    # Endpoint and headers from ``environ`` (the daemon's, which a test or an embedding program may give); the
    # exporter reads its other settings (timeout, certificates, compression) from the process environment.
    return OTLPSpanExporter(
        endpoint=_endpoint(environ), headers=parse_env_headers(headers, liberal=True) if headers else None
    )


def _resource(environ: Mapping[str, str], client: str) -> Any:
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, str] = {}
    for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    if environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = environ["OTEL_SERVICE_NAME"]
    attributes.setdefault("service.name", "seamline")
    if client:
        attributes["seamline.client"] = client
    return Resource.create(attributes)


# -- propagation -------------------------------------------------------------------------------------------


def current_trace_id() -> str:
    """The current span's trace id (32 hex digits), or "" when tracing is off or no span is current."""
    if _tracer is None:
        return ""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


def inject(headers: MutableMapping[str, str]) -> None:
    """Put the current span on an outgoing request as W3C ``traceparent`` (and ``tracestate``); nothing when
    tracing is off or no span is current (header names in lower case, as the HTTP kit keeps them)."""
    if _tracer is None:
        return
    if trace.get_current_span().get_span_context().is_valid:
        _PROPAGATOR.inject(headers)


def traceparent_of(span: Span) -> str | None:
    """``span`` as a W3C traceparent, what an inbox row keeps of its record's trace (None: no valid span)."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _parent(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The context a W3C traceparent names (None: none given, or not a valid one: the span starts a trace)."""
    if not traceparent:
        return None
    carrier = {TRACEPARENT: traceparent} | ({TRACESTATE: tracestate} if tracestate else {})
    context = _PROPAGATOR.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def _incoming(headers: Mapping[str, Any] | None) -> Context | None:
    """The trace an event came in with: its ``traceparent`` header (any case; bytes from AMQP decoded)."""
    if not headers:
        return None
    found: dict[str, str] = {}
    for name, value in headers.items():
        lowered = str(name).lower()
        if lowered in (TRACEPARENT, TRACESTATE) and value:
            found[lowered] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return _parent(found.get(TRACEPARENT), found.get(TRACESTATE))


# -- the trigger: one root span per record -----------------------------------------------------------------


class Received:
    """The ``receive`` spans of the records a trigger hands in, one per item, each ended once the inbox answered.

    ``items`` are the items to store, each carrying its span as its traceparent (the same items when tracing
    is off). Leaving the block with an exception marks every span failed: nothing was acknowledged.
    """

    def __init__(self, items: Sequence[NewItem], headers: Mapping[str, Any] | None) -> None:
        self.items = list(items)
        self._spans: list[Span] = []
        if _tracer is None or not self.items:
            return
        parent = _incoming(headers) or Context()  # no traceparent came: each record is a trace of its own
        for n, item in enumerate(self.items):
            span = _tracer.start_span(
                f"receive {item.flow}",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes={
                    "seamline.flow": item.flow,
                    "seamline.business_key": item.business_key,
                    "seamline.dedupe_id": item.key,
                    "seamline.source": item.source,
                },
            )
            self._spans.append(span)
            self.items[n] = replace(item, traceparent=traceparent_of(span))

    def trace_id(self, index: int = 0) -> str:
        """The trace id of the ``index``-th record ("" when not traced)."""
        if not self._spans:
            return ""
        return f"{self._spans[index].get_span_context().trace_id:032x}"

    def stored(self, added: Sequence[bool]) -> None:
        """What the inbox said of each item: new, or a duplicate of one it has (skipped)."""
        for span, new in zip(self._spans, added, strict=False):
            span.set_attribute("seamline.outcome", "received" if new else "skipped")
            if not new:
                span.add_event("skipped", {"seamline.reason": "duplicate"})

    def rejected(self, reason: str, index: int = 0) -> None:
        """The record could not be read: straight to dead letters, kind "rejected"."""
        if self._spans:
            span = self._spans[index]
            span.set_attribute("seamline.outcome", "rejected")
            span.add_event("dead_letter", {"seamline.kind": "rejected", "seamline.reason": reason})
            span.set_status(Status(StatusCode.ERROR, reason))

    def __enter__(self) -> Received:
        return self

    def __exit__(
        self, _kind: type[BaseException] | None, error: BaseException | None, _traceback: TracebackType | None
    ) -> None:
        for span in self._spans:
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"not acknowledged: {type(error).__name__}: {error}"))
            span.end()


def received(items: Sequence[NewItem], *, headers: Mapping[str, Any] | None = None) -> Received:
    """Start the records' traces at their trigger (continuing ``headers``' traceparent when there is one)::

    with tracing.received(items, headers=headers) as records:
        records.stored(await inbox.put_each(records.items))
    """
    return Received(items, headers)


# -- the worker: an attempt, its steps, each target -------------------------------------------------------


@contextlib.contextmanager
def delivering(item: InboxItem) -> Iterator[Span]:
    """The ``deliver`` span of one attempt at ``item``, current while the block runs; a child of the record's
    ``receive`` span (wherever that ran), or a new trace for an item stored while tracing was off.

    Only entered when tracing is on (the worker asks :func:`enabled` first): no cost at all when off.
    """
    assert _tracer is not None
    attributes: dict[str, str | int] = {
        "seamline.flow": item.flow,
        "seamline.business_key": item.business_key,
        "seamline.item_id": item.id,
        "seamline.attempt": item.attempts + 1,
    }
    if item.version is not None:
        attributes["seamline.version"] = item.version
    # No stored traceparent: a trace of its own, whatever context the worker's task was started in.
    parent = _parent(item.traceparent) or Context()
    with _tracer.start_as_current_span(
        f"deliver {item.flow}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


def step(name: str, item: InboxItem) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current attempt (``transform``), or a shared no-op when tracing is off."""
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(
        f"{name} {item.flow}", attributes={"seamline.flow": item.flow, "seamline.business_key": item.business_key}
    )


def writing(item: InboxItem, label: str, system: str, operation: str) -> contextlib.AbstractContextManager[Any]:
    """The ``write`` span of one target (current while its requests go out), or a shared no-op when off."""
    if _tracer is None:
        return _NO_SPAN
    return _tracer.start_as_current_span(
        f"write {label}",
        kind=SpanKind.CLIENT,
        attributes={
            "seamline.flow": item.flow,
            "seamline.business_key": item.business_key,
            "seamline.target": label,
            "seamline.target_system": system,
            "seamline.write": operation,
        },
    )


def outcome(span: Span | None, status: str, detail: str = "") -> None:
    """What became of an attempt or a target write: ``status`` "delivered", "written", "skipped", "retry", "dead"
    (or "dry_run"); a retry and a dead letter set an error status with the reason (the events that say more are
    added where they happen, :func:`event`)."""
    if span is None or not span.is_recording():
        return
    span.set_attribute("seamline.outcome", "dead_lettered" if status == "dead" else status)
    if status in ("retry", "dead"):
        span.set_status(Status(StatusCode.ERROR, detail))


def event(name: str, **attributes: str | float) -> None:
    """An event on the current span (a skip with its reason, a retry, a dead letter with its kind)."""
    if _tracer is None:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, {f"seamline.{key}": value for key, value in attributes.items()})
