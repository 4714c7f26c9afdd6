"""Benchmarks for vgate: a load generator and the gateway-overhead benchmark.

Run them from the repository root as modules, e.g.
``python -m benchmarks.gateway_overhead --duration 10``. See README.md here.
"""
