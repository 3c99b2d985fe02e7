"""The shape of a seamline spec: one pydantic model per part, the JSON Schema is generated from these.

Systems are validated by their connector's own options model (see :mod:`engine.connector`), so
here a system is only known to be a map with a ``connector`` key; :func:`spec_json_schema` joins
the connectors' schemas in for editors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from engine.connector import Duration, Size, Url, parse_duration

__all__ = [
    "ALERT_CONDITIONS",
    "AlertCondition",
    "AlertNotify",
    "AlertRule",
    "Alerts",
    "EmailNotify",
    "EventTrigger",
    "Flow",
    "Lookup",
    "RequestTrigger",
    "Schedule",
    "Source",
    "SpecDocument",
    "Target",
    "Trigger",
    "WebhookNotify",
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
    """A cron expression as croniter (what runs the schedule) reads it, and one that ever fires.

    The fields are named first (a field out of its range says which), then croniter has the last word:
    a step of 0 (``*/0``) or a date that never comes (``0 0 31 2 *``) is refused here, not at run time.
    """
    from croniter import croniter  # type: ignore[import-untyped]

    text = expr.strip()
    if text not in _CRON_ALIASES:
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
            if re.search(r"/0+(?!\d)", value):
                raise ValueError(f"cron {what} field '{value}' steps by 0 in '{expr}'; a step is 1 or more")
    try:
        croniter(text, datetime(2025, 1, 1, tzinfo=UTC)).get_next(datetime)
    except Exception as exc:  # croniter's own refusal, or a date it never reaches
        detail = str(exc).replace(f"[{text}] ", "")
        raise ValueError(f"cron '{expr}' never fires: {detail}") from None
    return text


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone '{name}'; use an IANA name such as Europe/Berlin, America/Chicago or UTC"
        ) from None
    return name


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

    cron: Cron | None = Field(None, description="Five-field cron, in the schedule's timezone (UTC by default).")
    timezone: Annotated[str, AfterValidator(_check_timezone)] = Field(
        "UTC",
        description="IANA time zone the cron is read in: '0 2 * * *' with Europe/Berlin is 02:00 in Berlin, "
        "summer and winter.",
        examples=["Europe/Berlin", "America/Chicago"],
    )
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
        description="The business key: field(s) of a message naming the record it is about (dotted paths); "
        "changes of one record are applied in order.",
        examples=["material", "customer.email"],
    )
    dedupe: str | None = Field(
        None,
        pattern=r"^(header:[A-Za-z0-9_-]+|[A-Za-z_][A-Za-z0-9_.]*)$",
        description="The dedupe id: what makes a message the same delivery seen twice (a re-sent event), a body "
        "field (dotted path) or 'header:<name>'. Default: the transport's message id (AMQP message_id, the "
        "embedded queue's id, a webhook's X-Message-Id or Idempotency-Key). A message with none of these is never "
        "taken for another: it is stored as a new record.",
        examples=["event_id", "header:X-Event-Id"],
    )
    version: str | None = Field(
        None,
        description="Which change of a key is newer: a field (dotted path) holding a sequence number or a change "
        "time. A message older than the newest change already delivered for its key is skipped as stale "
        "(counted and logged), never written over it.",
        examples=["sequence", "changed_at"],
    )
    dedupe_window: Duration | None = Field(
        None,
        description="Opt-in: also take a message with the same key and the same content as one already seen "
        "in the same period of this length for a duplicate (for publishers that re-send without any id; two "
        "copies on either side of a period's end are both kept). Outside it the same content is a new record: "
        "5, then 7, then 5 again is three changes.",
        examples=["10s"],
    )
    group_by: Key | None = Field(
        None,
        description="Collect the messages sharing these field(s) that arrive within `window` into one record "
        "{<field>: <value>, ..., rows: [message, ...]} (arrival order) before the transform.",
        examples=["order_id"],
    )
    window: Duration | None = Field(
        None, description="With group_by: how long after a group's first message the group is closed.", examples=["2s"]
    )
    max_body: Size = Field(
        "1MB",
        description="A webhook's largest body: a bigger one is answered 413 and never read (a queue's messages are "
        "bounded by the broker).",
        examples=["1MB", "16MiB"],
    )

    @model_validator(mode="after")
    def _one_origin(self) -> Self:
        if (self.group_by is None) != (self.window is None):
            raise ValueError("event group_by and window go together: name the fields and how long a group stays open")
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
    max_body: Size = Field("64KB", description="The largest request body; a bigger one is answered 413, unread.")
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
        description="The business key: field(s) identifying a source record (dotted paths); its changes are "
        "applied in order. With the version (and the row's content) it makes the dedupe id of a read.",
        examples=["Product", ["SalesOrder", "SalesOrderItem"]],
    )
    version: str | None = Field(
        None,
        description="Which change of a record is newer: a field (dotted path) holding a sequence or a change time; "
        "the cursor when left out. A change older than the newest one delivered for its key is skipped as stale.",
        examples=["write_date", "ChangeSequence"],
    )
    group_by: Key | None = Field(
        None,
        description="Collect the rows sharing these field(s) into one record before the transform: "
        "{<field>: <value>, ..., rows: [row, ...]} with the rows in the order they were read (language rows, "
        "price scales, BOM lines, order lines of a flat file). A file drop groups within each file; other "
        "sources within each pass.",
        examples=["MATNR", ["VBELN"]],
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
    durability: Literal["full", "relaxed"] = Field(
        "full",
        description="full: a record acknowledged upstream (a webhook answered 202, a queue message acked, a page's "
        "cursor moved) is on disk and survives a power cut or an OS crash (SQLite synchronous=FULL: one fsync per "
        "commit). relaxed: it survives a crash of the process, not of the machine (synchronous=NORMAL: the last "
        "commits before a power cut can be lost); faster, see bench/README.md. PostgreSQL keeps its own setting.",
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
    create_only: list[str] = Field(
        default_factory=list,
        description="Top-level fields sent only when the target does not have the record yet (a placeholder "
        "price a new product needs, its attribute set): once it exists they are left out, so they never "
        "overwrite what the target's owners set. Existence is asked of the connector (Magento's GET), else "
        "taken from the ledger (this flow delivered the key to this target before).",
        examples=[["price", "attribute_set_id"]],
    )
    update_only: list[str] = Field(
        default_factory=list,
        description="Top-level fields sent only when the target has the record already.",
        examples=[["status"]],
    )

    @model_validator(mode="after")
    def _fields_apart(self) -> Self:
        both = sorted(set(self.create_only) & set(self.update_only))
        if both:
            raise ValueError(f"{', '.join(both)} cannot be both create_only and update_only")
        return self


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


# -- alerts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertCondition:
    """What one ``when:`` of an alert rule watches, and which of the rule's keys it takes."""

    subject: Literal["flow", "system"]  # what an incident is about: one notice per flow, or per system
    description: str
    above: Literal["count", "duration"] | None = None  # what `above` is for it; None: it takes no `above`
    above_required: bool = False
    over: str | None = None  # its default window; None: it takes no `over`
    after: str = "0s"  # its default `after`


ALERT_CONDITIONS: dict[str, AlertCondition] = {
    "dead_letters_growing": AlertCondition(
        "flow",
        "More than `above` (default 0) new dead letters in a flow within `over` (default 10m); resolved once "
        "`over` passed without a new one.",
        above="count",
        over="10m",
    ),
    "breaker_open": AlertCondition(
        "system",
        "A system's circuit breaker has not closed for `after` (default 5m): every call to it is refused or on "
        "trial. Resolved when a call gets through.",
        after="5m",
    ),
    "schedule_failing": AlertCondition(
        "flow",
        "A schedule's passes fail (the source cannot be read), the first failed pass `after` ago (default 0s: at "
        "once). Resolved by a pass that succeeds.",
    ),
    "schedule_stalled": AlertCondition(
        "flow",
        "A schedule's next pass is overdue by more than `after` (default 5m): a pass runs far longer than its "
        "interval, or none starts. Resolved when a pass finishes.",
        after="5m",
    ),
    "cursor_lag": AlertCondition(
        "flow",
        "A schedule's cursor (a change time) is older than `above`: the newest change read is that old. The "
        "source was quiet that long, or its reads do not get through; for sources that change all day.",
        above="duration",
        above_required=True,
    ),
    "consumer_stopped": AlertCondition(
        "flow",
        "A flow's queue consumer or schedule loop ended and takes no new work until the daemon restarts "
        "(/readyz says degraded).",
    ),
    "request_p99": AlertCondition(
        "flow",
        "A request trigger's 99th percentile answer time over `over` (default 5m) is above `above`.",
        above="duration",
        above_required=True,
        over="5m",
    ),
}

AlertWhen = Literal[
    "dead_letters_growing",
    "breaker_open",
    "schedule_failing",
    "schedule_stalled",
    "cursor_lag",
    "consumer_stopped",
    "request_p99",
]
Notifier = Literal["webhook", "email"]
_SMTP_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d{1,5})?$")
SMTP_PORTS = {"starttls": 587, "implicit": 465, "none": 25}


def _check_smtp(value: str) -> str:
    if "{{" in value or _SMTP_ADDRESS.match(value):
        return value
    raise ValueError(f"smtp '{value}' is not host or host:port; write e.g. smtp.example.com:587")


def _check_address(value: str) -> str:
    if "{{" in value or ("@" in value and not any(c.isspace() for c in value.strip())):
        return value
    raise ValueError(f"'{value}' is not an e-mail address; write e.g. ops@example.com")


def _one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Address = Annotated[str, AfterValidator(_check_address)]


class WebhookNotify(_Strict):
    """Notices POSTed as JSON to a chat's incoming webhook (Slack, Microsoft Teams) or any HTTP receiver."""

    url: Url = Field(
        description="The incoming webhook's URL. It carries the channel's token: keep it in a secret. The body is "
        "JSON with a `text` field (what Slack and Teams show) and the notice's fields under `alert`.",
        examples=["{{ secret.ALERTS_WEBHOOK_URL }}"],
    )
    timeout: Duration = Field("10s", description="Longest a POST may take; past it the notice is sent again later.")


class EmailNotify(_Strict):
    """Notices sent as e-mail through an SMTP server."""

    smtp: Annotated[str, AfterValidator(_check_smtp)] = Field(
        description="The SMTP server as host:port (the port defaults to 587 with starttls, 465 with implicit TLS, "
        "25 without TLS).",
        examples=["smtp.example.com:587", "{{ env.SMTP_SERVER }}"],
    )
    sender: Address = Field(description="The From address.", examples=["seamline@example.com"])
    to: Annotated[list[Address], BeforeValidator(_one_or_list, json_schema_input_type=str | list[str])] = Field(
        min_length=1, description="Who receives the notices: an address or a list.", examples=[["ops@example.com"]]
    )
    user: str | None = Field(None, description="SMTP login; none: send without logging in.")
    password: str | None = Field(
        None,
        description="SMTP password, from a secret (a password written in the spec is an error).",
        examples=["{{ secret.SMTP_PASSWORD }}"],
    )
    tls: Literal["starttls", "implicit", "none"] = Field(
        "starttls",
        description="starttls: upgrade the connection before logging in (port 587); implicit: TLS from the first "
        "byte (port 465); none: plain text, for a relay on the same host or network only.",
    )
    timeout: Duration = Field("10s", description="Longest one send may take; past it the notice is sent again later.")

    def address(self) -> tuple[str, int]:
        """(host, port) of the rendered ``smtp``."""
        host, _, port = self.smtp.rpartition(":") if not self.smtp.endswith("]") else (self.smtp, "", "")
        if not host or not port.isdigit():
            return self.smtp.strip("[]"), SMTP_PORTS[self.tls]
        return host.strip("[]"), int(port)


class AlertNotify(_Strict):
    """Where notices go; a rule sends to all of them unless it names some in its own `notify`."""

    webhook: WebhookNotify | None = None
    email: EmailNotify | None = None

    def configured(self) -> list[Notifier]:
        named: list[tuple[Notifier, object]] = [("webhook", self.webhook), ("email", self.email)]
        return [name for name, options in named if options is not None]


class AlertRule(_Strict):
    """One condition watched while the daemon runs: one notice when it starts holding, one when it is resolved."""

    when: AlertWhen = Field(
        description="The condition watched:\n"
        + "\n".join(f"- {name}: {condition.description}" for name, condition in ALERT_CONDITIONS.items()),
        # what an editor shows beside each value as it completes it (VS Code's JSON and YAML language servers)
        json_schema_extra={"enumDescriptions": [condition.description for condition in ALERT_CONDITIONS.values()]},
    )
    flow: Name | None = Field(
        None, description="The flow watched; left out: every flow the condition applies to, each its own incident."
    )
    system: Name | None = Field(
        None, description="breaker_open only: the system watched; left out: every system of the daemon."
    )
    after: Duration | None = Field(
        None,
        description="How long the condition must hold before the notice (breaker_open and schedule_stalled: 5m; "
        "others: at once). A condition that clears sooner sends nothing.",
        examples=["5m"],
    )
    over: Duration | None = Field(
        None,
        description="The window measured: new dead letters within it (default 10m), request times within it "
        "(default 5m).",
        examples=["10m"],
    )
    above: Annotated[float, Field(ge=0)] | Duration | None = Field(
        None,
        description="The bound: a number of new dead letters (dead_letters_growing, default 0), how old a cursor "
        "may get (cursor_lag) or the slowest p99 allowed (request_p99).",
        examples=[0, "6h", "500ms"],
    )
    notify: list[Notifier] | None = Field(
        None, min_length=1, description="Send to these only (default: every notifier under alerts.notify)."
    )

    @model_validator(mode="after")
    def _fits_condition(self) -> Self:
        condition = ALERT_CONDITIONS[self.when]
        if condition.subject == "flow" and self.system is not None:
            raise ValueError(f"{self.when} watches flows, not a system; name a flow or leave system out")
        if condition.subject == "system" and self.flow is not None:
            raise ValueError(f"{self.when} watches systems, not a flow; name a system or leave flow out")
        if self.over is not None and condition.over is None:
            raise ValueError(
                f"{self.when} measures no window; leave over out (it is for dead_letters_growing, request_p99)"
            )
        if self.above is None:
            if condition.above_required:
                example = "6h" if self.when == "cursor_lag" else "500ms"
                raise ValueError(f"{self.when} needs a bound: above: {example}")
            return self
        if condition.above is None:
            raise ValueError(f"{self.when} takes no bound; leave above out")
        if condition.above == "duration" and not isinstance(self.above, str):
            raise ValueError(f"{self.when} is bounded by a duration, e.g. above: 500ms, not {self.above:g}")
        if condition.above == "count" and isinstance(self.above, str):
            raise ValueError(f"{self.when} is bounded by a number of dead letters, e.g. above: 10, not '{self.above}'")
        return self

    @property
    def condition(self) -> AlertCondition:
        return ALERT_CONDITIONS[self.when]

    def after_seconds(self) -> float:
        return parse_duration(self.after or self.condition.after)

    def over_seconds(self) -> float:
        return parse_duration(self.over or self.condition.over or "0s")

    def bound(self) -> float:
        """``above`` as a number: a count, or a duration in seconds (0 when the condition takes none)."""
        if isinstance(self.above, str):
            return parse_duration(self.above)
        return float(self.above or 0)


class Alerts(_Strict):
    """Rules the daemon checks while it runs, and where their notices go."""

    notify: AlertNotify = Field(default_factory=AlertNotify, description="Where notices go.")
    every: Duration = Field("30s", description="How often the rules are checked.")
    rules: dict[Name, AlertRule] = Field(
        default_factory=dict,
        description="The rules, by name. One notice when a rule starts holding for a flow or system, none while it "
        "keeps holding, one 'resolved' notice when it stops.",
    )


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
    lookups: dict[Name, Lookup] = Field(
        default_factory=dict,
        description="Code tables, read in a transform as $lookup($lookups.<name>, key): the table, not its name.",
    )
    flows: dict[Name, Flow] = Field(default_factory=dict)
    alerts: Alerts | None = Field(
        None,
        description="Alert rules checked while the daemon runs (dead letters, breakers, schedules, cursors, "
        "consumers, request times), with notices to a chat webhook or by e-mail.",
    )
