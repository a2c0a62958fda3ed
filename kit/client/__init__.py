"""The trio load client: sessions, reconnection, exact accounting, mergeable metrics.

Run it as ``python -m kit.client`` (see ``__main__``).  Modules, by concern:

- ``_ws``: a Sans-I/O client WebSocket protocol and its trio driver (fast path for
  small text frames; handshake with ``Authorization``; ping/pong; close).
- ``_session``: one session (create, connect, queries, close) with reconnection
  (exponential backoff + jitter) and stream resumption.
- ``_limiter``: the per-process token bucket that bounds the rate of reconnect attempts.
- ``_accounting``: per-query/per-session records and the per-process ``Recorder``.
- ``_stages``: stages (k6's) and Poisson arrivals: the schedules of a staged or Poisson run (pure).
- ``_load``: load shapes (closed with ramp or stages, open with intended start times), the
  per-process runner with its CPU/loop-lag watcher, and the multi-process parent.
- ``_output``: result files and ``merge_outputs``.
- ``_analyze``, ``_console``: the ``analyze`` command, progress line, summary table.

Nothing happens on import.
"""

from ._accounting import QueryRecord as QueryRecord
from ._accounting import Recorder as Recorder
from ._accounting import SessionRecord as SessionRecord
from ._analyze import analyze as analyze
from ._analyze import format_report as format_report
from ._http import DEFAULT_MAX_CONNECTIONS as DEFAULT_MAX_CONNECTIONS
from ._limiter import RECONNECT_BURST as RECONNECT_BURST
from ._limiter import RECONNECT_RATE as RECONNECT_RATE
from ._limiter import TokenBucket as TokenBucket
from ._load import (
    STATUS_COUNTERS as STATUS_COUNTERS,
)
from ._load import (
    STATUS_HISTOGRAMS as STATUS_HISTOGRAMS,
)
from ._load import (
    LoadConfig as LoadConfig,
)
from ._load import (
    overload_verdict as overload_verdict,
)
from ._load import (
    schedule as schedule,
)
from ._output import build_summary as build_summary
from ._output import merge_outputs as merge_outputs
from ._session import (
    Session as Session,
)
from ._session import (
    SessionConfig as SessionConfig,
)
from ._session import (
    backoff_delay as backoff_delay,
)
from ._session import (
    connect_with_retry as connect_with_retry,
)
from ._stages import ARRIVALS as ARRIVALS
from ._stages import Stage as Stage
from ._stages import closed_slots as closed_slots
from ._stages import format_stages as format_stages
from ._stages import open_arrivals as open_arrivals
from ._stages import parse_stages as parse_stages
from ._stages import peak_target as peak_target
from ._stages import rate_integral as rate_integral
from ._stages import scale_stages as scale_stages
from ._stages import slot_count as slot_count
from ._stages import stage_records as stage_records
from ._stages import stages_length as stages_length
from ._workload import (
    Workload as Workload,
)
from ._workload import (
    WorkloadError as WorkloadError,
)
from ._workload import (
    check_option as check_option,
)
from ._workload import (
    draw_seed as draw_seed,
)
from ._workload import (
    duration_problems as duration_problems,
)
from ._workload import (
    load_workload as load_workload,
)
from ._ws import (
    ConnectionClosed as ConnectionClosed,
)
from ._ws import (
    HandshakeError as HandshakeError,
)
from ._ws import (
    ProtocolError as ProtocolError,
)
from ._ws import (
    WebSocket as WebSocket,
)
from ._ws import (
    WsProtocol as WsProtocol,
)
from ._ws import (
    connect as connect,
)

__all__ = [
    "ARRIVALS",
    "ConnectionClosed",
    "DEFAULT_MAX_CONNECTIONS",
    "HandshakeError",
    "LoadConfig",
    "ProtocolError",
    "QueryRecord",
    "RECONNECT_BURST",
    "RECONNECT_RATE",
    "Recorder",
    "STATUS_COUNTERS",
    "STATUS_HISTOGRAMS",
    "Session",
    "SessionConfig",
    "SessionRecord",
    "Stage",
    "TokenBucket",
    "WebSocket",
    "Workload",
    "WorkloadError",
    "WsProtocol",
    "analyze",
    "backoff_delay",
    "build_summary",
    "check_option",
    "closed_slots",
    "connect",
    "connect_with_retry",
    "draw_seed",
    "duration_problems",
    "format_report",
    "format_stages",
    "load_workload",
    "merge_outputs",
    "open_arrivals",
    "overload_verdict",
    "parse_stages",
    "peak_target",
    "rate_integral",
    "scale_stages",
    "schedule",
    "slot_count",
    "stage_records",
    "stages_length",
]
