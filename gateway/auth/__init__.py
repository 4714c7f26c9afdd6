"""API keys: who is calling and what they may do (principals, key records, the
key store protocol and key administration).

A policy: imports no HTTP framework, no aiohttp, no Redis client; only
``config``, ``errors`` and ``ratelimit``'s limit types. Stores live in ``backends``.
"""
