"""creditctl platform-create / platform-rotate / platform-revoke / platforms, end to end: the secret printed
once works against the authority within its scope, bad command lines name the field and write nothing."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import Stub, uid
from test_creditctl import CREDITCTL, ctl

from credit.v1 import admin_pb2, authority_pb2, authority_pb2_grpc
from credit_service.cli import build_parser

SECRET = re.compile(r"^.*secret.*: (cp_[A-Za-z0-9_-]{43})$", re.MULTILINE)


def secret_of(output: str) -> str:
    [secret] = SECRET.findall(output)
    return secret


def names_listed(authority, tokens) -> set[str]:
    lines = ctl(authority, tokens, "platforms").stdout.splitlines()[2:]
    return {line.split()[0] for line in lines if line.strip()}


def test_create_list_rotate_revoke(authority, tokens, channel, world, admin):
    org_a, user_a = world.funded_member(5_000)
    org_b = world.org()
    name = uid("loopnet")
    created = ctl(authority, tokens, "platform-create", name, "--orgs", f"{org_a},{org_b}", "--roles", "spend,read")
    secret = secret_of(created.stdout)
    assert f"platform:{name}" in created.stdout
    platform = Stub(authority_pb2_grpc.CreditAuthorityStub(channel), secret)
    assert platform.GetBalance(authority_pb2.GetBalanceRequest(user_id=user_a)).available_millicredits == 5_000

    listed = ctl(authority, tokens, "platforms").stdout
    [row] = [line.split() for line in listed.splitlines() if line.startswith(name + " ")]
    assert row[1:4] == [",".join(sorted([org_a, org_b])), "no", "read,spend"] and row[5] == "ops"
    assert secret not in listed

    rotated = ctl(authority, tokens, "platform-rotate", name, "--grace-seconds", "600")
    new_secret = secret_of(rotated.stdout)
    assert new_secret != secret and "previous secret stays valid until 20" in rotated.stdout
    for token in (secret, new_secret):  # both valid during the grace
        Stub(authority_pb2_grpc.CreditAuthorityStub(channel), token).GetBalance(
            authority_pb2.GetBalanceRequest(user_id=user_a))
    [shown] = [c for c in admin.ListPlatformCredentials(admin_pb2.ListPlatformCredentialsRequest()).credentials
               if c.name == name]
    assert shown.previous_secret_valid_until.ToSeconds() - shown.rotated_at.ToSeconds() == pytest.approx(600, abs=1)

    revoked = ctl(authority, tokens, "platform-revoke", name)
    assert f"revoked platform credential {name}" in revoked.stdout
    [row] = [line for line in ctl(authority, tokens, "platforms").stdout.splitlines() if line.startswith(name + " ")]
    assert row.rstrip().endswith(revoked.stdout.split(" at ")[1].split()[0])  # the revocation time


def test_individuals_flag(authority, tokens, channel, world):
    name = uid("center-deep")
    created = ctl(authority, tokens, "platform-create", name, "--individuals", "--roles", "spend")
    solo = world.user(individual_mc=1_000)
    platform = Stub(authority_pb2_grpc.CreditAuthorityStub(channel), secret_of(created.stdout))
    assert platform.Check(authority_pb2.CheckRequest(user_id=solo, amount_millicredits=1_000)).allowed
    [row] = [line.split() for line in ctl(authority, tokens, "platforms").stdout.splitlines()
             if line.startswith(name + " ")]
    assert row[1:4] == ["-", "yes", "spend"]


@pytest.mark.parametrize(("args", "field"), [
    (["platform-create", "Bad Name", "--orgs", "{org}", "--roles", "spend"], "name"),
    (["platform-create", "{name}", "--orgs", "{org}", "--roles", "spend,admin"], "roles"),
    (["platform-create", "{name}", "--orgs", "{org}", "--roles", ","], "roles"),
    (["platform-create", "{name}", "--roles", "spend"], "org_ids"),
    (["platform-create", "{name}", "--orgs", "{org},bad org", "--roles", "spend"], "org_ids"),
    (["platform-rotate", "{existing}", "--grace-seconds", "-5"], "grace_seconds"),
    (["platform-rotate", "{existing}", "--grace-seconds", "604801"], "grace_seconds"),
    (["platform-revoke", "NOT VALID"], "name"),
])
def test_bad_input_names_the_field_and_writes_nothing(authority, tokens, world, admin, args, field):
    org = world.org()
    existing = uid("existing")
    admin.CreatePlatformCredential(admin_pb2.CreatePlatformCredentialRequest(name=existing, org_ids=[org],
                                                                             roles=["spend"]))
    before = admin.ListPlatformCredentials(admin_pb2.ListPlatformCredentialsRequest()).credentials
    name = uid("bad")
    result = ctl(authority, tokens, *[a.format(org=org, name=name, existing=existing) for a in args], check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: INVALID_ARGUMENT: {field}: "), result.stderr
    assert admin.ListPlatformCredentials(admin_pb2.ListPlatformCredentialsRequest()).credentials == before


def test_the_commands_need_the_operators_role(authority, tokens):
    """CREDIT_ADMIN_TOKEN must be the operator's (mint): the REST service's token (admin, never mint) is refused."""
    env = {**os.environ, "CREDIT_AUTHORITY_ADDR": authority.addr, "CREDIT_ADMIN_TOKEN": tokens.service}
    refused = subprocess.run([CREDITCTL, "platforms"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: PERMISSION_DENIED: ListPlatformCredentials requires the mint role")


def test_the_readme_credential_commands_are_command_lines_creditctl_accepts():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("**Platform credentials**", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#")[0].split()[1:] for line in section.splitlines()
             if line.startswith(".venv/bin/creditctl platform")]
    assert {line[0] for line in lines} == {"platform-create", "platform-rotate", "platform-revoke", "platforms"}
    for argv in lines:
        build_parser().parse_args(argv)  # exits on a command line it does not accept
