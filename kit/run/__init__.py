"""What ``fab run`` (and ``fab status``/``logs``/``analyze``) orchestrates over the inventory's hosts.

Private modules, re-exported here: ``_remote`` (connections and fan-out),
``_plan`` (presets, client split, thresholds, clock offsets: pure),
``_services`` (health and server-side stats), ``_components`` (CPU cost per
kit component and the bottleneck: pure), ``_svcmgr`` (the kit's services through
the host's service manager), ``_chaos`` (``--chaos`` specs, targets, recovery:
pure), ``_faults`` (executing and undoing faults; ``_nfqdelay.py`` is copied to
hosts without netem), ``_options`` (``fab run``'s options, checked once), ``_preflight`` (hosts' facts,
limits and clocks as records), ``_run`` (one run end to end, as phases), ``_capacity`` (``fab capacity``),
``_live`` (the live view), ``_hostops`` (commands to one host: facts, background jobs), ``_jobwatch`` (one
watcher per host reporting its jobs' states), ``_tasks`` (``fab deploy``/``status``/``logs``/``analyze``).  Callers
(fabfile.py, bench/) import from here, never from a private module.
"""

from ._build import build_label as build_label
from ._capacity import execute_capacity as execute_capacity
from ._components import bottleneck as bottleneck
from ._components import component_costs as component_costs
from ._components import load_host_samples as load_host_samples
from ._fleet import plan as plan
from ._hostops import job_state as job_state
from ._hostops import start_job as start_job
from ._hostops import stop_job as stop_job
from ._jobwatch import JobWatch as JobWatch
from ._live import live_view as live_view
from ._options import RunError as RunError
from ._options import RunOptions as RunOptions
from ._plan import PlanError as PlanError
from ._plan import parse_threshold as parse_threshold
from ._remote import CONNECT_TIMEOUT as CONNECT_TIMEOUT
from ._remote import GroupException as GroupException
from ._remote import LocalConnection as LocalConnection
from ._remote import close_all as close_all
from ._remote import connect as connect
from ._remote import describe_failures as describe_failures
from ._remote import fan_out as fan_out
from ._run import Interrupted as Interrupted
from ._run import execute as execute
from ._sizing import HostFacts as HostFacts
from ._sizing import offered_tokens_per_s as offered_tokens_per_s
from ._sizing import size_fleet as size_fleet
from ._tasks import analyze as analyze
from ._tasks import deploy as deploy
from ._tasks import find_run as find_run
from ._tasks import logs as logs
from ._tasks import status as status

__all__ = [
    "JobWatch",
    "job_state",
    "start_job",
    "stop_job",
    "HostFacts",
    "offered_tokens_per_s",
    "size_fleet",
    "plan",
    "CONNECT_TIMEOUT",
    "GroupException",
    "Interrupted",
    "LocalConnection",
    "PlanError",
    "RunError",
    "RunOptions",
    "analyze",
    "bottleneck",
    "build_label",
    "close_all",
    "component_costs",
    "connect",
    "deploy",
    "describe_failures",
    "execute",
    "execute_capacity",
    "fan_out",
    "find_run",
    "live_view",
    "load_host_samples",
    "logs",
    "parse_threshold",
    "status",
]
