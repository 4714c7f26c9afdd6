"""The response cache: canonical keys, stored entries (format-neutral), the cache
policy and single flight.

A policy: imports no HTTP framework, no aiohttp, no Redis client. Entry stores
live in ``backends``.
"""
