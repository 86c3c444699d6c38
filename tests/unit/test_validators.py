"""Validation at both edges, called directly: what a REST client controls
(inference_service/schemas.py, before anything is held) and what a gRPC caller sends
(credit_service/authority.py's require_* functions, and how a bad field reaches the caller:
credit_service/server/rpc.py `status_for`)."""

from __future__ import annotations

import json
import unicodedata
import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from credit_service.errors import InsufficientCredits, InvalidArgument, NotFound
from credit_service.money import MAX_MILLICREDITS
from credit_service.server.rpc import status_for
from credit_service.validators import (
    MAX_LABEL,
    MAX_METADATA_BYTES,
    MAX_WEBHOOK_URL,
    optional_id,
    request_fingerprint,
    require_amount,
    require_id,
    require_label,
    require_metadata,
    require_reservation_id,
    require_webhook_url,
)
from inference_service.schemas import ChatCompletionRequest, ImageGenerationRequest, printable

MESSAGES = [{"role": "user", "content": "hello"}]


def rejected(model: type[BaseModel], body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The locations pydantic names for a body it refuses (fails the test if it accepts it)."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return [error["loc"] for error in caught.value.errors()]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "demo-chat", "messages": MESSAGES, **fields}


# ---- REST: printable text ------------------------------------------------------------------------

BAD_CHARACTERS = ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f", "\ud800",
                  "\udfff"]


@pytest.mark.parametrize("bad", BAD_CHARACTERS)
def test_printable_refuses_control_characters_and_lone_surrogates(bad: str) -> None:
    with pytest.raises(ValueError, match="printable"):
        printable(f"end{bad}user")


@pytest.mark.parametrize("good", ["", "end-user 42", "Zoë Müller", "日本語のユーザー", "🙂 emoji", "\u00a0nbsp",
                                  "a" * 10_000])
def test_printable_takes_any_other_text(good: str) -> None:
    assert printable(good) == good


# Any character, surrogates and C0/C1 controls included (Hypothesis leaves surrogates out by default).
any_char = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr), st.integers(0, 0xA0).map(chr))


@given(st.text(alphabet=any_char, max_size=40))
def test_printable_text_is_exactly_text_without_control_characters_and_valid_as_utf8(value: str) -> None:
    expected = not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)
    try:
        printable(value)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == expected
    if accepted:
        value.encode("utf-8")  # what reaches metadata, logs and headers must encode


# ---- REST: chat and image requests ---------------------------------------------------------------

@pytest.mark.parametrize("field", ["user", "power_level", "task_type"])
@pytest.mark.parametrize("bad", ["a\x00b", "line\nbreak", "\ud83d", "bell\x07"])
def test_strings_that_reach_usage_metadata_must_be_printable(field: str, bad: str) -> None:
    assert rejected(ChatCompletionRequest, chat(**{field: bad})) == [(field,)]


@pytest.mark.parametrize(("field", "limit"), [("user", 256), ("power_level", 64), ("task_type", 64),
                                              ("model", 128)])
def test_client_strings_have_a_length_limit(field: str, limit: int) -> None:
    ChatCompletionRequest.model_validate(chat(**{field: "x" * limit}))
    assert rejected(ChatCompletionRequest, chat(**{field: "x" * (limit + 1)})) == [(field,)]


@pytest.mark.parametrize(("fields", "loc"), [
    ({"n": 0}, ("n",)), ({"n": 17}, ("n",)), ({"n": "2x"}, ("n",)),
    ({"max_tokens": 0}, ("max_tokens",)), ({"max_tokens": 1_000_001}, ("max_tokens",)),
    ({"max_tokens": -5}, ("max_tokens",)), ({"max_completion_tokens": 0}, ("max_completion_tokens",)),
    ({"temperature": 2.5}, ("temperature",)), ({"temperature": float("nan")}, ("temperature",)),
    ({"top_p": 1.5}, ("top_p",)), ({"presence_penalty": -3}, ("presence_penalty",)),
    ({"seed": 2**63}, ("seed",)), ({"model": ""}, ("model",)), ({"messages": []}, ("messages",)),
    ({"messages": [{"role": "user", "content": "x"}] * 2049}, ("messages",)),
    ({"tool_choice": "sometimes"}, ("tool_choice", "literal['none','auto','required']")),
])
def test_numbers_and_bounds_out_of_range_are_refused(fields: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert loc in rejected(ChatCompletionRequest, chat(**fields))


@pytest.mark.parametrize(("message", "loc"), [
    ({"role": "user"}, ("messages", 0)),  # content required
    ({"role": "tool", "content": "42"}, ("messages", 0)),  # tool_call_id required
    ({"role": "wizard", "content": "x"}, ("messages", 0, "role")),
    ({"role": "user", "content": "x", "name": "has space"}, ("messages", 0, "name")),
    ({"role": "user", "content": "x", "name": "n" * 65}, ("messages", 0, "name")),
    ({"role": "tool", "content": "x", "tool_call_id": "call 1"}, ("messages", 0, "tool_call_id")),
    ({"role": "tool", "content": "x", "tool_call_id": "c" * 129}, ("messages", 0, "tool_call_id")),
    ({"role": "assistant", "tool_calls": [{"id": "call_1", "function": {"name": "bad name", "arguments": "{}"}}]},
     ("messages", 0, "tool_calls", 0, "function", "name")),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.invalid/a.png",
                                                                      "detail": "ultra"}}]},
     ("messages", 0, "content", "list[tagged-union[TextPart,ImagePart]]", 0, "image_url", "image_url", "detail")),
    ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]},
     ("messages", 0, "content", "list[tagged-union[TextPart,ImagePart]]", 0, "image_url", "image_url", "url")),
])
def test_messages_are_refused_naming_the_part_at_fault(message: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert loc in rejected(ChatCompletionRequest, chat(messages=[message]))


@pytest.mark.parametrize("part", [{"type": "input_audio", "input_audio": {"data": "…"}}, {"type": "file"},
                                  {"text": "no type"}])
def test_content_parts_this_service_cannot_price_are_refused(part: dict[str, Any]) -> None:
    locs = rejected(ChatCompletionRequest, chat(messages=[{"role": "user", "content": [part]}]))
    assert all(loc[:3] == ("messages", 0, "content") for loc in locs)


def test_tools_must_be_functions_with_valid_names() -> None:
    function = {"name": "lookup", "parameters": {"type": "object"}}
    ChatCompletionRequest.model_validate(chat(tools=[{"type": "function", "function": function}]))
    assert ("tools", 0, "type") in rejected(ChatCompletionRequest, chat(tools=[{"type": "retrieval",
                                                                                "function": function}]))
    assert ("tools", 0, "function", "name") in rejected(
        ChatCompletionRequest, chat(tools=[{"type": "function", "function": {"name": "drop table"}}]))


def test_what_a_well_formed_request_may_omit_or_carry() -> None:
    request = ChatCompletionRequest.model_validate(chat(
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                               {"type": "image_url", "image_url": {"url": "https://x.invalid/a.png",
                                                                                   "detail": "low"}}]},
                  {"role": "assistant", "tool_calls": [{"id": "call_1", "function": {"name": "lookup",
                                                                                     "arguments": "{}"}}]},
                  {"role": "tool", "content": "42", "tool_call_id": "call_1"}],
        max_completion_tokens=300, user="end-user 7", power_level="high", unknown_field=1))
    assert request.requested_max_tokens == 300
    assert ChatCompletionRequest.model_validate(chat(max_tokens=20, max_completion_tokens=300)
                                                ).requested_max_tokens == 20
    assert ChatCompletionRequest.model_validate(chat()).requested_max_tokens is None


@pytest.mark.parametrize(("fields", "loc"), [
    ({"prompt": ""}, ("prompt",)), ({"prompt": "x" * 32_001}, ("prompt",)), ({"n": 0}, ("n",)), ({"n": 11}, ("n",)),
    ({"size": "4096x4096"}, ("size",)), ({"quality": "ultra"}, ("quality",)), ({"style": "noir"}, ("style",)),
    ({"response_format": "gif"}, ("response_format",)), ({"user": "a\x00"}, ("user",)),
])
def test_image_requests_are_refused_naming_the_field(fields: dict[str, Any], loc: tuple[Any, ...]) -> None:
    body = {"model": "demo-image", "prompt": "a lighthouse", **fields}
    assert loc in rejected(ImageGenerationRequest, body)


# ---- gRPC: the authority's validators ------------------------------------------------------------

def field_of(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InvalidArgument) as caught:
        call(*args, **kwargs)
    return caught.value.field


@pytest.mark.parametrize("good", ["u", "user-1", "a.b_c:d@e-f", "0", "x" * 128, "user@example.com"])
def test_ids_take_the_documented_characters(good: str) -> None:
    assert require_id("user_id", good) == good


@pytest.mark.parametrize("bad", ["", "x" * 129, "-user", ".user", "a b", "user\n", "é", "a/b", "a\x00", "ab#"])
def test_ids_refuse_everything_else_naming_the_field(bad: str) -> None:
    assert field_of(require_id, "org_id", bad) == "org_id"


def test_an_optional_id_may_be_empty_but_not_malformed() -> None:
    assert optional_id("org_id", "") == ""
    assert optional_id("org_id", "acme") == "acme"
    assert field_of(optional_id, "org_id", "a b") == "org_id"


def test_labels_have_a_limit_and_no_control_characters() -> None:
    assert require_label("display_name", "Zoë " * 64) == "Zoë " * 64
    assert field_of(require_label, "display_name", "x" * (MAX_LABEL + 1)) == "display_name"
    assert require_label("service_type", "x" * 128, 128) == "x" * 128
    assert field_of(require_label, "service_type", "x" * 129, 128) == "service_type"
    for bad in ["\x00", "\t", "\n", "\x1f", "\x7f"]:
        assert field_of(require_label, "reason", f"a{bad}b") == "reason"


@pytest.mark.parametrize(("value", "allow_zero", "ok"), [
    (1, False, True), (MAX_MILLICREDITS, False, True), (0, False, False), (0, True, True), (-1, True, False),
    (MAX_MILLICREDITS + 1, True, False), (2**63 - 1, False, False), (1.0, False, False),
])
def test_amounts_are_integers_in_the_documented_range(value: Any, allow_zero: bool, ok: bool) -> None:
    if ok:
        assert require_amount("amount_millicredits", value, allow_zero=allow_zero) == value
    else:
        assert field_of(require_amount, "amount_millicredits", value, allow_zero=allow_zero) == "amount_millicredits"


def test_a_reservation_id_is_a_uuid_as_reserve_returns_it() -> None:
    rid = uuid.uuid4()
    assert require_reservation_id(str(rid)) == rid
    assert require_reservation_id(str(rid).upper()) == rid
    for bad in ["", "not-a-uuid", rid.hex, "{" + str(rid) + "}", f"urn:uuid:{rid}", str(rid) + " "]:
        assert field_of(require_reservation_id, bad) == "reservation_id"


def test_metadata_numbers_are_finite_and_strings_have_no_nul_at_any_depth() -> None:
    assert require_metadata({"tokens": 12, "cost": 0.5, "tags": ["a", {"b": None}]})
    for bad in [{"x": float("nan")}, {"x": [1, float("inf")]}, {"x": {"y": [{"z": float("-inf")}]}},
                {"x": "a\x00"}, {"a\x00": 1}, {"x": [{"y\x00": 1}]}]:
        assert field_of(require_metadata, bad) == "metadata"


def test_metadata_is_limited_in_utf8_bytes_not_characters() -> None:
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")))
    assert require_metadata({"k": "x" * (MAX_METADATA_BYTES - overhead)})
    assert field_of(require_metadata, {"k": "x" * (MAX_METADATA_BYTES - overhead + 1)}) == "metadata"
    two_byte = (MAX_METADATA_BYTES - overhead) // 2 + 1  # fewer characters than the limit, more bytes
    assert field_of(require_metadata, {"k": "é" * two_byte}) == "metadata"


def test_a_request_fingerprint_changes_with_any_argument_and_only_then() -> None:
    base = request_fingerprint("user-1", "org-1", 500, {"a": 1, "b": [1, 2]})
    assert len(base) == 32
    assert request_fingerprint("user-1", "org-1", 500, {"b": [1, 2], "a": 1}) == base  # key order is not an argument
    for other in [("user-2", "org-1", 500, {"a": 1, "b": [1, 2]}), ("user-1", "", 500, {"a": 1, "b": [1, 2]}),
                  ("user-1", "org-1", 501, {"a": 1, "b": [1, 2]}), ("user-1", "org-1", 500, {"a": 1, "b": [2, 1]}),
                  ("user-1", "org-1", "500", {"a": 1, "b": [1, 2]})]:
        assert request_fingerprint(*other) != base


@pytest.mark.parametrize("good", ["https://hooks.example.com/credit", "http://10.0.0.5:8080/alerts?org=acme",
                                  "https://[::1]:9443/x"])
def test_a_webhook_url_is_an_absolute_http_url(good: str) -> None:
    assert require_webhook_url(good) == good


@pytest.mark.parametrize("bad", [
    "ftp://hooks.example.com/x", "hooks.example.com/x", "https://", "/relative/path", "https://user:pw@example.com/",
    "https://token@example.com/", "https://example.com:99999/", "https://exa mple.com/", "https://example.com/\n",
    "https://example.com/\x7f", "https://[::1/x", "https://example.com/" + "a" * MAX_WEBHOOK_URL, "javascript:alert(1)",
])
def test_a_webhook_url_refuses_everything_else(bad: str) -> None:
    assert field_of(require_webhook_url, bad) == "url"


# ---- gRPC: how a refusal reaches the caller ------------------------------------------------------

def details_of(status: grpc.Status) -> status_pb2.Status:
    (key, value), = [item for item in status.trailing_metadata if item[0] == "grpc-status-details-bin"]
    return status_pb2.Status.FromString(value)


def test_a_bad_argument_is_invalid_argument_naming_the_field() -> None:
    status = status_for(InvalidArgument("amount_millicredits", "must be an integer from 1 to 10^15"))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details == "amount_millicredits: must be an integer from 1 to 10^15"
    bad_request = error_details_pb2.BadRequest()
    assert details_of(status).details[0].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("amount_millicredits", "must be an integer from 1 to 10^15")]


def test_insufficient_credits_carries_the_figures_and_other_errors_their_status() -> None:
    status = status_for(InsufficientCredits(available=40, requested=50, funding="individual"))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_details_pb2.ErrorInfo()
    assert details_of(status).details[0].Unpack(info)
    assert info.reason == "INSUFFICIENT_CREDITS"
    assert dict(info.metadata) == {"available": "40", "requested": "50", "funding": "individual"}
    assert status_for(NotFound("user 'x' not found")).code == grpc.StatusCode.NOT_FOUND
