"""The committed gRPC code and stubs (credit/v1 and the Python client's copy) are exactly what `make proto`
generates from protos/."""

from __future__ import annotations

import filecmp
from pathlib import Path

from credit_service.protogen import CLIENT_FILES, CLIENT_STUBS, generate, generate_client

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_the_protos(tmp_path):
    generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "credit").rglob("*_pb2*.py*"))
    assert generated == committed, "generated files differ from the committed ones: run `make proto`"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"stale generated code (run `make proto` and commit): {stale}"


def test_the_python_clients_copy_of_the_stubs_matches_the_protos(tmp_path):
    """clients/python ships its own copy of the hot-path stubs (credit_client/_proto); `make proto` writes it."""
    generate_client(tmp_path)
    committed_dir = ROOT / CLIENT_STUBS
    generated = sorted(p.name for p in tmp_path.glob("*_pb2*.py*"))
    committed = sorted(p.name for p in committed_dir.glob("*_pb2*.py*"))
    assert generated == committed == sorted(CLIENT_FILES), "the client's stubs differ: run `make proto`"
    stale = [name for name in generated if not filecmp.cmp(tmp_path / name, committed_dir / name, shallow=False)]
    assert not stale, f"stale stubs in {CLIENT_STUBS} (run `make proto` and commit): {stale}"
