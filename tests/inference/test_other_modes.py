"""Embeddings, audio transcriptions and moderations through the official openai SDK, unchanged: billed
(moderations: not billed, but rate-limited) with headers that equal the authority's own figures, over
LiteLLM's mock_response and over a real HTTP upstream in OpenAI's wire format. Every expected charge
is computed here from the catalogue's price and the usage the provider reported."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest
from media_support import millicredits, price, streamed_wav, wav
from upstream import embedding_tokens

from credit.v1 import admin_pb2, authority_pb2

from .conftest import async_sdk, sdk


def mc(text: str) -> int:
    return int(Decimal(text) * 1000)


async def billed_row(raw, spend, db, user_id: str, service_type: str):
    """The call's attribution row, checked against the headers and the authority's balance."""
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_id))
    assert mc(raw.headers["X-Credits-Remaining"]) == balance.available_millicredits
    assert balance.held_millicredits == 0, "a hold was left behind"
    rows = await db.fetch("SELECT * FROM usage_attribution WHERE request_id LIKE '%:' || $1",
                          raw.headers["X-Request-Id"])
    assert len(rows) == 1, "a billed call has exactly one attribution row"
    row = rows[0]
    assert row["service_type"] == service_type
    assert mc(raw.headers["X-Cost-Incurred"]) == row["credits_used"]
    return row


# ---- embeddings ---------------------------------------------------------------------------------


async def test_embeddings_with_mock_response_are_billed_from_the_reported_usage(inference, member, spend, db,
                                                                                models_file):
    client = sdk(inference, member.key, organization=member.org_id)  # OpenAI-Organization picks the org
    raw = client.embeddings.with_raw_response.create(model="demo-embed", input=["a ledger", "a hold"])
    result = raw.parse()
    assert result.data[0].embedding == [0.0125, -0.25, 0.5, 0.75]
    assert raw.headers["X-Funding-Source"] == f"org:{member.org_id}"
    row = await billed_row(raw, spend, db, member.user_id, "embedding")
    assert row["service_name"] == "demo-embed"
    expected = millicredits(price(models_file, "demo-embed", "input_cost_per_token") * result.usage.prompt_tokens)
    assert row["credits_used"] == expected
    assert json.loads(row["request_metadata"])["prompt_tokens"] == result.usage.prompt_tokens


@pytest.mark.parametrize("given", [
    "Credits are reserved before every call.",
    ["Credits are reserved", "and committed after", "every call to a model."],
    [9906, 11, 1917, 0, 220],
    [[9906, 11], [1917], [15, 16, 17, 18, 19, 20]],
], ids=["string", "strings", "token array", "token arrays"])
async def test_embeddings_over_an_http_upstream_charge_its_usage(inference, member, spend, db, upstream, models_file,
                                                                  given):
    before = upstream.calls["up-embed"]
    client = async_sdk(inference, member.key)
    raw = await client.embeddings.with_raw_response.create(model="up-embed", input=given)
    result = raw.parse()
    assert upstream.calls["up-embed"] == before + 1
    sent = upstream.app.state.bodies[-1]
    assert sent["input"] == given, "the provider is sent the input as given"
    assert result.model == "up-embed" and len(result.data) == (len(given) if isinstance(given[0], (str, list))
                                                               and not isinstance(given, str) else 1)
    reported = embedding_tokens(sent)
    assert result.usage.prompt_tokens == reported
    row = await billed_row(raw, spend, db, member.user_id, "embedding")
    assert row["credits_used"] == millicredits(price(models_file, "up-embed", "input_cost_per_token") * reported)
    hold = await db.fetchrow("SELECT amount_mc, charged_mc, overrun FROM reservations WHERE reservation_id = $1",
                             row["reservation_id"])
    assert hold["charged_mc"] <= hold["amount_mc"] and not hold["overrun"], "the hold covered the input"


async def test_embeddings_from_a_provider_that_reports_no_usage_are_charged_our_count(inference, member, spend, db,
                                                                                     upstream, models_file):
    """LiteLLM fills a missing `usage` with zeros: a 0 for a non-empty input is no report, so our count is charged."""
    import litellm

    given = ["Credits are reserved", "before every call."]
    raw = await async_sdk(inference, member.key).embeddings.with_raw_response.create(model="up-embed-nousage",
                                                                                    input=given)
    assert "usage" not in upstream.app.state.bodies[-1] and len(raw.parse().data) == 2
    ours = sum(len(litellm.encoding.encode(text)) for text in given)
    row = await billed_row(raw, spend, db, member.user_id, "embedding")
    per_token = price(models_file, "up-embed-nousage", "input_cost_per_token")
    assert row["credits_used"] == millicredits(per_token * ours) > 0
    metadata = json.loads(row["request_metadata"])
    assert metadata["prompt_tokens"] == ours and metadata["usage_reported"] is False


async def test_an_embeddings_idempotency_key_reused_is_not_billed_twice(inference, member, spend):
    client = sdk(inference, member.key)
    headers = {"Idempotency-Key": "embed-order-7"}
    first = client.embeddings.with_raw_response.create(model="up-embed", input="once", extra_headers=headers)
    with pytest.raises(openai.ConflictError):
        client.embeddings.create(model="up-embed", input="once", extra_headers=headers)
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert balance.used_millicredits == mc(first.headers["X-Cost-Incurred"]) > 0


# ---- audio transcriptions -----------------------------------------------------------------------


async def test_transcriptions_are_billed_per_second_of_audio(inference, member, spend, db, upstream, models_file):
    per_second = price(models_file, "up-transcribe", "input_cost_per_second")
    client = async_sdk(inference, member.key)
    audio = wav(2.5)
    raw = await client.audio.transcriptions.with_raw_response.create(model="up-transcribe",
                                                                     file=("meeting.wav", audio, "audio/wav"))
    transcript = raw.parse()
    assert transcript.text == "Credits are reserved before every call."
    sent = upstream.app.state.bodies[-1]
    assert sent["file_bytes"] == len(audio) and sent["filename"] == "audio.wav"
    row = await billed_row(raw, spend, db, member.user_id, "audio_transcription")
    reported = Decimal(transcript.usage.seconds)  # the provider's figure: 3 whole seconds
    assert row["credits_used"] == millicredits(per_second * reported)
    metadata = json.loads(row["request_metadata"])
    assert metadata["seconds_from"] == "provider_usage" and metadata["audio_seconds"] == "2.5"
    hold = await db.fetchrow("SELECT amount_mc, charged_mc, overrun FROM reservations WHERE reservation_id = $1",
                             row["reservation_id"])
    assert hold["amount_mc"] == millicredits(per_second * 3) and not hold["overrun"]

    text = await client.audio.transcriptions.with_raw_response.create(
        model="up-transcribe", file=("m.wav", audio, "audio/wav"), response_format="text", language="en")
    assert text.parse().strip() == "Credits are reserved before every call."
    row = await billed_row(text, spend, db, member.user_id, "audio_transcription")
    # no usage in a text answer: the file's own duration (2.5 s) is charged
    assert row["credits_used"] == millicredits(per_second * Decimal("2.5"))
    assert json.loads(row["request_metadata"])["seconds_from"] == "file"
    assert upstream.app.state.bodies[-1]["language"] == "en"

    verbose = await client.audio.transcriptions.with_raw_response.create(
        model="up-transcribe", file=("m.wav", audio, "audio/wav"), response_format="verbose_json",
        timestamp_granularities=["word"])
    assert verbose.parse().duration == 2.5
    assert upstream.app.state.bodies[-1]["timestamp_granularities[]"] == "word"
    row = await billed_row(verbose, spend, db, member.user_id, "audio_transcription")
    assert row["credits_used"] == millicredits(per_second * 3)  # usage.seconds comes before verbose_json's duration


async def test_a_transcription_the_provider_reports_no_duration_for_is_charged_every_byte_of_audio(
        inference, member, spend, db, upstream, models_file):
    """response_format text carries no usage: the charge is what the provider could decode (every byte from the
    data chunk on), never the header's declared frames, which the client writes."""
    per_second = price(models_file, "up-transcribe", "input_cost_per_second")
    client = async_sdk(inference, member.key)
    understated = wav(1) + b"\0" * (2 * 8000 * 2)  # the data chunk declares 1 s; 3 s of samples follow its start
    raw = await client.audio.transcriptions.with_raw_response.create(
        model="up-transcribe", file=("a.wav", understated, "audio/wav"), response_format="text")
    row = await billed_row(raw, spend, db, member.user_id, "audio_transcription")
    assert row["credits_used"] == millicredits(per_second * 3)
    metadata = json.loads(row["request_metadata"])
    assert (metadata["seconds_from"], metadata["billed_seconds"], metadata["audio_seconds"]) == ("file", "3", "1")

    # a header written to a pipe (data size 0xFFFFFFFF): held and charged the 2 s the file holds, not 37 hours
    raw = await client.audio.transcriptions.with_raw_response.create(
        model="up-transcribe", file=("a.wav", streamed_wav(2), "audio/wav"), response_format="srt")
    row = await billed_row(raw, spend, db, member.user_id, "audio_transcription")
    assert row["credits_used"] == millicredits(per_second * 2)
    hold = await db.fetchrow("SELECT amount_mc FROM reservations WHERE reservation_id = $1", row["reservation_id"])
    assert hold["amount_mc"] == millicredits(per_second * 2)


async def test_a_provider_reporting_more_seconds_than_the_hold_is_charged_them_and_flagged(
        inference, member, spend, db, models_file):
    """As the authority does for chat: the charge is what the provider reports, past the hold, flagged overrun."""
    per_second = price(models_file, "up-transcribe-long", "input_cost_per_second")
    raw = sdk(inference, member.key).audio.transcriptions.with_raw_response.create(
        model="up-transcribe-long", file=("a.wav", wav(2), "audio/wav"))
    reported = Decimal(raw.parse().usage.seconds)
    assert reported == 20
    row = await billed_row(raw, spend, db, member.user_id, "audio_transcription")
    assert row["credits_used"] == millicredits(per_second * reported)
    hold = await db.fetchrow("SELECT amount_mc, charged_mc, overrun FROM reservations WHERE reservation_id = $1",
                             row["reservation_id"])
    assert hold["amount_mc"] == millicredits(per_second * 2) < hold["charged_mc"] and hold["overrun"]


async def test_the_offline_demo_transcription_is_charged_the_files_duration(inference, member, spend, db,
                                                                             models_file):
    raw = sdk(inference, member.key).audio.transcriptions.with_raw_response.create(
        model="demo-transcribe", file=("memo.wav", wav(1.75, rate=16000), "audio/wav"))
    assert raw.parse().text.startswith("Hello from demo-transcribe")
    row = await billed_row(raw, spend, db, member.user_id, "audio_transcription")
    per_second = price(models_file, "demo-transcribe", "input_cost_per_second")
    assert row["credits_used"] == millicredits(per_second * Decimal("1.75"))


# ---- moderations --------------------------------------------------------------------------------


async def test_moderations_are_not_billed_and_leave_no_attribution_row(inference, member, spend, db, upstream):
    client = sdk(inference, member.key)
    before = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    raw = client.moderations.with_raw_response.create(model="up-moderate", input=["fine words", "hate speech"])
    moderation = raw.parse()
    assert [r.flagged for r in moderation.results] == [False, True]
    assert raw.headers["X-Cost-Incurred"] == "0.000"
    after = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert after.used_millicredits == before.used_millicredits and after.held_millicredits == 0
    assert mc(raw.headers["X-Credits-Remaining"]) == after.available_millicredits
    rows = await db.fetch("SELECT 1 FROM usage_attribution WHERE user_id = $1", member.user_id)
    assert rows == [], "a moderation wrote an attribution row"
    holds = await db.fetch("SELECT status, service_type, charged_mc FROM reservations WHERE user_id = $1",
                           member.user_id)
    assert [(h["status"], h["service_type"], h["charged_mc"]) for h in holds] == [("released", "moderation", None)]


async def test_the_offline_demo_moderation_is_served_free(inference, member, spend, db):
    raw = sdk(inference, member.key).moderations.with_raw_response.create(model="demo-moderation",
                                                                          input=["one", "two"])
    assert [r.flagged for r in raw.parse().results] == [False, False] and raw.headers["X-Cost-Incurred"] == "0.000"
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert (balance.used_millicredits, balance.held_millicredits) == (0, 0)
    assert await db.fetch("SELECT 1 FROM usage_attribution WHERE user_id = $1", member.user_id) == []


async def test_moderations_are_under_the_callers_rate_limits(inference, world, admin, upstream):
    org_id, user_id = world.funded_member(allocation_mc=10_000)
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(org_id=org_id, user_id=user_id, requests_per_minute=1))
    key = admin.CreateApiKey(admin_pb2.CreateApiKeyRequest(user_id=user_id, name="t")).secret
    client = sdk(inference, key)
    before = upstream.calls["up-moderate"]
    first = client.moderations.with_raw_response.create(model="up-moderate", input="hello")
    assert first.headers["x-ratelimit-limit-requests"] == "1"
    with pytest.raises(openai.RateLimitError):
        client.moderations.create(model="up-moderate", input="hello again")
    assert upstream.calls["up-moderate"] == before + 1, "the refused moderation reached the model"


# ---- failures: nothing held, nothing charged ----------------------------------------------------


@pytest.mark.parametrize("call", ["up-embed-fail", "up-embed-cut", "up-transcribe-fail", "up-moderate-fail"])
async def test_a_failed_or_cut_upstream_releases_the_hold_and_charges_nothing(inference, member, spend, db,
                                                                              upstream, call):
    client = sdk(inference, member.key)
    before = upstream.calls[call]
    with pytest.raises(openai.APIStatusError) as raised:
        if call.startswith("up-embed"):
            client.embeddings.create(model=call, input="this call fails")
        elif call.startswith("up-transcribe"):
            client.audio.transcriptions.create(model=call, file=("a.wav", wav(1), "audio/wav"))
        else:
            client.moderations.create(model=call, input="this call fails")
    assert raised.value.status_code == 502, raised.value
    assert upstream.calls[call] > before, "the upstream was called"
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=member.user_id))
    assert (balance.used_millicredits, balance.held_millicredits) == (0, 0)
    assert await db.fetch("SELECT 1 FROM usage_attribution WHERE user_id = $1", member.user_id) == []
    holds = await db.fetch("SELECT status FROM reservations WHERE user_id = $1", member.user_id)
    assert [h["status"] for h in holds] == ["released"]


# ---- refused before anything is held ------------------------------------------------------------


@pytest.mark.parametrize("call, endpoint", [
    (lambda c: c.embeddings.create(model="up-chat", input="x"), "/api/v1/llm/chat/completions"),
    (lambda c: c.moderations.create(model="up-embed", input="x"), "/api/v1/llm/embeddings"),
    (lambda c: c.chat.completions.create(model="up-transcribe", messages=[{"role": "user", "content": "x"}]),
     "/api/v1/llm/audio/transcriptions"),
    (lambda c: c.audio.transcriptions.create(model="up-moderate", file=("a.wav", wav(1), "audio/wav")),
     "/api/v1/llm/moderations"),
], ids=["embeddings-with-chat", "moderations-with-embedding", "chat-with-transcription",
        "transcription-with-moderation"])
def test_a_model_used_through_another_endpoint_is_told_the_right_one(inference, member, call, endpoint):
    with pytest.raises(openai.BadRequestError) as raised:
        call(sdk(inference, member.key))
    assert f"use POST {endpoint}" in raised.value.message


async def test_an_upload_past_the_limit_without_a_length_is_cut_at_the_limit(inference, member, db, upstream):
    """Chunked (no Content-Length): counted as it arrives, refused once past the limit; nothing held or called."""
    from invariants import row_counts
    from media_support import multipart

    body, content_type = multipart({"model": "up-transcribe"},
                                   {"file": ("a.wav", wav(1) + b"\0" * (26 * 1024 * 1024), "audio/wav")})

    def chunks():
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    before, calls = await row_counts(db), sum(upstream.calls.values())
    async with httpx.AsyncClient(timeout=60) as client:
        async def stream():
            for chunk in chunks():
                yield chunk

        response = await client.post(f"{inference.base_url}/audio/transcriptions", content=stream(),
                                     headers={"Authorization": f"Bearer {member.key}", "Content-Type": content_type})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["message"].startswith("Upload larger than"), "the edge did not cut it"
    assert await row_counts(db) == before and sum(upstream.calls.values()) == calls


def test_models_lists_each_entry_with_its_mode(inference, member):
    modes = {m.id: m.model_extra["mode"] for m in sdk(inference, member.key).models.list()}
    assert {name: modes.get(name) for name in ("demo-embed", "up-embed", "up-transcribe", "up-moderate")} == {
        "demo-embed": "embedding", "up-embed": "embedding", "up-transcribe": "audio_transcription",
        "up-moderate": "moderation"}
