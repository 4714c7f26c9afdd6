"""Talking to engines: the pooled client (behind a Protocol, with an in-process fake
for tests), failover across engines, SSE relay and timeouts.

The only package that imports aiohttp. May import ``pool``, ``routing``,
``observability``, ``config``, ``errors``; never ``pipeline`` or ``http``.
"""
