"""Fixtures for the inference service: the REST service as a real process and a funded member with a key."""

from __future__ import annotations

import pytest
from rest_support import (  # noqa: F401 - re-exported for the tests of this folder
    CHAT_IN,
    CHAT_OUT,
    IMAGE_PRICE,
    Account,
    InferenceProcess,
    async_sdk,
    make_key,
    sdk,
)


@pytest.fixture(scope="session")
def inference(authority, tokens, models_file) -> InferenceProcess:
    process = InferenceProcess(authority, tokens.spend, models_file).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def short_hold_inference(authority, tokens, models_file) -> InferenceProcess:
    """A REST service whose holds last 3 s (one per test module that uses it): streams that outlive them."""
    process = InferenceProcess(authority, tokens.spend, models_file,
                               extra_env={"INFERENCE_RESERVE_TTL_SECONDS": "3"}).start()
    yield process
    process.stop()


@pytest.fixture
def member(world, admin) -> Account:
    """A member with a 100-credit allocation and an unbound user key."""
    org_id, user_id = world.funded_member(allocation_mc=100_000, pool_mc=200_000)
    key, key_id = make_key(admin, user_id)
    return Account(user_id, org_id, key, key_id)
