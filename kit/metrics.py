"""Mergeable measurements: HDR-like histograms, counters and a per-second timeline.

Pure code, no I/O.  Everything here can be serialised with ``to_dict`` and
rebuilt with ``from_dict``, and two objects recorded on different processes or
hosts ``merge`` into exactly the object one process would have recorded for the
union of their values: counts add, min/max/sum combine exactly, and percentiles
are computed from the merged buckets (never by averaging percentiles).

:class:`Histogram` records integers (the caller picks the unit, by convention
microseconds) in log-linear buckets with ``SUB_BUCKET_BITS`` bits of
precision: values below ``2**SUB_BUCKET_BITS`` are exact, larger ones keep a
relative error below ``2**-(SUB_BUCKET_BITS-1)`` (about 0.1%, i.e. three
significant digits).  Negative values (clock skew between hosts makes some
delivery latencies negative) are bucketed symmetrically.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import chain
from typing import Any, ClassVar, TypeGuard

__all__ = [
    "SUB_BUCKET_BITS",
    "Histogram",
    "Timeline",
    "SecondHistograms",
    "SECOND_BUCKET_BITS",
    "coarse_bucket",
    "add_counts",
    "bucket_index",
    "bucket_value",
]

#: 11 bits -> exact below 2048, relative error < 1/1024 above (3 significant digits)
SUB_BUCKET_BITS = 11
_SUB = 1 << SUB_BUCKET_BITS
_HALF = _SUB >> 1


def bucket_index(v: int) -> int:
    """The bucket of integer *v* (see the module docstring)."""
    if v < 0:
        return -bucket_index(-v) - 1
    if v < _SUB:
        return v
    e = v.bit_length() - SUB_BUCKET_BITS
    return _SUB + (e - 1) * _HALF + ((v >> e) - _HALF)


def _bucket_bounds(idx: int) -> tuple[int, int]:
    """(lowest, highest) value of a non-negative bucket."""
    if idx < _SUB:
        return idx, idx
    e = (idx - _SUB) // _HALF + 1
    top = (idx - _SUB) % _HALF + _HALF
    lo = top << e
    return lo, lo + (1 << e) - 1


def _signed_bounds(idx: int) -> tuple[int, int]:
    """(lowest, highest) value of any bucket, negative ones included."""
    if idx < 0:
        lo, hi = _bucket_bounds(-idx - 1)
        return -hi, -lo
    return _bucket_bounds(idx)


def bucket_value(idx: int) -> int:
    """The representative value of a bucket: the middle of its range (exact for small values)."""
    if idx < 0:
        return -bucket_value(-idx - 1)
    lo, hi = _bucket_bounds(idx)
    return (lo + hi) // 2


class Histogram:
    """Counts of integer values in log-linear buckets; mergeable and serialisable.

    ``record`` is the hot path (a few integer operations and one dict update).
    Percentiles follow HdrHistogram: the value at percentile *p* is that of the
    first bucket at which the cumulative count reaches ``ceil(p/100 * count)``,
    clamped to the exact recorded [min, max].
    """

    __slots__ = ("counts", "count", "total", "min", "max", "unit")

    def __init__(self, unit: str = "us") -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None
        self.unit = unit

    def record(self, v: int) -> None:
        """Add one integer value (hot path: keep it a handful of operations)."""
        idx = v if 0 <= v < _SUB else bucket_index(v)
        counts = self.counts
        counts[idx] = counts.get(idx, 0) + 1
        self.count += 1
        self.total += v
        if self.max is None:
            self.min = self.max = v
        elif v > self.max:
            self.max = v
        elif self.min is not None and v < self.min:  # min and max are set together
            self.min = v

    def record_many(self, values: Iterable[int]) -> None:
        for v in values:
            self.record(int(v))

    def merge(self, other: Histogram) -> Histogram:
        """Add *other*'s values into this histogram (in place); returns self."""
        if other.unit != self.unit:
            raise ValueError(f"cannot merge a histogram in {other.unit!r} into one in {self.unit!r}")
        counts = self.counts
        for idx, n in other.counts.items():
            counts[idx] = counts.get(idx, 0) + n
        self.count += other.count
        self.total += other.total
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max
        return self

    def copy(self) -> Histogram:
        """An independent histogram with the same values."""
        h = Histogram(self.unit)
        h.counts = dict(self.counts)
        h.count, h.total, h.min, h.max = self.count, self.total, self.min, self.max
        return h

    def coarse(self) -> Histogram:
        """A copy with :data:`SECOND_BUCKET_BITS` buckets (percentiles within 1.6 %, count, sum, min and max
        exact): what a second of the timeline and the live status keep, 16 times fewer buckets."""
        h = Histogram(self.unit)
        counts: dict[int, int] = {}
        get, mask, mid = counts.get, _COARSE_MASK, _COARSE_MID
        for idx, n in self.counts.items():
            c = (idx & mask) | mid if idx >= 0 else coarse_bucket(idx)
            counts[c] = get(c, 0) + n
        h.counts = counts
        h.count, h.total, h.min, h.max = self.count, self.total, self.min, self.max
        return h

    def subtract(self, earlier: Histogram) -> Histogram:
        """Remove *earlier*'s values (in place; returns self): what was recorded since *earlier*.

        *earlier* must be an earlier state of this same cumulative histogram (each bucket's count at
        most this one's), so two snapshots of one recorder give the interval between them.  Counts and
        sum are exact; min and max become the bounds of the lowest and highest bucket left (exact
        below ``2**SUB_BUCKET_BITS``), within this histogram's own [min, max].  ValueError when
        *earlier* holds values this histogram lacks (not an earlier state, e.g. a restarted process).
        """
        if earlier.unit != self.unit:
            raise ValueError(f"cannot subtract a histogram in {earlier.unit!r} from one in {self.unit!r}")
        counts = dict(self.counts)
        for idx, n in earlier.counts.items():
            left = counts.get(idx, 0) - n
            if left < 0:
                raise ValueError(
                    "the histogram to subtract is not an earlier state of this one "
                    f"(bucket {idx} holds {n}, this one {counts.get(idx, 0)})"
                )
            if left:
                counts[idx] = left
            else:
                counts.pop(idx, None)
        self.counts = counts
        self.count -= earlier.count
        self.total -= earlier.total
        if not counts:
            self.min = self.max = None
            return self
        lo, _ = _signed_bounds(min(counts))
        _, hi = _signed_bounds(max(counts))
        self.min = lo if self.min is None else max(lo, self.min)
        self.max = hi if self.max is None else min(hi, self.max)
        return self

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def percentile(self, p: float) -> int | None:
        if not self.count:
            return None
        if not 0 <= p <= 100:
            raise ValueError(f"percentile {p} is outside 0..100")
        rank = max(1, -(-(round(p * 1000) * self.count) // 100000))  # ceil(p/100*count), p to 3 decimals
        if rank >= self.count:
            return self.max
        if rank == 1:
            return self.min
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            if seen >= rank:
                v = bucket_value(idx)
                return min(max(v, self.min), self.max)  # type: ignore[type-var]
        return self.max  # pragma: no cover (counts and count disagree)

    def percentiles(self, ps: Iterable[float]) -> dict[str, int | None]:
        return {_pname(p): self.percentile(p) for p in ps}

    def buckets(self) -> list[tuple[int, int]]:
        """(representative value, count) per non-empty bucket, ascending."""
        return [(bucket_value(i), self.counts[i]) for i in sorted(self.counts)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "sub_bucket_bits": SUB_BUCKET_BITS,
            "count": self.count,
            "sum": self.total,
            "min": self.min,
            "max": self.max,
            "counts": [[i, self.counts[i]] for i in sorted(self.counts)],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        """The histogram *d* (:meth:`to_dict`) describes; ValueError saying what is wrong when *d* is not
        one (a damaged or foreign file: wrong types, a bucket out of range, counts that do not add up)."""
        damaged = "the file is damaged"
        if not isinstance(d, Mapping):
            raise ValueError(f"a histogram is a JSON object, not {type(d).__name__}: {damaged}")
        if d.get("sub_bucket_bits", SUB_BUCKET_BITS) != SUB_BUCKET_BITS:
            raise ValueError(
                f"histogram has sub_bucket_bits={d.get('sub_bucket_bits')!r:.20}, this kit uses {SUB_BUCKET_BITS}: "
                "merge results produced by the same kit version"
            )
        unit = d.get("unit", "us")
        if not isinstance(unit, str):
            raise ValueError(f"histogram unit {unit!r:.20} is not a string: {damaged}")
        h = cls(unit)
        pairs = d.get("counts", [])
        if not isinstance(pairs, list) or not _int_pairs(pairs):
            raise ValueError(f"histogram counts are not a list of [bucket, count] whole-number pairs: {damaged}")
        h.counts = dict(pairs)
        if (
            len(h.counts) != len(pairs)
            or h.counts
            and (min(h.counts.values()) <= 0 or min(h.counts) < -_MAX_INDEX or max(h.counts) > _MAX_INDEX)
        ):
            raise ValueError(f"histogram counts repeat a bucket, or hold one out of range or a count <= 0: {damaged}")
        for key in ("count", "sum"):
            if not _is_int(d.get(key, 0)):
                raise ValueError(f"histogram {key} {d.get(key)!r:.20} is not a whole number: {damaged}")
        h.count = d.get("count", 0)
        h.total = d.get("sum", 0)
        h.min = d.get("min")
        h.max = d.get("max")
        if sum(h.counts.values()) != h.count:
            raise ValueError("histogram counts do not add up to its count: the file is damaged")
        if (
            (h.min is None) != (h.count == 0)
            or (h.max is None) != (h.count == 0)
            or h.count
            and not (_is_number(h.min) and _is_number(h.max) and -_MAX_VALUE <= h.min <= h.max <= _MAX_VALUE)
        ):
            raise ValueError(f"histogram min/max do not fit its count: {damaged}")
        if abs(h.total) > h.count * _MAX_VALUE:
            raise ValueError(f"histogram sum is out of range for its count: {damaged}")
        return h

    def summary(self, ps: Iterable[float] = (50, 95, 99), scale: float = 1.0) -> dict[str, Any]:
        """count/min/max/avg and percentiles, each value divided by *scale* (e.g. 1000 for us -> ms)."""

        def sc(v: float | None) -> float | None:
            return None if v is None else round(v / scale, 6)

        out: dict[str, Any] = {"count": self.count, "min": sc(self.min), "max": sc(self.max), "avg": sc(self.mean())}
        for p in ps:
            out[_pname(p)] = sc(self.percentile(p))
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Histogram) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Histogram(unit={self.unit!r}, count={self.count}, min={self.min}, max={self.max})"


#: the largest value (and bucket index) from_dict accepts: 2**64 (in microseconds, 584,000 years)
_MAX_VALUE = 2**64
_MAX_INDEX = bucket_index(_MAX_VALUE)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_pairs(pairs: list[Any]) -> bool:
    """Every item of *pairs* is a ``[whole number, whole number]`` list.  A merge of a 100,000-session run
    checks millions of pairs: the common case (lists of two plain ints, as JSON gives) is decided by type sets
    built in C, anything else by the item-by-item check."""
    if (
        set(map(type, pairs)) <= {list}
        and set(map(len, pairs)) <= {2}
        and set(map(type, chain.from_iterable(pairs))) <= {int}
    ):
        return True
    return all(isinstance(x, list) and len(x) == 2 and all(map(_is_int, x)) for x in pairs)


def _is_number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _pname(p: float) -> str:
    return f"p{p:g}".replace(".", "_")


def add_counts(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Add the numbers of *b* into *a* (nested dicts recursively); returns *a*."""
    for k, v in b.items():
        if isinstance(v, Mapping):
            add_counts(a.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            a[k] = a.get(k, 0) + v
    return a


class Timeline:
    """Per-second counters keyed by the integer wall-clock second.

    ``add`` accumulates events; ``gauge`` sets a sampled value (e.g. active
    sessions) for a second.  Merging adds both: the sum of the processes'
    gauges at one second is the union's gauge.
    """

    __slots__ = ("rows", "fields")

    FIELDS: ClassVar[tuple[str, ...]] = (
        "active_sessions",
        "sessions_started",
        "queries_started",
        "queries_done",
        "queries_failed",
        "tokens",
        "errors",
        "reconnect_attempts",
        "reconnects_ok",
    )

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, int]] = {}

    def _row(self, second: int) -> dict[str, int]:
        row = self.rows.get(second)
        if row is None:
            row = self.rows[second] = dict.fromkeys(self.FIELDS, 0)
        return row

    def add(self, second: int, field: str, n: int = 1) -> None:
        self._row(second)[field] += n

    def gauge(self, second: int, field: str, value: int) -> None:
        self._row(second)[field] = value

    def merge(self, other: Timeline) -> Timeline:
        for sec, row in other.rows.items():
            mine = self._row(sec)
            for k, v in row.items():
                mine[k] = mine.get(k, 0) + v
        return self

    def to_rows(self) -> list[dict[str, int]]:
        return [{"second": s, **self.rows[s]} for s in sorted(self.rows)]

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]]) -> Timeline:
        """The timeline of *rows* (:meth:`to_rows`, or timeline.csv's rows); ValueError naming the row and
        field when one is not a whole number."""
        t = cls()
        for n, r in enumerate(rows, 1):
            for k in ("second", *cls.FIELDS):
                v = r.get(k) if isinstance(r, Mapping) else None
                if (k == "second" or v not in (None, "")) and not _int_like(v):
                    raise ValueError(f"timeline row {n}: {k} {v!r:.20} is not a whole number: the file is damaged")
            row = t._row(int(r["second"]))
            for k in cls.FIELDS:
                if k in r and r[k] not in (None, ""):
                    row[k] += int(r[k])
        return t

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.to_rows()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Timeline:
        rows = d.get("rows", []) if isinstance(d, Mapping) else None
        if not isinstance(rows, list):
            raise ValueError("a timeline is a JSON object with a list of rows: the file is damaged")
        return cls.from_rows(rows)


def _int_like(v: Any) -> bool:
    """A whole number, or a string of one (a CSV cell)."""
    if _is_int(v):
        return True
    if isinstance(v, str) and len(v) <= 30:
        try:
            int(v)
        except ValueError:
            return False
        return True
    return False


#: per-second histograms keep this many sub-bucket bits (relative error < 1/64, about 1.6 %): a second's
#: percentiles show a trend; 16 times fewer buckets than the whole-run histograms keep each second cheap
#: to cut, store and merge (bench/timeline_cost.py)
SECOND_BUCKET_BITS = 7
_COARSE = SUB_BUCKET_BITS - SECOND_BUCKET_BITS
_COARSE_MASK = ~((1 << _COARSE) - 1)
_COARSE_MID = 1 << (_COARSE - 1)


def coarse_bucket(idx: int) -> int:
    """The bucket standing for *idx*'s group of ``2**(SUB_BUCKET_BITS - SECOND_BUCKET_BITS)`` neighbours (the
    group's middle bucket, in the same octave), so a coarse histogram is still a :class:`Histogram`."""
    if idx < 0:
        return -coarse_bucket(-idx - 1) - 1
    # a group never straddles an octave: _SUB and _HALF are multiples of the group's width
    return (idx & _COARSE_MASK) | _COARSE_MID


class SecondHistograms:
    """Histograms per wall-clock second: ``hists[second][name]`` holds what was recorded in that second.

    Built without any per-value cost: once a second the recorder takes the difference between a
    cumulative histogram and its state a second earlier (:meth:`close_second`).  Merging adds the
    histograms of each (second, name) pair, so the percentiles of a second over many processes come
    from their merged buckets, never from averaged percentiles.  Each second's buckets are coarse
    (:data:`SECOND_BUCKET_BITS`: percentiles within 1.6 %, min and max exact): at most a few hundred
    non-empty buckets per name and second.
    """

    __slots__ = ("hists", "_snapshots")

    def __init__(self) -> None:
        self.hists: dict[int, dict[str, Histogram]] = {}
        self._snapshots: dict[str, Histogram] = {}

    def close_second(self, second: int, cumulative: Mapping[str, Histogram]) -> None:
        """Record, under *second*, what each of *cumulative*'s histograms gained since the last call."""
        for name, cur in cumulative.items():
            before = self._snapshots.get(name)
            if before is not None and before.count == cur.count:
                continue
            interval = (cur.copy() if before is None else cur.copy().subtract(before)).coarse()
            self._snapshots[name] = cur.copy()
            if interval.count:
                self.hists.setdefault(second, {})[name] = interval

    def merge(self, other: SecondHistograms, *, take: bool = False) -> SecondHistograms:
        """Add *other*'s histograms (in place; returns self).  *take*: *other* is not used afterwards, so its
        histograms may become this one's rather than copies (a merge of many processes' files)."""
        for sec, by_name in other.hists.items():
            mine = self.hists.setdefault(sec, {})
            for name, h in by_name.items():
                if name in mine:
                    mine[name].merge(h)
                else:
                    mine[name] = h if take else h.copy()
        return self

    def rows(self, names: Iterable[str], scale: float = 1000.0) -> dict[int, dict[str, float | None]]:
        """Per second: ``<name>_p50``, ``<name>_p99`` and ``<name>_max`` of each of *names*, divided by *scale*."""
        out: dict[int, dict[str, float | None]] = {}
        for sec in sorted(self.hists):
            row = out[sec] = {}
            for name in names:
                h = self.hists[sec].get(name)
                for stat in ("p50", "p99", "max"):
                    v = None if h is None else (h.max if stat == "max" else h.percentile(50 if stat == "p50" else 99))
                    row[f"{name}_{stat}"] = None if v is None else round(v / scale, 3)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": [[sec, {n: h.to_dict() for n, h in self.hists[sec].items()}] for sec in sorted(self.hists)]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SecondHistograms:
        """What :meth:`to_dict` wrote (None: empty); ValueError saying what is wrong otherwise."""
        out = cls()
        seconds = (d or {}).get("seconds", []) if isinstance(d, Mapping) or d is None else None
        if not isinstance(seconds, list):
            raise ValueError("per-second histograms are a JSON object with a list of seconds: the file is damaged")
        for entry in seconds:
            if not (
                isinstance(entry, list) and len(entry) == 2 and _is_int(entry[0]) and isinstance(entry[1], Mapping)
            ):
                raise ValueError(
                    f"per-second histograms: {entry!r:.40} is not [second, {{name: histogram}}]: the file is damaged"
                )
            sec, by_name = entry
            out.hists[sec] = {str(n): Histogram.from_dict(h) for n, h in by_name.items()}
        return out
