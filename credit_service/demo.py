"""The zero-setup demo (README, "What `make run` gives you"): tokens, demo-org, demo-user, solo-user and
their API keys, written shell-style to .data/demo.env. Safe to run again:
everything is created only when missing and keys are reused while valid.
"""

from __future__ import annotations

import secrets
import shlex
from pathlib import Path

from .authority import CreditAuthority
from .errors import AlreadyExists
from .secret_box import write_private

DEMO_ORG = "demo-org"
DEMO_USER = "demo-user"
SOLO_USER = "solo-user"
POOL_MC = 10_000 * 1000  # like the seed's test org: 10,000 credits
ALLOCATION_MC = 5_000 * 1000  # of which 5,000 allocated to the demo user
SOLO_MC = 1_000 * 1000


# The demo's callers and their roles. The inference service relays payments and runs the console's changes
# (the console enforces org roles itself) but never holds mint: it cannot create credits. The operator's
# `admin` token (creditctl) may top up and grant.
DEMO_ROLES = {"inference": "spend+read+admin+payments", "admin": "admin+read+mint"}


def upgrade_token_lines(lines: list[str]) -> list[str]:
    """The lines of a token file with the demo callers' roles set to DEMO_ROLES, tokens kept (a file written
    by an older version: inference spend+read[+admin], admin admin+read)."""
    upgraded = []
    for line in lines:
        name, _, rest = line.partition(":")
        token, sep, _roles = rest.rpartition(":")
        if not line.startswith("#") and name in DEMO_ROLES and sep and token:
            line = f"{name}:{token}:{DEMO_ROLES[name]}"
        upgraded.append(line)
    return upgraded


def ensure_tokens(path: Path) -> dict[str, str]:
    """Creates the authority's token file once (DEMO_ROLES) and upgrades one an older version wrote: the
    tokens stay, the roles become DEMO_ROLES (applied when the authority next starts)."""
    if not path.exists():
        write_private(path,
            "# name:token:roles — read by the authority via CREDIT_AUTH_TOKENS_FILE\n"
            + "".join(f"{name}:{secrets.token_urlsafe(32)}:{roles}\n" for name, roles in DEMO_ROLES.items()))
    lines = path.read_text().splitlines()
    upgraded = upgrade_token_lines(lines)
    if upgraded != lines:
        write_private(path, "\n".join(upgraded) + "\n")
    tokens = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, token, _ = line.split(":")
            tokens[name] = token
    return tokens


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                name, _, value = line.partition("=")
                values[name.strip()] = shlex.split(value)[0] if value.strip() else ""
    return values


async def _ignore_exists(coro) -> None:
    try:
        await coro
    except AlreadyExists:
        pass


async def seed(authority: CreditAuthority, env_path: Path, tokens: dict[str, str],
               authority_addr: str) -> dict[str, str]:
    """Creates the demo tenants and keys; writes and returns the demo environment."""
    await _ignore_exists(authority.create_user(DEMO_USER, "Demo User", "demo@example.com"))
    await _ignore_exists(authority.create_user(SOLO_USER, "Solo User", "solo@example.com"))
    await _ignore_exists(authority.create_organization(DEMO_ORG, "Demo Organization"))
    await _ignore_exists(authority.add_member(DEMO_ORG, DEMO_USER, "owner", True))
    await authority.top_up_pool(DEMO_ORG, POOL_MC, "demo-seed", "", "", "demo-seed")
    members = {m.user_id: m for m in await authority.list_members(DEMO_ORG)}
    if members[DEMO_USER].allocation_mc == 0:
        await authority.set_allocation(DEMO_ORG, DEMO_USER, ALLOCATION_MC, "demo-seed")
    await authority.grant_individual(SOLO_USER, SOLO_MC, "demo seed", "demo-seed", "demo-seed")

    previous = read_env_file(env_path)
    keys = {}
    for name, user, org in (("DEMO_API_KEY", DEMO_USER, DEMO_ORG), ("SOLO_API_KEY", SOLO_USER, "")):
        old = previous.get(name, "")
        if old and await authority.verify_api_key(old) is not None:
            keys[name] = old
        else:
            _, keys[name] = await authority.create_api_key(user, org, "user", "demo key")
    env = {
        **keys,
        "CREDIT_SERVICE_TOKEN": tokens["inference"],
        "CREDIT_ADMIN_TOKEN": tokens["admin"],
        "CREDIT_AUTHORITY_ADDR": authority_addr,
    }
    write_private(env_path, "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))  # mode 0600 from creation
    return env


def shown_path(path: Path) -> str:
    """`path` relative to the working directory when under it (what a person types), else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def banner(env: dict[str, str], env_path: Path, rest: tuple[str, int] | None, metrics: tuple[str, int],
           sso_provider: str, stop_line: str, data_dir_prefix: str) -> str:
    """What `up` prints once everything listens: the demo's keys and tokens, then where to go next.

    `rest` is the REST service's (host, port) or None when it is not started; `metrics` the authority's
    (host, port 0 = off); `sso_provider` the "Sign in with" name when SSO is on; `stop_line` what Ctrl-C
    does (the last line); `data_dir_prefix` the `CREDIT_DATA_DIR=… ` a command needs when the data
    directory is not the default one."""
    env_file = shown_path(env_path)
    lines = [f"== demo (also in {env_file}; keys generated on first run) =="]
    lines += [f"{name}={value}" for name, value in env.items()]
    lines += ["", "== next steps =="]
    if rest is not None:
        base = f"http://{'localhost' if rest[0] in ('0.0.0.0', '::', '') else rest[0]}:{rest[1]}"
        sign_in = "paste DEMO_API_KEY (owner of demo-org) or SOLO_API_KEY (individual)"
        if sso_provider:
            sign_in += f", or \"Sign in with {sso_provider}\""
        lines += [f"console    {base}/console/  — {sign_in}",
                  f"API docs   {base}/docs",
                  f"metrics    {base}/metrics (REST)"
                  + (f", http://{metrics[0]}:{metrics[1]}/metrics (authority)" if metrics[1] else ""),
                  f"first call set -a; . {env_file}; set +a",
                  f"           curl -s {base}/api/v1/llm/chat/completions -H \"Authorization: Bearer $DEMO_API_KEY\""
                  " -H 'Content-Type: application/json'"
                  " -d '{\"model\": \"demo-chat\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'"]
    elif metrics[1]:
        lines.append(f"metrics    http://{metrics[0]}:{metrics[1]}/metrics (authority)")
    lines.append(f"creditctl  {data_dir_prefix}.venv/bin/creditctl org-show {DEMO_ORG}")
    lines += ["", stop_line]
    return "\n".join(lines)
