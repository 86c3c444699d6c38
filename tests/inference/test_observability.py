"""Metrics move after a billed call on both services, and one request id finds
the call in the REST log, the authority's log and the attribution row."""

from __future__ import annotations

import json
import re
import time

import httpx
from conftest import AuthorityProcess, free_port

from .conftest import InferenceProcess, make_key, sdk

MESSAGES = [{"role": "user", "content": "Hello"}]


def _sample(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + labels + r"\}" if labels else r"(\{[^}]*\})?") + r" ([0-9.e+-]+)"
    return sum(float(m.group(m.lastindex)) for m in re.finditer(pattern, text))


async def test_metrics_move_and_one_request_id_is_found_everywhere(database_url, tokens, world, admin, db,
                                                                   models_file):
    metrics_port = free_port()
    authority = AuthorityProcess(database_url, tokens, {"CREDIT_METRICS_PORT": str(metrics_port)}).start()
    inference = InferenceProcess(authority, tokens.spend, models_file).start()
    try:
        org, user = world.funded_member(allocation_mc=100_000)
        key, _ = make_key(admin, user)
        rest_before = httpx.get(f"{inference.url}/metrics").text
        grpc_before = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text

        raw = sdk(inference, key).chat.completions.with_raw_response.create(
            model="demo-chat", messages=MESSAGES, extra_headers={"X-Request-Id": "trace-7f3a9c"})
        cost = int(float(raw.headers["X-Cost-Incurred"]) * 1000)

        rest_after = httpx.get(f"{inference.url}/metrics").text
        grpc_after = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert _sample(rest_after, "inference_committed_millicredits_total", 'model="demo-chat"') - \
            _sample(rest_before, "inference_committed_millicredits_total", 'model="demo-chat"') == cost
        assert _sample(rest_after, "inference_http_requests_total",
                       'route="/api/v1/llm/chat/completions",status="200"') >= 1
        assert _sample(rest_after, "inference_upstream_latency_seconds_count", 'model="demo-chat"') >= 1
        assert _sample(grpc_after, "credit_committed_millicredits_total") - \
            _sample(grpc_before, "credit_committed_millicredits_total") == cost
        assert _sample(grpc_after, "credit_reserved_millicredits_total") > \
            _sample(grpc_before, "credit_reserved_millicredits_total")
        commits = [line for line in grpc_after.splitlines() if line.startswith("credit_rpc_requests_total{")
                   and 'method="Commit"' in line and 'code="OK"' in line]
        assert commits and float(commits[0].rsplit(" ", 1)[1]) >= 1, commits
        for name in ("credit_rpc_latency_seconds_bucket", "credit_db_pool_connections", "credit_sweeper_runs_total",
                     "credit_holds_outstanding", "credit_hot_path_batch_size_bucket"):
            assert name in grpc_after, name

        time.sleep(0.3)
        rest_lines = [json.loads(line) for line in inference.log_path.read_text().splitlines()
                      if line.startswith("{")]
        grpc_lines = [json.loads(line) for line in authority.log_path.read_text().splitlines()
                      if line.startswith("{")]
        assert any(e.get("request_id") == "trace-7f3a9c" and e.get("route") == "/api/v1/llm/chat/completions"
                   for e in rest_lines)
        rpcs = {e.get("rpc") for e in grpc_lines if e.get("request_id") == "trace-7f3a9c"}
        assert {"VerifyApiKey", "Reserve", "Commit"} <= rpcs or {"Reserve", "Commit"} <= rpcs, rpcs
        row = await db.fetchrow("SELECT request_id, request_metadata->>'request_id' AS rid FROM usage_attribution "
                                "WHERE request_id LIKE '%:trace-7f3a9c'")
        assert row is not None and row["rid"] == "trace-7f3a9c"
    finally:
        inference.stop()
        authority.stop()
