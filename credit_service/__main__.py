"""`python -m credit_service serve | migrate | up`.

serve   — run one authority process (DATABASE_URL or the embedded PostgreSQL).
migrate — apply pending migrations and exit.
up      — zero-setup: embedded PostgreSQL, migrations, demo seed, tokens and
          keys in .data/demo.env, the inference service on :8084, then serve
          (what `make run` calls).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import subprocess
import sys

import uvloop

from . import logs
from .authority import CreditAuthority
from .demo import ensure_tokens, seed
from .embedded_db import ensure_database
from .migrate import migrate
from .server import serve
from .settings import Settings, child_environment
from .storage import Storage


async def _migrate(settings: Settings) -> None:
    url = ensure_database(settings.database_url, settings.data_dir, settings.embedded_pg_port)
    applied = await migrate(url)
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))


async def _up(settings: Settings) -> None:
    token_file = settings.data_dir / "auth_tokens"
    tokens = ensure_tokens(token_file)
    settings = dataclasses.replace(
        settings, auth_tokens_file=settings.auth_tokens_file or str(token_file))
    url = ensure_database(settings.database_url, settings.data_dir, settings.embedded_pg_port)
    await migrate(url)
    storage = await Storage.connect(url, 1, 2)
    try:
        port = settings.listen_addr.rsplit(":", 1)[1]
        env = await seed(CreditAuthority(storage), settings.data_dir / "demo.env", tokens, f"127.0.0.1:{port}")
    finally:
        await storage.close()
    print("\n== demo (also in .data/demo.env) ==")
    for name, value in env.items():
        print(f"{name}={value}")
    print(flush=True)
    inference = _start_inference(env, settings)
    try:
        await serve(dataclasses.replace(settings, database_url=url, migrate_on_start=False))
    finally:
        if inference is not None:
            inference.terminate()
            inference.wait(timeout=20)


def _start_inference(env: dict[str, str], settings: Settings) -> subprocess.Popen | None:
    """The REST service next to the authority (INFERENCE_ENABLED=0 to skip)."""
    if not settings.start_inference:
        return None
    child_env = child_environment(CREDIT_SERVICE_TOKEN=env["CREDIT_SERVICE_TOKEN"],
                                  CREDIT_AUTHORITY_ADDR=env["CREDIT_AUTHORITY_ADDR"],
                                  CREDIT_DATA_DIR=str(settings.data_dir))
    return subprocess.Popen([sys.executable, "-m", "inference_service"], env=child_env)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m credit_service")
    parser.add_argument("command", choices=["serve", "migrate", "up"])
    args = parser.parse_args(argv)
    logs.configure()
    settings = Settings.from_env()
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
    elif args.command == "up":
        uvloop.run(_up(settings))
    else:
        # uvloop, as the REST service runs: measured +5 % Reserve/Commit pairs a second
        # (asyncpg's protocol and the loop itself are cheaper on it; grpc.aio runs on any loop).
        uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
