"""What ``fab run`` (and ``fab status``/``logs``/``analyze``) orchestrates over the inventory's hosts.

Private modules, re-exported here: ``_remote`` (connections and fan-out),
``_plan`` (presets, client split, thresholds, clock offsets: pure),
``_services`` (health and server-side stats), ``_components`` (CPU cost per
kit component and the bottleneck: pure), ``_svcmgr`` (the kit's services through
the host's service manager), ``_chaos`` (``--chaos`` specs, targets, recovery:
pure), ``_faults`` (executing and undoing faults; ``_nfqdelay.py`` is copied to
hosts without netem), ``_run`` (one run end to end, as phases).
"""

from ._components import bottleneck as bottleneck
from ._components import component_costs as component_costs
from ._components import load_host_samples as load_host_samples
from ._remote import CONNECT_TIMEOUT as CONNECT_TIMEOUT
from ._remote import GroupException as GroupException
from ._remote import LocalConnection as LocalConnection
from ._remote import close_all as close_all
from ._remote import connect as connect
from ._remote import describe_failures as describe_failures
from ._remote import fan_out as fan_out
