"""The integration examples run as a platform would run them, against the real stack.

examples/loopnet/enrich.py (the `openai` SDK, an org service key, the member in `user`) and
examples/center_deep/search.py (a search fee billed straight through the authority with credit_client's hold,
summaries through the REST service; authenticated with a platform credential that `creditctl platform-create`
made, scoped to the member's org) are started as subprocesses against a real authority and a real inference
service (LiteLLM answering the offline `demo-chat` model with mock_response). What they print is checked
against the attribution rows they produced: one row per billed call, the figures they printed, nothing else.
Their refusals end them with the exit codes their docstrings document. And the README's "Integrating a
platform" snippets are excerpts of these files.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import asyncpg
import openai
import pytest
import yaml
from conftest import ROOT, uid
from rest_support import InferenceProcess, make_key, sdk

from credit.v1 import admin_pb2, authority_pb2

EXAMPLES = ROOT / "examples"
LOOPNET = EXAMPLES / "loopnet" / "enrich.py"
CENTER_DEEP = EXAMPLES / "center_deep" / "search.py"
# What the examples read from the environment: cleared, so that the caller's shell does not leak in.
EXAMPLE_VARIABLES = ("LLM_BASE_URL", "LOOPNET_SERVICE_KEY", "LOOPNET_MEMBER", "LOOPNET_MODEL",
                     "CREDIT_AUTHORITY_ADDR", "CREDIT_SERVICE_TOKEN", "CENTER_DEEP_SERVICE_KEY",
                     "CENTER_DEEP_MEMBER", "CENTER_DEEP_ORG", "CENTER_DEEP_MODEL")

ENRICHED = re.compile(r"^(?P<name>.+): cost (?P<cost>\d+\.\d{3}) credits, "
                      r"remaining (?P<remaining>-?\d+\.\d{3}) credits, request (?P<request>\S+)$", re.M)
SEARCHED = re.compile(r"^search '(?P<query>[^']*)': (?P<results>\d+) results, fee (?P<fee>\d+\.\d{3}) credits, "
                      r"remaining (?P<remaining>-?\d+\.\d{3}) credits, reservation (?P<reservation>\S+)$", re.M)
SUMMARISED = re.compile(r"^summary: cost (?P<cost>\d+\.\d{3}) credits, remaining (?P<remaining>-?\d+\.\d{3}) "
                        r"credits, request (?P<request>\S+)$", re.M)


def load(path: Path):
    """An example as a module (for its documented constants: exit codes, prices)."""
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


loopnet = load(LOOPNET)
center_deep = load(CENTER_DEEP)


def mc(credits: str) -> int:
    """A printed credits figure ("0.015") in millicredits."""
    value = Decimal(credits) * 1000
    assert value == value.to_integral_value(), credits
    return int(value)


@pytest.fixture(scope="module")
def inference(authority, tokens, models_file) -> InferenceProcess:
    catalogue = yaml.safe_load(models_file.read_text())["model_list"]
    assert loopnet.parse_args(["--key", "k", "--member", "m"]).model in {m["model_name"] for m in catalogue}
    process = InferenceProcess(authority, tokens.spend, models_file).start()
    yield process
    process.stop()


@dataclass
class Platform:
    """An org whose owner holds the platform's service key, and a member with an allocation who pays."""

    org_id: str
    owner: str
    member: str
    allocation_mc: int
    service_key: str


@pytest.fixture
def platform(world, admin) -> Platform:
    org_id, owner, member = world.org(pool_mc=500_000), world.user(), world.user()
    world.member(org_id, owner, role=admin_pb2.MEMBER_ROLE_OWNER)  # a service key is made for an owner/admin
    world.member(org_id, member, allocation_mc=200_000)
    service_key, _ = make_key(admin, owner, org_id, service=True)
    return Platform(org_id, owner, member, 200_000, service_key)


def example_env(**values: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in EXAMPLE_VARIABLES}
    return {**env, "PYTHONUNBUFFERED": "1", **values}


def run(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def query(database_url: str, sql: str, *args) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def usage_rows(database_url: str, user_id: str) -> list[asyncpg.Record]:
    return query(database_url, "SELECT * FROM usage_attribution WHERE user_id = $1 ORDER BY attribution_id",
                 user_id)


def metadata(row: asyncpg.Record) -> dict:
    value = row["request_metadata"]
    return json.loads(value) if isinstance(value, str) else dict(value)


# ---- LoopNet -----------------------------------------------------------------------------------------


def loopnet_env(inference: InferenceProcess, platform: Platform) -> dict[str, str]:
    return example_env(LLM_BASE_URL=inference.base_url, LOOPNET_SERVICE_KEY=platform.service_key,
                       LOOPNET_MEMBER=platform.member)


def companies(path: Path = EXAMPLES / "loopnet" / "companies.csv") -> list[str]:
    with path.open(newline="") as file:
        return [row["name"] for row in csv.DictReader(file)]


def check_loopnet_rows(database_url: str, platform: Platform, printed: list[re.Match]) -> None:
    """One attribution row per printed call, with its figures, on the member in the key's org."""
    rows = usage_rows(database_url, platform.member)
    assert len(rows) == len(printed)
    by_request = {metadata(row)["request_id"]: row for row in rows}
    spent = 0
    for line in printed:
        row = by_request[line["request"]]
        meta = metadata(row)
        assert row["credits_used"] == mc(line["cost"]) > 0
        assert (row["org_id"], row["service_type"], row["service_name"]) == (platform.org_id, "llm_inference",
                                                                            "demo-chat")
        assert (meta["end_user"], meta["task_type"]) == (platform.member, "company_enrichment")
        spent += row["credits_used"]
        assert mc(line["remaining"]) == platform.allocation_mc - spent  # what was left after this call
    assert usage_rows(database_url, platform.owner) == []  # the key's owner pays nothing


def test_loopnet_enriches_every_company_billed_to_the_member(inference, platform, database_url):
    result = run(LOOPNET, env=loopnet_env(inference, platform))
    assert result.returncode == 0, result.stderr
    printed = list(ENRICHED.finditer(result.stdout))
    assert [line["name"] for line in printed] == companies()
    assert f"enriched {len(printed)} of {len(printed)} records" in result.stdout
    check_loopnet_rows(database_url, platform, printed)


def test_loopnet_stops_cleanly_when_the_credits_run_out(inference, platform, world, database_url, tmp_path):
    same = tmp_path / "same.csv"  # the same record three times: every call may cost the same at most
    same.write_text("name,city\n" + "Acme Freight Partners,Denver CO\n" * 3)
    world.allocate(platform.org_id, platform.member, 1)
    first = run(LOOPNET, "--input", str(same), env=loopnet_env(inference, platform))
    assert first.returncode == loopnet.EXIT_OUT_OF_CREDITS, first.stderr
    assert "stopped after 0 of 3 records: out of credits" in first.stderr
    assert not ENRICHED.search(first.stdout) and usage_rows(database_url, platform.member) == []
    worst = re.search(r"may cost up to (\d+\.\d{3}) credits, 0\.001 available", first.stderr)
    assert worst, first.stderr
    # Exactly one worst case left: the first call fits, what it cost leaves less than the next call may cost.
    world.allocate(platform.org_id, platform.member, mc(worst[1]))
    second = run(LOOPNET, "--input", str(same), env=loopnet_env(inference, platform))
    assert second.returncode == loopnet.EXIT_OUT_OF_CREDITS, second.stderr
    assert "stopped after 1 of 3 records: out of credits" in second.stderr
    printed = list(ENRICHED.finditer(second.stdout))
    assert len(printed) == 1
    check_loopnet_rows(database_url, Platform(platform.org_id, platform.owner, platform.member, mc(worst[1]),
                                              platform.service_key), printed)


def test_loopnet_waits_out_a_429_as_told(inference, platform, admin, spend, database_url):
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(org_id=platform.org_id, user_id=platform.member,
                                                     max_parallel=1))
    busy = spend.Reserve(authority_pb2.ReserveRequest(
        request_id=uid("busy"), user_id=platform.member, org_id=platform.org_id, amount_millicredits=1,
        service_type="test", service_name="busy"))  # another request of the member's, in flight
    with pytest.raises(openai.RateLimitError) as refused:  # what the service tells a caller to wait now
        sdk(inference, platform.service_key).chat.completions.create(
            model="demo-chat", user=platform.member, messages=[{"role": "user", "content": "hi"}])
    told = int(refused.value.response.headers["retry-after-ms"])
    proc = subprocess.Popen([sys.executable, str(LOOPNET)], env=loopnet_env(inference, platform), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first == f"rate limited: waiting {told / 1000:.3f} s as told (1 of 5)\n", \
            first + proc.stderr.read() if proc.poll() is not None else first
        spend.Release(authority_pb2.ReleaseRequest(reservation_id=busy.reservation_id, reason="done"))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    printed = list(ENRICHED.finditer(out))
    assert [line["name"] for line in printed] == companies()
    check_loopnet_rows(database_url, platform, printed)


def test_loopnet_gives_up_on_a_request_larger_than_the_limit(inference, platform, admin, database_url):
    admin.SetRateLimit(admin_pb2.SetRateLimitRequest(org_id=platform.org_id, user_id=platform.member,
                                                     tokens_per_minute=1))
    result = run(LOOPNET, env=loopnet_env(inference, platform))
    assert result.returncode == loopnet.EXIT_RATE_LIMITED, result.stderr
    assert "stopped after 0 of 5 records: rate limited, giving up" in result.stderr
    assert "waiting" not in result.stdout  # waiting would not help: it did not
    assert usage_rows(database_url, platform.member) == []


# ---- Center-Deep -------------------------------------------------------------------------------------


CREDITCTL = str(Path(sys.executable).parent / "creditctl")


def platform_credential(authority, tokens, org_id: str) -> tuple[str, str]:
    """A platform credential scoped to `org_id` with the spend role, made as the operator makes one: its
    caller name (what usage rows record) and its secret."""
    env = {**os.environ, "CREDIT_AUTHORITY_ADDR": authority.addr, "CREDIT_ADMIN_TOKEN": tokens.admin}
    created = subprocess.run([CREDITCTL, "platform-create", uid("center-deep"), "--orgs", org_id, "--roles", "spend"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    caller = re.search(r"^caller name: (\S+)", created.stdout, re.M)
    secret = re.search(r"^secret \(shown once\): (\S+)$", created.stdout, re.M)
    assert caller and secret, created.stdout
    return caller[1], secret[1]


@pytest.fixture
def center_deep_credential(authority, tokens, platform) -> tuple[str, str]:
    return platform_credential(authority, tokens, platform.org_id)


def center_deep_env(authority, token: str, inference: InferenceProcess, platform: Platform) -> dict[str, str]:
    return example_env(CREDIT_AUTHORITY_ADDR=authority.addr, CREDIT_SERVICE_TOKEN=token,
                       LLM_BASE_URL=inference.base_url, CENTER_DEEP_SERVICE_KEY=platform.service_key,
                       CENTER_DEEP_MEMBER=platform.member, CENTER_DEEP_ORG=platform.org_id)


def test_center_deep_bills_each_search_and_its_summary(authority, center_deep_credential, inference, platform,
                                                       database_url):
    caller, secret = center_deep_credential
    queries = ["credit pool", "zebra crossing"]  # the second finds nothing: the query fee alone, no summary
    result = run(CENTER_DEEP, *queries, env=center_deep_env(authority, secret, inference, platform))
    assert result.returncode == 0, result.stderr
    searches, summaries = list(SEARCHED.finditer(result.stdout)), list(SUMMARISED.finditer(result.stdout))
    assert [line["query"] for line in searches] == queries
    found = [int(line["results"]) for line in searches]
    assert found[0] > 0 and found[1] == 0 and "summary: skipped (no results)" in result.stdout
    assert len(summaries) == 1

    rows = usage_rows(database_url, platform.member)
    assert len(rows) == len(searches) + len(summaries)
    for line in searches:
        row = next(r for r in rows if str(r["reservation_id"]) == line["reservation"])
        meta = metadata(row)
        assert (row["service_type"], row["service_name"], row["org_id"]) == ("search", "center-deep-search",
                                                                            platform.org_id)
        assert row["caller"] == caller  # the platform credential the example was given
        assert (meta["query"], meta["results"]) == (line["query"], int(line["results"]))
        assert row["credits_used"] == mc(line["fee"]) == center_deep.price(int(line["results"]))
        held = query(database_url, "SELECT amount_mc FROM reservations WHERE reservation_id = $1",
                     row["reservation_id"])[0]["amount_mc"]
        assert held == center_deep.price(5)  # the most a query may cost (--limit 5): real price committed below
    summary = summaries[0]
    row = next(r for r in rows if metadata(r).get("request_id") == summary["request"])
    assert (row["service_type"], row["service_name"]) == ("llm_inference", "demo-chat")
    assert (metadata(row)["end_user"], metadata(row)["task_type"]) == (platform.member, "search_summary")
    assert row["credits_used"] == mc(summary["cost"]) > 0
    # The remaining figures printed, in order, are the allocation less what had been charged by then.
    order = [searches[0], summaries[0], searches[1]]
    spent = 0
    for line, charged in zip(order, [mc(searches[0]["fee"]), mc(summary["cost"]), mc(searches[1]["fee"])],
                             strict=True):
        spent += charged
        assert mc(line["remaining"]) == platform.allocation_mc - spent
    assert spent == sum(r["credits_used"] for r in rows)


def test_center_deep_releases_the_hold_when_the_search_fails(authority, center_deep_credential, inference, platform,
                                                             spend, database_url, tmp_path):
    broken = tmp_path / "index.json"
    broken.write_text("{ this is not an index")
    result = run(CENTER_DEEP, "credit pool", "--index", str(broken),
                 env=center_deep_env(authority, center_deep_credential[1], inference, platform))
    assert result.returncode == center_deep.EXIT_SEARCH_FAILED, result.stderr
    assert "search failed, its hold was released (nothing charged)" in result.stderr
    assert not SEARCHED.search(result.stdout) and not SUMMARISED.search(result.stdout)
    holds = query(database_url, "SELECT status, charged_mc, release_reason FROM reservations WHERE user_id = $1",
                  platform.member)
    assert len(holds) == 1 and holds[0]["status"] == "released" and holds[0]["charged_mc"] is None
    assert "SearchFailed" in holds[0]["release_reason"]
    assert usage_rows(database_url, platform.member) == []
    balance = spend.GetBalance(authority_pb2.GetBalanceRequest(user_id=platform.member, org_id=platform.org_id))
    assert (balance.used_millicredits, balance.held_millicredits) == (0, 0)
    assert balance.available_millicredits == platform.allocation_mc


def test_center_deep_stops_when_the_search_fee_does_not_fit(authority, center_deep_credential, inference, platform,
                                                            world, database_url):
    world.allocate(platform.org_id, platform.member, center_deep.price(5) - 1)  # one millicredit short
    result = run(CENTER_DEEP, "credit pool", env=center_deep_env(authority, center_deep_credential[1], inference,
                                                                 platform))
    assert result.returncode == center_deep.EXIT_OUT_OF_CREDITS, result.stderr
    assert re.search(r"out of credits: the search may cost up to \d+\.\d{3} credits, \d+\.\d{3} available "
                     rf"\(org:{platform.org_id}\)", result.stderr), result.stderr
    assert query(database_url, "SELECT 1 FROM reservations WHERE user_id = $1", platform.member) == []
    assert usage_rows(database_url, platform.member) == []


def test_center_deep_with_a_credential_for_another_org_bills_nothing(authority, tokens, inference, platform, world,
                                                                      database_url):
    _, elsewhere = platform_credential(authority, tokens, world.org())
    result = run(CENTER_DEEP, "credit pool", env=center_deep_env(authority, elsewhere, inference, platform))
    assert result.returncode == 1 and "error (PermissionDenied)" in result.stderr, result.stderr
    assert query(database_url, "SELECT 1 FROM reservations WHERE user_id = $1", platform.member) == []
    assert usage_rows(database_url, platform.member) == []


# ---- the README ------------------------------------------------------------------------------------


def integration_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("## Integrating a platform", 1)[1].split("\n## ", 1)[0]


def test_the_readme_integration_snippets_are_excerpts_of_the_examples():
    section = integration_section()
    assert "examples/loopnet/" in section and "examples/center_deep/" in section
    blocks = [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)```", section, re.S)]
    assert len(blocks) >= 2
    sources = [path.read_text() for path in sorted(EXAMPLES.rglob("*.py"))]
    missing = [block for block in blocks
               if not any(textwrap.indent(block, " " * n) in source for n in range(0, 17, 4) for source in sources)]
    assert not missing, "README snippets that no example contains verbatim:\n" + "\n---\n".join(missing)
