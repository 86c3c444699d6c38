"""The shape of the product code, checked from its syntax trees (no imports, no servers).

Product code is credit_service/, inference_service/ and clients/python/credit_client/; generated
`*_pb2*.py` files are left out. Three rules:

* no file is over MAX_FILE_LINES lines;
* no function or method (nested ones included) is over MAX_FUNCTION_LINES lines, counted from its
  `def` line to its last line;
* no module uses a private name (a leading underscore, not a dunder) of another of our modules:
  neither `from credit_service.x import _y` (relative imports resolved) nor `mod._y` where `mod`
  was imported as one of our modules. A private *module* (`credit_client._proto`) is private to
  the package that holds it: its own package may import it, nobody else. Third-party privates
  (`asyncpg.exceptions._base`) are outside the rule.

The third rule also holds for bench/, mutation/ and tests/ using product privates: the tests
check behaviour through public names, as any other caller would. A test that cannot is listed in
ALLOWED_PRIVATE_USES with its reason (an entry that no longer matches fails too).

Each failure lists every offender as path:line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60

# Our importable packages and where each lives in the checkout.
PACKAGES = {
    "credit_service": ROOT / "credit_service",
    "inference_service": ROOT / "inference_service",
    "credit_client": ROOT / "clients/python/credit_client",
    "credit": ROOT / "credit",  # generated from protos/: ours too, when someone imports from it
}
PRODUCT = [PACKAGES["credit_service"], PACKAGES["inference_service"], PACKAGES["credit_client"]]

# (file, private name) -> why that file needs it. Keep it short: every entry is a test reaching inside.
ALLOWED_PRIVATE_USES = {
    ("tests/inference/test_quiet_litellm.py", "_shipped"):
        "white-box: swaps the LiteLLM handler the wrapper forwards to, to count the calls it lets through",
    ("tests/inference/test_quiet_litellm.py", "_async_success_handler"):
        "white-box: checks the wrapper, not LiteLLM's own handler, is what quiet_litellm installed",
}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def python_files(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*.py")
                  if "__pycache__" not in p.parts and "_pb2" not in p.name)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def module_name(path: Path) -> str | None:
    """The dotted name of one of our product files (None for bench/, mutation/, tests/)."""
    for package, directory in PACKAGES.items():
        if path.is_relative_to(directory):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return None


def is_our_module(dotted: str) -> bool:
    top, *rest = dotted.split(".")
    if top not in PACKAGES:
        return False
    base = PACKAGES[top].joinpath(*rest)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def resolve(path: Path, node: ast.ImportFrom) -> str | None:
    """The absolute module an ImportFrom reads from (relative imports resolved against the file)."""
    if node.level == 0:
        return node.module
    own = module_name(path)
    if own is None:
        return None  # a relative import inside bench/, mutation/ or tests/: not product code
    package = own.split(".") if path.name == "__init__.py" else own.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@dataclass(frozen=True)
class Offence:
    path: Path
    line: int
    what: str
    name: str = ""  # the private name used (rule three)

    @property
    def allowed(self) -> bool:
        return (rel(self.path), self.name) in ALLOWED_PRIVATE_USES

    def __str__(self) -> str:
        return f"{rel(self.path)}:{self.line}: {self.what}"


def private_module_part(dotted: str, importer: str | None) -> str | None:
    """The first private component of one of our module paths that `importer` may not use."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if is_private(part):
            owner = ".".join(parts[:i])
            if importer is None or not (importer == owner or importer.startswith(owner + ".")):
                return ".".join(parts[: i + 1])
            return None
    return None


def private_uses(path: Path) -> Iterator[Offence]:
    tree = ast.parse(path.read_text(), filename=str(path))
    importer = module_name(path)
    modules: dict[str, str] = {}  # local name -> our module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not is_our_module(alias.name):
                    continue
                hidden = private_module_part(alias.name, importer)
                if hidden:
                    yield Offence(path, node.lineno, f"import {alias.name} (private {hidden})", hidden)
                if alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    modules[top] = top
        elif isinstance(node, ast.ImportFrom):
            source = resolve(path, node)
            if source is None or not is_our_module(source):
                continue
            hidden = private_module_part(source, importer)
            if hidden:
                yield Offence(path, node.lineno, f"from {source} import … (private {hidden})", hidden)
            for alias in node.names:
                if is_private(alias.name):
                    yield Offence(path, node.lineno, f"from {source} import {alias.name}", alias.name)
                elif is_our_module(f"{source}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{source}.{alias.name}"
    yield from private_attributes(path, tree, modules, importer)


def private_attributes(path: Path, tree: ast.AST, modules: dict[str, str], importer: str | None
                       ) -> Iterator[Offence]:
    """`mod._y` (or `pkg.mod._y`) where `mod` names one of our modules."""
    seen: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain: list[str] = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute):
            chain.append(current.attr)
            current = current.value
        if not isinstance(current, ast.Name) or current.id not in modules:
            continue
        module = modules[current.id]
        for attr in reversed(chain):
            if is_private(attr) and not (is_our_module(f"{module}.{attr}")
                                         and not private_module_part(f"{module}.{attr}", importer)):
                if (node.lineno, f"{module}.{attr}") not in seen:
                    seen.add((node.lineno, f"{module}.{attr}"))
                    yield Offence(path, node.lineno, f"{current.id}…{attr}: private {attr} of {module}", attr)
                break
            if not is_our_module(f"{module}.{attr}"):
                break
            module = f"{module}.{attr}"


def product_files() -> list[Path]:
    return [p for top in PRODUCT for p in python_files(top)]


def report(offences: list[Offence], rule: str) -> str:
    return f"{len(offences)} offender(s) of: {rule}\n" + "\n".join(f"  {o}" for o in offences)


def test_the_checker_sees_the_product() -> None:
    files = {rel(p) for p in product_files()}
    assert "credit_service/money.py" in files
    assert "inference_service/billing.py" in files
    assert "clients/python/credit_client/client.py" in files
    assert not any("_pb2" in f for f in files)


def test_no_file_is_over_the_line_limit() -> None:
    offences = [Offence(p, 1, f"{n} lines") for p in product_files()
                if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not offences, report(offences, f"a file is at most {MAX_FILE_LINES} lines")


def test_no_function_is_over_the_line_limit() -> None:
    offences = []
    for path in product_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    offences.append(Offence(path, node.lineno, f"{node.name}() is {length} lines"))
    assert not offences, report(offences, f"a function is at most {MAX_FUNCTION_LINES} lines")


@pytest.mark.parametrize("where", ["product", "bench", "mutation", "tests"])
def test_no_private_name_of_our_modules_is_used_elsewhere(where: str) -> None:
    files = product_files() if where == "product" else python_files(ROOT / where)
    assert files, f"no Python files found for {where}"
    offences = [o for path in files for o in private_uses(path) if not o.allowed]
    assert not offences, report(offences, "no module uses a private name of another of our modules")


def test_every_allowed_private_use_is_still_there() -> None:
    used = {(rel(o.path), o.name) for path in python_files(ROOT / "tests") for o in private_uses(path)}
    stale = sorted(set(ALLOWED_PRIVATE_USES) - used)
    assert not stale, f"ALLOWED_PRIVATE_USES entries that match nothing any more (remove them): {stale}"


# ---- the checker itself: it must catch what it claims to -----------------------------------------

CAUGHT = '''
from credit_service.money import _THOUSANDTH
from credit_service import embedded_db
import credit_service.embedded_db as edb
import credit_service.embedded_db
from credit_client._proto import authority_pb2
embedded_db._run_as_postgres_user()
edb._hidden
credit_service.embedded_db._other
'''

NOT_CAUGHT = '''
from credit_service.money import MAX_MILLICREDITS, __doc__
import asyncpg.exceptions._base
from asyncpg.exceptions import _base
from credit_service import money
money.__name__
money.MAX_MILLICREDITS.__class__
asyncpg.exceptions._base.InternalClientError
self._private
'''


def test_the_private_name_rule_catches_each_form(tmp_path: Path) -> None:
    caught = tmp_path / "caught.py"
    caught.write_text(CAUGHT)
    lines = sorted(o.line for o in private_uses(caught))
    assert lines == [2, 6, 7, 8, 9], [str(o) for o in private_uses(caught)]
    quiet = tmp_path / "quiet.py"
    quiet.write_text(NOT_CAUGHT)
    assert [str(o) for o in private_uses(quiet)] == []


def test_relative_imports_are_resolved_and_private_modules_belong_to_their_package() -> None:
    client = PACKAGES["credit_client"] / "client.py"
    tree = ast.parse("from ._proto import authority_pb2\nfrom .errors import _x\n")
    assert resolve(client, tree.body[0]) == "credit_client._proto"
    assert resolve(client, tree.body[1]) == "credit_client.errors"
    assert private_module_part("credit_client._proto", "credit_client.client") is None
    assert private_module_part("credit_client._proto", "inference_service.app") == "credit_client._proto"
    assert private_module_part("credit_client._proto", None) == "credit_client._proto"
    rpc = PACKAGES["credit_service"] / "server" / "rpc.py"
    assert resolve(rpc, ast.parse("from ..money import _x").body[0]) == "credit_service.money"
