"""The reference wsproxy's settings: :class:`kit.config.WsproxySettings` and the bounds of its edge.

:class:`Settings` adds the fields the wsproxy's own code enforces (``_edge``); ``from_env``, bounds
and ConfigError messages derive from each field exactly as for every other setting.
"""

from __future__ import annotations

import dataclasses

from kit.config import WsproxySettings, setting

__all__ = ["Settings", "MAX_CONNECTIONS_PER_ADDRESS"]

#: the largest WS_MAX_CONNECTIONS_PER_ADDRESS accepted (beyond any open-files limit anyway)
MAX_CONNECTIONS_PER_ADDRESS = 10_000_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings(WsproxySettings):
    """``python -m kit.wsproxy``'s settings (``Settings.from_env()``)."""

    #: connections one client address may hold open at once; past it a new one gets 429 at once.
    #: 0 (the default) is no limit: in the kit every WebSocket reaches a wsproxy through HAProxy, so
    #: every connection of a run comes from HAProxy's one address (and a generator host from one or a
    #: few); any limit would have to exceed the sessions of a whole run.  Set it when a wsproxy is
    #: exposed to clients directly.
    max_connections_per_address: int = setting(
        0, env=("WS_MAX_CONNECTIONS_PER_ADDRESS",), minimum=0, maximum=MAX_CONNECTIONS_PER_ADDRESS
    )
