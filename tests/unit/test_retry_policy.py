"""credit_client.retry.RetryPolicy on its own: the waits, the number of attempts, and which errors are
retried, with a tiny async callable raising real grpc.aio.AioRpcError instances (no server, no sleeping)."""

from __future__ import annotations

import grpc
import pytest

from credit_client import RETRYABLE, RetryPolicy
from credit_client.errors import RETRYABLE as ERRORS_RETRYABLE
from inference_service.authority_client import RETRY as INFERENCE_RETRY


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


class Script:
    """An RPC method that fails with the given codes in turn, then answers "ok"; records every call."""

    def __init__(self, *codes: grpc.StatusCode):
        self.codes = list(codes)
        self.calls: list[tuple[object, object, object]] = []

    async def __call__(self, request, *, metadata=None, timeout=None):
        self.calls.append((request, metadata, timeout))
        if self.codes:
            raise rpc_error(self.codes.pop(0))
        return "ok"


class Sleeps(list):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_retryable_is_unavailable_and_deadline_exceeded_with_one_definition():
    assert RETRYABLE == {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert ERRORS_RETRYABLE is RETRYABLE


def test_backoffs_grow_by_the_multiplier_and_are_bounded_by_max():
    assert RetryPolicy(attempts=6, initial_backoff=0.1, max_backoff=1.0).backoffs() == pytest.approx(
        (0.1, 0.2, 0.4, 0.8, 1.0))
    assert RetryPolicy(attempts=8, initial_backoff=0.5, max_backoff=2.0, multiplier=3).backoffs() == pytest.approx(
        (0.5, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0))
    assert RetryPolicy(attempts=1).backoffs() == ()


def test_the_client_default_is_five_attempts_jittered_from_a_tenth_to_two_seconds():
    policy = RetryPolicy()
    assert (policy.attempts, policy.initial_backoff, policy.max_backoff, policy.jitter) == (5, 0.1, 2.0, True)
    assert policy.backoffs() == pytest.approx((0.1, 0.2, 0.4, 0.8))
    for _ in range(200):
        delays = policy.delays()
        assert len(delays) == 4
        assert all(0 <= d <= b for d, b in zip(delays, policy.backoffs(), strict=True))


def test_the_inference_service_waits_a_tenth_three_tenths_and_nine_tenths_without_jitter():
    assert INFERENCE_RETRY.attempts == 4 and not INFERENCE_RETRY.jitter
    assert INFERENCE_RETRY.delays() == pytest.approx((0.1, 0.3, 0.9))
    assert INFERENCE_RETRY.delays() == INFERENCE_RETRY.delays()


@pytest.mark.parametrize("attempts", [0, -1])
def test_at_least_one_attempt(attempts):
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        RetryPolicy(attempts=attempts)


async def test_an_answer_at_once_is_attempt_zero_and_passes_metadata_and_timeout():
    method, sleeps = Script(), Sleeps()
    md = (("authorization", "Bearer t"),)
    assert await RetryPolicy().call(method, "req", metadata=md, timeout=1.5, sleep=sleeps) == ("ok", 0)
    assert method.calls == [("req", md, 1.5)] and sleeps == []


async def test_retryable_codes_are_retried_with_the_same_request_after_each_wait():
    policy = RetryPolicy(attempts=4, initial_backoff=0.01, max_backoff=0.03, multiplier=3, jitter=False)
    method, sleeps = Script(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.UNAVAILABLE), Sleeps()
    assert await policy.call(method, "req", sleep=sleeps) == ("ok", 3)
    assert [call[0] for call in method.calls] == ["req"] * 4
    assert sleeps == pytest.approx([0.01, 0.03, 0.03])


async def test_jittered_waits_stay_within_their_backoff():
    policy = RetryPolicy(attempts=5, initial_backoff=0.01, max_backoff=0.02)
    method, sleeps = Script(*[grpc.StatusCode.UNAVAILABLE] * 4), Sleeps()
    assert await policy.call(method, "req", sleep=sleeps) == ("ok", 4)
    assert len(sleeps) == 4
    assert all(0 <= s <= b for s, b in zip(sleeps, policy.backoffs(), strict=True))


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c not in RETRYABLE and c != grpc.StatusCode.OK])
async def test_a_code_that_is_not_retryable_is_raised_at_once(code):
    method, sleeps = Script(code), Sleeps()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await RetryPolicy().call(method, "req", sleep=sleeps)
    assert raised.value.code() == code
    assert len(method.calls) == 1 and sleeps == []


@pytest.mark.parametrize("attempts", [1, 2, 4])
async def test_a_retryable_error_on_the_last_attempt_is_raised(attempts):
    codes = [grpc.StatusCode.UNAVAILABLE] * (attempts - 1) + [grpc.StatusCode.DEADLINE_EXCEEDED]
    method, sleeps = Script(*codes, grpc.StatusCode.UNAVAILABLE), Sleeps()  # one more failure never reached
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await RetryPolicy(attempts=attempts, initial_backoff=0, jitter=False).call(method, "req", sleep=sleeps)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(method.calls) == attempts and len(sleeps) == attempts - 1


async def test_a_later_non_retryable_error_ends_the_retries():
    method, sleeps = Script(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND), Sleeps()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await RetryPolicy(initial_backoff=0).call(method, "req", sleep=sleeps)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(method.calls) == 2 and len(sleeps) == 1


async def test_the_default_sleep_is_asyncio_sleep_and_zero_waits_are_fast():
    method = Script(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    assert await RetryPolicy(attempts=3, initial_backoff=0, max_backoff=0).call(method, "req") == ("ok", 2)
