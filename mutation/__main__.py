"""`python -m mutation` (`make mutate`): apply each mutant of mutation/mutants.py to a scratch copy of
the checkout, run the tests that guard it there, and fail unless every mutant is killed.

    python -m mutation                   # every mutant (about 20 min on 2 cores)
    python -m mutation --only NAME[,…]   # some
    python -m mutation --rotate 3        # 3 mutants, a different 3 each day (what `make test` runs)
    python -m mutation --list

A mutant is killed when its tests fail; it survives when they pass. A mutant whose
text is not found exactly once, or whose tests cannot run (pytest exit status other
than 0 or 1), is an error: the list is stale, and the gate fails too. Before the
mutants, the same tests run once on an unmutated copy and must pass (else every
mutant would look killed); `make test` skips that baseline, having just run them all.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_SECONDS = 600


def scratch_copy() -> Path:
    """The checkout's tracked and unignored files, as they are in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    target = Path(tempfile.mkdtemp(prefix="mutant-"))
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def latest_definition(function: str, tree: Path) -> str:
    """The file holding the live `function`: migrations/functions/<function>.sql, which the runner applies
    after the numbered history, when it exists; else the last numbered migration that (re)defines it."""
    pattern = re.compile(rf"CREATE (OR REPLACE )?FUNCTION {re.escape(function)}\(")
    current = tree / "migrations" / "functions" / f"{function}.sql"
    if current.is_file() and pattern.search(current.read_text()):
        return str(current.relative_to(tree))
    defining = [p for p in sorted((tree / "migrations").glob("*.sql")) if pattern.search(p.read_text())]
    return str(defining[-1].relative_to(tree)) if defining else ""


def apply(mutant: Mutant, tree: Path) -> None:
    if mutant.function and latest_definition(mutant.function, tree) != mutant.path:
        raise LookupError(f"{mutant.path} no longer holds the live {mutant.function} "
                          f"(latest: {latest_definition(mutant.function, tree) or 'none'}): the mutant is stale")
    path = tree / mutant.path
    text = path.read_text()
    for original, replacement in mutant.edits:
        found = text.count(original)
        if found != 1:
            raise LookupError(f"{mutant.path}: the text to mutate occurs {found} times, not once: "
                              f"{original.strip()[:80]!r}")
        text = text.replace(original, replacement)
    path.write_text(text)


def pytest(tree: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    """Runs the tests in `tree`; (exit status, the first failure's line or the summary)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "CREDIT_TEST_ALLOW_SKIPS": "0"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", *tests],
                            cwd=tree, env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    lines = result.stdout.strip().splitlines() or [""]
    failed = [line for line in lines if line.startswith("FAILED ")]
    return result.returncode, (failed[0][:300] if failed else lines[-1])


def baseline(mutants: list[Mutant]) -> None:
    """The guard tests pass on an unmutated copy, or the gate stops here."""
    tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
    tree = scratch_copy()
    try:
        status, detail = pytest(tree, tests)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    print(f"BASELINE (no mutant): exit {status} — {detail}", flush=True)
    if status != 0:
        sys.exit("the guard tests fail without any mutant: fix them first")


def run(mutant: Mutant) -> tuple[str, float, str]:
    """(killed | survived | error, seconds, detail)."""
    started = time.monotonic()
    tree = scratch_copy()
    try:
        apply(mutant, tree)
        status, detail = pytest(tree, mutant.tests)
        verdict = {0: "survived", 1: "killed"}.get(status, "error")
        return verdict, time.monotonic() - started, detail
    except LookupError as error:
        return "error", time.monotonic() - started, str(error)
    except subprocess.TimeoutExpired:
        return "killed", time.monotonic() - started, f"tests did not finish in {TIMEOUT_SECONDS} s"
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def choose(args: argparse.Namespace) -> list[Mutant]:
    if args.only:
        names = set(args.only.split(","))
        unknown = names - {m.name for m in MUTANTS}
        if unknown:
            sys.exit(f"unknown mutants: {', '.join(sorted(unknown))}")
        return [m for m in MUTANTS if m.name in names]
    if args.rotate:
        start = datetime.date.today().toordinal() * args.rotate
        return [MUTANTS[(start + i) % len(MUTANTS)] for i in range(min(args.rotate, len(MUTANTS)))]
    return list(MUTANTS)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma list of mutant names")
    parser.add_argument("--rotate", type=int, default=0, help="run N mutants, a different N each day")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the guard tests")
    args = parser.parse_args()
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:38} {m.path:45} {m.what}")
        return
    chosen = choose(args)
    if not args.no_baseline:
        baseline(chosen)
    counts = {"killed": 0, "survived": 0, "error": 0}
    for m in chosen:
        verdict, seconds, detail = run(m)
        counts[verdict] += 1
        print(f"MUTANT {m.name}: {verdict} in {seconds:.0f} s — {m.what} ({' '.join(m.tests)}): {detail}",
              flush=True)
    print(f"MUTANTS killed={counts['killed']} survived={counts['survived']} errors={counts['error']}")
    if counts["survived"] or counts["error"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
