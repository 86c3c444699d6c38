"""Generates the Python gRPC code and its mypy stubs from protos/ (grpcio-tools +
mypy-protobuf). `make proto` and the staleness test both call this, so they
cannot disagree about how the committed code is made."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
# The installable Python client (clients/python) ships its own copy of the hot-path stubs, so that it
# needs no file of the server's package: these files, with `from credit.v1 import` made relative.
CLIENT_STUBS = Path("clients", "python", "credit_client", "_proto")
CLIENT_FILES = ("authority_pb2.py", "authority_pb2.pyi", "authority_pb2_grpc.py", "authority_pb2_grpc.pyi",
                "types_pb2.py", "types_pb2.pyi")


def generate(out_dir: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    plugin_dir = Path(sys.executable).parent
    mypy, mypy_grpc = shutil.which("protoc-gen-mypy", path=str(plugin_dir)), \
        shutil.which("protoc-gen-mypy_grpc", path=str(plugin_dir))
    if not (mypy and mypy_grpc):
        raise RuntimeError("mypy-protobuf's protoc plugins are not installed next to this Python")
    args = ["grpc_tools.protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", f"--plugin=protoc-gen-mypy={mypy}",
            f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}", f"--mypy_out={out_dir}", f"--mypy_grpc_out={out_dir}",
            *sources]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")


def generate_client(out_dir: Path) -> None:
    """Writes the client's copy of the stubs (CLIENT_FILES) into out_dir."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in CLIENT_FILES:
            text = (Path(tmp) / "credit" / "v1" / name).read_text()
            (out_dir / name).write_text(text.replace("from credit.v1 import ", "from . import "))


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    generate(root)
    generate_client(root / CLIENT_STUBS)
