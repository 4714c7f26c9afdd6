"""Prometheus metrics of the gateway, and the engine-state view they export.

Below the policies (they count into it); imports nothing of the gateway above
``config`` and ``errors``, only ``engines.stats``."""
