"""Routing policies: choose an engine from an immutable snapshot of the pool.

A policy: pure functions of snapshots; imports only ``config`` and the standard library.
"""
