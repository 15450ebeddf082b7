"""IMCorrect: incremental learning and exact unlearning for mapping-based CF (DESIGN.md §3)."""

from models.imcorrect.base import Mapping
from models.imcorrect.ease import EASE
from models.imcorrect.gfcf import GFCF
from models.imcorrect.itemknn import ItemKNN
from models.imcorrect.model import DEFAULT_DRIFT_TOLERANCE, ChangeReport, IMCorrect, make_mapping
from models.imcorrect.serving import FrozenScores

__all__ = [
    "DEFAULT_DRIFT_TOLERANCE",
    "EASE",
    "FrozenScores",
    "GFCF",
    "ChangeReport",
    "IMCorrect",
    "ItemKNN",
    "Mapping",
    "make_mapping",
]
