"""The README's Reliability rows of the fault tests, from the figures of one run.

    FAULT_FIGURES_FILE=/tmp/fault-figures.jsonl .venv/bin/python -m pytest tests/faults -q
    .venv/bin/python tests/faults/figures_table.py /tmp/fault-figures.jsonl

Prints one Markdown table row per fault test that reports figures; the measured-outcome column
quotes only what the run counted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

Figures = dict[str, Any]


def n(value: int) -> str:
    return f"{value:,}"


def counts(mapping: dict[str, int]) -> str:
    return ", ".join(f"{key} {n(value)}" for key, value in mapping.items()) or "none"


def failed(f: Figures) -> str:
    return f"failed checks: {counts(f['failed_checks'])}" if f["failed_checks"] else "no check failed"


def money(f: Figures) -> str:
    return f"**lost {f['lost']}, charged twice {f['charged_twice']}**"


def rest(f: Figures) -> str:
    return (f"REST: {n(f['rest_requests'])} calls ({counts(f['rest_statuses'])}; "
            f"{f['rest_200_billing_queued']} of the 200s billing queued), {n(f['rest_charged'])} charged, "
            f"{f['rest_failed_hold_voided']} holds of failed calls expired or released, "
            f"{f['rest_charged_though_failed']} charged though answered an error; "
            f"reservations {counts(f['rest_reservations'])}")


def abandoned(f: Figures) -> str:
    return (f"{f['grpc_gave_up_reserve']} Reserves ({f['grpc_gave_up_reserve_landed']} landed) and "
            f"{f['grpc_gave_up_commit']} Commits ({f['grpc_gave_up_commit_landed']} landed) abandoned, "
            f"{f['grpc_refused']} refused; reservations {counts(f['grpc_reservations'])}")


def authority_killed(f: Figures) -> str:
    return (f"{f['holds_in_flight_at_kill']} holds in flight and {f['transactions_waiting_at_kill']} transaction "
            f"waiting at the kill; {f['landed_unanswered_commits']} Commits and {f['landed_unanswered_holds']} "
            f"Reserves landed unanswered, then retried and replayed ({f['grpc_clients_let_go_together']} clients "
            f"let go together); gRPC: {n(f['grpc_reserves_sent'])} Reserves, {n(f['grpc_commits_acknowledged'])} "
            f"Commits acknowledged ({f['grpc_commits_retried']} after a retry), errors "
            f"{counts(f['grpc_errors'])}, {abandoned(f)}; {rest(f)}; {failed(f)}; {money(f)}")


def postgres_restart(f: Figures) -> str:
    return (f"while the database was down REST answered {counts(f['rest_during_outage'])}; "
            f"{n(f['upstream_calls'])} model calls = {n(f['rest_statuses'].get('200', 0))} REST 200s; {rest(f)}; "
            f"gRPC: {n(f['grpc_commits_acknowledged'])} Commits acknowledged, errors {counts(f['grpc_errors'])}, "
            f"{abandoned(f)}; service back {f['rest_back_after_s']} s (REST) and {f['grpc_back_after_s']} s "
            f"(gRPC) after the database, without restarting anything; held after the sweeper "
            f"{f['held_after_sweeper_mc']} mc; {failed(f)}; {money(f)}")


def connection_cut(f: Figures) -> str:
    return (f"{n(f['calls_through_proxy'])} calls through the proxy; {f['cuts']} cuts closed "
            f"{f['connections_cut']} connections with {f['calls_cut']} calls open, dropped "
            f"{f['answers_dropped']} answers the authority had served and refused {f['connects_refused']} "
            f"connections; the authority served {f['reserves_served_twice']} Reserves and "
            f"{f['commits_served_twice']} Commits twice (retries of lost answers); REST calls in flight at a cut: "
            f"{counts(f['rest_in_flight_at_a_cut'])}; {rest(f)}; {n(f['upstream_calls'])} model calls = "
            f"{n(f['rest_statuses'].get('200', 0))} REST 200s; {failed(f)}; {money(f)}")


def failover(f: Figures) -> str:
    return (f"{n(f['commits_acknowledged_at_kill'])} Commits acknowledged at the kill, "
            f"{n(f['commits_acknowledged_before_promotion'])} before the promotion, "
            f"{n(f['grpc_commits_acknowledged'])} in all, "
            f"{n(f['grpc_commits_acknowledged'] - f['grpc_lost'])} of them on the promoted standby as answered "
            f"({n(f['grpc_committed'])} committed there, {f['grpc_charged_unacknowledged']} unacknowledged); "
            f"errors {counts(f['grpc_errors'])}, {abandoned(f)}; {n(f['commits_after_promotion'])} Commits "
            f"served after the promotion; {failed(f)}; {money(f)}")


def patroni(f: Figures) -> str:
    return (f"{n(f['commits_acknowledged_at_kill'])} Commits acknowledged at the kill, "
            f"{f['lost_acknowledged_before_kill']} of them missing afterwards; {f['new_primary']} promoted by "
            f"Patroni; longest time without an OK Reserve {f['longest_gap_without_an_ok_reserve_s']} s, ending "
            f"{f['reserves_back_after_kill_s']} s after the kill (same authority process, never restarted); "
            f"{f['old_primary']} back as {f['old_primary_now']} ({f['old_primary_state']}) "
            f"{f['rejoined_as_sync_standby_after_kill_s']} s after the kill; gRPC: "
            f"{n(f['grpc_commits_acknowledged'])} Commits acknowledged, errors {counts(f['grpc_errors'])}, "
            f"{abandoned(f)}; {rest(f)}; {n(f['upstream_calls'])} model calls = "
            f"{n(f['rest_statuses'].get('200', 0))} REST 200s; {failed(f)}; {money(f)}")


PATRONI_SETUP = ("etcd and two Patroni nodes from `deploy/patroni/` (synchronous mode, ttl 10 s, loop_wait 1 s, "
                 "retry_timeout 4 s, primary_start_timeout 0), one authority on a multi-host `DATABASE_URL` "
                 "(`target_session_attrs=read-write`) and the REST service; 4 gRPC workers (each call retried "
                 "with the same request for up to 60 s) and 2 REST workers; ")


def duplicate_delivery(f: Figures) -> str:
    codes: dict[str, int] = {}
    for key, value in f["answers"].items():
        code = key.rsplit(" ", 1)[1]
        codes[code] = codes.get(code, 0) + value
    once = not (f["moved_twice"] or f["replays_answered_differently"])
    return (f"{f['deliveries']} deliveries ({counts(codes)}; ALREADY_EXISTS only for creates); "
            f"{f['reservations']} reservations, {f['commits']} committed, {f['releases']} released, "
            f"{f['attribution_rows']} attribution rows; ledger entries {counts(f['ledger_entries'])}: "
            f"{f['moved_twice']} moved twice, {f['replays_answered_differently']} replays answered otherwise "
            f"than the first delivery — **money moved {'once' if once else 'more than once'}**")


def conservation(f: Figures) -> str:
    headline = " ".join(f"{k}={f[k]}" for k in ("upstream_calls", "billed", "refused_before_call",
                                                 "released_no_output", "unbilled"))
    return (f"`{headline}` of {n(f['requests'])} requests ({counts(f['statuses'])}); "
            f"{sum(f['faults_injected'].values())} Commit faults injected ({counts(f['faults_injected'])}); "
            f"{f['billing_queued']} billing queued; {limits(f)}{failed(f)} (every hostile request 400 naming the "
            f"field, or 503 while the authority was down, with nothing held and no model called; every 429 with "
            f"nothing held and no model called; no hold above its X-Max-Cost; no charge above its hold; "
            f"no hold left; invariants hold)")


def limits(f: Figures) -> str:
    """The rate-limited member's 429s and the budget-capped calls (figures written since issue 14)."""
    if "rate_limited" not in f:
        return ""
    return (f"{f['rate_limited']} answered 429, {f['retried_after_429']} retried after retry-after-ms "
            f"({f['served_after_429']} then served), {f['capped']} calls with max_tokens capped; ")


# fault name in the figures → (the table's first two columns, the measured outcome)
ROWS: dict[str, tuple[str, Callable[[Figures], str]]] = {
    "authority SIGKILL under load": (
        "authority killed | 8 gRPC Reserve→Commit workers and 4 REST workers; after 1.5 s the gRPC load's open "
        "holds are locked so its next Commit waits in PostgreSQL, the authority is `SIGKILL`ed then and that "
        "transaction lands with nobody to answer; restart 1 s later, the gRPC clients' retries let go together "
        "behind a transaction waiting for the accounts (one batch); 2 s more load; wait for the sweeper; every "
        "call each client made reconciled with the reservations, attribution rows and ledger charges, both ways",
        authority_killed),
    "PostgreSQL restart mid-load (2 s down)": (
        "PostgreSQL restarted | 4 gRPC workers (each call abandoned at its first error) and 3 REST workers; stop "
        "PostgreSQL (fast), start it 2 s later, keep the processes running; wait for the sweeper; both loads "
        "reconciled with the database", postgres_restart),
    "connection cut inference→authority": (
        "connection cut | the inference service reaches the authority through a TCP proxy the test controls, "
        "which follows the HTTP/2 frames; 3 cuts, each as an answer is on its way back: the answer is dropped, "
        "every connection closed, new ones refused for 0.2, 0.7 and 1.5 s; the authority's access log and the "
        "database reconciled with the client's answers", connection_cut),
    "failover: SIGKILL primary, promote synchronous standby": (
        "manual failover (still supported: docs/operations.md) | a primary and a synchronous streaming standby "
        "(`synchronous_commit = on`), 8 gRPC workers "
        "(each call abandoned at its first error), `SIGKILL` the primary, promote the standby, point a new "
        "authority at it, the same client goes on; its record reconciled with the promoted standby", failover),
    "Patroni failover: SIGKILL the primary's PostgreSQL": (
        "Patroni failover, PostgreSQL killed | " + PATRONI_SETUP + "`SIGKILL` the primary's postmaster; no step "
        "of the test promotes, repoints or restarts anything; wait until the old primary streams as the "
        "synchronous standby, 2 s more load; both loads reconciled with the new primary", patroni),
    "Patroni failover: SIGKILL the primary's Patroni": (
        "Patroni failover, Patroni killed | " + PATRONI_SETUP + "`SIGKILL` the primary's Patroni (its PostgreSQL "
        "runs on, unable to acknowledge a commit once the standby is promoted); the supervisor starts Patroni "
        "again once the other node holds the leader key; wait until the old primary streams as the synchronous "
        "standby, 2 s more load; both loads reconciled with the new primary", patroni),
    "duplicate delivery (each mutating RPC 4x)": (
        "duplicate delivery | every mutating RPC (create user/org, add member, top-up, allocation, grant, Reserve, "
        "Commit, Release) delivered 4 times at random points; each replay's answer compared with the first; "
        "ledger entries counted per movement", duplicate_delivery),
    "conservation": (
        "conservation at the REST edge (`tests/faults/test_conservation.py`) | 2,100 REST requests, 48 at once: "
        "chat, streams (cut at random chunks, or left at the finish chunk while the Commit is in flight), "
        "tool-call streams, images, the Responses API (plain, streamed, cut by the client), embeddings, audio "
        "transcriptions and moderations, failing upstreams; 20 % with hostile strings (NUL, control characters, lone "
        "surrogate escapes, 64 KiB) in every client-controlled field and header; Commit answered INTERNAL / "
        "UNAVAILABLE / lost after landing by a gRPC proxy at 14 %; the authority restarted once; one member under "
        "rate limits (30 requests a minute, 2 in flight; a 429 retried once after retry-after-ms, same "
        "Idempotency-Key); calls with X-Max-Cost or X-Fit-To-Budget", conservation),
}


def main(path: str) -> None:
    for line in open(path):
        figures = json.loads(line)
        row = ROWS.get(figures["fault"])
        if row is not None:
            print(f"| {row[0]} | {row[1](figures)} |")


if __name__ == "__main__":
    main(sys.argv[1])
