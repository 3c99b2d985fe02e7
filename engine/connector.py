"""What a connector declares about itself, and the registry that finds connectors.

A connector kind lives in its own package under ``connectors/`` and exposes one
:class:`ConnectorKind`: its name, its options model (a subclass of :class:`SystemOptions`) and
the operations a flow may name on it (``read:``, ``write:``, ``call:``, or being the system of an
event trigger). Built-in and third-party connectors register the same way, through the
``seamline.connectors`` entry-point group; the engine never imports a connector by name.

A :class:`Registry` is a plain object: tests build an empty one and register what they need.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal, Protocol, cast, runtime_checkable

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

__all__ = [
    "REJECT_HEADER",
    "ROLES",
    "ApiKeyAuth",
    "BasicAuth",
    "BearerAuth",
    "Caller",
    "Checker",
    "ConnectContext",
    "Connection",
    "ConnectorKind",
    "Consumer",
    "Duration",
    "EffectFinder",
    "ExistenceChecker",
    "Gathering",
    "JsonDocument",
    "Limits",
    "Message",
    "MessageHandler",
    "OAuth1Auth",
    "OAuth2ClientCredentials",
    "Pruner",
    "Rate",
    "ReadItem",
    "Registry",
    "SessionAuth",
    "Size",
    "Source",
    "SystemOptions",
    "Target",
    "Url",
    "closest",
    "default_registry",
    "parse_duration",
    "parse_size",
    "roles_of",
    "system_log",
]

ENTRY_POINT_GROUP = "seamline.connectors"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)\s*$")
_SIZE_FACTORS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+$")


def parse_duration(text: str) -> float:
    """'500ms' -> 0.5, '10s' -> 10.0, '5m' -> 300.0; ValueError with a usable message otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a duration; write a number and a unit, e.g. 500ms, 10s, 5m, 1h, 1d")
    return float(match.group(1)) * _DURATION_FACTORS[match.group(2)]


def parse_size(text: str) -> int:
    """'1MB' -> 1000000, '512KiB' -> 524288; ValueError with a usable message otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a size; write a number and a unit, e.g. 512KB, 1MB, 16MiB")
    return int(float(match.group(1)) * _SIZE_FACTORS[match.group(2)])


def _check_size(text: str) -> str:
    parse_size(text)
    return text


def _check_duration(text: str) -> str:
    parse_duration(text)
    return text


def _check_rate(text: str) -> str:
    if not _RATE.match(text):
        raise ValueError(f"'{text}' is not a rate; write requests per unit of time, e.g. 5/s, 300/m, 10000/h")
    return text


def _check_url(text: str) -> str:
    if "{{" in text or _URL.match(text):
        return text
    raise ValueError(
        f"'{text}' is not a URL; write it with its scheme (https://erp.example.com) "
        "or as a template such as '{{ env.ERP_URL }}'"
    )


Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    Field(description="A duration: a number and a unit (ms, s, m, h, d).", examples=["500ms", "10s", "5m"]),
]
Size = Annotated[
    str,
    AfterValidator(_check_size),
    Field(description="A size: a number and a unit (B, KB, MB, GB, KiB, MiB, GiB).", examples=["1MB", "512KiB"]),
]
Rate = Annotated[
    str,
    AfterValidator(_check_rate),
    Field(description="Requests per unit of time.", examples=["5/s", "300/m"]),
]
Url = Annotated[
    str,
    AfterValidator(_check_url),
    Field(description="A URL with its scheme, or a template such as '{{ env.ERP_URL }}'."),
]


Capability = Literal["read", "write", "call", "event"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """What the other system can really take; the runtime shapes traffic to stay inside it."""

    rate: Rate | None = Field(None, description="Most requests per unit of time.", examples=["5/s"])
    concurrency: int | None = Field(None, ge=1, le=1024, description="Most requests in flight at once.")
    timeout: Duration | None = Field(None, description="Longest wait for one answer.", examples=["10s"])
    max_retry_after: Duration = Field(
        "5m",
        description="Longest wait a Retry-After answer (a 429 or 503) can impose before the record is tried "
        "again; a longer one is cut to this, and the cut is logged. A record waiting parks every newer change "
        "of its key behind it, so a day-long Retry-After must not park them for a day.",
        examples=["5m", "30s"],
    )


class BearerAuth(_Strict):
    token: str = Field(description="The token; write it as '{{ secret.NAME }}'.")


class BasicAuth(_Strict):
    username: str
    password: str = Field(description="Write it as '{{ secret.NAME }}'.")


class ApiKeyAuth(_Strict):
    header: str = Field("X-API-Key", description="Header that carries the key.")
    key: str = Field(description="Write it as '{{ secret.NAME }}'.")


class OAuth2ClientCredentials(_Strict):
    token_url: Url
    client_id: str
    client_secret: str = Field(description="Write it as '{{ secret.NAME }}'.")
    scope: str | None = None


class OAuth1Auth(_Strict):
    """OAuth 1.0a with HMAC-SHA256, as a Magento integration issues it."""

    consumer_key: str
    consumer_secret: str
    access_token: str
    access_token_secret: str


class SessionAuth(_Strict):
    """Log in with a user and password, then send the session (Tryton JSON-RPC)."""

    login: str
    password: str


class SystemOptions(_Strict):
    """Options every system has; a connector's options model subclasses this."""

    connector: str = Field(description="The connector kind that talks to this system.")
    description: str | None = Field(None, description="Free text for people reading the spec.")
    limits: Limits | None = Field(None, description="Rate, concurrency and timeout budgets for this system.")

    def declared_operations(self, capability: Capability) -> frozenset[str] | None:
        """Operations this system's own options declare (a generic HTTP system's endpoints).

        None means the connector kind's fixed lists apply; connectors whose operations are named
        by the spec itself override this.
        """
        return None

    def reads_rows(self, entity: str) -> bool:
        """Whether a read of ``entity`` hands over flat rows, several of which may make one record (a CSV drop
        with a row per language or price scale): ``validate`` then suggests ``source.group_by``."""
        return False

    def gives_row_ids(self, entity: str) -> bool:
        """Whether a read of ``entity`` gives each row a stable id of its own (:class:`ReadItem`), so a row read
        again is known without a version (a file drop's rows)."""
        return False

    def declared_once_only(self) -> frozenset[str] | None:
        """Write operations of this system whose resend is not safe, when the spec itself declares them.

        None means the connector kind's fixed ``once_only`` list applies (see :class:`ConnectorKind`).
        """
        return None


REJECT_HEADER = "x-seamline-reject"


@dataclass(frozen=True, slots=True)
class Message:
    """One message from a queue, as an event trigger's handler receives it.

    A connector that found a record it cannot hand over as data (a CSV row with a bad number, an
    IDoc without a mandatory segment) still hands it over, with the reason in
    ``headers[REJECT_HEADER]``: the trigger stores it straight in dead letters with that reason.
    """

    body: bytes
    message_id: str = ""
    headers: Mapping[str, Any] = field(default_factory=dict)


MessageHandler = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ReadItem:
    """One row of a source read, with what the source knows about it besides its data.

    A page from :meth:`Connection.read` is a list whose elements are plain records or ``ReadItem`` objects.
    A source wraps a row when it has one of these to say:

    * ``id``: the source's own stable id of this row, the same however often it is read (a file drop's
      ``<file>:<sha256 of the content>:<index>``). The runtime dedupes on it: a row read again (a file
      read twice after a crash) is stored once, and a row with new content is never mistaken for an old one.
    * ``rejected``: why the row cannot be handed over as data (an IDoc without a mandatory segment, a CSV
      row with a bad number); ``data`` then holds what the row was (``{"raw": text}``). The runtime stores it
      straight in dead letters with this reason (outcome "rejected at read") and the rest of the page goes on.
    """

    data: Any
    id: str = ""
    rejected: str = ""


@dataclass(frozen=True, slots=True)
class ConnectContext:
    """What a connector gets besides its options: its system's name in the spec, and who to tell secrets to.

    ``mask`` registers a value (a token fetched at run time) so logs and errors never show it.
    ``base_dir`` is the folder of the spec file that declares the system: relative paths in its
    options (a file drop's directory) are relative to it, as lookup and transform paths are.
    """

    system: str
    client: str
    mask: Callable[[str], None] = lambda _value: None
    base_dir: str = ""
    state_url: str = ""  # the daemon's own state store (a connector that keeps its data there, the embedded queue)


class Connection(Protocol):
    """An open connection to one system; the runtime opens one per system and shares it across flows.

    What a connection can do is the roles it declares by subclassing them: :class:`Source` (``read``),
    :class:`Target` (``write``), :class:`Caller` (``call``), :class:`Consumer` (``consume``), and the
    optional :class:`Checker`, :class:`Gathering`, :class:`ExistenceChecker`, :class:`EffectFinder` and
    :class:`Pruner`. The runtime asks a system for a role once, when it binds a flow to it
    (:class:`~engine.runtime.system.System`), and a connection simply does not have the roles it cannot
    play: no method that only says "cannot".

    Errors: raise :class:`~engine.errors.TransientError` when trying again later may work (timeouts,
    429, 5xx, connection refused) and :class:`~engine.errors.TerminalError` when it will not (a 4xx
    the system explains, a record the system rejects). Never let a library's exception escape.
    """

    async def close(self) -> None:
        """Called once, when the daemon stops; release sockets and pools."""
        ...


@runtime_checkable
class Source(Connection, Protocol):
    """A connection a schedule reads (``source.read``)."""

    def read(
        self,
        entity: str,
        *,
        since: str | None,
        cursor_field: str | None,
        page_size: int,
        filter: Mapping[str, Any] | None,
    ) -> AsyncIterator[list[Any]]:
        """Records of ``entity`` changed at or after ``since`` (by ``cursor_field``), page by page.

        Called by a schedule trigger; the trigger stores each page in the inbox before it asks for
        the next, and advances its cursor from the records themselves.
        """
        ...


_UNDECODED: Any = object()


class JsonDocument:
    """A record as the JSON text a transform made, handed to a target that sends it as it is.

    The worker's JSON-text path: the transform reads the stored text and writes text, so nothing is decoded
    and encoded again just to be sent. ``value`` is the same record as Python values (decoded once, on first
    use) for what needs fields: a path's ``{sku}``, a key, a schema check. A worker hands one to a target only
    when its connection says ``takes_documents``; every other target gets ``value``.
    """

    __slots__ = ("_value", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._value = _UNDECODED

    @property
    def value(self) -> Any:
        if self._value is _UNDECODED:
            self._value = json.loads(self.text)
        return self._value

    def __repr__(self) -> str:
        return f"JsonDocument({self.text[:80]!r})"


@runtime_checkable
class Target(Connection, Protocol):
    """A connection a worker writes to (``target.write``).

    A connection whose class sets ``takes_documents = True`` gets a :class:`JsonDocument` as ``record`` when
    the record is the transform's text unchanged, and sends that text as the body (an HTTP connection does;
    one that wraps or reshapes the record leaves it unset and gets Python values). Not a protocol member:
    ``isinstance`` checks of the roles must stay possible.
    """

    async def write(self, entity: str, record: Any, *, key: Any, mode: str, idempotency_key: str) -> str:
        """Write one record; returns a short receipt for the ledger (the id or status the system gave).

        Called by a worker after the ledger said this (item, target) was not delivered yet. The same
        ``idempotency_key`` comes again only if an earlier attempt's outcome is unknown (a crash, a
        timeout): a system that can deduplicate on it should.
        """
        ...


@runtime_checkable
class Caller(Connection, Protocol):
    """A connection a request trigger calls synchronously (``source.call``: a contract price at cart time)."""

    async def call(self, operation: str, request: Any, *, timeout: float) -> Any:
        """One synchronous call; its answer goes back to whoever asked."""
        ...


@runtime_checkable
class Consumer(Connection, Protocol):
    """A connection an event trigger consumes (a queue, a drop directory)."""

    async def consume(self, queue: str, handler: MessageHandler) -> None:
        """Deliver ``queue``'s messages to ``handler`` until cancelled.

        Acknowledge a message only after ``handler`` returned (it has stored the message in the
        inbox); if the handler raises, give the message back to the queue.
        """
        ...


@runtime_checkable
class Checker(Protocol):
    """Optional role of a :class:`Target`: a local check of a record before anything is sent.

    Raises :class:`~engine.errors.TerminalError` when the request the record becomes would break the
    system's published schema; the record is dead-lettered without a request (and without counting as a
    failure of the system: a breaker's trial is not spent on it).
    """

    def check(self, entity: str, record: Any) -> None: ...


@runtime_checkable
class Gathering(Protocol):
    """Optional role of a :class:`Target` that gathers concurrent writes into one request (Magento's bulk API).

    ``gathers_writes(entity, mode)`` true: the connection bounds its own requests for those writes, so the
    runtime holds no ``limits.concurrency`` slot per record while the record waits for its batch.
    """

    def gathers_writes(self, entity: str, mode: str) -> bool: ...


ROLES: dict[str, type[Any]] = {"read": Source, "write": Target, "call": Caller, "consume": Consumer}


def roles_of(connection: Connection) -> frozenset[str]:
    """The capabilities ``connection`` declares (``read``, ``write``, ``call``, ``consume``)."""
    return frozenset(name for name, role in ROLES.items() if isinstance(connection, role))


@runtime_checkable
class ExistenceChecker(Protocol):
    """Optional role of a connection: whether a target already has a record (for create-only fields).

    Called by a worker before writing to a target with ``create_only`` or ``update_only`` fields:
    True, the record exists (create-only fields are left out); False, it does not (update-only fields
    are left out). None: this connection cannot tell for ``entity``; the runtime then decides from its
    ledger (has this flow delivered this business key to this target before). Errors as for ``write``.
    """

    async def exists(self, entity: str, record: Any, *, key: Any) -> bool | None: ...


@runtime_checkable
class Pruner(Protocol):
    """Optional role of a connection that keeps data of its own (the embedded queue's acked messages).

    The runtime calls it when it prunes its state store, with the same cutoff (state.retention): delete what
    finished before ``before`` (epoch seconds); returns how many rows per kind.
    """

    async def prune(self, before: float) -> dict[str, int]: ...


@runtime_checkable
class EffectFinder(Protocol):
    """Optional role of a connection: whether a once-only write already took effect at the target.

    A write the connector kind declares ``once_only`` (a shipment, an invoice, an order comment, a sale)
    is not safe to send twice. When the runtime does not know whether an earlier attempt of it reached
    the target (it was in flight when the daemon died, or it timed out), it calls this before sending
    again: the receipt to record when the target has the effect already (our reference on the order,
    the sale, the external id), None when it does not (the write is then sent). Raise
    :class:`~engine.errors.TransientError` when the target cannot tell now (tried again later), and
    :class:`~engine.errors.TerminalError` when this connection has no way to check ``entity`` (the
    record is dead-lettered as "outcome unknown" for a person to look at, never sent twice blindly).
    """

    async def find_effect(self, entity: str, record: Any, *, key: Any, idempotency_key: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class ConnectorKind:
    """One connector kind, as it declares itself.

    ``connection``: ``"module:Class"`` of the kind's connection class, imported when first needed (so a spec
    that does not use the kind never imports its client). The class says what the kind can do, once: the
    roles it subclasses (:class:`Source`, :class:`Target`, :class:`Caller`, :class:`Consumer`, …) and the
    dispatch tables it routes through, ``READS``, ``WRITES`` and ``CALLS`` (class attributes mapping each
    entity or operation name a flow may use in ``source.read``, ``target.write`` and ``source.call`` to how
    it is done). ``connect`` is then the class itself, called with the system's options and context. A kind
    whose operations the spec names (an http system's endpoints, a file system's drops) has empty tables and
    its options' :meth:`SystemOptions.declared_operations` instead.

    A kind without ``connection`` is declared but not runnable: specs using it validate against ``reads``,
    ``writes``, ``calls`` and ``events`` (given only then), and ``validate`` says it cannot run yet. A test
    may give ``connect`` directly.

    ``once_only`` names the write operations whose resend is not safe (a shipment, an invoice, a
    comment, a sale): every other write is taken to be an idempotent PUT or upsert. Before sending a
    once-only write again whose earlier outcome is unknown, the runtime asks the connection's
    :class:`EffectFinder` role. ``keeps_groups``: the kind's ``read`` takes ``group_by`` (a list of
    fields) and then never splits the rows sharing a group key across pages (a file drop keeps a file's
    groups together), so the runtime groups each page as it comes; for any other kind the runtime
    collects a pass's rows before grouping them. ``read_moves``: the kind's ``read`` changes the source
    (a file drop moves its files to archive/ once read); it then takes ``preview=True`` to read without
    changing anything, which ``run --once --dry-run`` and previews use. ``sample(options, entity, content,
    file_name)``: a sample file's rows exactly as ``read`` of ``entity`` would hand them over (a file drop's
    format, delimiter, decimal comma, encoding, IDoc split and checks), as records or :class:`ReadItem`
    objects; ``seamline map`` and golden cases read their input through it, so a preview reads as the
    daemon does. It raises ``ValueError`` with the reason when the file cannot be read at all. Kinds without
    it take samples as the records their API sends (JSON).

    ``fake``: ``"module:function"`` of the kind's contract fake, a ``main(argv) -> int`` that serves it until
    Ctrl-C (``seamline fake <kind>``); imported only when asked for. ``any_write``: a write names free text
    (an AMQP routing key), so any ``target.write`` is valid. ``operations_in``: the key of the system's
    options where the spec declares its operations (an http system's ``endpoints``, a file system's
    ``drops``), for the hint ``validate`` gives when one is missing.
    """

    name: str
    options: type[SystemOptions]
    description: str
    connection: str = ""
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    calls: frozenset[str] = frozenset()
    events: bool = False
    connect: Callable[[SystemOptions, ConnectContext], Connection] | None = None
    once_only: frozenset[str] = frozenset()
    keeps_groups: bool = False
    read_moves: bool = False
    sample: Callable[[SystemOptions, str, bytes, str], list[Any]] | None = None
    fake: str | None = None
    any_write: bool = False
    operations_in: str = ""

    def __post_init__(self) -> None:
        if self.connection and (self.reads or self.writes or self.calls or self.events or self.connect):
            raise ValueError(
                f"connector kind '{self.name}': its connection class {self.connection} says what it reads, writes, "
                "calls and consumes; declare them there once, not again in the ConnectorKind"
            )

    @property
    def runnable(self) -> bool:
        return bool(self.connection) or self.connect is not None

    def implementation(self) -> type[Any] | None:
        """The connection class (imported now), or None for a kind declared without one."""
        return _load_class(self.connection) if self.connection else None

    def open(self, options: SystemOptions, context: ConnectContext) -> Connection:
        """A connection to one system of this kind (nothing is sent yet)."""
        if not isinstance(options, self.options):
            raise TypeError(f"the {self.name} connector needs {self.options.__name__}, not {type(options).__name__}")
        implementation = self.implementation()
        if implementation is not None:
            return cast(Connection, implementation(options, context))
        if self.connect is None:
            raise TypeError(f"the {self.name} connector cannot run in this version")
        return self.connect(options, context)

    @property
    def consumes(self) -> bool:
        """Whether a system of this kind can feed an event trigger (its connection is a :class:`Consumer`)."""
        implementation = self.implementation()
        return self.events if implementation is None else issubclass(implementation, Consumer)

    def operations(self, capability: Capability, options: SystemOptions | None = None) -> frozenset[str]:
        declared = options.declared_operations(capability) if options is not None else None
        if declared is not None:
            return declared
        implementation = self.implementation()
        if implementation is not None:
            if capability not in _TABLES:
                return frozenset()
            role, table = _TABLES[capability]
            if not issubclass(implementation, role):
                return frozenset()
            return frozenset(getattr(implementation, table, ()))
        return {"read": self.reads, "write": self.writes, "call": self.calls}.get(capability, frozenset())

    def is_once_only(self, operation: str, options: SystemOptions | None = None) -> bool:
        """Whether a write of ``operation`` must happen once (its resend is not safe)."""
        declared = options.declared_once_only() if options is not None else None
        return operation in (declared if declared is not None else self.once_only)


_TABLES: dict[str, tuple[type[Any], str]] = {
    "read": (Source, "READS"),
    "write": (Target, "WRITES"),
    "call": (Caller, "CALLS"),
}


@cache
def _load_class(where: str) -> type[Any]:
    module_name, _, attribute = where.partition(":")
    found = getattr(import_module(module_name), attribute)
    if not isinstance(found, type):
        raise TypeError(f"{where} is not a class")
    return found


@dataclass(slots=True)
class Registry:
    """Connector kinds by name. ``Registry()`` is empty; :func:`default_registry` holds the installed ones."""

    _kinds: dict[str, ConnectorKind] = field(default_factory=dict)

    def register(self, kind: ConnectorKind) -> None:
        if kind.name in self._kinds and self._kinds[kind.name] is not kind:
            raise ValueError(f"connector kind '{kind.name}' is registered twice")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> ConnectorKind | None:
        return self._kinds.get(name)

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def __iter__(self) -> Iterator[ConnectorKind]:
        return iter(self._kinds[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._kinds)

    def __hash__(self) -> int:
        return id(self)

    @classmethod
    def from_entry_points(cls) -> Registry:
        registry = cls()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            kind = ep.load()
            if not isinstance(kind, ConnectorKind):
                raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not a ConnectorKind")
            registry.register(kind)
        return registry


@cache
def default_registry() -> Registry:
    return Registry.from_entry_points()


def system_log(kind: str, system: str) -> logging.LoggerAdapter[logging.Logger]:
    """The logger a connection of ``kind`` logs through: every record carries its system's name.

    The daemon routes these records into its JSON log (masked, with a ``system`` field), so a
    connector never formats the system into its messages nor writes to stderr itself.
    """
    return logging.LoggerAdapter(logging.getLogger(f"seamline.connectors.{kind}"), {"system": system})


def closest(word: str, options: Iterable[str]) -> str | None:
    """The nearest valid name to a misspelt one, if any is near enough."""
    matches = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return matches[0] if matches else None
