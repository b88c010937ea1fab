"""The layout DESIGN.md draws, checked on the source: who may import whom, and module size."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"protocol", "registry", "weiclient", "serving", "server_agent", "examples", "bench", "tests"}
MAY_IMPORT = {
    "protocol": set(),
    "registry": set(),
    "weiclient": {"registry", "protocol"},
    "serving": {"protocol"},
    "server_agent": {"registry", "protocol"},
}
PROTOCOL_THIRD_PARTY = {"numpy", "msgpack"}
# protocol/oip: the OIP messages are protobuf code generated from grpc_predict_v2.proto (and what reads
# them); only that subpackage may import google.protobuf, so the rest of protocol stays protobuf-free.
OIP_THIRD_PARTY = {"google"}


def imports(path: Path) -> set[str]:
    """Top-level names of absolute imports in one module (relative imports stay in the package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_a_package_imports_only_the_packages_below_it(package):
    wrong = {f"{p.relative_to(ROOT)} imports {name}"
             for p in modules(package) for name in imports(p) & OURS - MAY_IMPORT[package] - {package}}
    assert not wrong, sorted(wrong)


def test_protocol_needs_only_the_standard_library_numpy_and_msgpack():
    def allowed(p: Path) -> set[str]:
        oip = p.relative_to(ROOT).parts[:2] == ("protocol", "oip")
        return PROTOCOL_THIRD_PARTY | {"protocol"} | (OIP_THIRD_PARTY if oip else set())
    outside = {f"{p.relative_to(ROOT)} imports {name}" for p in modules("protocol") for name in imports(p)
               if name not in sys.stdlib_module_names and name not in allowed(p)}
    assert not outside, sorted(outside)


def test_no_module_is_over_400_lines():
    big = {str(p.relative_to(ROOT)): n for package in MAY_IMPORT for p in modules(package)
           if (n := len(p.read_text().splitlines())) > 400}
    assert not big, big
