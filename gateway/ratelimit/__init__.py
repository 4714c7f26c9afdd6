"""Rate limits: limit types, the backend protocol, header formatting, what a request
costs (its prompt, the output it wants, its choices) and admission (reserve at the
start of a request, settle exactly once at its end).

A policy: imports no HTTP framework, no aiohttp, no Redis client. Backends that
keep the counters live in ``backends``.
"""
