"""The amqp connector's connection: RabbitMQ through aio-pika.

Who calls what is documented on :class:`engine.connector.Connection`. This module adds how the
broker's answers are translated, right where they enter (no aio-pika or aiormq exception leaves it)::

    connection refused, reset, closed, timed out     TransientError
    a channel closed under us, a publish timeout     TransientError   (the outcome is unknown: retry;
                                                                       the message id deduplicates)
    basic.nack of a publish                          TransientError   (a full queue with reject-publish,
                                                                       a broker short of resources)
    login refused (ACCESS_REFUSED at connection)     TerminalError
    no such exchange, access refused, precondition   TerminalError    (the broker's reply text quoted)
    basic.return of a mandatory publish (NO_ROUTE)   TerminalError    (no queue is bound for the key)

Connections: one for publishing (shared by every write, opened at the first write, opened again
after it is lost), and one per running ``consume``. aio-pika's plain connections are used, not its
"robust" ones: this module owns reconnection, so a write during an outage fails at once with a
TransientError (the runtime retries it with backoff) instead of hanging until the broker is back,
and a consumer knows exactly when its channel died and which deliveries it can no longer ack.

Consuming: messages are handled one at a time in queue order (``prefetch`` more are buffered), and
acknowledged only after the handler returned; when the handler raises, the session closes so that
message and the ones buffered behind it go back to the queue in order, and consuming resumes after
a pause. When the connection is lost the consumer reconnects with backoff until it is cancelled;
deliveries it had not acknowledged are redelivered by the broker with the same message id, and the
runtime's inbox stores each message id once.

Message ids: the handler gets the publisher's message id, or ``""`` when it sent none. The
connector never makes one up from the content: two publications of the same content are two
records (a stock level of 5, then 7, then 5 again for one SKU), and a content hash would merge the
third into the first and lose it. What identifies such a message is the spec's to say (a body
field or a header it names as the dedupe id). Only the connector's own dead-letter copy of such a
message gets an id, a unique one (:func:`dead_letter_id`), as a confirmed mandatory publish needs one.

Logs go to the ``seamline.connectors.amqp`` logger, with the URL's password replaced by ``***``;
message bodies are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any, Final, NoReturn
from urllib.parse import unquote, urlsplit, urlunsplit

import aio_pika
import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from pamqp.commands import Basic
from pamqp.common import FieldValue

from connectors.amqp import AmqpOptions
from engine.connector import ConnectContext, Consumer, Message, MessageHandler, Target, parse_duration, system_log
from engine.errors import TerminalError, TransientError

__all__ = ["REASON_HEADER", "SOURCE_QUEUE_HEADER", "AmqpConnection", "dead_letter_id", "redact_url", "unparsable"]


DEFAULT_TIMEOUT: Final = 10.0
REASON_HEADER: Final = "x-seamline-reason"
SOURCE_QUEUE_HEADER: Final = "x-seamline-queue"
KEY_HEADER: Final = "x-seamline-key"
IDEMPOTENCY_HEADER: Final = "x-seamline-idempotency-key"
_MAX_SHORT_STRING: Final = 255  # bytes: routing keys and message ids are AMQP short strings
_RECONNECT_FIRST: Final = 0.2
_RECONNECT_CAP: Final = 10.0
_HANDLER_PAUSE_CAP: Final = 5.0  # most we wait after a failed handler before trying again


# -- small pure helpers ---------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (user, host, port and vhost kept: they help)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def unparsable(body: bytes) -> str | None:
    """Why ``body`` cannot be read as JSON, the way the runtime reads it; None when it can."""
    try:
        json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"message is not JSON: {exc}"
    except RecursionError:  # 100,000 levels of [: it stopped the consumer for good once
        return "message is JSON nested deeper than a record can be"
    return None


def dead_letter_id(message: AbstractIncomingMessage) -> str:
    """The message id of the dead-letter copy of ``message``: its own, else a new unique one.

    Called only when the connector publishes a message to its dead-letter exchange: a confirmed,
    mandatory publish is matched to a basic.return by message id. Unique per delivery, never a hash
    of the content, so two dead letters of the same content stay two.
    """
    return message.message_id or f"seamline-dead-letter:{uuid.uuid4().hex}"


def _describe(message: AbstractIncomingMessage) -> str:
    """'message m7', or 'a message without a message id (delivery tag 3)', for logs and errors."""
    if message.message_id:
        return f"message {message.message_id}"
    return f"a message without a message id (delivery tag {message.delivery_tag})"


def _reply_text(exc: BaseException) -> str:
    """The broker's own words from an aiormq exception (its reply text), else the exception's text."""
    for arg in reversed(exc.args):
        if isinstance(arg, str) and arg:
            return arg
    return str(exc) or type(exc).__name__


def _identify(idempotency_key: str, key: Any) -> tuple[str, dict[str, FieldValue]]:
    """The message id for ``idempotency_key`` (hashed when longer than a short string) and the headers."""
    headers: dict[str, FieldValue] = {}
    if key is not None:
        headers[KEY_HEADER] = json.dumps(key, default=str, ensure_ascii=False)
    if len(idempotency_key.encode("utf-8")) <= _MAX_SHORT_STRING:
        return idempotency_key, headers
    headers[IDEMPOTENCY_HEADER] = idempotency_key
    return "seamline-sha256:" + hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest(), headers


def _returned(exc: aiormq.exceptions.PublishError) -> str:
    """'312 NO_ROUTE': the code and text of the broker's basic.return."""
    frame = exc.frame
    return f"{getattr(frame, 'reply_code', '')} {getattr(frame, 'reply_text', '')}".strip() or "returned"


class _Backoff:
    """Exponential delays with jitter, for reconnecting and for pausing after a failed handler."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self.attempts = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.first * 2**self.attempts)
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


class _Slot:
    """Publishes of one message id in progress, and the lock that puts them one after the other."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _Lost(Exception):
    """The consumer's channel or connection closed under it; the session starts again."""


class _HandlerFailed(_Lost):
    """The handler raised: the session ends so its unacknowledged messages return in order."""


class AmqpConnection(Target, Consumer):
    """An open connection to one RabbitMQ system: a publishing channel with confirms, and consumers."""

    def __init__(self, options: AmqpOptions, context: ConnectContext) -> None:
        self.options = options
        self.context = context
        self.system = context.system
        self.log = system_log("amqp", self.system)
        self.url = options.url
        self.where = redact_url(options.url)
        limits = options.limits
        self.timeout = parse_duration(limits.timeout) if limits and limits.timeout else DEFAULT_TIMEOUT
        password = urlsplit(options.url).password
        if password:
            context.mask(password)
            context.mask(unquote(password))
        self._publisher: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._open_lock = asyncio.Lock()
        self._publishing: dict[str, _Slot] = {}
        self._consumers: set[AbstractConnection] = set()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the publishing connection and every consumer's; consumers then return. Twice is harmless."""
        self._closed = True
        publisher, self._publisher, self._channel, self._exchange = self._publisher, None, None, None
        for connection in [publisher, *self._consumers]:
            await self._close_quietly(connection)

    async def __aenter__(self) -> AmqpConnection:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # -- the Connection contract --------------------------------------------------------------
    async def write(self, entity: str, record: Any, *, key: Any, mode: str, idempotency_key: str) -> str:
        """Publish ``record`` as JSON with routing key ``entity``; returns the message id once confirmed.

        The message is persistent and its message id is ``idempotency_key``, on which consumers
        deduplicate (a key longer than AMQP's 255 bytes is hashed, and sent whole in the
        ``x-seamline-idempotency-key`` header). The business key travels in ``x-seamline-key`` as
        JSON, for a consistent-hash exchange that keeps one record's changes in order. The publish is
        mandatory: the broker returns a message no queue is bound to receive, which is a
        TerminalError. ``mode`` has no meaning for a queue and is ignored.
        """
        routing_key = self._routing_key(entity)
        message_id, headers = _identify(idempotency_key, key)
        message = aio_pika.Message(
            self._encode(entity, record),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            app_id="seamline",
            headers=headers or None,
        )
        # aiormq matches a returned message to its publish by message id: two publishes of one id at
        # once could take each other's outcome, so publishes of the same id wait for each other.
        async with self._one_at_a_time(message_id):
            exchange = await self._publishing_exchange()
            try:
                await exchange.publish(message, routing_key=routing_key, mandatory=True, timeout=self.timeout)
            except aiormq.exceptions.PublishError as exc:
                raise TerminalError(
                    f"{self.system}: the broker could not route the message (routing key '{routing_key}'): "
                    f"no queue is bound to {self._exchange_label()} for it ({_returned(exc)}); bind a queue "
                    "or fix target.write"
                ) from None
            except aiormq.exceptions.DeliveryError:
                raise TransientError(
                    f"{self.system}: the broker refused the message for '{routing_key}' (basic.nack): a queue "
                    "may be full (x-overflow: reject-publish) or the broker short of resources"
                ) from None
            except TimeoutError:
                raise TransientError(
                    f"{self.system}: no publisher confirm within {self.timeout:g}s at {self.where}; "
                    "the message may or may not be queued (consumers deduplicate on its id)"
                ) from None
            except Exception as exc:
                await self._drop_publisher_if_dead()
                self._raise(exc, f"publishing to '{routing_key}'")
        return message_id

    async def consume(self, queue: str, handler: MessageHandler) -> None:
        """Deliver ``queue``'s messages to ``handler`` until cancelled (or until :meth:`close`).

        Transient failures (the broker away, the connection dropped) are logged and retried with
        backoff for as long as it takes; a TerminalError (login refused, no permission on the queue)
        is raised, since waiting will not fix the configuration.
        """
        reconnects = _Backoff(_RECONNECT_FIRST, _RECONNECT_CAP)
        failures = _Backoff(_RECONNECT_FIRST, _HANDLER_PAUSE_CAP)
        while not self._closed:
            try:
                await self._consume_session(queue, handler, reconnects, failures)
            except TerminalError as exc:
                self.log.error("consumer of queue %r on %s gave up: %s", queue, self.system, exc)
                raise
            except (TransientError, _Lost) as exc:
                if self._closed:
                    break
                delay = failures.next() if isinstance(exc, _HandlerFailed) else reconnects.next()
                self.log.warning(
                    "consumer of queue %r on %s (%s) stopped: %s; reconnecting in %.1fs",
                    queue,
                    self.system,
                    self.where,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    # -- publishing ---------------------------------------------------------------------------
    def _routing_key(self, entity: str) -> str:
        if len(entity.encode("utf-8")) > _MAX_SHORT_STRING:
            raise TerminalError(f"{self.system}: routing key '{entity[:40]}…' is longer than 255 bytes")
        return entity

    def _encode(self, entity: str, record: Any) -> bytes:
        try:
            text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TerminalError(f"{self.system}: the record for '{entity}' cannot be written as JSON: {exc}") from None
        return text.encode("utf-8")

    def _exchange_label(self) -> str:
        return f"exchange '{self.options.exchange}'" if self.options.exchange else "the default exchange"

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, message_id: str) -> AsyncIterator[None]:
        slot = self._publishing.get(message_id)
        if slot is None:
            slot = self._publishing[message_id] = _Slot()
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._publishing[message_id]

    async def _publishing_exchange(self) -> AbstractExchange:
        """The exchange on the publishing channel, opening the connection and channel when needed."""
        if self._closed:
            raise TransientError(f"{self.system}: the connection was closed (the daemon is stopping)")
        if self._exchange is not None and self._channel is not None and not self._channel.is_closed:
            return self._exchange
        async with self._open_lock:
            if self._exchange is not None and self._channel is not None and not self._channel.is_closed:
                return self._exchange
            try:
                publisher = self._publisher
                if publisher is None or not _alive(publisher):
                    await self._close_quietly(publisher)
                    self._publisher = None
                    publisher = await self._connect("publisher")
                    if self._closed:  # close() ran while we were connecting
                        await self._close_quietly(publisher)
                        raise TransientError(f"{self.system}: the connection was closed (the daemon is stopping)")
                    self._publisher = publisher
                async with asyncio.timeout(self.timeout):
                    channel = await publisher.channel(publisher_confirms=True, on_return_raises=True)
                if self.options.exchange:
                    # Not declared: the exchange belongs to whoever designed the topology; a missing
                    # one makes the publish fail with NOT_FOUND, which says so.
                    exchange = await channel.get_exchange(self.options.exchange, ensure=False)
                else:
                    exchange = channel.default_exchange
            except (TransientError, TerminalError):
                raise
            except Exception as exc:
                await self._drop_publisher_if_dead()
                self._raise(exc, "opening the publishing channel")
            self._channel, self._exchange = channel, exchange
            return exchange

    async def _drop_publisher_if_dead(self) -> None:
        """Forget a publishing channel or connection that closed, so the next write opens a new one."""
        if self._publisher is not None and not _alive(self._publisher):
            await self._close_quietly(self._publisher)
            self._publisher = None
        if self._publisher is None or (self._channel is not None and self._channel.is_closed):
            self._channel, self._exchange = None, None

    # -- consuming ----------------------------------------------------------------------------
    async def _consume_session(
        self, queue: str, handler: MessageHandler, reconnects: _Backoff, failures: _Backoff
    ) -> None:
        """One connection's worth of consuming: returns on close(), raises _Lost or TransientError."""
        connection = await self._connect(f"consumer of {queue}")
        self._consumers.add(connection)
        try:
            if self._closed:
                return
            buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

            async def arrived(message: AbstractIncomingMessage) -> None:
                buffer.put_nowait(message)

            try:
                async with asyncio.timeout(self.timeout):  # a broker that accepts but never answers
                    channel, amqp_queue = await self._declared_queue(connection, queue)
                    dead = await self._dead_letter_exchange(connection) if self.options.dead_letter_exchange else None
                    await channel.set_qos(prefetch_count=self.options.prefetch)
                    lost = _watch(connection, channel, await channel.get_underlay_channel())
                    await amqp_queue.consume(arrived, no_ack=False)
            except (TransientError, TerminalError):
                raise
            except Exception as exc:
                self._raise(exc, f"starting to consume queue '{queue}'")
            reconnects.reset()
            self.log.info(
                "consuming queue %r on %s (%s), prefetch %d", queue, self.system, self.where, self.options.prefetch
            )
            while True:
                message = await _next(buffer, lost)
                await self._deliver(message, queue, handler, dead)
                failures.reset()
        finally:
            self._consumers.discard(connection)
            await self._close_quietly(connection)

    async def _deliver(
        self, message: AbstractIncomingMessage, queue: str, handler: MessageHandler, dead: _DeadLetters | None
    ) -> None:
        """Hand one message over, then settle it: ack after the handler returned.

        If the handler raises, the message is given back and the session ends (_HandlerFailed):
        closing the channel gives back the prefetched messages behind it too, so the queue keeps its
        order (changes of one record must not overtake each other) and the next session starts after
        a pause, so a store that keeps failing is not hammered.
        """
        reason = unparsable(message.body)
        try:
            if reason is not None and dead is not None and await dead.send(message, queue, reason):
                await message.ack()
                return
            try:
                # No message id stays "": a content hash would merge two publications of the same content.
                await handler(Message(message.body, message.message_id or "", dict(message.headers or {})))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await message.nack(requeue=True)
                raise _HandlerFailed(
                    f"the handler failed on {_describe(message)} ({type(exc).__name__}: {exc}); "
                    "it and the messages behind it go back to the queue"
                ) from None
            await message.ack()
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError) as exc:
            # The channel died between delivery and ack: the broker will deliver this message again.
            raise _Lost(f"could not settle {_describe(message)}: {_reply_text(exc)}") from None

    async def _declared_queue(
        self, connection: AbstractConnection, queue: str
    ) -> tuple[AbstractChannel, AbstractQueue]:
        """The queue as the broker has it; declared durable only when it does not exist yet.

        Declaring an existing queue with other arguments (a TTL, a dead-letter exchange, a quorum
        type set by whoever owns the topology) would fail with PRECONDITION_FAILED, hence the passive
        declaration first.
        """
        channel = await connection.channel(publisher_confirms=False)
        try:
            return channel, await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            pass  # NOT_FOUND closed that channel
        channel = await connection.channel(publisher_confirms=False)
        declared = await channel.declare_queue(queue, durable=True)
        self.log.info("declared durable queue %r on %s", queue, self.system)
        return channel, declared

    async def _dead_letter_exchange(self, connection: AbstractConnection) -> _DeadLetters:
        name = self.options.dead_letter_exchange
        assert name is not None
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            exchange = await channel.declare_exchange(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
            keep = await channel.declare_queue(name, durable=True)
            await keep.bind(exchange)
            self.log.info("declared dead-letter exchange %r (fanout) and its queue on %s", name, self.system)
        return _DeadLetters(self.system, exchange, self.timeout)

    # -- connections and errors ---------------------------------------------------------------
    async def _connect(self, purpose: str) -> AbstractConnection:
        try:
            return await aio_pika.connect(
                self.url,
                timeout=self.timeout,
                client_properties={"connection_name": f"seamline {self.context.client}/{self.system} {purpose}"},
            )
        except Exception as exc:
            self._raise(exc, "connecting")

    def _raise(self, exc: BaseException, doing: str) -> NoReturn:
        """Raise ``exc`` translated into the seamline tree, naming the system, the broker and the action."""
        where = f"{self.system}: {doing} at {self.where}"
        text = _reply_text(exc)
        if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError | aiormq.exceptions.AuthenticationError):
            user = urlsplit(self.url).username or "guest"
            raise TerminalError(
                f"{where}: the broker refused the login of user '{user}' ({text}); check the user and password "
                "in the system's url"
            ) from None
        if isinstance(exc, aiormq.exceptions.ChannelAccessRefused):
            raise TerminalError(f"{where}: access refused ({text}); grant the user permissions on the vhost") from None
        if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
            raise TerminalError(f"{where}: {text}; declare it on the broker or fix the spec") from None
        if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
            raise TerminalError(f"{where}: {text}") from None
        if isinstance(exc, aiormq.exceptions.InvalidFrameError):
            raise TransientError(
                f"{where}: the broker closed the connection while it was opening; the vhost may not exist, the "
                "user may not be allowed on it, or the broker is still starting (see the broker's log)"
            ) from None
        if isinstance(exc, TimeoutError):
            raise TransientError(f"{where}: no answer within {self.timeout:g}s") from None
        if isinstance(exc, aiormq.exceptions.AMQPError | ConnectionError | OSError | RuntimeError):
            # RuntimeError: aiormq's ChannelInvalidStateError, a channel already closed under us.
            raise TransientError(f"{where}: {type(exc).__name__}: {text}") from None
        raise TransientError(f"{where}: unexpected {type(exc).__name__}: {text}") from None

    @staticmethod
    async def _close_quietly(connection: AbstractConnection | None) -> None:
        if connection is None or connection.is_closed:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), timeout=DEFAULT_TIMEOUT)


class _DeadLetters:
    """Publishes unparsable messages to the dead-letter exchange, under publisher confirms."""

    def __init__(self, system: str, exchange: AbstractExchange, timeout: float) -> None:
        self.system = system
        self.log = system_log("amqp", self.system)
        self.exchange = exchange
        self.timeout = timeout

    async def send(self, message: AbstractIncomingMessage, queue: str, reason: str) -> bool:
        """True once the broker confirmed it; False (logged) when it could not take it.

        The copy keeps the message's id, or gets a unique one (:func:`dead_letter_id`) when it had none.
        """
        message_id = dead_letter_id(message)
        dead = aio_pika.Message(
            message.body,
            headers={**dict(message.headers or {}), REASON_HEADER: reason, SOURCE_QUEUE_HEADER: queue},
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self.exchange.publish(dead, routing_key=queue, mandatory=True, timeout=self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.warning(
                "%s: dead-letter exchange %r did not take %s (%s: %s); it goes to the handler instead",
                self.system,
                self.exchange.name,
                _describe(message),
                type(exc).__name__,
                _reply_text(exc),
            )
            return False
        self.log.info(
            "%s: %s from queue %r dead-lettered as %s: %s", self.system, _describe(message), queue, message_id, reason
        )
        return True


def _alive(connection: AbstractConnection | None) -> bool:
    """Whether ``connection`` is still usable: aio-pika's own ``is_closed`` stays False when the broker
    drops the socket, so the transport underneath is asked too."""
    if connection is None or connection.is_closed:
        return False
    transport = connection.transport
    return transport is not None and not transport.connection.is_closed


def _watch(
    connection: AbstractConnection, channel: AbstractChannel, underlay: aiormq.abc.AbstractChannel
) -> asyncio.Future[None]:
    """Completes when the consumer can no longer receive: its connection or channel closed, or the
    broker cancelled the consumer (its queue was deleted) while the channel stays open."""
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def mark(*_args: Any) -> None:
        if not lost.done():
            lost.set_result(None)

    def on_cancel(frame: Any) -> None:
        if isinstance(frame, Basic.Cancel):
            mark()

    connection.close_callbacks.add(mark)
    channel.close_callbacks.add(mark)
    underlay.on_consumer_cancel_callbacks.add(on_cancel)
    if not _alive(connection) or channel.is_closed:
        mark()
    return lost


async def _next(buffer: asyncio.Queue[AbstractIncomingMessage], lost: asyncio.Future[None]) -> AbstractIncomingMessage:
    """The next buffered message, or _Lost once the channel or connection closed.

    Once it closed, buffered messages are not handed over: they could not be acknowledged any more,
    and the broker delivers them again on the next connection.
    """
    if lost.done():
        raise _Lost("the channel or connection closed")
    if not buffer.empty():
        return buffer.get_nowait()
    getter = asyncio.ensure_future(buffer.get())
    waits: list[asyncio.Future[Any]] = [getter, lost]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    raise _Lost("the channel or connection closed")
