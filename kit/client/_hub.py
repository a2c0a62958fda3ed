"""One trio task that does the reads of many client WebSockets (Linux epoll).

Why: with one reader task per socket, every token costs a trio task switch and
an ``epoll_ctl`` re-arm of that socket (trio arms fds one-shot).  The hub keeps
all sockets in its own level-triggered epoll, waits on that epoll's fd with
``trio.lowlevel.wait_readable`` (one trio wake-up per batch of ready sockets)
and hands each socket's messages to its callback synchronously.

Arrival times from the kernel: each socket the hub reads has the kernel stamp its segments as they
arrive (``SO_TIMESTAMPNS``), and a read hands its frames that arrival time instead of the time of the read.
Delivery, inter-token and TTFT times then leave out how long a frame waited for this process to read it
(a generator short of CPU, as when a lab's hosts share a machine's cores).  Frames read together from one
socket carry the arrival of the last of them (the kernel reports one stamp per read; at a run's pace a read
holds one frame).  Where the kernel cannot stamp (not Linux on x86-64 or arm64, or the option refused) the
frames carry the time of the read, as before.

Ownership: sockets stay owned by their :class:`~kit.client._ws.WebSocket`;
the hub only holds them while they are registered (``run_receiver``).  When the
hub task ends (cancellation), every registered connection ends with
ConnectionClosed(1006).  Callbacks must not block; an exception in one ends
that connection only.
"""

from __future__ import annotations

import logging
import platform
import select
import socket
import struct
import sys
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._ws import WebSocket

__all__ = ["Hub", "MAX_EVENTS", "kernel_stamps_available"]

log = logging.getLogger(__name__)

#: ready sockets handled per epoll poll
MAX_EVENTS = 256
#: polls per trio wake-up (bounds how long other tasks wait for a checkpoint)
ROUNDS = 4
#: Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS, a struct timespec per read) in the generic socket.h that
#: x86-64 and arm64 use; Python's socket module does not name it, and other architectures number it otherwise
SO_TIMESTAMPNS = 35
#: ancillary room for one struct timespec
STAMP_SPACE = socket.CMSG_SPACE(16)
#: SCM_TIMESTAMPNS's data: a struct timespec (seconds, nanoseconds)
TIMESPEC = struct.Struct("@qq")


def kernel_stamps_available() -> bool:
    """Whether the kernel can stamp this process's received segments (SO_TIMESTAMPNS as numbered here)."""
    return sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")


class Hub:
    """Multiplexes reads; start with ``await nursery.start(hub.run)``."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._conns: dict[int, WebSocket] = {}
        self.wakeups = 0
        self.events = 0
        #: whether reads take the kernel's arrival stamp
        self.stamped = kernel_stamps_available()

    @staticmethod
    def available() -> bool:
        return hasattr(select, "epoll")

    def register(self, ws: WebSocket) -> None:
        fd = ws.fileno()
        if self.stamped:
            try:
                ws.enable_stamps()
            except OSError as exc:  # refused: from now on frames carry the time of the read
                log.warning("kernel receive timestamps refused (%s): frames carry the time of their read", exc)
                self.stamped = False
        self._conns[fd] = ws
        self._ep.register(fd, select.EPOLLIN)

    def unregister(self, ws: WebSocket) -> None:
        fd = ws.fileno()
        if self._conns.get(fd) is ws:
            del self._conns[fd]
            try:
                self._ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def statistics(self) -> dict[str, int]:
        return {"connections": len(self._conns), "wakeups": self.wakeups, "events": self.events}

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        ep = self._ep
        conns = self._conns
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(ep.fileno())
                self.wakeups += 1
                # frames that land while we work are picked up without another trio wake-up
                for _ in range(ROUNDS):
                    events = ep.poll(0, MAX_EVENTS)
                    if not events:
                        break
                    self.events += len(events)
                    for fd, _ in events:
                        ws = conns.get(fd)
                        if ws is not None:
                            ws._hub_readable()
        finally:
            from ._ws import ConnectionClosed

            for ws in list(conns.values()):
                ws._hub_end(ConnectionClosed(1006, "receiver hub stopped"))
            ep.close()
