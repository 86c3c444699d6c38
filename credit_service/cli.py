"""creditctl: the admin command line over CreditAdmin (and GetBalance).

Amounts are typed and shown in credits ("12.5" = 12,500 millicredits).
Connects to CREDIT_AUTHORITY_ADDR with CREDIT_ADMIN_TOKEN; when those are
unset it falls back to the values `make run` wrote to .data/demo.env.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import date, datetime, time, timedelta, timezone

import grpc
from google.protobuf import timestamp_pb2

from credit.v1 import admin_pb2, admin_pb2_grpc, authority_pb2, authority_pb2_grpc, types_pb2

from .cli_audit import AuditCommands, add_audit_commands, operator_claim
from .cli_keys import KeyCommands, add_key_commands, key_hint, moment
from .cli_limits import RateLimitCommands, ScopeError, add_rate_limit_commands, option_hint
from .cli_platforms import PlatformCommands, add_platform_commands
from .demo import read_env_file
from .money import format_credits, parse_credits
from .settings import LOCAL_AUTHORITY_ADDR, AdminCliSettings
from .statement_csv import statement_csv

ROLES = {"owner": admin_pb2.MEMBER_ROLE_OWNER, "admin": admin_pb2.MEMBER_ROLE_ADMIN,
         "member": admin_pb2.MEMBER_ROLE_MEMBER}
ROLE_NAMES = {v: k for k, v in ROLES.items()}
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
GROUPS = {"user": admin_pb2.USAGE_GROUP_BY_USER, "model": admin_pb2.USAGE_GROUP_BY_MODEL,
          "service_type": admin_pb2.USAGE_GROUP_BY_SERVICE_TYPE, "day": admin_pb2.USAGE_GROUP_BY_DAY}


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    for line in [headers, ["-" * w for w in widths], *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def credits(text: str) -> int:
    try:
        return parse_credits(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def day(text: str) -> date:
    try:
        if DATE.fullmatch(text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"not a date written YYYY-MM-DD: {text!r}")


def statement_period(first: date | None, last: date | None, now: datetime) -> tuple[datetime, datetime | None]:
    """[start, end) in UTC of the days asked for, `last` included; by default this month so far. The end is
    None (now) when the last day has not ended yet."""
    last_day = last or now.date()
    start = datetime.combine(first or last_day.replace(day=1), time(), timezone.utc)
    end = datetime.combine(last_day + timedelta(days=1), time(), timezone.utc)
    return start, None if end > now else end


def time_text(ts: timestamp_pb2.Timestamp, timespec: str = "seconds") -> str:
    return ts.ToDatetime(timezone.utc).isoformat(timespec=timespec)


def account_text(account: admin_pb2.AccountRef) -> str:
    if not account.user_id:
        return f"pool of {account.org_id}"
    return f"allocation of {account.user_id} in {account.org_id}" if account.org_id else \
        f"individual balance of {account.user_id}"


class UsageError(Exception):
    """A command line that names no account, or two."""


def account_ref(a: argparse.Namespace) -> admin_pb2.AccountRef:
    if a.individual and (a.org_id or a.user):
        raise UsageError("--individual USER names an individual balance: give it without ORG or --user")
    if not (a.individual or a.org_id):
        raise UsageError("give ORG (its pool, or with --user a member's allocation) or --individual USER")
    return admin_pb2.AccountRef(org_id=a.org_id or "", user_id=a.individual or a.user or "")


def funding_text(funding: types_pb2.Funding) -> str:
    return f"org:{funding.org_id}" if funding.kind == types_pb2.Funding.ORG else "individual"


class Commands(KeyCommands, RateLimitCommands, PlatformCommands, AuditCommands):
    def __init__(self, admin: admin_pb2_grpc.CreditAdminStub, authority: authority_pb2_grpc.CreditAuthorityStub,
                 metadata: tuple):
        self.admin = admin
        self.authority = authority
        self.metadata = metadata

    def _call(self, method, request):
        return method(request, metadata=self.metadata, timeout=30)

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        print_table(headers, rows)

    def show_org(self, org: admin_pb2.Organization) -> None:
        print_table(["org", "pool total", "allocated", "unallocated", "used", "held"],
                    [[org.org_id, format_credits(org.pool_total_millicredits),
                      format_credits(org.allocated_millicredits), format_credits(org.unallocated_millicredits),
                      format_credits(org.used_millicredits), format_credits(org.held_millicredits)]])

    def show_members(self, members) -> None:
        print_table(["user", "role", "default", "allocation", "used", "held", "available"],
                    [[m.user_id, ROLE_NAMES.get(m.role, "?"), "yes" if m.is_default else "",
                      format_credits(m.allocation_millicredits), format_credits(m.used_millicredits),
                      format_credits(m.held_millicredits), format_credits(m.available_millicredits)]
                     for m in members])

    def run(self, args: argparse.Namespace) -> None:
        getattr(self, "cmd_" + args.command.replace("-", "_"))(args)

    def cmd_user_create(self, a):
        user = self._call(self.admin.CreateUser, admin_pb2.CreateUserRequest(
            user_id=a.user_id, display_name=a.name, email=a.email))
        print(f"created user {user.user_id}")

    def cmd_org_create(self, a):
        org = self._call(self.admin.CreateOrganization, admin_pb2.CreateOrganizationRequest(
            org_id=a.org_id, name=a.name))
        print(f"created organization {org.org_id}")

    def cmd_org_show(self, a):
        self.show_org(self._call(self.admin.GetOrganization, admin_pb2.GetOrganizationRequest(org_id=a.org_id)))

    def cmd_member_add(self, a):
        member = self._call(self.admin.AddMember, admin_pb2.AddMemberRequest(
            org_id=a.org_id, user_id=a.user_id, role=ROLES[a.role], is_default=a.default))
        print(f"added {member.user_id} to {member.org_id} as {a.role}")

    def cmd_member_remove(self, a):
        result = self._call(self.admin.RemoveMember, admin_pb2.RemoveMemberRequest(org_id=a.org_id, user_id=a.user_id))
        returned = format_credits(result.returned_to_pool_millicredits)
        print(f"removed {a.user_id}; {returned} credits returned to the pool")

    def cmd_members(self, a):
        self.show_members(self._call(self.admin.ListMembers, admin_pb2.ListMembersRequest(org_id=a.org_id)).members)

    def cmd_top_up(self, a):
        org = self._call(self.admin.TopUpPool, admin_pb2.TopUpPoolRequest(
            org_id=a.org_id, amount_millicredits=a.credits, purchase_reference=a.reference,
            purchase_amount=a.paid, purchase_currency=a.currency))
        self.show_org(org)

    def cmd_allocate(self, a):
        member = self._call(self.admin.SetAllocation, admin_pb2.SetAllocationRequest(
            org_id=a.org_id, user_id=a.user_id, allocation_millicredits=a.credits, allocated_by="creditctl"))
        self.show_members([member])

    def cmd_grant(self, a):
        balance = self._call(self.admin.GrantIndividualCredits, admin_pb2.GrantIndividualCreditsRequest(
            user_id=a.user_id, amount_millicredits=a.credits, reason=a.reason, reference=a.reference))
        print(f"{balance.user_id}: {format_credits(balance.available_millicredits)} credits available")

    def cmd_balance(self, a):
        b = self._call(self.authority.GetBalance, authority_pb2.GetBalanceRequest(user_id=a.user_id, org_id=a.org))
        print_table(["user", "funding", "limit", "used", "held", "available"],
                    [[a.user_id, funding_text(b.funding), format_credits(b.limit_millicredits),
                      format_credits(b.used_millicredits), format_credits(b.held_millicredits),
                      format_credits(b.available_millicredits)]])

    def cmd_usage(self, a):
        request = admin_pb2.QueryUsageRequest(org_id=a.org, user_id=a.user, model=a.model,
                                              service_type=a.service_type, group_by=GROUPS.get(a.by, 0),
                                              limit=a.limit)
        if a.since:
            request.start_time.CopyFrom(a.since)
        if a.until:
            request.end_time.CopyFrom(a.until)
        result = self._call(self.admin.QueryUsage, request)
        if a.by:
            print_table([a.by, "requests", "credits"],
                        [[g.key, str(g.requests), format_credits(g.credits_used_millicredits)] for g in result.groups])
        else:
            print_table(["time", "user", "org", "service", "model", "credits", "request id", "flags"],
                        [[r.created_at.ToDatetime().isoformat(timespec="seconds"), r.user_id, r.org_id,
                          r.service_type, r.service_name, format_credits(r.credits_used_millicredits), r.request_id,
                          ",".join(f for f, on in (("overrun", r.overrun), ("late", r.late)) if on)]
                         for r in result.records])
        print(f"total: {result.total_requests} requests, {format_credits(result.total_millicredits)} credits")

    def cmd_statement(self, a):
        start, end = statement_period(a.since, a.until, datetime.now(timezone.utc))
        request = admin_pb2.GetStatementRequest(account=account_ref(a))
        request.start_time.FromDatetime(start)
        if end is not None:
            request.end_time.FromDatetime(end)
        s = self._call(self.admin.GetStatement, request)
        (print_statement_csv if a.csv else print_statement)(s)

    def cmd_forecast(self, a):
        f = self._call(self.admin.GetForecast, admin_pb2.GetForecastRequest(account=account_ref(a),
                                                                            window_days=a.window_days))
        print(f"forecast of the {account_text(f.account)} over the last {f.window_days} days, "
              f"computed at {time_text(f.computed_at, 'microseconds')}")
        lines = [("pool" if f.account.org_id else "individual", f.total)] + [("member", m) for m in f.members]
        print_table(["account", "user", "remaining", "used in window", "burn rate per day", "runs out at"],
                    [[kind, line.user_id, format_credits(line.remaining_millicredits),
                      format_credits(line.used_in_window_millicredits),
                      format_credits(line.burn_rate_millicredits_per_day),
                      time_text(line.runs_out_at, "microseconds") if line.HasField("runs_out_at") else "never"]
                     for kind, line in lines])


STATEMENT_LISTS = (("credits in", "credits_in"), ("adjustments", "adjustments"),
                   ("allocation changes", "allocation_changes"))


def print_statement(s: admin_pb2.Statement) -> None:
    """The statement as text: balances and totals as `label: credits` lines, each list as a table."""
    print(f"statement of the {account_text(s.account)}")
    print(f"period: {time_text(s.start_time)} to {time_text(s.end_time)} (UTC)")
    print(f"opening balance: {format_credits(s.opening_balance_millicredits)}")
    for label, name in STATEMENT_LISTS:
        print(f"{label}: {format_credits(getattr(s, name + '_millicredits'))}")
        lines = getattr(s, name)
        if lines:
            print_table(["time", "kind", "credits", "source", "reference"],
                        [[time_text(x.at), x.kind, format_credits(x.amount_millicredits), x.source,
                          x.reference] for x in lines])
    print(f"usage: {format_credits(s.usage_millicredits)}")
    for label, groups in (("model", s.usage_by_model), ("member", s.usage_by_member)):
        if groups:
            print_table([label, "requests", "credits"],
                        [[g.key or "(none)", str(g.requests), format_credits(g.credits_used_millicredits)]
                         for g in groups])
    print(f"closing balance: {format_credits(s.closing_balance_millicredits)}")


def print_statement_csv(s: admin_pb2.Statement) -> None:
    """The statement as the console's CSV export writes it."""
    sys.stdout.write(statement_csv(s, note=f"{time_text(s.start_time)} to {time_text(s.end_time)} (UTC)"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="creditctl", description=__doc__.splitlines()[0])
    parser.add_argument("--addr", help="authority address (default CREDIT_AUTHORITY_ADDR or 127.0.0.1:50051)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, help_text, *arguments):
        cmd = sub.add_parser(name, help=help_text)
        for args, kwargs in arguments:
            cmd.add_argument(*args, **kwargs)
        return cmd

    def arg(*args, **kwargs):
        return args, kwargs

    add("user-create", "create a user", arg("user_id"), arg("--name", default=""), arg("--email", default=""))
    add("org-create", "create an organization", arg("org_id"), arg("--name", default=""))
    add("org-show", "pool total, allocated, unallocated, used, held", arg("org_id"))
    add("member-add", "add a user to an organization", arg("org_id"), arg("user_id"),
        arg("--role", choices=list(ROLES), default="member"), arg("--default", action="store_true"))
    add("member-remove", "remove a member", arg("org_id"), arg("user_id"))
    add("members", "members with their allocations", arg("org_id"))
    add("top-up", "add purchased credits to a pool", arg("org_id"), arg("credits", type=credits),
        arg("--reference", required=True, help="purchase reference (idempotency)"),
        arg("--paid", default="", help="amount paid, e.g. 99.00"), arg("--currency", default=""))
    add("allocate", "set a member's allocation", arg("org_id"), arg("user_id"), arg("credits", type=credits))
    add("grant", "grant individual credits", arg("user_id"), arg("credits", type=credits),
        arg("--reason", default=""),
        arg("--reference", required=True, help="grant reference, e.g. a ticket id (idempotency: a retry with the "
                                               "same reference adds nothing)"))
    add_key_commands(add, arg)
    add("balance", "a user's balance", arg("user_id"), arg("--org", default=""))
    add("usage", "usage rows or groups", arg("--org", default=""), arg("--user", default=""),
        arg("--model", default=""), arg("--service-type", default=""), arg("--since", type=moment),
        arg("--until", type=moment), arg("--by", choices=list(GROUPS)), arg("--limit", type=int, default=50))
    add("statement", "an account's statement: opening balance, credits in with their source, refunds and "
                     "adjustments, allocation changes, usage by model and member, closing balance",
        arg("org_id", nargs="?", metavar="ORG"), arg("--user", help="a member: the statement of their allocation"),
        arg("--individual", metavar="USER", help="an individual balance (instead of ORG)"),
        arg("--from", dest="since", type=day, metavar="YYYY-MM-DD", help="first day (UTC; default: the 1st of the "
                                                                          "month of --to, or of this month)"),
        arg("--to", dest="until", type=day, metavar="YYYY-MM-DD", help="last day, included (default: today)"),
        arg("--csv", action="store_true", help="CSV, as the console exports it"))
    forecast = add("forecast", "burn rate over a trailing window and the projected run-out time of a pool and each "
                    "member's allocation, or of an individual balance",
        arg("org_id", nargs="?", metavar="ORG"), arg("--individual", metavar="USER"),
        arg("--window-days", type=int, default=0, help="trailing window in days, 1-365 (default 7)"))
    forecast.set_defaults(user=None)  # an organization's forecast covers every member
    add_rate_limit_commands(add, arg, credits)
    add_platform_commands(add, arg)
    add_audit_commands(add, arg)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = AdminCliSettings.from_env()
    demo = read_env_file(settings.data_dir / "demo.env")
    addr = args.addr or settings.authority_addr or demo.get("CREDIT_AUTHORITY_ADDR") or LOCAL_AUTHORITY_ADDR
    token = settings.admin_token or demo.get("CREDIT_ADMIN_TOKEN", "")
    if not token:
        print("error: set CREDIT_ADMIN_TOKEN (make run writes one to .data/demo.env)", file=sys.stderr)
        return 2
    with grpc.insecure_channel(addr) as channel:
        commands = Commands(admin_pb2_grpc.CreditAdminStub(channel), authority_pb2_grpc.CreditAuthorityStub(channel),
                            (("authorization", f"Bearer {token}"), ("x-on-behalf-of", operator_claim())))
        try:
            commands.run(args)
        except (UsageError, ScopeError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except grpc.RpcError as error:
            details = error.details() or ""
            print(f"error: {error.code().name}: {details}{option_hint(details)}{key_hint(details)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
