"""Bounds that storage keeps and the layers above check their input against. No SQL here:
the configuration's checks import this, and a command that only reads the config should not
load SQLAlchemy to start."""

from __future__ import annotations

# The longest window a rate may have (gateway.rates); storage.throttle keeps no older sends.
MAX_WINDOW = 86400.0
