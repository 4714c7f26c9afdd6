"""The ``vgate`` command: serve, up, engines, models, keys. Top of the stack: may
import anything."""
