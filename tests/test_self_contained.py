"""The repository stands on its own, and the settings modules are the only readers of the environment.

* No tracked file refers to a path outside the checkout (a sibling directory, a document that
  lives elsewhere): a clone must have everything it names.
* No product module reads os.environ except credit_service/settings.py (and the short,
  explained allow-list below); inference_service/settings.py declares its settings with its helpers.
* Each setting's default is written once and the README's configuration table matches it.
"""

from __future__ import annotations

import ast
import re
import subprocess
from dataclasses import fields
from decimal import Decimal
from pathlib import Path

from helpers import ROOT

from credit_service.settings import AdminCliSettings, AlertSettings, OutputSettings, Settings
from inference_service.settings import Settings as InferenceSettings
from inference_service.settings import SsoSettings

THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Documents and directories of the workspace this project was built in, which a clone does not have.
# Spelled in pieces so that this file does not itself name them.
OUTSIDE_NAMES = (".." + "/shared", "/work/" + "shared", "shared/" + "DESIGN", "DESIGN" + ".md", "STYLE" + ".md",
                 "seed" + "/")

# Applied migrations are immutable (the runner refuses an edited one): their comments stay as written.
IMMUTABLE = {"migrations/0002_hot_path.sql": {"DESIGN" + ".md"}}

# A relative path climbing out of its directory: resolved below against the file's own directory.
CLIMB = re.compile(r"(?<![\w/.%])((?:\.\./)+)")


def tracked_text_files() -> dict[str, str]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = {}
    for name in names.decode().split("\0"):
        path = ROOT / name
        if not name or name == THIS or not path.is_file():
            continue
        try:
            files[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary (protos/released.binpb, images)
            continue
    return files


def test_no_tracked_file_refers_to_a_path_outside_the_repository():
    found = []
    for name, text in tracked_text_files().items():
        for needle in OUTSIDE_NAMES:
            if needle in text and needle not in IMMUTABLE.get(name, ()):
                line = text[:text.index(needle)].count("\n") + 1
                found.append(f"{name}:{line}: {needle!r}")
        for match in CLIMB.finditer(text):
            target = ((ROOT / name).parent / match.group(1)).resolve()
            if not target.is_relative_to(ROOT):
                line = text[:match.start()].count("\n") + 1
                found.append(f"{name}:{line}: {match.group(1)!r} climbs out of the checkout")
    assert not found, "references to paths outside the repository:\n" + "\n".join(found)


# Modules that may touch os.environ besides the settings modules, and why.
ENV_ALLOWED = {
    # The reader of the environment (inference_service/settings.py declares its settings with it).
    "credit_service/settings.py": "the reader of the environment",
    # Sets LiteLLM's offline cost map before litellm is first imported (a write, not a setting).
    "inference_service/__init__.py": "LITELLM_LOCAL_MODEL_COST_MAP default",
    # models.yaml names its providers' key variables the LiteLLM way (`api_key: os.environ/NAME`);
    # which variables those are is the catalogue's data, not a setting.
    "inference_service/catalogue.py": "models.yaml's os.environ/NAME provider keys",
}
ENV_FUNCTIONS = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def environment_reads(source: str) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and node.attr in ENV_FUNCTIONS
                and isinstance(node.value, ast.Name) and node.value.id == "os"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" \
                and any(alias.name in ENV_FUNCTIONS for alias in node.names):
            lines.append(node.lineno)
    return lines


def test_only_the_settings_modules_read_the_environment():
    found = []
    for package in ("credit_service", "inference_service"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name in ENV_ALLOWED:
                continue
            found += [f"{name}:{line}" for line in environment_reads(path.read_text())]
    assert not found, "environment read outside the settings modules (declare a setting instead):\n" \
        + "\n".join(found)
    stale = [name for name in ENV_ALLOWED if not environment_reads((ROOT / name).read_text())]
    assert not stale, f"allowed to read the environment but no longer does (drop from ENV_ALLOWED): {stale}"


def test_the_environment_check_sees_every_spelling():
    assert environment_reads("import os\nos.environ.get('X')\n") == [2]
    assert environment_reads("import os\nos.getenv('X')\n") == [2]
    assert environment_reads("from os import environ\n") == [1]
    assert environment_reads("import os\nos.path.join('a')\n") == []


SETTINGS_CLASSES = (Settings, AlertSettings, AdminCliSettings, OutputSettings, InferenceSettings, SsoSettings)


def declared_variables() -> dict[str, list[object]]:
    """Every variable a settings class reads, with its defaults (one per class that reads it)."""
    variables: dict[str, list[object]] = {}
    for cls in SETTINGS_CLASSES:
        for declared in fields(cls):
            if "env" in declared.metadata:
                variables.setdefault(declared.metadata["env"], []).append(declared.default)
    return variables


def test_an_empty_environment_gives_the_declared_defaults():
    for cls in SETTINGS_CLASSES:
        assert cls.from_env({}) == cls(), cls.__name__
        blank = {declared.metadata["env"]: "  " for declared in fields(cls) if "env" in declared.metadata}
        assert cls.from_env(blank) == cls(), f"{cls.__name__}: a blank variable means the default"


def test_values_take_the_type_of_their_default():
    settings = Settings.from_env({"CREDIT_BATCH_MAX": "1", "CREDIT_SWEEP_INTERVAL_SECONDS": " 0.5 ",
                                  "CREDIT_REUSE_PORT": "yes", "CREDIT_ACCESS_LOG": "no",
                                  "CREDIT_MIGRATE_ON_START": "maybe", "INFERENCE_ENABLED": "0",
                                  "CREDIT_ALERT_MAX_ATTEMPTS": "3", "CREDIT_DATA_DIR": "/tmp/credit-data"})
    assert (settings.batch_max, settings.sweep_interval_seconds) == (1, 0.5)
    # a yes/no setting changes only on an explicit opposite
    assert (settings.reuse_port, settings.access_log, settings.migrate_on_start) == (True, False, True)
    assert settings.start_inference is False
    assert settings.alerts.max_attempts == 3 and settings.data_dir == Path("/tmp/credit-data")
    inference = InferenceSettings.from_env({"INFERENCE_MARKUP": "0.2", "CREDIT_DATA_DIR": "/tmp/credit-data"})
    assert inference.markup == Decimal("0.2")
    assert inference.outbox_path == Path("/tmp/credit-data/commit_outbox.sqlite3")
    assert InferenceSettings.from_env({"INFERENCE_OUTBOX_PATH": "/tmp/o.sqlite3"}).outbox_path == Path("/tmp/o.sqlite3")
    assert InferenceSettings().outbox_path == ROOT / ".data" / "commit_outbox.sqlite3"


def readme_configuration() -> dict[str, str]:
    """The README's configuration table: variable → default cell."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z0-9_]+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(" / ")] if len(names) > 1 else [cells[1]]
        for i, name in enumerate(names):
            rows[name] = defaults[i] if len(defaults) == len(names) else cells[1]
    return rows


def test_the_readme_configuration_table_lists_every_setting_with_its_default():
    documented = readme_configuration()
    declared = declared_variables()
    missing = sorted(set(declared) - set(documented))
    assert not missing, f"settings missing from README's configuration table: {missing}"
    for name, defaults in declared.items():
        cell = documented[name]
        literal = re.fullmatch(r"`([^`]*)`", cell)
        for default in defaults:
            if isinstance(default, bool):
                assert literal and literal.group(1) == ("1" if default else "0"), f"{name}: README says {cell}"
            elif isinstance(default, (int, float, Decimal)):
                assert literal and Decimal(literal.group(1)) == Decimal(str(default)), \
                    f"{name}: README says {cell}, the code {default}"
    undeclared = sorted(name for name in documented if name.startswith(("CREDIT_", "INFERENCE_", "DATABASE_"))
                        and name not in declared)
    assert not undeclared, f"README documents variables no settings class reads: {undeclared}"
