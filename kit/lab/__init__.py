"""The lab: test hosts as network namespaces on this machine (see ``_lab`` for ownership).

``fab lab-up --hosts 6`` / ``fab lab-down`` call :func:`lab_up` / :func:`lab_down`.
"""

from ._lab import LAB_SYSCTLS as LAB_SYSCTLS
from ._lab import LabConfig as LabConfig
from ._lab import LabHost as LabHost
from ._lab import lab_down as lab_down
from ._lab import lab_up as lab_up
from ._lab import load_state as load_state
from ._lab import write_inventory as write_inventory
from ._layout import GROUPS as GROUPS
from ._layout import LayoutError as LayoutError
from ._layout import assign_groups as assign_groups
from ._layout import default_layout as default_layout
from ._layout import parse_layout as parse_layout
from ._netns import LabError as LabError

__all__ = [
    "LAB_SYSCTLS",
    "LabConfig",
    "LabHost",
    "lab_down",
    "lab_up",
    "load_state",
    "write_inventory",
    "GROUPS",
    "LayoutError",
    "assign_groups",
    "default_layout",
    "parse_layout",
    "LabError",
]
