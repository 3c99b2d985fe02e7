"""The conformance suite every connector passes: ours, and a third party's from its own tests.

A connector proves it keeps the :class:`~engine.connector.Connection` contract by running these checks
against a **harness**: an object that starts the connector's system (a real server, a contract fake, a
directory), opens connections to it and can make it fail. Which checks apply follows from the roles the
connector's connection class plays, never from a list kept by hand: a :class:`~engine.connector.Target`
gets the write checks, a :class:`~engine.connector.Source` the read checks, a
:class:`~engine.connector.Caller` the call checks, a :class:`~engine.connector.Consumer` the consume
checks. A harness that does not cover a role its connection plays fails the suite (see
:func:`check_roles_agree_with_declarations`).

Use from a connector's own tests (pytest is not needed by this module; a failed check raises
``AssertionError``)::

    from engine.conformance import checks_for, run_check

    @pytest.mark.parametrize("check", checks_for(MY_KIND), ids=lambda check: check.name)
    def test_conformance(check):
        with my_harness() as harness:
            run_check(check, harness)

What the checks hold:

* every connection: ``connect`` sends nothing, ``close`` releases it (twice is harmless), and its roles
  agree with what its kind declares (each role the class plays has operations, each it does not play has
  none, and the harness's operations are among them);
* **write**: a batch is applied once each with a non-empty receipt; writing it again with the same
  idempotency keys changes nothing; a failure worth retrying is a ``TransientError``, one that is not is a
  ``TerminalError`` that says why, and no library exception escapes; the same connection works again after
  the system restarts;
* **read**: the records in the system come back, each exactly once, in pages (lists) however small the
  page size; a system that is down is a ``TransientError``, and the same connection reads again once it is up;
* **call**: a call is answered; a down system is a ``TransientError`` and the same connection calls again once
  it is up; a request the system refuses is a ``TerminalError`` that says why;
* **consume**: messages published are handed to the handler, each once; a message whose handler raised is
  given back and comes again, and nothing handled comes a second time.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from engine.connector import (
    REJECT_HEADER,
    Caller,
    Connection,
    ConnectorKind,
    Consumer,
    Message,
    ReadItem,
    Source,
    SystemOptions,
    Target,
)
from engine.errors import SeamlineError, TerminalError, TransientError

__all__ = [
    "BATCH",
    "SUITE",
    "CallingHarness",
    "Check",
    "ConsumingHarness",
    "Harness",
    "ReadingHarness",
    "WritingHarness",
    "checks_for",
    "not_covered",
    "roles_of_kind",
    "run_check",
    "write_through",
]

BATCH = 5
CONSUME_TIMEOUT = 30.0  # seconds a consume check waits for its messages (a file drop polls)
SETTLE = 0.25  # seconds a consume check goes on listening after the last message, for any that come twice


# -- what a harness is --------------------------------------------------------------------------------


@runtime_checkable
class Harness(Protocol):
    """What every harness gives: the kind, its system's options, connections, and a way to stop the system.

    ``stop()`` makes the system unreachable (a server stopped, a share unmounted) and ``start()`` brings it
    back on the same address with its data kept.
    """

    kind: ConnectorKind

    def options(self) -> SystemOptions: ...

    def connect(self) -> Connection: ...

    def stop(self) -> None: ...

    def start(self) -> None: ...


@runtime_checkable
class WritingHarness(Harness, Protocol):
    """A harness for a :class:`~engine.connector.Target`: ``entity`` is a ``target.write`` the system takes."""

    entity: str

    def record(self, n: int) -> Any:
        """The n-th record to write (distinct for each n)."""
        ...

    def applied(self) -> int:
        """Writes the system has applied (a deduplicated replay does not count)."""
        ...

    def fail_next(self, kind: Literal["transient", "terminal"]) -> None:
        """Make the next write fail the way ``kind`` says (a 503, a record the system rejects, …)."""
        ...


@runtime_checkable
class ReadingHarness(Harness, Protocol):
    """A harness for a :class:`~engine.connector.Source`: ``read_entity`` is a ``source.read`` it serves."""

    read_entity: str

    def seed(self, numbers: Iterable[int]) -> None:
        """Put the records numbered ``numbers`` into the system, readable through ``read_entity``.

        Called in a thread of its own (no event loop running there): ``asyncio.run`` may be used, and
        :func:`write_through` seeds by the connection's own writes.
        """
        ...

    def which(self, data: Any) -> int | None:
        """The number of a seeded record, from the data a read (or a consumed message) handed over; None if not one."""
        ...


@runtime_checkable
class CallingHarness(Harness, Protocol):
    """A harness for a :class:`~engine.connector.Caller`: ``call_operation`` is a ``source.call`` it answers."""

    call_operation: str

    def call_request(self) -> Any:
        """A request the system answers."""
        ...

    def refused_call_request(self) -> Any:
        """A request the system refuses for good (an unknown customer, a malformed request)."""
        ...

    def check_answer(self, answer: Any) -> None:
        """Raise AssertionError unless ``answer`` is the system's answer to :meth:`call_request`."""
        ...


@runtime_checkable
class ConsumingHarness(Harness, Protocol):
    """A harness for a :class:`~engine.connector.Consumer`: ``queue`` is what an event trigger consumes.

    ``publish`` puts the numbered records on the queue as the system's producers would; it is called in a
    thread of its own, like :meth:`ReadingHarness.seed` (:func:`write_through` publishes by the connection's
    own writes).
    """

    queue: str

    def publish(self, numbers: Iterable[int]) -> None: ...

    def which(self, data: Any) -> int | None:
        """The number of a published record, from a consumed message's JSON body; None if not one."""
        ...


_HARNESS_FOR: dict[str, tuple[type[Any], str]] = {
    "write": (WritingHarness, "entity, record(n), applied(), fail_next(kind)"),
    "read": (ReadingHarness, "read_entity, seed(numbers), which(data)"),
    "call": (CallingHarness, "call_operation, call_request(), refused_call_request(), check_answer(answer)"),
    "consume": (ConsumingHarness, "queue, publish(numbers), which(data)"),
}
_ROLE_TYPES: dict[str, type[Any]] = {"read": Source, "write": Target, "call": Caller, "consume": Consumer}


# -- the checks and which apply ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    """One check: ``role`` is the capability it needs (None: every connection)."""

    name: str
    role: str | None
    run: Callable[[Any], Coroutine[Any, Any, None]]

    def __str__(self) -> str:
        return self.name


def roles_of_kind(kind: ConnectorKind) -> frozenset[str]:
    """The roles a kind's connection class plays (read, write, call, consume), without connecting."""
    implementation = kind.implementation()
    if implementation is None:
        return frozenset()
    return frozenset(name for name, role in _ROLE_TYPES.items() if issubclass(implementation, role))


def checks_for(kind: ConnectorKind) -> list[Check]:
    """The checks that apply to ``kind``: the common ones and those of each role its connection plays."""
    roles = roles_of_kind(kind)
    return [check for check in SUITE if check.role is None or check.role in roles]


def not_covered(kind: ConnectorKind) -> dict[str, str]:
    """The checks that do not apply to ``kind``, each with why (for a report: nothing is skipped silently)."""
    roles = roles_of_kind(kind)
    implementation = kind.implementation()
    name = implementation.__name__ if implementation is not None else kind.name
    return {
        check.name: f"{name} does not play the {check.role} role"
        for check in SUITE
        if check.role is not None and check.role not in roles
    }


def write_through(harness: WritingHarness, numbers: Iterable[int]) -> None:
    """Seed a read or publish to a queue by the connection's own writes (``harness.record(n)`` to ``entity``).

    For a harness whose connection is also a Target; runs its own event loop, so call it from ``seed`` or
    ``publish`` (which the checks call in a thread of their own).
    """

    async def write_all() -> None:
        connection = harness.connect()
        try:
            for n in numbers:
                await _write(connection, harness, n)
        finally:
            await connection.close()

    asyncio.run(write_all())


def run_check(check: Check, harness: Harness) -> None:
    """Run one check to its end in a fresh event loop; AssertionError when the connector breaks the contract."""
    asyncio.run(check.run(harness))


# -- helpers -----------------------------------------------------------------------------------------------


async def _expect(error: type[SeamlineError], action: Awaitable[Any], what: str) -> SeamlineError:
    """``action`` must raise ``error``: the contract's class for this failure, not a library's exception."""
    try:
        await action
    except error as exc:
        return exc
    except Exception as exc:
        raise AssertionError(f"{what}: expected {error.__name__}, got {type(exc).__name__}: {exc}") from exc
    raise AssertionError(f"{what}: expected {error.__name__}, but it succeeded")


def _key(n: int) -> str:
    return f"conformance:order:{n}#target"


async def _write(connection: Connection, harness: WritingHarness, n: int) -> str:
    assert isinstance(connection, Target)
    return await connection.write(harness.entity, harness.record(n), key=n, mode="upsert", idempotency_key=_key(n))


async def _read_numbers(connection: Connection, harness: ReadingHarness, page_size: int = 2) -> Counter[int]:
    """How often each seeded record came back from one full read."""
    assert isinstance(connection, Source)
    seen: Counter[int] = Counter()
    pages = connection.read(harness.read_entity, since=None, cursor_field=None, page_size=page_size, filter=None)
    async for page in pages:
        assert isinstance(page, list), f"a read hands over pages as lists, not {type(page).__name__}"
        for item in page:
            if isinstance(item, ReadItem):
                assert not item.rejected, f"a seeded record was rejected at read: {item.rejected}"
                item = item.data
            number = harness.which(item)
            if number is not None:
                seen[number] += 1
    return seen


def _exactly_once(seen: Counter[int], numbers: Iterable[int], what: str) -> None:
    expected = set(numbers)
    missing = sorted(expected - set(seen))
    twice = sorted(n for n in expected if seen[n] > 1)
    assert not missing and not twice, f"{what}: missing {missing}, more than once {twice} (seen {dict(seen)})"


# -- every connection ------------------------------------------------------------------------------


async def check_connect_and_close(harness: Harness) -> None:
    connection = harness.connect()
    if isinstance(harness, WritingHarness):
        assert harness.applied() == 0, "opening a connection must not write anything"
    await connection.close()
    await connection.close()


async def check_roles_agree_with_declarations(harness: Harness) -> None:
    kind, options = harness.kind, harness.options()
    connection = harness.connect()
    try:
        played = frozenset(name for name, role in _ROLE_TYPES.items() if isinstance(connection, role))
    finally:
        await connection.close()
    assert played == roles_of_kind(kind), (
        f"the connection plays {sorted(played)}, its class {sorted(roles_of_kind(kind))}"
    )
    assert kind.consumes == ("consume" in played), f"kind '{kind.name}' says consumes={kind.consumes}"
    for role in ("read", "write", "call"):
        operations = kind.operations(role, options)
        if role not in played:
            assert not operations, f"'{kind.name}' declares {role} operations {sorted(operations)} without the role"
    for role in played:
        harness_type, needs = _HARNESS_FOR[role]
        assert isinstance(harness, harness_type), (
            f"the harness for '{kind.name}' does not cover the {role} role its connection plays: "
            f"a {harness_type.__name__} needs {needs}"
        )
    if isinstance(harness, WritingHarness) and not kind.any_write:
        assert harness.entity in kind.operations("write", options), f"'{harness.entity}' is not a declared write"
    if isinstance(harness, ReadingHarness) and "read" in played:
        assert harness.read_entity in kind.operations("read", options), (
            f"'{harness.read_entity}' is not a declared read"
        )
    if isinstance(harness, CallingHarness) and "call" in played:
        assert harness.call_operation in kind.operations("call", options), (
            f"'{harness.call_operation}' is not a declared call"
        )


# -- write ----------------------------------------------------------------------------------------------


async def check_write_a_batch(harness: WritingHarness) -> None:
    connection = harness.connect()
    try:
        receipts = [await _write(connection, harness, n) for n in range(BATCH)]
    finally:
        await connection.close()
    assert all(isinstance(r, str) and r for r in receipts), f"every write returns a receipt: {receipts}"
    assert harness.applied() == BATCH, f"applied {harness.applied()} of {BATCH} writes"


async def check_rewrite_is_idempotent(harness: WritingHarness) -> None:
    connection = harness.connect()
    try:
        first = await asyncio.gather(*(_write(connection, harness, n) for n in range(BATCH)))
        again = await asyncio.gather(*(_write(connection, harness, n) for n in range(BATCH)))
    finally:
        await connection.close()
    assert again == first, f"the same writes again gave other receipts: {first} then {again}"
    assert harness.applied() == BATCH, f"writing {BATCH} records twice applied {harness.applied()}"


async def check_failures_are_classified(harness: WritingHarness) -> None:
    connection = harness.connect()
    try:
        harness.fail_next("transient")
        await _expect(TransientError, _write(connection, harness, 1), "a write while the system is unavailable")
        harness.fail_next("terminal")
        terminal = await _expect(TerminalError, _write(connection, harness, 1), "a write the system rejects")
        assert str(terminal), "a terminal error says why"
        assert await _write(connection, harness, 1), "the same record goes through once the system is fine"
    finally:
        await connection.close()
    assert harness.applied() == 1, f"one record written after two failures applied {harness.applied()} times"


async def check_reconnects_after_a_restart(harness: WritingHarness) -> None:
    connection = harness.connect()
    try:
        await _write(connection, harness, 1)
        harness.stop()
        await _expect(TransientError, _write(connection, harness, 2), "a write while the system is stopped")
        harness.start()
        await _write(connection, harness, 2)
        await _write(connection, harness, 1)  # delivered before the restart: still not applied twice
    finally:
        await connection.close()
    assert harness.applied() == 2, f"two records across a restart applied {harness.applied()} times"


# -- read ----------------------------------------------------------------------------------------------


async def check_read_a_batch(harness: ReadingHarness) -> None:
    await asyncio.to_thread(harness.seed, range(BATCH))
    connection = harness.connect()
    try:
        seen = await _read_numbers(connection, harness, page_size=2)
    finally:
        await connection.close()
    _exactly_once(seen, range(BATCH), f"reading {BATCH} records two to a page")


async def check_read_after_a_restart(harness: ReadingHarness) -> None:
    await asyncio.to_thread(harness.seed, range(BATCH))
    connection = harness.connect()
    try:
        harness.stop()
        try:
            await _expect(TransientError, _read_numbers(connection, harness), "a read while the system is stopped")
        finally:
            harness.start()
        seen = await _read_numbers(connection, harness, page_size=100)
    finally:
        await connection.close()
    _exactly_once(seen, range(BATCH), "reading again on the same connection after a restart")


# -- call ------------------------------------------------------------------------------------------------


async def _call(connection: Connection, harness: CallingHarness, request: Any) -> Any:
    assert isinstance(connection, Caller)
    return await connection.call(harness.call_operation, request, timeout=10.0)


async def check_call_is_answered(harness: CallingHarness) -> None:
    connection = harness.connect()
    try:
        harness.check_answer(await _call(connection, harness, harness.call_request()))
        harness.check_answer(await _call(connection, harness, harness.call_request()))  # the connection is reused
    finally:
        await connection.close()


async def check_call_after_a_restart(harness: CallingHarness) -> None:
    connection = harness.connect()
    request = harness.call_request()  # asked for while the system is up (a harness may set data up for it)
    try:
        harness.stop()
        try:
            await _expect(TransientError, _call(connection, harness, request), "a call to a stopped system")
        finally:
            harness.start()
        harness.check_answer(await _call(connection, harness, harness.call_request()))
    finally:
        await connection.close()


async def check_refused_call_is_terminal(harness: CallingHarness) -> None:
    connection = harness.connect()
    try:
        refused = await _expect(
            TerminalError, _call(connection, harness, harness.refused_call_request()), "a call the system refuses"
        )
        assert str(refused), "a terminal error says why"
        harness.check_answer(await _call(connection, harness, harness.call_request()))
    finally:
        await connection.close()


# -- consume -----------------------------------------------------------------------------------------------


@dataclass
class _Inbox:
    """What a consume check's handler took, and an optional failure for the first delivery of one record."""

    harness: ConsumingHarness
    fail_first_of: int | None = None
    taken: Counter[int] = field(default_factory=Counter)
    refused: int = 0

    async def handler(self, message: Message) -> None:
        assert isinstance(message, Message), f"a consumer hands over Message objects, not {type(message).__name__}"
        assert REJECT_HEADER not in message.headers, f"a published record was rejected: {message.headers}"
        number = self.harness.which(json.loads(message.body))
        if number is None:
            return
        if number == self.fail_first_of and self.refused == 0:
            self.refused += 1
            raise RuntimeError("the inbox could not take this message (a conformance check)")
        self.taken[number] += 1


async def _consume_until(harness: ConsumingHarness, inbox: _Inbox, numbers: range) -> None:
    """Consume on a fresh connection until every number was taken, then a little longer; close it."""
    connection = harness.connect()
    assert isinstance(connection, Consumer)
    task = asyncio.create_task(connection.consume(harness.queue, inbox.handler))
    try:
        deadline = asyncio.get_running_loop().time() + CONSUME_TIMEOUT
        while not set(numbers) <= set(inbox.taken):
            if task.done():
                task.result()  # an error stopped the consumer: raise it here
                raise AssertionError("consume returned before it was cancelled")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"after {CONSUME_TIMEOUT:g}s only {dict(inbox.taken)} of {list(numbers)} were handed over"
                )
            await asyncio.sleep(0.05)
        await asyncio.sleep(SETTLE)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await connection.close()


async def check_consume_a_batch(harness: ConsumingHarness) -> None:
    await asyncio.to_thread(harness.publish, range(BATCH))
    inbox = _Inbox(harness)
    await _consume_until(harness, inbox, range(BATCH))
    _exactly_once(inbox.taken, range(BATCH), f"consuming {BATCH} messages")


async def check_a_refused_message_comes_again(harness: ConsumingHarness) -> None:
    await asyncio.to_thread(harness.publish, range(BATCH))
    inbox = _Inbox(harness, fail_first_of=0)
    await _consume_until(harness, inbox, range(BATCH))
    assert inbox.refused == 1, "the handler refused the first delivery of record 0"
    _exactly_once(inbox.taken, range(BATCH), "consuming after the handler raised once")
    again = _Inbox(harness)  # a new consumer: what was taken was acknowledged, so nothing comes back
    connection = harness.connect()
    assert isinstance(connection, Consumer)
    task = asyncio.create_task(connection.consume(harness.queue, again.handler))
    await asyncio.sleep(SETTLE * 2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await connection.close()
    assert not again.taken, f"messages already taken came again: {dict(again.taken)}"


SUITE: list[Check] = [
    Check("connect_and_close", None, check_connect_and_close),
    Check("roles_agree_with_declarations", None, check_roles_agree_with_declarations),
    Check("write_a_batch", "write", check_write_a_batch),
    Check("rewrite_is_idempotent", "write", check_rewrite_is_idempotent),
    Check("failures_are_classified", "write", check_failures_are_classified),
    Check("reconnects_after_a_restart", "write", check_reconnects_after_a_restart),
    Check("read_a_batch", "read", check_read_a_batch),
    Check("read_after_a_restart", "read", check_read_after_a_restart),
    Check("call_is_answered", "call", check_call_is_answered),
    Check("call_after_a_restart", "call", check_call_after_a_restart),
    Check("refused_call_is_terminal", "call", check_refused_call_is_terminal),
    Check("consume_a_batch", "consume", check_consume_a_batch),
    Check("a_refused_message_comes_again", "consume", check_a_refused_message_comes_again),
]
