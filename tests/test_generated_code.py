"""The committed gRPC code and stubs are exactly what `make proto` generates from protos/."""

from __future__ import annotations

import filecmp
from pathlib import Path

from credit_service.protogen import generate

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_the_protos(tmp_path):
    generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "credit").rglob("*_pb2*.py*"))
    assert generated == committed, "generated files differ from the committed ones: run `make proto`"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"stale generated code (run `make proto` and commit): {stale}"
