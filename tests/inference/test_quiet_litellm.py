"""LiteLLM's after-call success logging is skipped while no callback listens,
and runs as shipped (callbacks get their events) once one is registered."""

from __future__ import annotations

import asyncio

import litellm
from litellm.integrations.custom_logger import CustomLogger

from inference_service import quiet_litellm

PARAMS = {"model": "openai/gpt-4o-mini", "api_key": "sk-test", "mock_response": "hello",
          "messages": [{"role": "user", "content": "hi"}]}


class Recorder(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.successes: list[float] = []

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self.successes.append(kwargs.get("response_cost") or 0.0)


async def _settle() -> None:
    for _ in range(50):  # LiteLLM hands the handler to a background worker: let it run
        await asyncio.sleep(0.01)


async def test_success_logging_runs_only_while_a_callback_listens(monkeypatch):
    quiet_litellm.skip_unobserved_success_logging()
    quiet_litellm.skip_unobserved_success_logging()  # idempotent: wrapped once
    shipped_calls = []
    shipped = quiet_litellm._shipped
    assert shipped is not quiet_litellm._async_success_handler

    async def counting(self, *args, **kwargs):
        shipped_calls.append(1)
        await shipped(self, *args, **kwargs)

    monkeypatch.setattr(quiet_litellm, "_shipped", counting)
    monkeypatch.setattr(litellm, "callbacks", [])

    response = await litellm.acompletion(**PARAMS)
    await _settle()
    assert response.choices[0].message.content == "hello"
    assert shipped_calls == [], "nobody listens: LiteLLM's success handler is skipped"

    recorder = Recorder()
    monkeypatch.setattr(litellm, "callbacks", [recorder])
    await litellm.acompletion(**PARAMS)
    await _settle()
    assert shipped_calls == [1], "a registered callback brings the shipped handler back"
    assert len(recorder.successes) == 1, "and the callback receives its success event"
