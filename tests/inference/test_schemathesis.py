"""Property-based fuzzing of the REST API from its own OpenAPI schema
(schemathesis): never a 5xx, never a status the schema does not document."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from .conftest import make_key


def test_the_rest_api_never_answers_5xx_or_undocumented_statuses(inference, world, admin):
    org_id, user_id = world.funded_member(allocation_mc=10_000_000)
    key, _ = make_key(admin, user_id)
    schema = schemathesis.openapi.from_url(f"{inference.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/v1/llm/chat/completions", "/api/v1/llm/images/generations",
                                              "/api/v1/llm/models", "/api/v1/credits/balance", "/api/v1/usage"}
    exercised: dict[str, set[int]] = {}

    def fuzzer(operation):
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            # Half the bodies name a real model, so the billed path is fuzzed, not just the 404.
            if isinstance(case.body, dict) and "model" in case.body and hash(repr(case.body)) % 2 == 0:
                case.body["model"] = "demo-image" if "images" in operation.path else "demo-chat"
            response = case.call_and_validate(
                base_url=inference.url, headers={"Authorization": f"Bearer {key}"},
                checks=[not_a_server_error, status_code_conformance], timeout=30)
            exercised.setdefault(operation.path, set()).add(response.status_code)

        return fuzz

    for operation in operations:
        fuzzer(operation)()
    assert all(exercised.get(op.path) for op in operations), exercised
    print(f"\nschemathesis statuses by path: {exercised}")
