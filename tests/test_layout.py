"""The direction of dependencies the layout promises, checked on the source itself (static imports):
the torch-free core ``k2d`` imports none of the other packages, ``app`` never imports torch,
transformers or training code, ``loadtest`` talks HTTP (no ``app``, no training), training never imports
the load tester or the benchmarks (``k2d_bench`` sits beside both), nothing outside ``tests`` imports
``tests``, and no module patches ``sys.path``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("k2d", "k2d_cli", "k2d_train", "k2d_bench", "app", "loadtest")
FORBIDDEN = {
    "k2d": {"app", "k2d_train", "k2d_bench", "k2d_cli", "loadtest", "tests", "torch", "transformers"},
    "app": {"k2d_train", "k2d_bench", "k2d_cli", "loadtest", "tests", "torch", "transformers"},
    "loadtest": {"app", "k2d_train", "k2d_bench", "k2d_cli", "tests", "torch", "transformers"},
    "k2d_train": {"app", "k2d_bench", "k2d_cli", "loadtest", "tests"},  # training never imports the load tester
    "k2d_bench": {"app", "k2d_cli", "tests"},  # measurements may drive training code and the load tester
    "k2d_cli": {"tests"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_its_layer_may(package):
    offenders = {}
    for path in sorted((REPO / package).rglob("*.py")):
        bad = imported_roots(path) & FORBIDDEN.get(package, set())
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert not offenders, offenders


def test_no_module_patches_the_import_path():
    patches = ("sys.path" + ".insert", "sys.path" + ".append")  # spelled apart: this file is searched too
    patched = [str(p.relative_to(REPO)) for package in (*PACKAGES, "tests") for p in (REPO / package).rglob("*.py")
               if any(patch in p.read_text(encoding="utf-8") for patch in patches)]
    assert patched == []
    assert [p.name for p in (REPO / "scripts").iterdir()] == ["setup.sh"]  # the library holds the rest
