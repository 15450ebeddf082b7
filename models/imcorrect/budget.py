"""Memory budget for the dense mappings: refuse a catalogue before allocating n×n arrays.

EASE, ItemKNN and GF-CF keep float64 item×item arrays (8·n² bytes each): 3.2 GB at 20,000
items, 80 GB at 100,000. Past the budget they raise :class:`DenseBudgetError` naming the size
and the sparse alternative, instead of ending in an out-of-memory kill.
"""

from __future__ import annotations

import math
import os

#: share of the machine's physical memory the dense arrays may take when no budget is set
DEFAULT_SHARE = 0.5


class DenseBudgetError(MemoryError):
    """A dense mapping was asked for a catalogue whose arrays would not fit the budget."""


def physical_memory_bytes() -> int:
    """Physical memory of this machine (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def default_budget_bytes() -> float:
    total = physical_memory_bytes()
    return DEFAULT_SHARE * total if total else float("inf")


def dense_bytes(n_items: int, n_arrays: int) -> int:
    """Bytes of ``n_arrays`` float64 n×n arrays."""
    return 8 * n_arrays * n_items * n_items


def max_dense_items(n_arrays: int, budget_bytes: float) -> int | None:
    """The largest catalogue whose ``n_arrays`` dense arrays fit the budget (None: no cap)."""
    if budget_bytes == float("inf"):
        return None
    n = int(math.isqrt(int(budget_bytes // (8 * n_arrays))))
    while dense_bytes(n + 1, n_arrays) <= budget_bytes:
        n += 1
    while n > 0 and dense_bytes(n, n_arrays) > budget_bytes:
        n -= 1
    return n


def check_dense_budget(name: str, n_items: int, n_arrays: int, budget_bytes: float) -> None:
    """Raise :class:`DenseBudgetError` when the dense arrays of ``name`` exceed the budget."""
    need = dense_bytes(n_items, n_arrays)
    if need > budget_bytes:
        raise DenseBudgetError(
            f"mapping {name!r} needs {n_arrays} dense {n_items:,}×{n_items:,} float64 arrays "
            f"= {need / 1e9:,.1f} GB, over the memory budget of {budget_bytes / 1e9:,.1f} GB; "
            "use mapping='itemknn-topk' (sparse top-k neighbours, memory grows with the "
            "co-occurring pairs, not n²) or raise memory_budget_gb"
        )
