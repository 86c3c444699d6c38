"""creditctl rate-limit / rate-limits: the rate limits of an organization, a member, an API key or an
individual user, over CreditAdmin.SetRateLimit and ListRateLimits (README, "Rate limits").

The values go to the authority as typed: it checks them (bounds, credit ceilings only on members) and
answers INVALID_ARGUMENT naming the field, with nothing changed.
"""

from __future__ import annotations

import argparse
from typing import Any

from credit.v1 import admin_pb2, admin_pb2_grpc

from .money import format_credits

# creditctl's option → SetRateLimitRequest's field.
LIMIT_OPTIONS = {"rpm": "requests_per_minute", "tpm": "tokens_per_minute", "max_parallel": "max_parallel",
                 "credits_per_day": "credits_per_day_millicredits",
                 "credits_per_month": "credits_per_month_millicredits"}
COLUMNS = ["scope", "who", "rpm", "requests left", "tpm", "tokens left", "max parallel", "open holds",
           "credits/day", "used today", "credits/month", "used this month", "updated"]


def option_hint(details: str) -> str:
    """" (--rpm)" after an authority's message about a limit field, so the message names the option too."""
    field = details.split(":", 1)[0]
    option = next((o for o, f in LIMIT_OPTIONS.items() if f == field), None)
    return f" (--{option.replace('_', '-')})" if option else ""


class ScopeError(Exception):
    """A command line that names no scope, or two."""


def scope_fields(a: argparse.Namespace) -> dict[str, str]:
    """org_id / user_id / key_id of the scope the command line names."""
    key = getattr(a, "key", None)
    if a.individual and (a.org_id or a.user or key):
        raise ScopeError("--individual USER names an individual user's limits: give it without ORG, --user or --key")
    if key and a.user:
        raise ScopeError("--key and --user name different scopes: give one")
    if not (a.individual or a.org_id or key):
        raise ScopeError("give ORG (the organization, or with --user a member, or with --key an API key), "
                         "--key KEY_ID or --individual USER")
    return {"org_id": a.org_id or "", "user_id": a.individual or a.user or "", "key_id": key or ""}


def who(r: admin_pb2.RateLimit) -> str:
    if r.scope == "key":
        return f"{r.key_id} ({r.user_id})" if r.user_id else r.key_id
    return r.org_id if r.scope == "org" else r.user_id


def is_set(message: Any, name: str) -> bool:
    """Whether an optional field of a message is set (named by a variable, which the stubs' types refuse)."""
    return bool(message.HasField(name))


def limit_cells(r: admin_pb2.RateLimit) -> list[str]:
    def limit(name: str, credits: bool = False) -> str:
        if not is_set(r, name):
            return "-"
        value = getattr(r, name)
        return format_credits(value) if credits else str(value)

    def left(name: str, value: int, credits: bool = False) -> str:
        return "-" if not is_set(r, name) else format_credits(value) if credits else str(value)

    return [r.scope, who(r),
            limit("requests_per_minute"), left("requests_per_minute", r.requests_remaining),
            limit("tokens_per_minute"), left("tokens_per_minute", r.tokens_remaining),
            limit("max_parallel"), str(r.open_holds),
            limit("credits_per_day_millicredits", True),
            left("credits_per_day_millicredits", r.credits_today_millicredits, True),
            limit("credits_per_month_millicredits", True),
            left("credits_per_month_millicredits", r.credits_this_month_millicredits, True),
            r.updated_at.ToDatetime().isoformat(timespec="seconds") + (f" by {r.updated_by}" if r.updated_by else "")]


class RateLimitCommands:
    """creditctl's rate-limit commands (mixed into cli.Commands, which supplies the stub and the token)."""

    admin: admin_pb2_grpc.CreditAdminStub
    metadata: tuple

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        raise NotImplementedError  # cli.Commands prints tables

    def show_limits(self, limits: Any) -> None:
        self.table(COLUMNS, [limit_cells(r) for r in limits])

    def cmd_rate_limit(self, a: argparse.Namespace) -> None:
        scope = scope_fields(a)
        request = admin_pb2.SetRateLimitRequest(org_id=scope["org_id"], user_id=scope["user_id"],
                                                key_id=scope["key_id"], clear=a.clear)
        for option, field in LIMIT_OPTIONS.items():
            value = getattr(a, option)
            if value is not None:
                setattr(request, field, value)
        limit = self.admin.SetRateLimit(request, metadata=self.metadata, timeout=30)
        print(("cleared the limits of " if a.clear else "set the limits of ") + f"{limit.scope} {who(limit)}")
        self.show_limits([limit])

    def cmd_rate_limits(self, a: argparse.Namespace) -> None:
        fields = scope_fields(a)
        answer = self.admin.ListRateLimits(admin_pb2.ListRateLimitsRequest(
            org_id=fields["org_id"], user_id=fields["user_id"]), metadata=self.metadata, timeout=30)
        self.show_limits(answer.limits)


def add_rate_limit_commands(add: Any, arg: Any, credits: Any) -> None:
    """The two commands' arguments, added with cli.build_parser's helpers."""
    scope = (arg("org_id", nargs="?", metavar="ORG"),
             arg("--user", help="a member of ORG"),
             arg("--individual", metavar="USER", help="an individual user (instead of ORG)"))
    add("rate-limit", "set (or --clear) the rate limits of an organization, a member (--user), an API key (--key) "
                      "or an individual user (--individual); limits not given stay as they are",
        *scope, arg("--key", metavar="KEY_ID", help="an API key (ORG optional: then checked against the key)"),
        arg("--rpm", type=int, help="requests per minute, 1-1,000,000"),
        arg("--tpm", type=int, help="tokens per minute, 1-1,000,000,000"),
        arg("--max-parallel", type=int, help="requests in flight (open holds) at once, 1-100,000"),
        arg("--credits-per-day", type=credits, metavar="CREDITS", help="credits per UTC day (members only)"),
        arg("--credits-per-month", type=credits, metavar="CREDITS", help="credits per UTC month (members only)"),
        arg("--clear", action="store_true", help="remove every limit of the scope"))
    add("rate-limits", "the rate limits of an organization (its own, its members' and keys'; with --user only the "
                       "org's and that member's) or of an individual user, with what is left now", *scope)
