"""The folder tree is the architecture: server -> engine -> kernels, never upward."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

FORBIDDEN = {"kernels": {"engine", "server"}, "engine": {"server"}}


def _imported_packages(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_no_upward_imports(package):
    offenders = [
        f"{f.relative_to(REPO)} imports {p}"
        for f in sorted((REPO / package).rglob("*.py"))
        for p in _imported_packages(f)
        if p in FORBIDDEN[package]
    ]
    assert not offenders, offenders
