"""The streaming worker builds the mapping its settings name, the sparse one included."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from models.imcorrect import EASEConfig, IMCorrect, ItemKNNTopKConfig
from models.imcorrect.budget import DenseBudgetError
from streams.config import load_settings
from streams.services import imcorrect as worker


def test_environment_selects_the_sparse_mapping_and_its_k(monkeypatch, tmp_path):
    monkeypatch.setenv("LETHE_IMCORRECT__MAPPING", "itemknn-topk")
    monkeypatch.setenv("LETHE_IMCORRECT__ITEMKNN_TOPK__K", "7")
    monkeypatch.setenv("LETHE_IMCORRECT__ITEMKNN_TOPK__SHRINK", "2.5")
    monkeypatch.setenv("LETHE_IMCORRECT__ITEMKNN_TOPK__RESERVE", "3")
    state = worker.new_state(load_settings())
    model = state.model
    assert model.mapping_name == "itemknn-topk"
    assert model.config == ItemKNNTopKConfig(k=7, shrink=2.5, reserve=3)
    model.learn([0, 0, 1], [0, 200_000, 0])  # a catalogue no dense mapping would take
    assert sp.issparse(model.freeze()._mapping)
    model.save(tmp_path / "snap")
    loaded = type(model).load(tmp_path / "snap")
    assert loaded.config == ItemKNNTopKConfig(k=7, shrink=2.5, reserve=3)
    np.testing.assert_array_equal(loaded.score([0]), model.score([0]))


def test_dense_mapping_budget_comes_from_the_settings(monkeypatch):
    monkeypatch.setenv("LETHE_IMCORRECT__MAPPING", "ease")
    monkeypatch.setenv("LETHE_IMCORRECT__MEMORY_BUDGET_GB", "0.001")
    model = worker.new_state(load_settings()).model
    with pytest.raises(DenseBudgetError, match="itemknn-topk"):
        model.learn([0], [5_000])


def test_each_mapping_reads_its_own_section(monkeypatch):
    monkeypatch.setenv("LETHE_IMCORRECT__EASE__L2", "35.5")
    monkeypatch.setenv("LETHE_IMCORRECT__ITEMKNN_TOPK__K", "9")  # another mapping's: unused
    model = worker.new_state(load_settings()).model
    assert model.mapping_name == "ease" and model.config == EASEConfig(l2=35.5)


def test_the_settings_default_is_the_mappings_own():
    settings = load_settings()
    assert settings.imcorrect.mapping_config() == EASEConfig()
    assert settings.imcorrect.itemknn_topk == ItemKNNTopKConfig()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("LETHE_IMCORRECT__L2", "LETHE_IMCORRECT__EASE__L2"),
        ("LETHE_IMCORRECT__K", "LETHE_IMCORRECT__ITEMKNN_TOPK__K"),
        ("LETHE_IMCORRECT__RESERVE", "LETHE_IMCORRECT__ITEMKNN_TOPK__RESERVE"),
        ("LETHE_IMCORRECT__SHRINK", "LETHE_IMCORRECT__ITEMKNN__SHRINK"),
    ],
)
def test_a_retired_flat_setting_is_refused_naming_its_new_place(monkeypatch, old, new):
    monkeypatch.setenv(old, "3")
    with pytest.raises(ValidationError, match=new):
        load_settings()


@pytest.mark.parametrize(
    "env",
    [
        {"LETHE_IMCORRECT__EASE__L2": "0"},
        {"LETHE_IMCORRECT__EASE__L2": "nan"},
        {"LETHE_IMCORRECT__EASE__L2": "inf"},
        {"LETHE_IMCORRECT__ITEMKNN__SHRINK": "inf"},
        {"LETHE_IMCORRECT__ITEMKNN__SHRINK": "-1"},
        {"LETHE_IMCORRECT__ITEMKNN_TOPK__K": "0"},
        {"LETHE_IMCORRECT__ITEMKNN_TOPK__RESERVE": "-2"},
        {"LETHE_IMCORRECT__ITEMKNN_TOPK__K": "2.5"},
    ],
)
def test_the_mappings_own_checks_reject_bad_values(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        load_settings()


def test_numpy_parameters_are_stored_as_plain_numbers(tmp_path):
    model = IMCorrect("itemknn-topk", k=np.int64(5), shrink=np.float32(0.5))
    assert type(model.config.k) is int and type(model.config.shrink) is float
    model.learn([0, 1], [0, 1])
    model.save(tmp_path / "snap")  # JSON metadata: a numpy scalar would not serialise
    assert type(model).load(tmp_path / "snap").config == model.config


def test_a_name_with_a_parameter_it_does_not_have_is_refused():
    with pytest.raises(TypeError, match="l2"):
        IMCorrect("itemknn", l2=5.0)
    with pytest.raises(TypeError, match="not both"):
        IMCorrect(EASEConfig(), l2=5.0)


@pytest.mark.parametrize(
    "name",
    [
        "LETHE_IMCORRECT__EASE__L3",
        "LETHE_IMCORRECT__BATCH_MAX_EVENT",
        "LETHE_TRAINER__MODEL__DISTILL__T3",
        "LETHE_SCORER__MAX_BACH",
    ],
)
def test_a_misspelt_setting_is_refused_not_ignored(monkeypatch, name):
    monkeypatch.setenv(name, "2")
    with pytest.raises(ValidationError):
        load_settings()


def test_replicas_need_their_own_id_and_one_shared_budget():
    from streams.config import LetheSettings

    with pytest.raises(ValidationError, match="replica_id"):
        LetheSettings(imcorrect={"replicated": True, "memory_budget_gb": 2})
    with pytest.raises(ValidationError, match="memory_budget_gb"):
        LetheSettings(imcorrect={"replicated": True, "replica_id": "a"})
    LetheSettings(imcorrect={"replicated": True, "replica_id": "a", "memory_budget_gb": 2})
    sparse = {"replicated": True, "replica_id": "a", "mapping": "itemknn-topk"}
    assert LetheSettings(imcorrect=sparse).imcorrect.memory_budget_gb is None  # no n² arrays


def test_a_loaded_model_keeps_the_configured_budget(tmp_path):
    # replicas decide which new items fit from it: a restarted one must decide alike
    model = IMCorrect("ease", l2=1.0, memory_budget_gb=8 * 4 * 10**2 / 1e9)
    model.fit(sp.csr_matrix(np.eye(4)))
    model.save(tmp_path / "m")
    assert IMCorrect.load(tmp_path / "m", memory_budget_gb=8 * 4 * 10**2 / 1e9).max_items == 10


def test_a_saved_catalogue_past_a_lower_budget_still_loads(tmp_path):
    # the budget was set or lowered since: the model loads, and refuses only new items
    model = IMCorrect("ease", l2=1.0).fit(sp.csr_matrix(np.eye(12)))
    model.save(tmp_path / "m", with_mapping=False)  # a receipt's snapshot: refitted on load
    tight = 8 * 4 * 5**2 / 1e9  # room for 5 items
    loaded = IMCorrect.load(tmp_path / "m", memory_budget_gb=tight)
    assert loaded.n_items == 12 and loaded.max_items == 12
    with pytest.raises(DenseBudgetError):
        loaded.learn([0], [12])  # a 13th item
