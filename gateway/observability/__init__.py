"""Prometheus metrics of the gateway. Imports ``pool`'s state types only."""
