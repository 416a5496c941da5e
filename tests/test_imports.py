"""Tests of the package layout: imports come from this tree; the sans-I/O core does no I/O."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Modules the protocol core and the policies must not import (STYLE habit 1).
IO_MODULES = frozenset({"asyncio", "websockets", "aiosqlite"})


def sans_io_files() -> list[Path]:
    """The sans-I/O source files: frames, router, the version tables and every policy."""
    files = [REPO / "proxy" / "frames.py", REPO / "proxy" / "router.py"]
    files += sorted((REPO / "proxy" / "versions").glob("*.py"))
    files += sorted((REPO / "policies").rglob("*.py"))
    return files


def imported_roots(source: str) -> set[str]:
    """The top-level names of every module imported anywhere in ``source``."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            roots.add(node.args[0].value.split(".")[0])
    return roots


@pytest.mark.parametrize("package", ["proxy", "policies", "config"])
def test_package_imports_from_this_tree(package: str) -> None:
    """proxy, policies and config are this repository's, not another distribution's."""
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().is_relative_to(REPO)
    assert Path(module.__file__).resolve().parent == REPO / package


def test_sans_io_file_list_is_not_empty() -> None:
    """The check below covers frames, router, both version tables and the policies."""
    names = {p.relative_to(REPO).as_posix() for p in sans_io_files()}
    assert {"proxy/frames.py", "proxy/router.py", "proxy/versions/ocpp16.py"} <= names
    assert {"proxy/versions/ocpp201.py", "policies/authorization.py"} <= names


def test_import_check_detects_every_form() -> None:
    """The import scanner sees plain, dotted, from- and nested imports."""
    source = (
        "import os, asyncio\n"
        "from websockets.asyncio.client import connect\n"
        "def f():\n    import aiosqlite.core\n"
        "importlib.import_module('websockets')\n"
    )
    assert imported_roots(source) >= {"os", "asyncio", "websockets", "aiosqlite"}


@pytest.mark.parametrize("path", sans_io_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_sans_io_module_does_not_import_io(path: Path) -> None:
    """STYLE habit 1: the sans-I/O core and policies import no asyncio, websockets, aiosqlite."""
    found = imported_roots(path.read_text(encoding="utf-8")) & IO_MODULES
    assert not found, f"{path.relative_to(REPO)} imports {sorted(found)}"


def test_sans_io_modules_pull_in_no_network_or_store_library() -> None:
    """A fresh interpreter importing the sans-I/O modules loads no websockets, no aiosqlite."""
    modules = ["proxy.frames", "proxy.router", "proxy.versions"]
    modules += [
        "proxy.versions." + p.stem for p in sorted((REPO / "proxy" / "versions").glob("*.py"))
    ]
    modules += [
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in sorted((REPO / "policies").rglob("*.py"))
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        "print(sorted(m for m in ('websockets', 'aiosqlite') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"
