"""Exact per-query and per-session accounting, and the per-process recorder.

Owned by one trio process: a :class:`Recorder` holds the histograms
(microseconds), the cumulative counters, the per-second timeline and the
finished query/session rows.  Sessions create :class:`QueryRecord` and
:class:`SessionRecord` objects and hand them to the recorder when finished.

The hot path is :meth:`QueryRecord.token`: a sequence check (one comparison
when tokens arrive in order), a few integer operations and two histogram
records.  Lost, duplicated and out-of-order tokens are exact: a gap in
``seq`` puts the skipped numbers in ``missing``; a later arrival of one of
them is out of order, any other repeat is a duplicate; at the end
``lost = len(missing) + (expected - next_seq)`` where ``expected`` is
``done.tokens`` (or, if done never came, the count ``/run`` announced).

A query the simulator cancelled (its session closed while it ran) ends with a ``done`` marked
``cancelled`` (:mod:`kit.wire`) whose ``tokens`` is what was published: the query's status is
``cancelled``, tokens published and not received are lost as ever, and the tokens ``/run`` announced
beyond ``done.tokens`` were never sent: they count as ``cancelled_tokens``, not lost.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kit.metrics import Histogram, SecondHistograms, Timeline

__all__ = ["QueryRecord", "SessionRecord", "Recorder", "HISTOGRAMS", "QUERY_STATUSES", "TIMELINE_HISTOGRAMS"]

log = logging.getLogger(__name__)

#: histogram name -> what it measures (all in microseconds)
HISTOGRAMS = {
    "latency": "query latency to done, from the intended start (open model) or the submit (closed)",
    "service_latency": "query latency to done, from the actual submit",
    "ttft": "time to first token, from the submit",
    "inter_token": "gap between consecutive tokens of one query",
    "delivery": "token delivery latency: receive wall clock minus the message's ts",
    "create": "POST /session/create round trip",
    "connect": "WebSocket connect + upgrade",
    "connect_tcp": "the TCP connect of the session's WebSocket (its successful attempt)",
    "connect_tls": "the TLS handshake of the session's WebSocket (0 for ws://)",
    "connect_upgrade": "the HTTP upgrade of the session's WebSocket, request to 101",
    "http_pool_wait": "time an HTTP request waited for a free keep-alive connection (client-side queue)",
    "start_lag": "how late a session started compared to its intended start (generator health)",
    "loop_lag": "trio event-loop lag samples (generator health)",
}

QUERY_STATUSES = ("ok", "lost_tokens", "timeout", "error", "cancelled")

#: the histograms also kept per second (timeline.csv's <name>_p50/_p99/_max columns): each value lands in
#: the second it was recorded (a token's delivery and gap when it arrives, a query's latency and TTFT
#: when it ends, a session's create and connect when they complete)
TIMELINE_HISTOGRAMS = ("delivery", "ttft", "inter_token", "latency", "create", "connect")


class QueryRecord:
    """One query of one session.  Times are ``time.monotonic_ns`` except ``*_wall`` (epoch ns)."""

    __slots__ = (
        "session_id",
        "index",
        "query_id",
        "intended_ns",
        "submit_ns",
        "expected",
        "received",
        "next_seq",
        "missing",
        "duplicated",
        "out_of_order",
        "first_ns",
        "last_ns",
        "done_ns",
        "done_tokens",
        "cancelled",
        "status",
        "error",
        "event",
        "hists",
        "counters",
        "_gap",
        "_delivery",
    )

    def __init__(
        self,
        session_id: str,
        index: int,
        intended_ns: int,
        submit_ns: int,
        hists: dict,
        counters: dict,
        event: Any = None,
    ) -> None:
        self.session_id = session_id
        self.index = index
        self.query_id: str | None = None
        self.intended_ns = intended_ns
        self.submit_ns = submit_ns
        self.expected: int | None = None  # from POST /run
        self.received = 0
        self.next_seq = 0
        self.missing: set[int] | None = None
        self.duplicated = 0
        self.out_of_order = 0
        self.first_ns = 0
        self.last_ns = 0
        self.done_ns = 0
        self.done_tokens: int | None = None
        self.cancelled = False  # the done said the simulator cancelled the query
        self.status = ""
        self.error = ""
        self.event = event
        self.hists = hists
        self.counters = counters
        self._gap = hists["inter_token"].record
        self._delivery = hists["delivery"].record

    def token(self, seq: int, ts: int, mono_ns: int, wall_ns: int) -> None:
        """Account one token message (hot path)."""
        if seq == self.next_seq:
            self.next_seq = seq + 1
        else:
            self._anomaly(seq)
        self.received += 1
        last = self.last_ns
        if last:
            self._gap((mono_ns - last) // 1000)
        else:
            self.first_ns = mono_ns
        self.last_ns = mono_ns
        self._delivery((wall_ns - ts) // 1000)
        self.counters["tokens"] += 1

    def _anomaly(self, seq: int) -> None:
        if seq > self.next_seq:
            if self.missing is None:
                self.missing = set()
            self.missing.update(range(self.next_seq, seq))
            self.next_seq = seq + 1
        elif self.missing and seq in self.missing:
            self.missing.discard(seq)
            self.out_of_order += 1
        else:
            self.duplicated += 1

    @property
    def lost(self) -> int:
        expected = self.done_tokens if self.done_tokens is not None else self.expected
        tail = max(0, expected - self.next_seq) if expected is not None else 0
        return (len(self.missing) if self.missing else 0) + tail

    @property
    def cancelled_tokens(self) -> int:
        """Tokens ``/run`` announced that the simulator never sent because it cancelled the query."""
        if not self.cancelled or self.expected is None or self.done_tokens is None:
            return 0
        return max(0, self.expected - self.done_tokens)

    def done(self, tokens: int, mono_ns: int, cancelled: bool = False) -> None:
        """The done message arrived, *cancelled* if it said so (a repeat is counted as a duplicate and
        otherwise ignored)."""
        if self.done_ns:
            self.duplicated += 1
            return
        self.done_ns = mono_ns
        self.done_tokens = tokens
        self.cancelled = cancelled is True
        if self.event is not None:
            self.event.set()

    def finish(self, *, status: str | None = None, error: str = "") -> None:
        """Decide the status and record the query's histograms and counters (once)."""
        if self.status:
            return
        c = self.counters
        if status is None:
            if self.done_ns and self.cancelled:
                status = "cancelled"
                if not error:
                    error = (
                        f"cancelled by the simulator (session closed) after {self.done_tokens} of "
                        f"{'?' if self.expected is None else self.expected} tokens"
                        + (f", {self.lost} of them lost" if self.lost else "")
                    )
            elif self.done_ns:
                status = "ok" if self.lost == 0 else "lost_tokens"
                if status == "lost_tokens" and not error:
                    error = f"{self.lost} of {self.done_tokens} tokens lost"
            else:
                status = "error"
        self.status = status
        self.error = error
        lost, dup, ooo = self.lost, self.duplicated, self.out_of_order
        c["lost_tokens"] += lost
        c["duplicated_tokens"] += dup
        c["out_of_order_tokens"] += ooo
        if self.cancelled:
            c["cancelled_tokens"] += self.cancelled_tokens
        if self.done_ns:
            h = self.hists
            h["latency"].record((self.done_ns - self.intended_ns) // 1000)
            h["service_latency"].record((self.done_ns - self.submit_ns) // 1000)
        if self.first_ns:
            self.hists["ttft"].record((self.first_ns - self.submit_ns) // 1000)
        if status == "ok":
            c["queries_ok"] += 1
        else:
            c["queries_failed"] += 1
            c["query_status_" + status] += 1

    def row(self, mono_to_wall_ns: int) -> dict[str, Any]:
        def us(a: int, b: int) -> str:
            return f"{(a - b) / 1e6:.3f}" if a and b else ""

        return {
            "session_id": self.session_id,
            "query_index": self.index,
            "query_id": self.query_id or "",
            "intended_at": f"{(self.intended_ns + mono_to_wall_ns) / 1e9:.6f}",
            "submit_at": f"{(self.submit_ns + mono_to_wall_ns) / 1e9:.6f}",
            "ttft_ms": us(self.first_ns, self.submit_ns),
            "latency_ms": us(self.done_ns, self.intended_ns),
            "service_latency_ms": us(self.done_ns, self.submit_ns),
            "expected_tokens": "" if self.expected is None else self.expected,
            "tokens": self.received,
            "lost": self.lost,
            "cancelled": self.cancelled_tokens,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "status": self.status,
            "error": self.error,
        }


class SessionRecord:
    """One session's life: create, connect, reconnects, queries, close."""

    __slots__ = (
        "session_id",
        "index",
        "intended_ns",
        "start_ns",
        "create_us",
        "connect_us",
        "tcp_us",
        "tls_us",
        "upgrade_us",
        "connect_attempts",
        "reconnect_attempts",
        "reconnects_ok",
        "queries_ok",
        "queries_failed",
        "queries_skipped",
        "tokens",
        "errors",
        "status",
        "end_ns",
        "left_early",
    )

    def __init__(self, index: int, intended_ns: int, start_ns: int) -> None:
        self.session_id = ""
        self.index = index
        self.intended_ns = intended_ns
        self.start_ns = start_ns
        self.create_us: int | None = None
        self.connect_us: int | None = None
        #: the successful first connect split into TCP connect, TLS handshake (0 for ws://), upgrade
        self.tcp_us: int | None = None
        self.tls_us: int | None = None
        self.upgrade_us: int | None = None
        self.connect_attempts = 0
        self.reconnect_attempts = 0
        self.reconnects_ok = 0
        self.queries_ok = 0
        self.queries_failed = 0
        self.queries_skipped = 0
        self.tokens = 0
        self.errors: list[str] = []
        self.status = ""
        self.end_ns = 0
        #: its stage slot retired before it ran all its queries, and it left cleanly (kit.client._session): ok,
        #: the queries it did not get to are neither failed nor skipped
        self.left_early = False

    def row(self, mono_to_wall_ns: int) -> dict[str, Any]:
        return {
            "session_index": self.index,
            "session_id": self.session_id,
            "intended_at": f"{(self.intended_ns + mono_to_wall_ns) / 1e9:.6f}",
            "started_at": f"{(self.start_ns + mono_to_wall_ns) / 1e9:.6f}",
            "create_ms": "" if self.create_us is None else f"{self.create_us / 1000:.3f}",
            "connect_ms": "" if self.connect_us is None else f"{self.connect_us / 1000:.3f}",
            "tcp_ms": "" if self.tcp_us is None else f"{self.tcp_us / 1000:.3f}",
            "tls_ms": "" if self.tls_us is None else f"{self.tls_us / 1000:.3f}",
            "upgrade_ms": "" if self.upgrade_us is None else f"{self.upgrade_us / 1000:.3f}",
            "connect_attempts": self.connect_attempts,
            "reconnect_attempts": self.reconnect_attempts,
            "reconnects_ok": self.reconnects_ok,
            "queries_ok": self.queries_ok,
            "queries_failed": self.queries_failed,
            "queries_skipped": self.queries_skipped,
            "left_early": int(self.left_early),
            "tokens": self.tokens,
            "status": self.status,
            "errors": " | ".join(self.errors),
        }


class _Counters(dict):
    """A dict whose missing keys read as 0 (so ``c[k] += 1`` works for any key)."""

    def __missing__(self, key: str) -> int:
        return 0


class Recorder:
    """Everything one process measured; written out by ``kit.client._output``."""

    def __init__(self) -> None:
        self.hists: dict[str, Histogram] = {name: Histogram("us") for name in HISTOGRAMS}
        self.counters: dict[str, int] = _Counters()
        self.errors: dict[str, int] = _Counters()  # error kind -> count
        self.timeline = Timeline()
        #: TIMELINE_HISTOGRAMS per second, cut from the cumulative ones once a second (no per-value cost)
        self.second_hists = SecondHistograms()
        self.queries: list[QueryRecord] = []
        self.sessions: list[SessionRecord] = []
        self.active_sessions = 0
        self.cpu_samples: list[float] = []
        #: time.time_ns() - time.monotonic_ns() at start, to print wall times
        self.mono_to_wall_ns = time.time_ns() - time.monotonic_ns()
        self._last_snapshot: dict[str, int] = {}
        self._coarse: dict[str, tuple[int, dict[str, Any]]] = {}

    def coarse_dict(self, name: str) -> dict[str, Any]:
        """``hists[name].coarse().to_dict()``, made again only when that histogram has gained a value since
        the last call (its count is the key: the cumulative histograms only grow).  The live status carries
        three whole-run histograms every second, thousands of buckets each: an idle process's do not change,
        and making them again was a fifth of its CPU (bench/idle_sessions.py, py-spy)."""
        h = self.hists[name]
        cached = self._coarse.get(name)
        if cached is None or cached[0] != h.count:
            cached = self._coarse[name] = (h.count, h.coarse().to_dict())
        return cached[1]

    def new_query(self, session_id: str, index: int, intended_ns: int, submit_ns: int, event: Any) -> QueryRecord:
        return QueryRecord(session_id, index, intended_ns, submit_ns, self.hists, self.counters, event)

    def error(self, kind: str) -> None:
        """Count one error of *kind* (a short code such as ``create_http_503`` or ``query_timeout``)."""
        self.errors[kind] += 1
        self.counters["errors"] += 1

    def query_finished(self, q: QueryRecord) -> None:
        self.queries.append(q)

    def session_created(self, s: SessionRecord) -> None:
        """*s*'s create round trip is known (``create_us``): record it now, in the second it ended."""
        if s.create_us is not None:
            self.hists["create"].record(s.create_us)

    def session_connected(self, s: SessionRecord) -> None:
        """*s*'s first connect succeeded (``connect_us`` and its steps): record them now."""
        if s.connect_us is not None:
            self.hists["connect"].record(s.connect_us)
        if s.tcp_us is not None and s.tls_us is not None and s.upgrade_us is not None:  # set together
            self.hists["connect_tcp"].record(s.tcp_us)
            self.hists["connect_tls"].record(s.tls_us)
            self.hists["connect_upgrade"].record(s.upgrade_us)

    def session_finished(self, s: SessionRecord) -> None:
        c = self.counters
        c["sessions_finished"] += 1
        if s.status == "ok":
            c["sessions_ok"] += 1
        elif s.status == "cancelled":
            c["sessions_cancelled"] += 1
            c["sessions_failed"] += 1
        else:
            c["sessions_failed"] += 1
        c["reconnect_attempts"] += s.reconnect_attempts
        c["reconnects_ok"] += s.reconnects_ok
        if s.reconnect_attempts:
            c["sessions_with_reconnects"] += 1
        c["queries_skipped"] += s.queries_skipped
        if s.left_early:
            c["sessions_left_early"] += 1
        self.sessions.append(s)

    _TIMELINE_SOURCES = {
        "sessions_started": "sessions_started",
        "queries_started": "queries_started",
        "queries_done": "queries_ok",
        "queries_failed": "queries_failed",
        "tokens": "tokens",
        "errors": "errors",
        "reconnect_attempts": "reconnect_attempts_live",
        "reconnects_ok": "reconnects_ok_live",
    }

    def sample_timeline(self, second: int) -> None:
        """Close the per-second row *second*: deltas of the cumulative counters since the last call."""
        c = self.counters
        last = self._last_snapshot
        tl = self.timeline
        for field, src in self._TIMELINE_SOURCES.items():
            now = c[src]
            d = now - last.get(src, 0)
            last[src] = now
            if d:
                tl.add(second, field, d)
        tl.gauge(second, "active_sessions", self.active_sessions)
        hists = self.hists
        self.second_hists.close_second(second, {name: hists[name] for name in TIMELINE_HISTOGRAMS})
