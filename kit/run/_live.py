"""``fab run``'s live view: an in-place table on a terminal (rich), plain lines anywhere else.

A view takes the run's human output (``out``: one line at a time, from any thread) and each poll's
aggregate (``show``: :func:`kit.run._summary.aggregate_status`, rates and percentiles of the last
interval); ``close`` ends the in-place part, leaving its last state on the screen, so what the run
prints afterwards (the report) follows it.  :func:`live_view` picks the kind by the stream:
:class:`RichView` when it is a terminal, else :class:`PlainView` (one line per poll, as a log or a
pipe wants it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, TextIO

from ._summary import format_live_line

__all__ = ["View", "PlainView", "RichView", "live_view", "render_live"]


class View(Protocol):
    def out(self, msg: str) -> None: ...

    def show(self, agg: Mapping[str, Any], elapsed: float) -> None: ...

    def close(self) -> None: ...


class PlainView:
    """One :func:`format_live_line` per poll through *out*."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out

    def show(self, agg: Mapping[str, Any], elapsed: float) -> None:
        self.out("  " + format_live_line(agg, elapsed))

    def close(self) -> None:
        pass


class RichView:
    """The live table redrawn in place on *stream* (a terminal); ``out`` lines scroll above it.

    The in-place part starts at the first ``show`` and redirects ``sys.stdout``/``sys.stderr`` into
    the console while it runs (so a log line or a stray print lands above the table, not through it);
    ``close`` restores them.  Thread-safe: rich's console holds a lock.
    """

    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console

        self.console = Console(file=stream, highlight=False)
        self._live: Any = None

    def out(self, msg: str) -> None:
        self.console.print(msg, markup=False, soft_wrap=True)

    def show(self, agg: Mapping[str, Any], elapsed: float) -> None:
        table = render_live(agg, elapsed)
        if self._live is None:
            from rich.live import Live

            self._live = Live(
                table,
                console=self.console,
                auto_refresh=False,
                transient=False,
                redirect_stdout=True,
                redirect_stderr=True,
            )
            self._live.start(refresh=True)
        else:
            self._live.update(table, refresh=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def live_view(stream: TextIO) -> PlainView | RichView:
    """:class:`RichView` when *stream* is a terminal, else :class:`PlainView` writing lines to it."""
    if stream.isatty():
        return RichView(stream)
    return PlainView(lambda msg: print(msg, file=stream, flush=True))


def _f(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def render_live(agg: Mapping[str, Any], elapsed: float) -> Any:
    """The live table of one aggregate: the run's figures of the last interval, then one row per generator."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Table(
        title=f"t={elapsed:.0f}s  generators reporting {agg['reporting']}/{agg['generators']}",
        title_justify="left",
        expand=False,
    )
    for col in ("tokens/s", "queries/s", "p50 ms", "p99 ms", "delivery p99 ms", "active", "errors", "reconnects"):
        head.add_column(col, justify="right")
    err = Text(
        f"{agg['errors']:,}" + (f" (+{agg['errors_per_s']:.1f}/s)" if agg.get("errors_per_s") else ""),
        style="bold red" if agg.get("errors_per_s") else "",
    )
    head.add_row(
        _f(agg.get("tps")),
        _f(agg.get("qps"), "{:,.1f}"),
        _f(agg.get("p50_ms"), "{:,.1f}"),
        _f(agg.get("p99_ms"), "{:,.1f}"),
        _f(agg.get("delivery_p99_ms"), "{:,.1f}"),
        f"{agg['active_sessions']:,}",
        err,
        f"{agg['reconnect_attempts']:,}"
        + (f" (+{agg['reconnects_per_s']:.1f}/s)" if agg.get("reconnects_per_s") else ""),
    )
    head.caption = (
        f"rates, query p50/p99 and token delivery p99 of the last interval ({agg.get('interval_queries', 0):,} queries); "
        "errors and reconnects since the start"
    )
    head.caption_justify = "left"
    gens = Table(expand=False)
    for col in ("generator", "active", "tokens/s", "queries/s", "CPU %", "loop lag p99 ms", "state"):
        gens.add_column(col, justify="left" if col in ("generator", "state") else "right")
    for label, g in agg["per_generator"].items():
        if not g:
            gens.add_row(label, "-", "-", "-", "-", "-", "no status yet")
            continue
        gens.add_row(
            label,
            _f(g.get("active_sessions")),
            _f(g.get("tps")),
            _f(g.get("qps"), "{:,.1f}"),
            _f(g.get("cpu_percent")),
            _f(g.get("loop_lag_ms"), "{:,.1f}"),
            "done" if g.get("done") else "running",
        )
    return Group(head, gens)
