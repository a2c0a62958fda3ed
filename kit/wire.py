"""Facts of the wire contract that both sides check: what a ``POST /session/{id}/run`` may ask for.

The simulator (``kit.sim._body``) refuses a body outside these bounds with 422 and the load client
(``kit.client._workload``) refuses the same options before a run starts: one definition, in a module
that imports nothing, so the client does not load the simulator's web framework to read it.
"""

from __future__ import annotations

__all__ = ["WORKLOAD_BOUNDS", "PACE_FIELDS"]

#: ``/run`` workload field -> (minimum, maximum, what it is), inclusive.  max_tokens is the answer's
#: length in tokens (the response text's words, repeated when it asks for more than the text has);
#: the times are milliseconds.  Upper bounds keep one query's schedule small (100,000 due times) and
#: a query within minutes; pace and TTFT of a real model are far inside them.
WORKLOAD_BOUNDS: dict[str, tuple[float, float, str]] = {
    "max_tokens": (1, 100_000, "tokens in the answer"),
    "token_delay_ms": (0.0, 60_000.0, "milliseconds between tokens"),
    "ttft_ms": (0.0, 600_000.0, "milliseconds before the first token"),
    "token_jitter_ms": (0.0, 60_000.0, "milliseconds of uniform jitter on each token"),
}
#: the timing fields of a query (max_tokens is its length)
PACE_FIELDS = ("token_delay_ms", "ttft_ms", "token_jitter_ms")
