"""Process-wide defaults the pytest plugin (or a user) may set: the seed for bootstraps."""
from __future__ import annotations

_SEED = 0


def seed() -> int:
    return _SEED


def set_seed(value: int) -> None:
    global _SEED
    _SEED = int(value)
