"""The shape of a seamline spec: one pydantic model per part, the JSON Schema is generated from these.

Systems are validated by their connector's own options model (see :mod:`engine.connector`), so
here a system is only known to be a map with a ``connector`` key; :func:`spec_json_schema` joins
the connectors' schemas in for editors.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engine.connector import Duration, parse_duration

__all__ = [
    "EventTrigger",
    "Flow",
    "Lookup",
    "RequestTrigger",
    "Schedule",
    "Source",
    "SpecDocument",
    "Target",
    "Trigger",
]

SPEC_VERSION = 1
NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"
_NAME = re.compile(NAME_PATTERN)
_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$|^[A-Za-z]{3}(-[A-Za-z]{3})?$")
_CRON_RANGES = (
    (0, 59, "minute"),
    (0, 23, "hour"),
    (1, 31, "day of month"),
    (1, 12, "month"),
    (0, 7, "day of week"),
)
_CRON_ALIASES = {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"}


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"'{value}' is not a valid name; use lower-case letters, digits, '-' and '_', starting with a letter"
        )
    return value


Name = Annotated[str, AfterValidator(_check_name)]


def _check_cron(expr: str) -> str:
    text = expr.strip()
    if text in _CRON_ALIASES:
        return text
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            f"'{expr}' is not a cron expression: it has {len(fields)} field(s), cron needs 5 "
            "(minute hour day-of-month month day-of-week), e.g. '0 */4 * * *'"
        )
    for value, (low, high, what) in zip(fields, _CRON_RANGES, strict=True):
        if not _CRON_FIELD.match(value):
            raise ValueError(f"cron {what} field '{value}' is not valid in '{expr}'")
        for number in re.findall(r"(?<![/\d])\d+", value):
            if not low <= int(number) <= high:
                raise ValueError(f"cron {what} {number} is out of range {low}-{high} in '{expr}'")
    return text


Cron = Annotated[str, AfterValidator(_check_cron), Field(examples=["0 */4 * * *", "@daily"])]


Key = str | list[str]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _exactly_one(model: BaseModel, names: tuple[str, ...], what: str) -> None:
    chosen = [n for n in names if getattr(model, n) is not None]
    if len(chosen) != 1:
        found = ", ".join(chosen) if chosen else "none"
        raise ValueError(f"{what} needs exactly one of {', '.join(names)} (found {found})")


def _schedule_shorthand(value: Any) -> Any:
    # 'schedule: "0 */4 * * *"' and 'schedule: 15m' are the forms people write most.
    if isinstance(value, str):
        try:
            parse_duration(value)
        except ValueError:
            return {"cron": value}
        return {"every": value}
    return value


class Schedule(_Strict):
    """A batch trigger: a cron expression or an interval, paging through the source with a cursor."""

    cron: Cron | None = Field(None, description="Five-field cron, in the daemon's time zone (UTC by default).")
    every: Duration | None = Field(None, description="Run at this interval instead of a cron.")
    overlap: Duration = Field(
        "60s",
        description="Re-read this much before the cursor, so records updated in the same second are not missed.",
    )
    backfill_from: date | None = Field(
        None, description="On the very first run, start from midnight UTC of this date (no overlap window before it)."
    )

    @model_validator(mode="after")
    def _one_timing(self) -> Self:
        _exactly_one(self, ("cron", "every"), "schedule")
        return self


class EventTrigger(_Strict):
    """An event trigger: messages from a queue on a system, or an inbound webhook served by the daemon."""

    system: str | None = Field(None, description="The system (a queue connector) the messages come from.")
    queue: str | None = Field(None, description="The queue to consume.")
    webhook: str | None = Field(None, pattern=r"^/", description="Path the daemon serves for pushed events.")
    id: Key | None = Field(
        None,
        description="Field(s) of a message naming the record it is about (dotted paths); changes of one record "
        "are applied in order.",
        examples=["material", "customer.email"],
    )

    @model_validator(mode="after")
    def _one_origin(self) -> Self:
        if self.webhook is not None and (self.system is not None or self.queue is not None):
            raise ValueError("event takes either system+queue or webhook, not both")
        if self.webhook is None and (self.system is None or self.queue is None):
            missing = "queue" if self.system is not None else "system" if self.queue is not None else "system and queue"
            raise ValueError(f"event needs {missing} (or a webhook path)")
        return self


class RequestTrigger(_Strict):
    """A real-time trigger: the daemon serves ``path``, calls the source, transforms and answers."""

    path: str = Field(pattern=r"^/[A-Za-z0-9_\-/{}.]*$", description="Path the daemon serves.", examples=["/price"])
    method: Literal["GET", "POST"] = "POST"
    timeout: Duration = Field("2s", description="Longest the caller waits; past it the answer is a 504.")
    cache: Duration | None = Field(None, description="Keep answers this long, keyed by the request.")
    transform: str | None = Field(
        None,
        description="JSONata shaping the caller's request into what source.call sends (inline or a .jsonata file), "
        "so a shop can ask in its own terms; the flow's transform then shapes the answer. A request it cannot "
        "shape is answered 400 with the reason.",
        examples=['{ "code": sku, "quantity": qty, "party": { "email": customer_email } }'],
    )


class Trigger(_Strict):
    schedule: Annotated[
        Schedule | None, BeforeValidator(_schedule_shorthand, json_schema_input_type=str | Schedule | None)
    ] = None
    event: EventTrigger | None = None
    request: RequestTrigger | None = None

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        _exactly_one(self, ("schedule", "event", "request"), "trigger")
        return self

    @property
    def kind(self) -> Literal["schedule", "event", "request"]:
        if self.schedule is not None:
            return "schedule"
        return "event" if self.event is not None else "request"


class Source(_Strict):
    system: str = Field(description="A system declared under systems:.")
    read: str | None = Field(None, description="Entity to read in batches (schedule triggers).")
    call: str | None = Field(None, description="Operation to call per request (request triggers) or per event.")
    cursor: str | None = Field(
        None, description="Field that only grows, for incremental reads.", examples=["write_date"]
    )
    id: Key | None = Field(
        None,
        description="Field(s) identifying a source record (dotted paths): its changes are applied in order, "
        "and with the cursor value they make the idempotency key.",
        examples=["Product", ["SalesOrder", "SalesOrderItem"]],
    )
    filter: dict[str, Any] | None = Field(None, description="Connector-specific filter on the read.")
    page_size: int | None = Field(None, ge=1, le=100000)

    @model_validator(mode="after")
    def _read_or_call(self) -> Self:
        _exactly_one(self, ("read", "call"), "source")
        return self


class StateOptions(_Strict):
    """Where the daemon keeps its inbox, ledger, cursors and dead letters."""

    url: str | None = Field(
        None,
        description="sqlite:///path.db (default: .seamline/<client>.db) or postgresql://host/db?schema=<client>; "
        "$SEAMLINE_STATE_URL overrides it.",
        examples=["sqlite:///.seamline/acme.db", "{{ env.SEAMLINE_STATE_URL }}"],
    )
    retention: Duration = Field(
        "30d",
        description="How long finished work is kept: delivered inbox items and their ledger entries, acked queue "
        "messages, replayed dead letters and finished runs older than this are deleted (hourly by the daemon, "
        "or `seamline state prune`). A message arriving again after that is taken as new.",
    )


class Target(_Strict):
    system: str = Field(description="A system declared under systems:.")
    write: str = Field(description="Entity or operation the connector writes.", examples=["products", "source-items"])
    key: Key | None = Field(
        None, description="Field(s) that identify a record at the target; idempotency and ordering."
    )
    mode: Literal["upsert", "create", "update", "delete"] = "upsert"
    transform: str | None = Field(
        None,
        description="Extra JSONata applied to the flow's output for this target only (inline or a .jsonata file).",
    )


class Flow(_Strict):
    description: str | None = None
    enabled: bool = True
    trigger: Trigger
    source: Source | None = None
    transform: str | None = Field(
        None,
        description="JSONata: inline (use a '|' block) or the path of a .jsonata file relative to this spec.",
        examples=["transforms/product.jsonata"],
    )
    target: Target | None = None
    targets: list[Target] | None = Field(
        None, min_length=1, description="Several targets; each is delivered on its own."
    )
    discontinued: Literal["disable", "ignore"] | None = Field(
        None,
        description=(
            "What becomes of records the source marks discontinued (a `discontinued: true` field, as the Tryton "
            "connector reads inactive products). 'disable': they are written like the others, the mapping "
            "disabling them (Magento status 2), and this flow never deletes: a target with mode delete is an "
            "error. 'ignore': they are not written at all; the target keeps what it had."
        ),
    )
    key: Key | None = Field(None, description="Business key: all changes of one key are applied in order.")

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.target is not None and self.targets is not None:
            raise ValueError("a flow has either target or targets, not both")
        kind = self.trigger.kind
        if kind != "request" and self.target is None and self.targets is None:
            raise ValueError(f"a {kind} flow needs a target (or targets) to write to")
        if kind == "schedule" and self.source is None:
            raise ValueError("a schedule flow needs a source to read from")
        if self.discontinued == "disable":
            for target in [self.target] if self.target is not None else self.targets or []:
                if target.mode == "delete":
                    raise ValueError(
                        f"discontinued: disable never deletes, but the target {target.system}.{target.write} has "
                        "mode delete; let the mapping disable the record, or set discontinued: ignore"
                    )
        if kind == "request" and (self.source is None or self.source.call is None):
            raise ValueError("a request flow needs a source with call: (the operation answering the request)")
        return self

    def all_targets(self) -> list[Target]:
        if self.targets is not None:
            return list(self.targets)
        return [self.target] if self.target is not None else []


def _lookup_shorthand(value: Any) -> Any:
    return {"file": value} if isinstance(value, str) else value


class LookupTable(_Strict):
    """A code table: a CSV/YAML file, or values written inline."""

    file: str | None = Field(None, description="CSV (with a header row) or YAML file, relative to this spec.")
    key: str | None = Field(None, description="CSV column holding the key (default: the first).")
    value: str | None = Field(None, description="CSV column holding the value (default: the second).")
    values: dict[str, Any] | None = Field(None, description="The table written inline.")

    @model_validator(mode="after")
    def _file_or_values(self) -> Self:
        _exactly_one(self, ("file", "values"), "lookup")
        return self


Lookup = Annotated[LookupTable, BeforeValidator(_lookup_shorthand, json_schema_input_type=str | LookupTable)]


class SpecDocument(_Strict):
    """A client's spec after ``extends:`` has been resolved."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "title": "seamline spec",
            "$comment": "Generated by 'seamline schema'; do not edit.",
        },
    )

    seamline: Literal[1] = Field(description="Spec format version.")
    client: Name = Field(description="The client this spec integrates; one daemon runs per client.")
    extends: str | None = Field(
        None, description="A base spec this file overlays: maps merge, lists replace, null removes."
    )
    description: str | None = None
    state: StateOptions | None = Field(None, description="State store; the embedded SQLite file by default.")
    constants: dict[str, Any] = Field(default_factory=dict, description="Values a transform reads as $constants.")
    systems: dict[Name, dict[str, Any]] = Field(
        default_factory=dict,
        description="The systems this client connects, each with a connector kind and its options.",
    )
    lookups: dict[Name, Lookup] = Field(default_factory=dict, description="Code tables, read by $lookup('name', key).")
    flows: dict[Name, Flow] = Field(default_factory=dict)
