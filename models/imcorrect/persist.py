"""IMCorrect's files: plain arrays (``.npz``) and metadata (``.json``), written atomically,
never pickled. A model saved without its mapping rebuilds it from X on load (a fit: exact)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from models.durable import atomic_write

#: 2 when the sparse mapping's counts come in two parts (``map_g_extra_*``), which code that
#: reads only format 1 would drop without a word; other files stay format 1, readable by it
FORMAT_VERSION = 2
_TWO_PARTS = "map_g_extra_"


class Persistence:
    """Save and load, mixed into :class:`models.imcorrect.IMCorrect` (which owns the fields)."""

    def state_arrays(self, with_mapping: bool = True) -> dict[str, np.ndarray]:
        x = self._x
        arrays = {
            "x_data": x.data,
            "x_indices": x.indices,
            "x_indptr": x.indptr,
            "x_shape": np.array(x.shape, dtype=np.int64),
            "forgotten_items": self.forgotten_items,
        }
        if with_mapping:
            arrays.update({f"map_{k}": v for k, v in self._mapping.state().items()})
        return arrays

    def state_meta(self, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """The metadata written beside ``arrays`` (they decide the format's version)."""
        two_parts = any(name.startswith(_TWO_PARTS) for name in arrays)
        return {
            "format": FORMAT_VERSION if two_parts else 1,
            "mapping": self.mapping_name,
            "params": self._mapping.params(),
            "correct_mapping": self.correct_mapping,
            "drift_tolerance": self.drift_tolerance,
            "check_every": self.check_every,
            "refit_rank_ratio": self.refit_rank_ratio,
            "version": self.version,
            "refactorisations": self.refactorisations,
        }

    def save(self, path: str | os.PathLike, *, with_mapping: bool = True) -> Path:
        """Write ``<path>.npz`` (plain arrays) and ``<path>.json`` atomically; never pickle.

        ``with_mapping=False`` writes X only: :meth:`load` then refits the mapping from X,
        which is exact, so the file costs O(nnz) instead of the mapping's dense arrays."""
        base = Path(path)
        base.parent.mkdir(parents=True, exist_ok=True)
        arrays = self.state_arrays(with_mapping)
        atomic_write(base.with_suffix(".npz"), lambda f: np.savez(f, **arrays))
        meta = json.dumps(self.state_meta(arrays), indent=2).encode()
        atomic_write(base.with_suffix(".json"), lambda f: f.write(meta))
        return base

    @classmethod
    def load(cls, path: str | os.PathLike, memory_budget_gb: float | None = None) -> Any:
        """The model saved at ``path``; ``memory_budget_gb`` as the constructor takes it
        (a budget is a setting of the process, not saved with the model)."""
        base = Path(path)
        meta = json.loads(base.with_suffix(".json").read_text())
        if meta.get("format") not in range(1, FORMAT_VERSION + 1):
            raise ValueError(f"unsupported IMCorrect format {meta.get('format')}")
        model = cls(
            meta["mapping"],
            correct_mapping=meta["correct_mapping"],
            drift_tolerance=meta["drift_tolerance"],
            check_every=meta["check_every"],
            refit_rank_ratio=meta.get("refit_rank_ratio", 0.5),
            memory_budget_gb=memory_budget_gb,
            **meta["params"],
        )
        with np.load(base.with_suffix(".npz"), allow_pickle=False) as arrays:
            arrays = dict(arrays)
            model._admit_saved_catalogue(int(arrays["x_shape"][1]))
            model.load_arrays(arrays, meta)
        return model

    def load_arrays(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        shape = tuple(int(s) for s in arrays["x_shape"])
        self._x = sp.csr_matrix(
            (arrays["x_data"], arrays["x_indices"], arrays["x_indptr"]), shape=shape
        )
        self._owns_x = False
        self.forgotten_items = np.array(arrays["forgotten_items"], dtype=bool)
        mapping = {k[4:]: v for k, v in arrays.items() if k.startswith("map_")}
        if mapping:
            self._mapping.load_state(mapping)
        else:
            self._mapping.fit(self._x)  # saved without the mapping: rebuild it, exactly
        self.version = int(meta["version"])
        self.refactorisations = int(meta.get("refactorisations", 0))
