"""The reference wsproxy: Redis pub/sub ``session:{id}:down`` -> one WebSocket text frame per message.

Run it with ``python -m kit.wsproxy`` (settings: :class:`Settings`, which is
:class:`kit.config.WsproxySettings` plus the edge's bounds).  The server lives in ``_server``
(aiohttp), what bounds a peer before a handler runs in ``_edge``, the raw hiredis pub/sub pool in
``_redis``, the counters of ``GET /stats`` in ``_stats``.
"""

from ._redis import PubSubPool as PubSubPool
from ._redis import RedisAddress as RedisAddress
from ._redis import RedisUnavailable as RedisUnavailable
from ._redis import parse_redis_url as parse_redis_url
from ._redis import redis_ping as redis_ping
from ._server import create_app as create_app
from ._server import serve as serve
from ._server import text_frame as text_frame
from ._settings import Settings as Settings
from ._stats import Stats as Stats

__all__ = [
    "PubSubPool",
    "RedisAddress",
    "RedisUnavailable",
    "Settings",
    "Stats",
    "create_app",
    "parse_redis_url",
    "redis_ping",
    "serve",
    "text_frame",
]
