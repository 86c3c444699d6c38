"""The REST service's /metrics answers only loopback clients unless INFERENCE_METRICS_REMOTE (issue 17).

In process (httpx's ASGI transport sets the peer address), so no connection leaves loopback."""

from __future__ import annotations

import httpx
import pytest

from inference_service.app import create_app
from inference_service.settings import Settings


@pytest.fixture
async def service_env(authority, tokens, tmp_path) -> dict[str, str]:
    return {"CREDIT_AUTHORITY_ADDR": authority.addr, "CREDIT_SERVICE_TOKEN": tokens.service,
            "CREDIT_DATA_DIR": str(tmp_path)}


async def _metrics_status(env: dict[str, str], peer: str) -> int:
    app = create_app(Settings.from_env(env))
    service = app.state.service
    await service.start()
    try:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://inference") as client:
            return (await client.get("/metrics")).status_code
    finally:
        await service.stop()


@pytest.mark.parametrize(("peer", "status"), [("127.0.0.1", 200), ("::1", 200), ("10.1.2.3", 404),
                                              ("192.0.2.7", 404)])
async def test_metrics_answer_loopback_only_by_default(service_env, peer, status):
    assert Settings.from_env(service_env).metrics_remote is False
    assert await _metrics_status(service_env, peer) == status


async def test_metrics_answer_remote_scrapers_when_configured(service_env):
    assert await _metrics_status({**service_env, "INFERENCE_METRICS_REMOTE": "true"}, "10.1.2.3") == 200
