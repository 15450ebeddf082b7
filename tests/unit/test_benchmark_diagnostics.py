"""The #18 diagnostics run on the smallest generated catalogue and print coherent lines."""

from __future__ import annotations

import json

import pytest

from benchmarks import forget_profile, topk_churn


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]


def test_topk_churn_reports_lists_and_reserve_depths(capsys: pytest.CaptureFixture[str]) -> None:
    topk_churn.main(["--size", "tiny", "--sample-rows", "200", "--share", "0.02"])
    lines = _lines(capsys)
    (lists,) = [line for line in lines if line["stage"] == "lists"]
    assert lists["users_forgotten"] == 400
    assert 0 < lists["set_changed_share"] <= 1
    assert lists["swapped_mean"] > 0  # forgetting 2 % of users moves some lists
    reserve = sorted(
        (line for line in lines if line["stage"] == "reserve"), key=lambda r: r["reserve"]
    )
    assert [r["reserve"] for r in reserve] == list(topk_churn.DEPTHS)
    for r in reserve:
        assert r["rows_sampled"] == 200
        # a proof needs the list inside the reserve; the pass-free proof is the weaker one
        assert r["provable_global_ratio_share"] <= r["provable_own_ratio_share"]
        assert r["provable_own_ratio_share"] <= r["within_reserve_share"]
        assert r["global_ratio"] >= 1
    for shallow, deep in zip(reserve, reserve[1:], strict=False):
        assert shallow["within_reserve_share"] <= deep["within_reserve_share"]
        assert shallow["provable_global_ratio_share"] <= deep["provable_global_ratio_share"]
    assert reserve[-1]["within_reserve_share"] == 1.0


def test_forget_profile_splits_a_retrain_and_times_a_forget_of_many(
    capsys: pytest.CaptureFixture[str],
) -> None:
    forget_profile.main(["--size", "tiny", "--users", "10", "--ab-rows", "10", "--ab-reps", "2"])
    stages = {}
    for line in _lines(capsys):
        stages.setdefault(line["stage"], []).append(line)
    (split,) = stages["retrain_split"]
    assert split["pairs"] > 0 and split["count_s"] > 0 and split["select_s"] > 0
    (many,) = stages["many"]
    assert many["users"] == 200  # 1 % of the tiny catalogue's 20,000 users
    assert many["rows_selected_again"] > 0
    # the phases nest inside the forget
    assert many["recompute_ms"] <= many["apply_delta_ms"] <= many["correct_ms"] <= many["ms"]
