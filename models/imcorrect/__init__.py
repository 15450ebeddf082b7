"""IMCorrect: incremental learning and exact unlearning for mapping-based CF (docs/models.md)."""

from models.imcorrect.base import Mapping
from models.imcorrect.ease import EASE, EASEConfig
from models.imcorrect.gfcf import GFCF, GFCFConfig
from models.imcorrect.itemknn import ItemKNN, ItemKNNConfig
from models.imcorrect.itemknn_topk import ItemKNNTopK, ItemKNNTopKConfig
from models.imcorrect.model import (
    DEFAULT_DRIFT_TOLERANCE,
    ChangeReport,
    IMCorrect,
    MappingConfig,
    make_mapping,
    mapping_config,
)
from models.imcorrect.serving import FrozenScores

__all__ = [
    "DEFAULT_DRIFT_TOLERANCE",
    "EASE",
    "EASEConfig",
    "FrozenScores",
    "GFCF",
    "GFCFConfig",
    "ChangeReport",
    "IMCorrect",
    "ItemKNN",
    "ItemKNNConfig",
    "ItemKNNTopK",
    "ItemKNNTopKConfig",
    "Mapping",
    "MappingConfig",
    "make_mapping",
    "mapping_config",
]
