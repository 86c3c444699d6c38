"""Millicredit amounts: bounds, and conversion between credits and millicredits.

Money is an integer number of millicredits everywhere inside the system;
credits as `Decimal` exist only at the edges (REST, CLI).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from decimal import ROUND_CEILING, Context, Decimal, Inexact, InvalidOperation, getcontext, localcontext
from fractions import Fraction

MILLICREDITS_PER_CREDIT = 1000
MAX_MILLICREDITS = 10**15
_THOUSANDTH = Decimal("0.001")


def _exact(*operands: Decimal) -> AbstractContextManager[Context]:
    """A decimal context in which sums and products of these finite operands are exact: room for
    every digit of each (and its distance from the point), whatever the default precision; Inexact
    traps besides the usual signals, so a result is never rounded silently."""
    digits = 0
    for operand in operands:
        sign, coefficient, exponent = operand.as_tuple()
        if not isinstance(exponent, int):  # 'n', 'N', 'F': NaN or infinity
            raise ValueError(f"not a finite amount: {operand}")
        digits += len(coefficient) + abs(exponent)
    if digits > 10_000:
        raise ValueError("an amount with more than 10,000 digits is not money")
    context = getcontext().copy()
    context.prec = digits + 8
    context.traps[Inexact] = True
    return localcontext(context)


def is_reservable(amount: int) -> bool:
    """A Reserve, top-up or grant amount: 1 … 10^15."""
    return isinstance(amount, int) and not isinstance(amount, bool) and 1 <= amount <= MAX_MILLICREDITS


def is_committable(amount: int) -> bool:
    """A Commit amount or an allocation: 0 … 10^15."""
    return isinstance(amount, int) and not isinstance(amount, bool) and 0 <= amount <= MAX_MILLICREDITS


def format_credits(millicredits: int) -> str:
    """Millicredits as a credits string with three places: 15 → "0.015"."""
    sign = "-" if millicredits < 0 else ""
    whole, frac = divmod(abs(millicredits), MILLICREDITS_PER_CREDIT)
    return f"{sign}{whole}.{frac:03d}"


def parse_credits(text: str) -> int:
    """A credits string ("12.5") as millicredits; more than three places is an error."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ValueError(f"not a number of credits: {text!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a finite number of credits: {text!r}")
    with _exact(value, Decimal(MILLICREDITS_PER_CREDIT)):
        scaled = value * MILLICREDITS_PER_CREDIT
    if scaled != scaled.to_integral_value():
        raise ValueError(f"credits have at most three decimal places: {text!r}")
    return int(scaled)


def usd_to_millicredits(usd: Decimal, credits_per_usd: Decimal, markup: Decimal = Decimal(0)) -> int:
    """Provider cost in USD as millicredits, rounded up (never undercharge)."""
    if not usd.is_finite() or usd < 0:
        raise ValueError(f"cost must be a finite non-negative amount, got {usd}")
    with _exact(usd, credits_per_usd, markup, Decimal(1), Decimal(MILLICREDITS_PER_CREDIT)):
        # exact: 28-digit default arithmetic could round 1 + markup or a product down (an undercharge)
        millicredits = usd * credits_per_usd * (1 + markup) * MILLICREDITS_PER_CREDIT
    return int(millicredits.to_integral_value(rounding=ROUND_CEILING))


def millicredits_for_payment(amount_minor: int, credits_per_unit: Decimal, minor_units_per_unit: int) -> int:
    """What a payment buys: an amount in the currency's minor unit (cents) at credits_per_unit credits
    per major unit, in millicredits, rounded down (a fraction of a millicredit is not sold). Exact:
    computed as a fraction, whatever the price's digits."""
    if not credits_per_unit.is_finite() or credits_per_unit <= 0 or minor_units_per_unit <= 0:
        raise ValueError("the price must be a positive number of credits per a positive number of minor units")
    return math.floor(Fraction(amount_minor) * Fraction(credits_per_unit) * MILLICREDITS_PER_CREDIT
                      / minor_units_per_unit)
