import json
import logging

from streams.logs import JsonFormatter


def test_json_logs_carry_the_ids_that_tie_events_together():
    record = logging.LogRecord(
        "lethe.imcorrect", logging.INFO, __file__, 1, "receipt %s", ("applied",), None
    )
    record.request_id = "r-123"
    record.status = "applied"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "receipt applied"
    assert line["request_id"] == "r-123" and line["status"] == "applied"
    assert line["level"] == "info" and line["ts"].endswith("Z")
