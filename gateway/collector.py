"""The garbage collector's first generation, sized for a gateway's request path.

CPython collects its youngest generation every 700 net allocations of container
objects (3.11's default). A proxied request allocates a few hundred of them (its
dicts, lists, coroutines and small objects), almost all freed by reference
counting when the request ends, so under load the collector ran every couple of
requests to find nothing to free: ~40k instructions per full-mode request under
callgrind, and about 5% of requests/s (paired rounds, issue #16; see
benchmarks/RESULTS.md). At 2,000 (the default from CPython 3.13 on) it runs a
third as often, each run still short. The older generations keep their thresholds.

Set once per serving process (each worker of ``server.workers > 1`` is one), never
by library code or tests that build the app in process.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 2000


def size_young_generation() -> None:
    """Collect the youngest generation every :data:`GEN0_THRESHOLD` allocations."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)
