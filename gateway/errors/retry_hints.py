"""When a client may try again, as the gateway says it: ``Retry-After`` and
``retry-after-ms``.

The official SDKs read ``retry-after-ms`` before ``Retry-After`` (openai-python's
``_parse_retry_after_header``: milliseconds first, then seconds), and ``Retry-After``
holds whole seconds only (HTTP's delta-seconds): a wait of 1.2 s said as ``2`` made
every SDK client wait 0.8 s longer than it had to. Every answer of the gateway's own
that says when to try again therefore says it both ways: ``Retry-After`` rounded up,
``retry-after-ms`` the wait itself. Built on refusals only, never on an answer that
succeeds. Part of :mod:`gateway.errors`: nothing else of ours is imported here.
"""

from __future__ import annotations

import math


def retry_after(seconds: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms`` (integer
    milliseconds, rounded up) for a wait of ``seconds`` (a negative one is 0)."""
    wait = max(seconds, 0.0)
    return {"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(math.ceil(wait * 1000))}
