"""vgate: an OpenAI-compatible gateway for vLLM.

Layers, lowest first (``tests/import_contract.py`` enforces the direction):
``errors`` and ``protocol`` (wire models) → ``config`` → ``observability``
(metrics) and ``background`` (supervised periodic work) → the policies
``routing``, ``ratelimit``, ``auth``, ``cache`` → ``backends`` (their stores) →
``upstream`` (engine connections) → ``pool`` (engines known, health, shedding) →
``pipeline`` (a request's stages and its owner) → ``http`` (the edge) → ``app``
(the composition root; ``shutdown``, its close steps under deadlines, imports only
the standard library) and ``cli``. Nothing is built at import time. ``native``
(standard library only) is below them all: importing the package installs its
finder, so that the modules of the request path load compiled when a build of these
very sources exists (``gateway/native.py``).
"""

from gateway.native import install as _install_native

_install_native()  # the compiled request path, when built from these sources (native.py)
