"""Field checks shared by the models' config classes (the IMCorrect mappings', the online
LLMD4Rec model's): values arrive from Python callers (numpy scalars included) and from
settings, and are stored as plain JSON-safe numbers."""

from __future__ import annotations

import math
import operator


def real(config: object, name: str, *, positive: bool) -> None:
    """Store ``name`` as a finite float, > 0 (``positive``) or ≥ 0."""
    value = getattr(config, name)
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, not {value!r}")
    value = float(value)
    if not math.isfinite(value) or not (value > 0 if positive else value >= 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'} and finite")
    object.__setattr__(config, name, value)


def whole(config: object, name: str, *, minimum: int) -> None:
    """Store ``name`` as an int ≥ ``minimum`` (an integral float such as 2.5 is refused)."""
    value = getattr(config, name)
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}")
    object.__setattr__(config, name, value)
