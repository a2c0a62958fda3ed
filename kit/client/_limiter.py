"""A token bucket per generator process that bounds the rate of its sessions' reconnect attempts.

Why: a session's backoff (:func:`kit.client._session.backoff_delay`) is jittered and capped, but it is
per session.  When a balancer closes thousands of sessions at once, every one of them comes back
within its first backoff (1 s, shortened by up to half its jitter): 10,000 sessions over 4 processes
are 2,500 handshakes per process in half a second, into a proxy tier that is already slow, while the
generator's own event loop falls behind.  That is how a slow health check became a collapse in
issue 14 (106,132 reconnect attempts, 0.03 % success).

So each process admits reconnect attempts (every connect attempt of a session after its first
try) through one :class:`TokenBucket`: a session waits its backoff, then a token, then tries.
Defaults:

- :data:`RECONNECT_RATE` 200 attempts per second per process: far above what a healthy run needs
  (a ramp of 250 sessions/s over 2 to 4 processes is 60 to 125 first connects a second, and those
  do not take tokens), so a normal recovery of a few sessions is never slowed; but 10,000 sessions
  dropped at once over 4 processes reconnect within about 12 s ((2,500 - 50) / 200) instead of in
  one second.  A failed attempt used its token too, so a tier that keeps refusing gets at most
  this many attempts a second from a process, whatever the number of sessions.
- :data:`RECONNECT_BURST` 50: a handful of sessions lost together (one instance restarted under a
  light load) reconnect at once, without queueing behind the rate.

The backoff's jitter still spreads the sessions before they reach the bucket, and the bucket keeps
their order (first come, first admitted).  ``--reconnect-rate`` / ``WS_RECONNECT_RATE`` sets the rate;
0 turns the limit off.  A wait for a token is counted apart from the backoff (the session's
accounting: ``reconnect_bucket_waits``).

Ownership: one bucket per process, created by ``kit.client._load`` and shared by its sessions; it
owns no task and no resource.  A caller cancelled while it waits forfeits its token: the callers
behind it keep their places, and no token is ever handed out twice (cancellation ends a session,
at ``--max-duration`` or on a signal, so what is forfeited is of no use to anyone).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

__all__ = ["TokenBucket", "RECONNECT_RATE", "RECONNECT_BURST"]

log = logging.getLogger(__name__)

#: reconnect attempts a second one generator process lets through (0 = unlimited)
RECONNECT_RATE = 200.0
#: attempts that go at once, before the rate applies (the bucket's size)
RECONNECT_BURST = 50


class TokenBucket:
    """Admits :meth:`acquire` callers at *rate* per second after a burst of *burst*, in arrival order.

    A token accrues every ``1 / rate`` seconds, up to *burst*; each caller takes one.  When none is
    left the caller's token is reserved (the bucket goes into debt) and the caller sleeps until it
    has accrued: O(1) per caller, one timer per waiting caller, no task of the bucket's own.  So in
    any *t* seconds at most ``burst + rate * t`` callers get through.  *rate* 0: no limit (every call
    is only a checkpoint).
    """

    def __init__(self, rate: float = RECONNECT_RATE, burst: int = RECONNECT_BURST) -> None:
        if not rate >= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate >= 0 and burst >= 1, not rate={rate!r} burst={burst!r}")
        self.rate = float(rate)
        self.burst = burst
        #: tokens at trio time self._stamp; negative: reserved by callers still waiting
        self._tokens = float(burst)
        self._stamp: float | None = None
        self._admitted = 0
        self._waited = 0
        self._wait_s = 0.0
        self._waiting = 0

    def _reserve(self, now: float) -> float:
        """Take a token, into debt if none is left; return the seconds until it has accrued."""
        if self._stamp is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> float:
        """Wait for a token; return the seconds waited (0.0 exactly when one was there).

        Always a checkpoint.  Cancelled before it took a token, it took none; cancelled while waiting,
        its token is forfeited (returning it would let a later caller through together with the
        callers already queued, beyond the burst) and Cancelled propagates.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        start = trio.current_time()
        wait = self._reserve(start) if self.rate else 0.0
        if not wait:
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._admitted += 1
            return 0.0
        self._waiting += 1
        try:
            await trio.sleep_until(start + wait)
        finally:
            self._waiting -= 1
        waited = trio.current_time() - start
        self._admitted += 1
        self._waited += 1
        self._wait_s += waited
        return waited

    def statistics(self) -> dict[str, Any]:
        """``rate`` and ``burst`` as configured; ``admitted`` callers so far, how many of them ``waited``
        and for how long in all (``wait_s``); callers ``waiting`` now."""
        return {
            "rate": self.rate,
            "burst": self.burst,
            "admitted": self._admitted,
            "waited": self._waited,
            "wait_s": round(self._wait_s, 6),
            "waiting": self._waiting,
        }
