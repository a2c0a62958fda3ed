"""Raw Redis (RESP2) over asyncio, parsed by hiredis: what the wsproxy and the simulator's hot paths share.

Why not redis-py on a hot path: its client-side cost per command (pool, retry, observability,
response callbacks, a timer per read) is several times that of writing the packed command and
parsing the reply with hiredis; ``bench/sim_publish.py`` and ``bench/wsproxy_forward.py`` measure
what that is worth per token.

- :func:`parse_redis_url` reads ``redis://[[user]:password@]host[:port][/db]`` into a
  :class:`RedisAddress` (the password never in its repr); :func:`encode_command` packs one command.
- :class:`RespLink` is one connection for pipelined requests: :meth:`RespLink.call` writes packed
  commands and returns their replies in order (a Redis error reply is a ``hiredis.ReplyError`` in the
  list, not raised).  Opened and authenticated by :func:`open_link`.
- :class:`LinkPool` lends at most ``size`` links, each to one call at a time (a request's commands
  are never queued behind another's); callers beyond that wait in turn up to ``wait_s``, then
  :class:`PoolExhausted`.  Each call is bounded by ``call_s`` (:class:`RedisUnavailable`, "timed out").

Ownership and errors: whoever opened a link closes it (:meth:`RespLink.close`).  When the connection
is lost every pending call raises :class:`RedisUnavailable`, and so does every later call; a reply
that nobody asked for (a protocol error) aborts the connection.  Cancelling a call leaves its replies
to be read and dropped, so the link stays in step.  Messages never carry the password.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import hiredis

from kit.config import ConfigError

__all__ = [
    "LinkPool",
    "PoolExhausted",
    "RedisAddress",
    "RedisReplyError",
    "RedisUnavailable",
    "checked",
    "RespLink",
    "auth_command",
    "describe",
    "encode_command",
    "open_link",
    "parse_redis_url",
]


class RedisUnavailable(Exception):
    """Redis cannot be reached, refused our credentials, or did not confirm in time."""


class RedisReplyError(RedisUnavailable):
    """Redis answered a command with an error reply; :attr:`code` is its code (``NOPERM``, ``OOM``...)."""

    def __init__(self, reply: hiredis.ReplyError) -> None:
        self.code = str(reply).split(" ", 1)[0]  # the code only: the rest may quote a command's arguments
        super().__init__(f"Redis replied {self.code}")


def checked(replies: list[Any]) -> list[Any]:
    """*replies* as they are, or :class:`RedisReplyError` for the first error reply among them."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            raise RedisReplyError(reply)
    return replies


class PoolExhausted(RedisUnavailable):
    """Every link of a :class:`LinkPool` stayed busy for the pool's wait."""


@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host[:port][/db]``; the db does not matter to pub/sub."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 6379  # the redis:// scheme's default, not the kit's port
    except ValueError:
        raise ConfigError("REDIS_URL is not a valid URL: use redis://[user]:password@host:port/db") from None
    if parts.scheme != "redis":
        raise ConfigError(f"REDIS_URL scheme {parts.scheme!r} is not supported: use redis://")
    if not parts.hostname:
        raise ConfigError("REDIS_URL has no host: use redis://[user]:password@host:port/db")
    user = urllib.parse.unquote(parts.username) if parts.username else None
    password = urllib.parse.unquote(parts.password) if parts.password else None
    return RedisAddress(parts.hostname, port, user, password)


def encode_command(*args: bytes | str) -> bytes:
    """One RESP command (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def auth_command(address: RedisAddress) -> bytes | None:
    if address.password is None:
        return None
    if address.username:
        return encode_command(b"AUTH", address.username, address.password)
    return encode_command(b"AUTH", address.password)


def describe(exc: BaseException) -> str:
    """An error in a few words, never a password: a Redis error reply by its code only."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, hiredis.ReplyError):
        return str(RedisReplyError(exc))
    return str(exc) or type(exc).__name__


class RespLink(asyncio.Protocol):
    """One pipelined request/reply connection (see the module docstring)."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        # [future, replies expected, replies so far], oldest first: replies come back in request order
        self._pending: collections.deque[list[Any]] = collections.deque()
        self._lost: RedisUnavailable | None = None

    # -- asyncio.Protocol -----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        reader, pending = self._reader, self._pending
        reader.feed(data)
        while (reply := reader.gets()) is not False:
            if not pending:  # a reply nobody asked for: the stream is out of step
                self._fail(RedisUnavailable("a reply nobody asked for"))
                return
            waiter = pending[0]
            waiter[2].append(reply)
            if len(waiter[2]) == waiter[1]:
                pending.popleft()
                if not waiter[0].done():  # a cancelled call's replies are read and dropped
                    waiter[0].set_result(waiter[2])

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisUnavailable(f"connection lost ({describe(exc)})" if exc else "connection closed"))

    # -- use -------------------------------------------------------------
    @property
    def open(self) -> bool:
        return self._lost is None and self._transport is not None and not self._transport.is_closing()

    async def call(self, packed: bytes, replies: int) -> list[Any]:
        """Write *packed* (one or more commands) and return their *replies* replies, in order."""
        if self._lost is not None:
            raise self._lost
        assert self._transport is not None
        fut = asyncio.get_running_loop().create_future()
        self._pending.append([fut, replies, []])
        self._transport.write(packed)
        return await fut

    def close(self) -> None:
        self._fail(RedisUnavailable("connection closed"))

    def _fail(self, exc: RedisUnavailable) -> None:
        if self._lost is None:
            self._lost = exc
        pending, self._pending = self._pending, collections.deque()
        for fut, _, _ in pending:
            if not fut.done():
                fut.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()


async def open_link(address: RedisAddress, timeout: float = 5.0) -> RespLink:
    """Connect (TCP_NODELAY) and authenticate; :class:`RedisUnavailable` on any failure, the link closed."""
    loop = asyncio.get_running_loop()
    link = RespLink()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(lambda: link, address.host, address.port)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            auth = auth_command(address)
            if auth is not None:
                (reply,) = await link.call(auth, 1)
                if isinstance(reply, hiredis.ReplyError):
                    raise RedisUnavailable(f"Redis refused the credentials ({describe(reply)})")
    except (OSError, TimeoutError) as exc:
        link.close()
        raise RedisUnavailable(f"cannot reach Redis at {address.host}:{address.port} ({describe(exc)})") from None
    except BaseException:
        link.close()
        raise
    return link


class LinkPool:
    """Links to one Redis lent one call at a time (see the module docstring); *opener* opens one link.

    Ownership: the pool owns its links; :meth:`aclose` closes them.  A link whose call failed, timed out
    or was cancelled is closed, not lent again (its replies would be out of step), and its place goes to
    the next waiter, who opens a new one.
    """

    def __init__(self, opener: Callable[[], Awaitable[RespLink]], *, size: int, wait_s: float, call_s: float) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._opener = opener
        self.size = size
        self.wait_s = wait_s
        self.call_s = call_s
        self._idle: list[RespLink] = []
        self._links: set[RespLink] = set()  # every link open, idle or lent (aclose closes them all)
        self._count = 0  # links open, opening or lent
        # each waiter's future gets a link, or None: "a place is free, open one"
        self._waiters: collections.deque[asyncio.Future[RespLink | None]] = collections.deque()

    def statistics(self) -> dict[str, int]:
        return {"links": self._count, "idle": len(self._idle), "waiting": len(self._waiters)}

    async def call(self, packed: bytes, replies: int) -> list[Any]:
        """*packed* on a link of the pool, its *replies* replies back (:meth:`RespLink.call`)."""
        link = await self._take()
        try:
            async with asyncio.timeout(self.call_s):
                out = await link.call(packed, replies)
        except TimeoutError:
            self._discard(link)
            raise RedisUnavailable(f"Redis did not answer within {self.call_s:g} s") from None
        except BaseException:
            self._discard(link)
            raise
        self._give(link)
        return out

    async def commands(self, *commands: tuple[bytes | str, ...]) -> list[Any]:
        """*commands* in one write on a link of the pool; their replies (a Redis error reply raises
        :class:`RedisReplyError`)."""
        return checked(await self.call(b"".join(encode_command(*c) for c in commands), len(commands)))

    async def aclose(self) -> None:
        """Close every link, idle or lent (a call in flight then raises :class:`RedisUnavailable`)."""
        links, self._links = self._links, set()
        self._count -= len(self._idle)  # a lent link's place is given back by its call, which now fails
        self._idle = []
        for link in links:
            link.close()

    async def _take(self) -> RespLink:
        while self._idle and not self._waiters:
            link = self._idle.pop()
            if link.open:
                return link
            self._links.discard(link)
            self._count -= 1
        if self._count < self.size and not self._waiters:
            self._count += 1
            return await self._open()
        fut: asyncio.Future[RespLink | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(self.wait_s):
                handed = await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():  # handed a link or a place just as the wait ended
                got = fut.result()
                if got is None:
                    self._count -= 1
                    self._wake()
                else:
                    self._give(got)
            else:
                fut.cancel()
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            if isinstance(exc, TimeoutError):
                raise PoolExhausted(f"all {self.size} connections busy for {self.wait_s:g}s") from None
            raise
        return handed if handed is not None else await self._open()

    async def _open(self) -> RespLink:
        """Open a link in a place already counted; the place is given back if that fails."""
        try:
            link = await self._opener()
        except BaseException:
            self._count -= 1
            self._wake()
            raise
        self._links.add(link)
        return link

    def _give(self, link: RespLink) -> None:
        if not link.open:
            self._discard(link)
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(link)
                return
        self._idle.append(link)

    def _discard(self, link: RespLink) -> None:
        link.close()
        self._links.discard(link)
        self._count -= 1
        self._wake()

    def _wake(self) -> None:
        """A place is free: the first waiter opens a link in it."""
        while self._waiters and self._count < self.size:
            fut = self._waiters.popleft()
            if not fut.done():
                self._count += 1
                fut.set_result(None)
                return
