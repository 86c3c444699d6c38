"""The REST service's auth-failure limiter on its own: counts per address, bounded memory (issue 17)."""

from __future__ import annotations

from inference_service.service import AuthFailures


def test_failures_past_the_limit_are_blocked_per_address():
    failures = AuthFailures(limit=3, window=300)
    assert [failures.record("10.0.0.1") for _ in range(3)] == [0, 0, 0]
    assert failures.record("10.0.0.1") >= 1
    assert failures.record("10.0.0.2") == 0


def test_memory_is_bounded_by_the_address_cap_evicting_the_least_recent():
    failures = AuthFailures(limit=2, window=300, max_addresses=4)
    for _ in range(2):
        failures.record("blocked")
    for i in range(3):
        failures.record(f"spray-{i}")
    assert failures.record("blocked") >= 1  # recently failing: kept, and moved to the newest end
    for i in range(3, 1_000):
        failures.record(f"spray-{i}")
        assert len(failures) <= 4
    assert failures.record("blocked") == 0  # evicted by the spray: its count starts again


def test_one_address_keeps_at_most_limit_plus_one_times():
    failures = AuthFailures(limit=5, window=300)
    for _ in range(10_000):
        failures.record("hammer")
    assert failures.times_held() == 6
