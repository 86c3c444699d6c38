"""`python3 -m credit_service.bootstrap VENV [--quiet]`: make's first step, run by the system Python with the
standard library only (nothing is installed yet): the virtualenv, then pip, then the package with its test
extras. On a terminal each step is named as it starts and finishes, with its duration, and pip shows its own
progress; otherwise (or with --quiet, which `make run CREDIT_QUIET=1` passes) pip runs quietly and only
failures print.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def _step(show: bool, name: str, argv: list[str]) -> None:
    if show:
        print(f"▸ {name} …", flush=True)
    started = time.monotonic()
    result = subprocess.run(argv)
    if result.returncode != 0:
        print(f"✗ {name}: failed (exit code {result.returncode}): {' '.join(argv)}", file=sys.stderr, flush=True)
        sys.exit(result.returncode)
    if show:
        print(f"✓ {name}: done ({time.monotonic() - started:.1f} s)", flush=True)


def main(argv: list[str]) -> None:
    venv = Path(argv[0])
    show = "--quiet" not in argv and sys.stdout.isatty()
    quiet = [] if show else ["--quiet"]
    python = venv / "bin" / "python"
    fresh = not python.exists()
    if show:
        print("First run of this checkout: a virtualenv and every package (about 1–2 minutes)." if fresh else
              "pyproject.toml changed: updating the packages in .venv.", flush=True)
    started = time.monotonic()
    if fresh:
        _step(show, f"virtualenv {venv}/", [sys.executable, "-m", "venv", str(venv)])
    _step(show, "pip itself", [str(python), "-m", "pip", "install", *quiet, "--upgrade", "pip"])
    _step(show, "packages: pip install -e '.[test]'", [str(python), "-m", "pip", "install", *quiet, "-e", ".[test]"])
    if show:
        print(f"✓ .venv ready ({time.monotonic() - started:.0f} s); the next `make run` skips this.", flush=True)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:  # Ctrl-C: the next make starts over (its stamp was not written)
        print("\ninterrupted: the next `make run` installs again", file=sys.stderr)
        sys.exit(130)
