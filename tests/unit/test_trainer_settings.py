"""The trainer's settings embed the model's own configs (OnlineConfig with its DistillConfig,
ColdInitConfig) instead of copying their fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.llmd4rec_config import ColdInitConfig, DistillConfig, OnlineConfig
from streams.config import LetheSettings, load_settings
from streams.procs import settings_env


def test_nested_environment_reaches_the_models_config(monkeypatch):
    monkeypatch.setenv("LETHE_TRAINER__MODEL__LLM", "smollm2:2")
    monkeypatch.setenv("LETHE_TRAINER__MODEL__MAX_ITEMS", "900")
    monkeypatch.setenv("LETHE_TRAINER__MODEL__DISTILL__T2", "2.5")
    monkeypatch.setenv("LETHE_TRAINER__COLD__RIDGE", "3")
    trainer = load_settings().trainer
    assert trainer.model.llm == "smollm2:2" and trainer.model.max_items == 900
    assert trainer.model.distill == DistillConfig(t2=2.5)
    assert trainer.cold.ridge == 3.0


def test_a_partial_section_keeps_the_settings_defaults_not_the_classes():
    # the trainer reads item text and blends cold rows; the classes alone do neither
    default = LetheSettings().trainer
    assert default.model == OnlineConfig(text_repr=True)
    assert default.cold == ColdInitConfig(min_count=5, blend=True)
    partial = LetheSettings(trainer={"model": {"hidden": 16}, "cold": {"ridge": 2.0}}).trainer
    assert partial.model == OnlineConfig(hidden=16, text_repr=True)
    assert partial.cold == ColdInitConfig(min_count=5, ridge=2.0, blend=True)


def test_a_child_process_sees_the_same_nested_configs(monkeypatch):
    parent = LetheSettings(
        trainer={
            "model": {"llm": "tiny", "max_len": 9, "distill": {"w1": 0.25}, "text_repr": False},
            "cold": {"min_count": 3},
        }
    )
    env = settings_env(parent)
    assert env["LETHE_TRAINER__MODEL__DISTILL__W1"] == "0.25"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings().trainer == parent.trainer


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("LETHE_TRAINER__LLM", "LETHE_TRAINER__MODEL__LLM"),
        ("LETHE_TRAINER__MAX_ITEMS", "LETHE_TRAINER__MODEL__MAX_ITEMS"),
        ("LETHE_TRAINER__T1", "LETHE_TRAINER__MODEL__DISTILL__T1"),
        ("LETHE_TRAINER__ITEM_TEXT", "LETHE_TRAINER__MODEL__TEXT_REPR"),
        ("LETHE_TRAINER__COLD_MIN_COUNT", "LETHE_TRAINER__COLD__MIN_COUNT"),
    ],
)
def test_a_retired_flat_setting_is_refused_naming_its_new_place(monkeypatch, old, new):
    monkeypatch.setenv(old, "2")
    with pytest.raises(ValidationError, match=new):
        load_settings()


@pytest.mark.parametrize(
    "env",
    [
        {"LETHE_TRAINER__MODEL__MAX_ITEMS": "1"},
        {"LETHE_TRAINER__MODEL__HIDDEN": "4"},
        {"LETHE_TRAINER__MODEL__PRETRAIN_STEPS": "0"},
        {"LETHE_TRAINER__MODEL__DISTILL__T1": "0"},
        {"LETHE_TRAINER__MODEL__DISTILL__W2": "-0.5"},
        {"LETHE_TRAINER__COLD__MIN_COUNT": "0"},
        {"LETHE_TRAINER__COLD__SCALE": "0"},
        {"LETHE_TRAINER__COLD__RIDGE": "inf"},
        {"LETHE_TRAINER__MODEL__DISTILL__CRM_LR": "inf"},
        {"LETHE_TRAINER__MODEL__SEED": "1.5"},
    ],
)
def test_the_models_own_checks_reject_bad_values(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        load_settings()


@pytest.mark.parametrize("name", ["rounds", "up_epochs", "down_epochs", "max_steps_per_stage"])
def test_distill_fields_the_online_model_never_reads_are_refused(monkeypatch, name):
    # one round per micro-batch, stages bounded by pretrain_steps and steps_per_round
    monkeypatch.setenv(f"LETHE_TRAINER__MODEL__DISTILL__{name.upper()}", "3")
    with pytest.raises(ValidationError, match=f"distill.{name} is not used"):
        load_settings()
