"""Cut the connection between the inference service and the authority mid-load:
retries are idempotent, and the counts match exactly."""

from __future__ import annotations

import asyncio
import time

import openai
from conftest import free_port
from invariants import assert_invariants

from .conftest import InferenceProcess, make_key, outbox_count, report
from .proxy import CuttableProxy

MESSAGES = [{"role": "user", "content": "Hello"}]


async def test_cut_connections_never_double_charge(authority, tokens, world, admin, db, models_file, upstream):
    proxy = CuttableProxy(free_port(), authority.port).start()

    class ViaProxy:  # the inference service reaches the authority only through the proxy
        addr = f"127.0.0.1:{proxy.listen_port}"

    inference = InferenceProcess(ViaProxy, tokens.spend, models_file, {"INFERENCE_RESERVE_TTL_SECONDS": "3",
                                                                       "INFERENCE_KEY_CACHE_SECONDS": "30"}).start()
    try:
        org, user = world.funded_member(allocation_mc=10_000_000)
        key, _ = make_key(admin, user)
        client = openai.AsyncOpenAI(base_url=inference.base_url, api_key=key, max_retries=0, timeout=30)
        ok: list[str] = []
        statuses: dict[int, int] = {}
        upstream_before = upstream.calls["up-chat"]
        stop = asyncio.Event()

        async def worker():
            while not stop.is_set():
                try:
                    raw = await client.chat.completions.with_raw_response.create(model="up-chat", messages=MESSAGES)
                    ok.append(raw.headers["X-Request-Id"])
                except openai.APIStatusError as error:
                    statuses[error.status_code] = statuses.get(error.status_code, 0) + 1
                    await asyncio.sleep(0.05)

        workers = [asyncio.create_task(worker()) for _ in range(6)]
        for _ in range(3):
            await asyncio.sleep(1.0)
            proxy.cut(refuse_seconds=1.5)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)
        assert proxy.cuts == 3 and len(ok) > 0

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            held = await db.fetchval("SELECT held_mc FROM allocations WHERE user_id = $1", user)
            queued = await asyncio.to_thread(outbox_count, inference)
            if held == 0 and queued == 0:
                break
            await asyncio.sleep(0.2)
        assert held == 0, "holds were neither committed nor released"
        rows = await db.fetch("SELECT split_part(request_id, ':', 2) AS id, count(*) AS n FROM usage_attribution "
                              "WHERE user_id = $1 GROUP BY 1", user)
        charged = {r["id"]: r["n"] for r in rows}
        assert sorted(charged) == sorted(ok), "charged requests differ from the answered ones"
        assert set(charged.values()) == {1}, "a request was charged twice"
        upstream_calls = upstream.calls["up-chat"] - upstream_before
        assert upstream_calls == len(ok) + statuses.get(502, 0), "a model was called without a settled hold"
        await assert_invariants(db)
        report("connection cut inference→authority (3 cuts)", answered_200=len(ok),
               other_statuses={str(k): v for k, v in statuses.items()}, charged_rows=len(charged),
               upstream_calls=upstream_calls, charged_twice=0, lost=0)
    finally:
        inference.stop()
        proxy.stop()
