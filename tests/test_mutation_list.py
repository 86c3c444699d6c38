"""The mutation gate's list stays current: every mutant still finds its text, exactly once, and an SQL
mutant changes the live definition of its function (a later migration would make it a silent survivor)."""

from __future__ import annotations

import pytest
from conftest import ROOT

from mutation.__main__ import latest_definition
from mutation.mutants import MUTANTS


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_each_mutant_applies_to_the_live_code(mutant):
    text = (ROOT / mutant.path).read_text()
    for original, _ in mutant.edits:
        assert text.count(original) == 1, f"{mutant.name}: {original.strip()[:60]!r} is not in {mutant.path} once"
    if mutant.path.startswith("migrations/"):
        assert mutant.function, f"{mutant.name}: an SQL mutant names its function"
        assert latest_definition(mutant.function, ROOT) == mutant.path, f"{mutant.name} is stale"
    for test in mutant.tests:
        assert (ROOT / test).exists(), f"{mutant.name}: no {test}"


def test_the_list_has_at_least_twenty_mutants_and_the_two_named_breakages():
    names = {m.name for m in MUTANTS}
    assert len(MUTANTS) >= 20
    assert {"batch-no-for-update", "batch-replay-finalized"} <= names
