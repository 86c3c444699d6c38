"""The same log events for a person (LOG_FORMAT=text, what a terminal gets) and for a machine
(LOG_FORMAT=json, what anything else gets): one line each, with the time, level, service, message and
the event's fields, the access log included. Run in a real process, as the services configure it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

EMIT = """
import logging
from credit_service import logs
logs.configure(service="authority")
logging.getLogger("credit_service").warning("pool low: %d left", 3, extra={"org_id": "demo-org"})
logs.request_id.set("req-1")
logs.access(msg="rpc", rpc="Reserve", code="OK", ms=1.5)
logs.flush_access()
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("credit_service.jobs").exception("sweep failed")
"""


def _emit(log_format: str) -> list[str]:
    env = {**os.environ, "LOG_FORMAT": log_format}
    result = subprocess.run([sys.executable, "-c", EMIT], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def test_json_lines_carry_each_event_and_its_fields():
    lines = _emit("json")
    events = [json.loads(line) for line in lines]
    assert len(events) == 3, lines
    warning, access, failure = events
    assert (warning["level"], warning["service"], warning["msg"], warning["org_id"]) == \
        ("warning", "authority", "pool low: 3 left", "demo-org")
    assert (access["logger"], access["rpc"], access["code"], access["ms"], access["request_id"]) == \
        ("access", "Reserve", "OK", 1.5, "req-1")
    assert failure["level"] == "error" and "ZeroDivisionError" in failure["exc"]


def test_text_lines_carry_the_same_events_for_a_person():
    lines = _emit("text")
    assert not any(line.startswith("{") for line in lines), lines
    stamp = r"\d\d:\d\d:\d\d "
    assert re.fullmatch(stamp + r"WARNING +authority +pool low: 3 left  org_id=demo-org", lines[0]), lines[0]
    assert re.fullmatch(stamp + r"INFO +authority +rpc  rpc=Reserve code=OK ms=1.5 request_id=req-1", lines[1]), \
        lines[1]
    assert re.fullmatch(stamp + r"ERROR +authority +sweep failed  logger=credit_service.jobs request_id=req-1",
                        lines[2]), lines[2]
    assert lines[3] == "Traceback (most recent call last):" and "ZeroDivisionError" in lines[-1]


def test_a_bad_log_format_is_refused():
    with pytest.raises(AssertionError, match="LOG_FORMAT must be auto, text or json"):
        _emit("yaml")
