"""Millicredits and credits (credit_service/money.py) and the REST edge that reads credits
(inference_service/console.py `millicredits`).

The README's money rules: money is an integer number of millicredits (1 credit = 1,000);
Reserve, top-up and grant take 1 … 10^15, Commit and allocations 0 … 10^15; credits are a
`Decimal` only at the edges, with at most three places; provider costs are rounded up.
"""

from __future__ import annotations

import argparse
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from credit_service import cli
from credit_service.money import (
    MAX_MILLICREDITS,
    MILLICREDITS_PER_CREDIT,
    format_credits,
    is_committable,
    is_reservable,
    millicredits_for_payment,
    parse_credits,
    usd_to_millicredits,
)
from inference_service.console import millicredits
from inference_service.errors import ApiError


def test_the_units() -> None:
    assert MILLICREDITS_PER_CREDIT == 1000
    assert MAX_MILLICREDITS == 10**15


# ---- bounds -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("amount", "reservable", "committable"), [
    (-1, False, False),
    (0, False, True),
    (1, True, True),
    (MAX_MILLICREDITS, True, True),
    (MAX_MILLICREDITS + 1, False, False),
    (2**63, False, False),
])
def test_bounds_at_their_edges(amount: int, reservable: bool, committable: bool) -> None:
    assert is_reservable(amount) is reservable
    assert is_committable(amount) is committable


@pytest.mark.parametrize("amount", [1.0, 5.5, Decimal(1), Decimal("1.5"), "1", None, float("nan"), float("inf"),
                                    True, False])
def test_bounds_take_integers_only(amount: object) -> None:
    assert not is_reservable(amount)  # type: ignore[arg-type]
    assert not is_committable(amount)  # type: ignore[arg-type]


@given(st.integers())
def test_bounds_are_exactly_the_documented_ranges(amount: int) -> None:
    assert is_reservable(amount) == (1 <= amount <= 10**15)
    assert is_committable(amount) == (0 <= amount <= 10**15)


# ---- formatting and parsing ---------------------------------------------------------------------

@pytest.mark.parametrize(("mc", "text"), [
    (0, "0.000"), (1, "0.001"), (15, "0.015"), (999, "0.999"), (1000, "1.000"), (12_500, "12.500"),
    (-1, "-0.001"), (-1500, "-1.500"), (MAX_MILLICREDITS, "1000000000000.000"),
])
def test_format_credits_has_three_places(mc: int, text: str) -> None:
    assert format_credits(mc) == text


@pytest.mark.parametrize(("text", "mc"), [
    ("12.5", 12_500), ("0.001", 1), ("1", 1000), (" 7 ", 7000), ("1.500000", 1500), ("1e3", 1_000_000),
    ("0", 0), ("-2.25", -2250), ("1000000000000", MAX_MILLICREDITS),
])
def test_parse_credits(text: str, mc: int) -> None:
    parsed = parse_credits(text)
    assert parsed == mc
    assert type(parsed) is int


@pytest.mark.parametrize("text", ["0.0001", "1.2345", "0.0005", "1e-4", "NaN", "-NaN", "sNaN", "Infinity", "-Inf",
                                  "inf", "", " ", "abc", "1,5", "1.2.3", "0x10"])
def test_parse_credits_rejects_what_is_not_a_whole_number_of_millicredits(text: str) -> None:
    with pytest.raises(ValueError):
        parse_credits(text)


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_format_then_parse_is_the_identity(mc: int) -> None:
    assert parse_credits(format_credits(mc)) == mc


@given(st.decimals(places=3, allow_nan=False, allow_infinity=False, min_value=-(10**16), max_value=10**16))
def test_parse_then_format_keeps_three_places(credits: Decimal) -> None:
    mc = parse_credits(str(credits))
    assert Fraction(mc) == Fraction(credits) * 1000
    assert Decimal(format_credits(mc)) == credits


@given(st.integers(min_value=-(10**18), max_value=10**18), st.integers(min_value=4, max_value=12),
       st.integers(min_value=1, max_value=9))
def test_parse_rejects_any_fourth_place(whole_mc: int, places: int, digit: int) -> None:
    """A nonzero digit anywhere past the third place is an error, never rounded away."""
    text = format_credits(whole_mc) + "0" * (places - 4) + str(digit)
    with pytest.raises(ValueError, match="three decimal places"):
        parse_credits(text)


def test_the_cli_reads_credits_and_reports_bad_ones_as_argument_errors() -> None:
    assert cli.credits("2.5") == 2500
    with pytest.raises(argparse.ArgumentTypeError):
        cli.credits("2.5001")


# ---- provider cost in USD -> millicredits, rounded up -------------------------------------------

@pytest.mark.parametrize(("usd", "rate", "markup", "mc"), [
    ("0", "100", "0", 0),
    ("0.00001", "100", "0", 1),  # exactly 1 mc
    ("0.000011", "100", "0", 2),  # 1.1 mc -> 2
    ("0.000000000001", "100", "0", 1),  # a picodollar still costs a millicredit
    ("0.01", "100", "0.2", 1200),
    ("0.01", "100", "-0.5", 500),
    ("1.23456", "100", "0", 123_456),
    ("0.0123451", "100", "0", 1235),
])
def test_usd_to_millicredits_rounds_up(usd: str, rate: str, markup: str, mc: int) -> None:
    charged = usd_to_millicredits(Decimal(usd), Decimal(rate), Decimal(markup))
    assert charged == mc
    assert type(charged) is int


@pytest.mark.parametrize("usd", ["NaN", "sNaN", "Infinity", "-Infinity", "-0.000001", "-1"])
def test_usd_to_millicredits_rejects_a_cost_that_is_not_finite_and_non_negative(usd: str) -> None:
    with pytest.raises(ValueError):
        usd_to_millicredits(Decimal(usd), Decimal(100))


@given(st.integers(min_value=0, max_value=10**16), st.integers(min_value=1, max_value=10**6))
def test_usd_to_millicredits_never_undercharges(picodollars: int, rate_cents: int) -> None:
    """Any cost to the picodollar at any rate to the cent: the exact value, rounded up."""
    usd = Decimal(picodollars).scaleb(-12)
    rate = Decimal(rate_cents).scaleb(-2)
    exact = Fraction(picodollars, 10**12) * Fraction(rate_cents, 100) * 1000
    charged = usd_to_millicredits(usd, rate)
    assert exact <= charged < exact + 1


@given(st.integers(min_value=0, max_value=10**16), st.integers(min_value=1, max_value=10**9),
       st.integers(min_value=-40, max_value=0), st.integers(min_value=0, max_value=10**6))
def test_usd_to_millicredits_never_undercharges_with_any_markup_precision(
        picodollars: int, rate_units: int, markup_exponent: int, markup_units: int) -> None:
    """Rates and markups with more digits than Decimal's default 28: still exact, then rounded up
    (a 28-digit 1 + 1e-30 would be 1, an undercharge)."""
    usd = Decimal(picodollars).scaleb(-12)
    rate = Decimal(rate_units).scaleb(-6)
    markup = Decimal(markup_units).scaleb(markup_exponent)
    exact = (Fraction(picodollars, 10**12) * Fraction(rate_units, 10**6)
             * (1 + Fraction(markup_units) * Fraction(10) ** markup_exponent) * 1000)
    charged = usd_to_millicredits(usd, rate, markup)
    assert exact <= charged < exact + 1


def test_a_markup_beyond_28_digits_is_not_rounded_away() -> None:
    assert usd_to_millicredits(Decimal("0.001"), Decimal(1), Decimal("1e-30")) == 2  # 1.000…001 mc


# ---- the REST edge: credits a client sends (console top-ups, allocations, thresholds) -----------

@pytest.mark.parametrize(("value", "mc"), [
    ("12.5", 12_500), (12.5, 12_500), (7, 7000), ("0.001", 1), (" 3 ", 3000), (1e3, 1_000_000),
    ("1000000000000", MAX_MILLICREDITS), (10**12, MAX_MILLICREDITS),
])
def test_the_edge_accepts_credits(value: object, mc: int) -> None:
    assert millicredits("credits", value, allow_zero=False) == mc


@pytest.mark.parametrize("value", [
    "-1", -1, -0.5, "1.0001", 0.1 + 0.2, "NaN", float("nan"), float("inf"), float("-inf"), "Infinity", "1e3",
    True, False, None, [1], {"credits": 1}, "", " ", "0x10", "1,5", "1000000000000.001", 10**12 + 1,
    "99999999999999", 1e20,
])
def test_the_edge_rejects_what_is_not_an_amount_in_range(value: object) -> None:
    with pytest.raises(ApiError) as caught:
        millicredits("credits", value, allow_zero=True)
    assert caught.value.status == 400
    assert caught.value.code == "invalid_amount"
    assert caught.value.message.startswith("credits ")


def test_zero_credits_only_where_zero_is_allowed() -> None:
    assert millicredits("allocation", "0", allow_zero=True) == 0
    assert millicredits("allocation", 0, allow_zero=True) == 0
    with pytest.raises(ApiError, match="from 0.001 to"):
        millicredits("credits", "0", allow_zero=False)
    with pytest.raises(ApiError, match="from 0.001 to"):
        millicredits("credits", "0.000", allow_zero=False)


@given(st.decimals(places=3, min_value=Decimal("0.001"), max_value=Decimal(10**12)))
def test_the_edge_takes_every_amount_in_range_exactly(credits: Decimal) -> None:
    text = f"{credits:f}"
    mc = millicredits("credits", text, allow_zero=False)
    assert type(mc) is int
    assert 1 <= mc <= MAX_MILLICREDITS
    assert Fraction(mc) == Fraction(credits) * 1000


# ---- a payment -> the millicredits it buys, rounded down ---------------------------------------

@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=1, max_value=10**9),
       st.integers(min_value=0, max_value=12), st.sampled_from([1, 3, 100, 1000]))
def test_a_payment_buys_its_exact_share_rounded_down(amount_minor: int, price_digits: int, places: int,
                                                     minor_per_unit: int) -> None:
    credits_per_unit = Decimal(price_digits).scaleb(-places)
    bought = millicredits_for_payment(amount_minor, credits_per_unit, minor_per_unit)
    # bought <= amount / minor_per_unit * price * 1000 < bought + 1, in integers only
    exact_numerator = amount_minor * price_digits * 1000
    denominator = minor_per_unit * 10**places
    assert bought * denominator <= exact_numerator < (bought + 1) * denominator


@pytest.mark.parametrize(("price", "minor"), [("0", 100), ("-1", 100), ("NaN", 100), ("1", 0)])
def test_a_payment_price_must_be_positive(price: str, minor: int) -> None:
    with pytest.raises(ValueError):
        millicredits_for_payment(100, Decimal(price), minor)
