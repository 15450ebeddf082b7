"""The #18 benchmark and diagnostics run on the smallest generated catalogue and print
coherent lines."""

from __future__ import annotations

import json

import pytest

from benchmarks import catalogue, forget_profile, topk_churn


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


def test_catalogue_prints_the_issue_fields_and_a_snapshot_round_trip(
    capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    catalogue.main(
        ["--sizes", "tiny", "--no-ml1m", "--scenarios", "user", "--repeats", "3"]
        + ["--batches", "2", "--eval-users", "200", "--snapshot-dir", str(tmp_path)]
    )
    seen = _lines(capsys)
    # the snapshots come after the timed forgets, which they would slow
    order = [line["scenario"] for line in seen]
    assert order == ["fit", "user", "snapshot_after_forget", "snapshot"]
    lines = {line["scenario"]: line for line in seen}
    snap = lines["snapshot"]
    # the forgets left zeros, which the first save merges away; the next keeps the parts
    assert lines["snapshot_after_forget"]["merges"] and not snap["merges"]
    for way in ("mapping", "x_only"):
        for line in (snap, lines["snapshot_after_forget"]):
            assert line[f"{way}_max_abs_diff"] == 0.0
            assert line[f"{way}_same_topk"] and line[f"{way}_x_equal"]
            assert line[f"{way}_bytes"] > 0
    # the receipt's snapshot holds X, not the pairs: far smaller than the periodic one
    assert snap["x_only_bytes"] < snap["mapping_bytes"] / 2
    assert list(tmp_path.iterdir()) == []  # the files are removed
    user = lines["user"]
    for field in ("items", "users", "interactions", "n_forgotten", "forget_p50_ms"):
        assert user[field] > 0
    for field in ("forget_p99_ms", "retrain_s", "speedup", "rss_gb"):
        assert user[field] > 0
    assert user["bench"] == "catalogue" and user["max_abs_diff"] == 0.0


def test_catalogue_refuses_an_unknown_scenario() -> None:
    with pytest.raises(SystemExit):
        catalogue.main(["--sizes", "tiny", "--no-ml1m", "--scenarios", "user,usres_1pct"])
