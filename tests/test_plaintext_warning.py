"""A loud warning when the authority serves plaintext gRPC beyond loopback (issue 17), and metrics on
loopback unless configured."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import AuthorityProcess, free_port

from credit_service.server.serve import is_loopback
from credit_service.settings import Settings

WARNING = "PLAINTEXT gRPC on a non-loopback address"


def _log_of(database_url, tokens, listen_host: str) -> str:
    port = free_port()
    process = AuthorityProcess(database_url, tokens, {"CREDIT_LISTEN_ADDR": f"{listen_host}:{port}"})
    try:
        process.start(port)
    finally:
        process.stop()
    return process.log_path.read_text()


def test_plaintext_on_all_interfaces_logs_a_warning(database_url, tokens):
    log = _log_of(database_url, tokens, "0.0.0.0")
    assert WARNING in log and "0.0.0.0" in log and "CREDIT_TLS_CERT_FILE" in log


def test_plaintext_on_loopback_logs_no_warning(database_url, tokens):
    log = _log_of(database_url, tokens, "127.0.0.1")
    assert "listening on 127.0.0.1" in log
    assert WARNING not in log


@pytest.mark.parametrize(("addr", "loopback"), [("127.0.0.1:50051", True), ("[::1]:50051", True),
                                                 ("localhost:50051", True), ("0.0.0.0:50051", False),
                                                 ("[::]:50051", False), ("10.1.2.3:50051", False),
                                                 ("credit.internal:50051", False)])
def test_which_listen_addresses_are_loopback(addr, loopback):
    assert is_loopback(addr) is loopback


def test_the_authority_metrics_listen_on_loopback_by_default(database_url, tokens, monkeypatch):
    monkeypatch.delenv("CREDIT_METRICS_HOST", raising=False)
    assert Settings.from_env().metrics_host == "127.0.0.1"
    metrics_port = free_port()
    process = AuthorityProcess(database_url, tokens, {"CREDIT_METRICS_PORT": str(metrics_port)}).start()
    try:
        listening = {conn for conn in _listening_tcp() if conn[1] == metrics_port}
        assert listening == {("127.0.0.1", metrics_port)}, listening
    finally:
        process.stop()


def _listening_tcp() -> set[tuple[str, int]]:
    """(address, port) of every IPv4 TCP socket in LISTEN, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A":
            hex_addr, hex_port = local.split(":")
            found.add((socket.inet_ntoa(bytes.fromhex(hex_addr)[::-1]), int(hex_port, 16)))
    return found
