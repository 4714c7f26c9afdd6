"""Settings: the YAML file plus ``VGATE_`` environment overrides (pydantic-settings).

The only package that reads the environment. Imports pydantic and ``engines.spec``.
"""
