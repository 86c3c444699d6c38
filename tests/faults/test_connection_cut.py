"""Cut the connection between the inference service and the authority mid-load, each time as an
answer is on its way back: retries are idempotent, and the counts match exactly.

The TCP proxy tells what each cut hit (the calls open on the connections it closed, the answer it
dropped); the authority's access log tells which calls it served more than once (a retry of a lost
answer); the client's answers and the database are reconciled both ways."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import openai
import pytest
from conftest import free_port
from invariants import assert_invariants

from .conftest import InferenceProcess, RestRecord, make_key, outbox_count, reconcile_rest, report, served_by_authority
from .load import failure_text
from .proxy import CuttableProxy

MESSAGES = [{"role": "user", "content": "Hello"}]
# How long each cut refuses new connections: shorter than the inference service's retries (0.1 + 0.3 +
# 0.9 s), so a retry lands, and longer, so Reserves fail closed and Commits wait in the outbox.
REFUSALS = (0.2, 0.7, 1.5)
HELD = "SELECT count(*) FROM reservations WHERE user_id = $1 AND status = 'held'"


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
        rest = RestRecord()
        upstream_before = upstream.calls["up-chat"]
        stop = asyncio.Event()

        async def worker():
            while not stop.is_set():
                if await rest.chat(client, "up-chat", MESSAGES) != 200:
                    await asyncio.sleep(0.05)

        workers = [asyncio.create_task(worker()) for _ in range(6)]
        for refusal in REFUSALS:
            await asyncio.sleep(1.0)
            await proxy.cut(refuse_seconds=refusal)
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*workers)
        upstream_calls = upstream.calls["up-chat"] - upstream_before

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
                await db.fetchval(HELD, user) or await asyncio.to_thread(outbox_count, inference)):
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.2)  # the authority writes its access log within 50 ms
        figures, problems = await reconcile_rest(db, rest, user, inference)
        cut = proxy.counts
        served = served_by_authority(authority, set(rest.status))
        served_twice = Counter(rpc for (rpc, _), n in served.items() if n > 1)
        at_cut = Counter(rest.status[rid] for rid, (start, end) in rest.spans.items()
                         if any(start < t < end for t in proxy.cut_times))
        ok = rest.ok()
        problems["a cut dropped no answer (it hit nothing in flight)"] = [
            f"{cut.answers_dropped} answers dropped in {cut.cuts} cuts"] if cut.answers_dropped < len(REFUSALS) else []
        problems["REST answers other than 200 and 503 (fail closed)"] = [
            f"{status}: {n}" for status, n in figures["rest_statuses"].items() if status not in ("200", "503")]
        problems["a model was called without a hold (upstream calls != REST 200s)"] = [] if \
            upstream_calls == len(ok) else [f"upstream={upstream_calls} rest_200={len(ok)}"]
        problems["the authority served a Commit of a request not answered 200"] = [
            rid for rpc, rid in served if rpc == "Commit" and rid not in ok]
        problems["a request answered 200 whose Reserve the authority never served"] = [
            rid for rid in ok if ("Reserve", rid) not in served]
        report("connection cut inference→authority", cuts=cut.cuts, refusals_s=list(REFUSALS),
               calls_through_proxy=cut.calls, connections_cut=cut.connections_cut, calls_cut=cut.calls_cut,
               answers_dropped=cut.answers_dropped, connects_refused=cut.connects_refused,
               rest_in_flight_at_a_cut={str(k): v for k, v in sorted(at_cut.items())},
               reserves_served_twice=served_twice["Reserve"], commits_served_twice=served_twice["Commit"],
               upstream_calls=upstream_calls, **figures, lost=figures["rest_lost"],
               charged_twice=figures["rest_charged_twice"],
               failed_checks={name: len(found) for name, found in problems.items() if found})
        if verdict := failure_text(problems):
            pytest.fail(verdict, pytrace=False)
        await assert_invariants(db)
    finally:
        inference.stop()
        proxy.stop()
