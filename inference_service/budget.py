"""A request's own budget controls, opt-in per request (README, "Rate limits"):

* `X-Max-Cost: <credits>`: the most this one call may cost. The service holds the smaller of that and the
  worst case, capping `max_tokens` (the cap is what the provider is sent) so that the worst case fits; if
  not even one output token per choice fits, 402 `max_cost_too_low` and nothing is held.
* `X-Fit-To-Budget: true`: when the worst case does not fit the credits available, cap `max_tokens` to
  what can be paid instead of answering 402 (the authority's refusal says what is available).

Either way the response says `X-Max-Tokens-Capped: <n>` when `max_tokens` was lowered. Both are read and
checked before anything is held (400 naming the header).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from credit_service.money import MAX_MILLICREDITS, parse_credits

from . import errors

CAPPED_HEADER = "X-Max-Tokens-Capped"


@dataclass(frozen=True)
class Budget:
    max_cost_mc: int | None = None  # X-Max-Cost, in millicredits
    fit: bool = False  # X-Fit-To-Budget


NO_BUDGET = Budget()


def max_cost(text: str) -> int:
    try:
        value = parse_credits(text)
    except (ValueError, ArithmeticError):
        value = 0
    if not 1 <= value <= MAX_MILLICREDITS:
        raise errors.bad_request(f"X-Max-Cost must be a positive amount of credits with at most three decimal "
                                 f"places (e.g. \"0.25\"), at most {MAX_MILLICREDITS // 1000:,}",
                                 "invalid_max_cost")
    return value


def budget_of(headers: Mapping[str, str]) -> Budget:
    """The request's X-Max-Cost and X-Fit-To-Budget (400 for a bad value)."""
    cost = headers.get("x-max-cost")
    fit = headers.get("x-fit-to-budget")
    if fit is not None and fit.strip().lower() not in ("true", "false"):
        raise errors.bad_request("X-Fit-To-Budget must be \"true\" or \"false\"", "invalid_fit_to_budget")
    if cost is None and fit is None:
        return NO_BUDGET
    return Budget(None if cost is None else max_cost(cost), fit is not None and fit.strip().lower() == "true")
