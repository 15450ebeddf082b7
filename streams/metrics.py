"""Prometheus metrics of the Lethe services (prefix ``lethe_``)."""

from __future__ import annotations

import errno
import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS = Counter("lethe_events_total", "Events read, by topic and outcome", ["topic", "outcome"])
DEAD_LETTERS = Counter(
    "lethe_dead_letters_total",
    "Messages sent to dead-letters, by source topic and field",
    ["topic", "field"],
)
APPLIED = Counter("lethe_interactions_applied_total", "Interactions learned into IMCorrect")
BATCH_SIZE = Histogram(
    "lethe_batch_size",
    "Events per applied micro-batch",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
APPLY_SECONDS = Histogram(
    "lethe_apply_seconds",
    "Time to apply one step's input to a worker's state (IMCorrect: learn and forget, on"
    " every hot replica; trainer: rounds and retrains included)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FORGET_LATENCY = Histogram(
    "lethe_forget_latency_seconds",
    "Deletion request ts to receipt published",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)
DELETION_PENDING_AGE = Gauge(
    "lethe_deletion_oldest_pending_seconds",
    "Age (from its ts) of the oldest deletion request read but not yet receipted",
)
RECEIPTS = Counter("lethe_deletion_receipts_total", "Receipts published", ["status"])
STATE_SIZE = Gauge("lethe_state_size", "Size of the IMCorrect state", ["what"])
SNAPSHOT_AGE = Gauge("lethe_snapshot_age_seconds", "Seconds since the last snapshot")
SNAPSHOT_SECONDS = Histogram(
    "lethe_snapshot_seconds",
    "Time one snapshot holds up the worker loop (a scorer writes periodic ones on a thread)",
)
CONSUMER_LAG = Gauge("lethe_consumer_lag", "Messages behind the log end", ["topic", "partition"])
MODEL_VERSION = Gauge("lethe_model_version", "Version of the served model", ["model"])
RECOMMENDATIONS = Counter("lethe_recommendations_total", "Recommendations published", ["strategy"])
# labelled by replica: exported by hot replicas only (a single worker shows neither)
IMCORRECT_WRITER = Gauge(
    "lethe_imcorrect_writer",
    "1 while this IMCorrect replica is the elected change-log writer",
    ["replica"],
)
IMCORRECT_REPLICA_ID_CONFLICT = Gauge(
    "lethe_imcorrect_replica_id_conflict",
    "1 while the writer hears two live IMCorrect processes beat under this replica id",
    ["replica"],
)
IMCORRECT_LOG_LAG = Gauge(
    "lethe_imcorrect_log_lag",
    "Change-log records this IMCorrect replica has not applied yet",
    ["replica"],
)
REFACTORISATIONS = Gauge("lethe_imcorrect_refactorisations", "Drift-triggered refactorisations")

# -- trainer ---------------------------------------------------------------------------------
TRAINER_ROUND_SECONDS = Histogram(
    "lethe_trainer_round_seconds",
    "Time of one training round (micro-batch) or retrain, by kind",
    ["kind"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
TRAINER_LOSS = Gauge("lethe_trainer_loss", "Last loss of a training step", ["model", "part"])
TRAINER_VALIDATION = Gauge(
    "lethe_trainer_validation", "Rolling validation metric of the SASRec", ["metric"]
)
MODELS_EXPORTED = Counter(
    "lethe_models_exported_total", "SASRec versions exported and announced", ["reason"]
)
EXPORTS_SKIPPED = Counter(
    "lethe_exports_skipped_total", "Rounds whose model was not exported, by reason", ["reason"]
)
TRAINER_LAST_ROUND = Gauge(
    "lethe_trainer_last_round_timestamp_seconds",
    "When the last round or retrain finished (the trainer's start before the first)",
)
TRAINER_PENDING = Gauge("lethe_trainer_pending_events", "New interactions not yet trained on")
TRAINER_MIN_USERS = Gauge(
    "lethe_trainer_min_users", "trainer.min_users: no round runs with fewer users than this"
)
TRAINER_ITEMS_WITHOUT_ROW = Gauge(
    "lethe_trainer_items_without_row",
    "Items with held interactions that the full vocabulary gives no row (not trained on and"
    " not in the exported catalogue; trainer.model.max_items)",
)
TRAINER_SEQUENCES = Gauge("lethe_trainer_sequences", "Users with a retained sequence")

# -- scorer ----------------------------------------------------------------------------------
SCORER_LATENCY = Histogram(
    "lethe_scorer_latency_seconds",
    "Scorer latency by stage: transit (the record's Kafka timestamp, the broker's append "
    "time on topics Lethe creates, to received), queue (received to "
    "batch start), model (per batch), end_to_end (request ts to recommendation acked)",
    ["stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SCORER_BATCH = Histogram(
    "lethe_scorer_batch_size", "Requests per scored batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128)
)
SCORER_PROVIDER = Gauge(
    "lethe_scorer_provider_info", "onnxruntime provider in use (1 = current)", ["provider"]
)
SCORER_SWAPS = Counter("lethe_scorer_model_swaps_total", "Model swaps by outcome", ["outcome"])
MODEL_UPDATES_REFUSED = Counter(
    "lethe_model_updates_refused_total",
    "model-updates messages refused before any file was opened (unsigned, forged, path)",
    ["reason"],
)
SCORER_DELETIONS = Counter(
    "lethe_scorer_deletions_applied_total", "Deletion requests applied to the scorer's state"
)


class MetricsPortTaken(RuntimeError):
    """The configured metrics port is in use, and the operator chose it (it is scraped
    there): the worker does not start elsewhere unseen."""


def port_may_move(settings: Any) -> bool:
    """May the endpoint move to a free port when its port is taken? Only when the port is
    the default (not set by the operator), which every kind of worker shares."""
    return "metrics_port" not in settings.model_fields_set


def serve(host: str, port: int, may_move: bool = False) -> int:
    """Start the /metrics HTTP endpoint; returns the bound port (-1 when disabled).

    Port 0 picks a free port (tests); port -1 disables the endpoint. A taken port raises
    :class:`MetricsPortTaken`, or with ``may_move`` serves on a free port (logged)."""
    if port < 0:
        return -1
    try:
        server, _thread = start_http_server(port, addr=host)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
        if not may_move:
            raise MetricsPortTaken(
                f"metrics port {host}:{port} is in use (another worker on this host?);"
                " give each process its own LETHE_METRICS_PORT"
            ) from exc
        # another worker on this host has it (every kind defaults to one port): serving on
        # a free one keeps this worker running, and the warning says where to scrape it
        server, _thread = start_http_server(0, addr=host)
        logging.getLogger("lethe.metrics").warning(
            "metrics port %d is in use (another worker on this host?): /metrics is on %s:%d;"
            " give each process its own LETHE_METRICS_PORT to scrape it at a fixed place",
            port,
            host,
            server.server_address[1],
        )
    return int(server.server_address[1])
