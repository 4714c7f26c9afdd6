"""Shared-state implementations: ``memory`` (one process) and ``redis`` (every replica).

They implement the store protocols of ``auth``, ``ratelimit`` and ``cache`` and
may import those packages' types, ``errors`` and ``config``; nothing above
them (no ``pipeline``, ``http``, ``upstream``, ``pool``, ``app``).
"""
