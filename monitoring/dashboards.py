"""Generate the Grafana dashboards (JSON) from one table of panels and their PromQL.

    python monitoring/dashboards.py        # rewrites monitoring/grafana/dashboards/*.json

The same table feeds the README's panel list, so the documentation cannot drift from the
dashboards (a unit test checks both are current).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
OUT = HERE / "grafana" / "dashboards"

#: dashboard → [(panel title, PromQL, unit)]
DASHBOARDS: dict[str, list[tuple[str, str, str]]] = {
    "Lethe — ingest and lag": [
        (
            "Events read per second by worker and outcome",
            "sum by (job, topic, outcome) (rate(lethe_events_total[1m]))",
            "ops",
        ),
        ("Interactions applied per second", "rate(lethe_interactions_applied_total[1m])", "ops"),
        (
            "Micro-batch size (p50)",
            "histogram_quantile(0.5, sum by (le) (rate(lethe_batch_size_bucket[5m])))",
            "none",
        ),
        (
            "Apply latency p99 by worker",
            "histogram_quantile(0.99, sum by (le, job) (rate(lethe_apply_seconds_bucket[5m])))",
            "s",
        ),
        ("Consumer lag by topic", "sum by (topic) (lethe_consumer_lag)", "none"),
        (
            "Dead letters per second by field",
            "sum by (topic, field) (rate(lethe_dead_letters_total[5m]))",
            "ops",
        ),
        ("State size", "lethe_state_size", "none"),
    ],
    "Lethe — unlearning": [
        (
            "Deletion receipts per minute by status",
            "sum by (status) (rate(lethe_deletion_receipts_total[5m])) * 60",
            "none",
        ),
        (
            "Forget latency p99 (request → receipt)",
            "histogram_quantile(0.99, sum by (le) (rate(lethe_forget_latency_seconds_bucket[5m])))",
            "s",
        ),
        ("Oldest deletion waiting for a receipt", "lethe_deletion_oldest_pending_seconds", "s"),
        ("Snapshot age", "lethe_snapshot_age_seconds", "s"),
        (
            "Snapshot time on the worker loop p99",
            "histogram_quantile(0.99, sum by (le) (rate(lethe_snapshot_seconds_bucket[15m])))",
            "s",
        ),
        ("IMCorrect version", 'lethe_model_version{model="imcorrect"}', "none"),
        ("Drift refactorisations", "lethe_imcorrect_refactorisations", "none"),
        ("Hot replicas: change-log writer", "lethe_imcorrect_writer", "none"),
        ("Hot replicas: change-log records not applied", "lethe_imcorrect_log_lag", "none"),
        ("Hot replicas: one id, two processes", "lethe_imcorrect_replica_id_conflict", "none"),
    ],
    "Lethe — training": [
        ("Distillation losses (last step)", "lethe_trainer_loss", "none"),
        ("Rolling validation HR / NDCG", "lethe_trainer_validation", "none"),
        (
            "Round time p99 by kind",
            "histogram_quantile(0.99, sum by (le, kind) "
            "(rate(lethe_trainer_round_seconds_bucket[30m])))",
            "s",
        ),
        (
            "Exports by reason / skipped",
            "sum by (reason) (increase(lethe_models_exported_total[1h])) or "
            "sum by (reason) (increase(lethe_exports_skipped_total[1h]))",
            "none",
        ),
        (
            "Seconds since the last round",
            "time() - lethe_trainer_last_round_timestamp_seconds",
            "s",
        ),
        ("Exported model version", 'lethe_model_version{model="crm"}', "none"),
        ("New interactions not trained on yet", "lethe_trainer_pending_events", "none"),
        (
            "Items the full vocabulary left out",
            "lethe_trainer_items_without_row",
            "none",
        ),
    ],
    "Lethe — serving": [
        (
            "Recommendations per second by strategy",
            "sum by (strategy) (rate(lethe_recommendations_total[1m]))",
            "ops",
        ),
        (
            "Scorer latency p99 by stage",
            "histogram_quantile(0.99, sum by (le, stage) "
            "(rate(lethe_scorer_latency_seconds_bucket[5m])))",
            "s",
        ),
        (
            "Scorer batch size (p50)",
            "histogram_quantile(0.5, sum by (le) (rate(lethe_scorer_batch_size_bucket[5m])))",
            "none",
        ),
        ("Execution provider in use", "lethe_scorer_provider_info", "none"),
        (
            "Model swaps by outcome",
            "sum by (outcome) (increase(lethe_scorer_model_swaps_total[1h]))",
            "none",
        ),
        (
            "Model announcements refused by reason",
            "sum by (reason) (increase(lethe_model_updates_refused_total[1h]))",
            "none",
        ),
    ],
}


def slug(title: str) -> str:
    return title.split("—")[-1].strip().replace(" and ", "-").replace(" ", "-").lower()


def render(title: str, panels: list[tuple[str, str, str]]) -> dict:
    return {
        "uid": f"lethe-{slug(title)}",
        "title": title,
        "tags": ["lethe"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": [
            {
                "id": k + 1,
                "type": "timeseries",
                "title": name,
                "datasource": {"type": "prometheus", "uid": "lethe-prometheus"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (k % 2), "y": 8 * (k // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {
                        "refId": "A",
                        "expr": expr,
                        "datasource": {"type": "prometheus", "uid": "lethe-prometheus"},
                    }
                ],
            }
            for k, (name, expr, unit) in enumerate(panels)
        ],
    }


def rendered() -> dict[str, str]:
    return {
        f"{slug(title)}.json": json.dumps(render(title, panels), indent=2) + "\n"
        for title, panels in DASHBOARDS.items()
    }


def readme_table() -> str:
    lines = ["| dashboard | panel | PromQL |", "|---|---|---|"]
    for title, panels in DASHBOARDS.items():
        for name, expr, _unit in panels:
            lines.append(f"| {title.split('—')[-1].strip()} | {name} | `{expr}` |")
    return "\n".join(lines)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (OUT / name).write_text(text)
        print(OUT / name)
