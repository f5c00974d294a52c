"""The package's layers import one way only: utils -> data -> ops -> models -> training -> workflows -> cli.

Every `import` / `from ... import` in src/aam (module level and inside functions, relative ones resolved) is
checked: a module may import its own layer or a lower one, never a higher one. Also: no Python module over
500 lines, and no option dicts (`kw[...]`, `kw.get(...)`) in the package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "aam"
# Lowest first. The package root's own modules (errors, native loader) and utils are the bottom layer; the
# Triton kernels (`aam.kernels`, shipped from the top-level kernels/ folder) belong to ops.
LAYERS = ["base", "data", "ops", "models", "training", "workflows", "cli"]
TOP_LEVEL_BASE = {"aam", "aam.errors", "aam.native", "aam.utils"}
MAX_LINES = 500


def layer_of(module: str) -> str:
    """The layer of a dotted module name inside aam."""
    parts = module.split(".")
    if parts[0] != "aam":
        raise ValueError(module)
    if len(parts) == 1 or ".".join(parts[:2]) in TOP_LEVEL_BASE:
        return "base"
    if parts[1] == "__main__":
        return "cli"
    if parts[1] == "kernels":
        return "ops"
    if parts[1] not in LAYERS:
        raise AssertionError(f"aam.{parts[1]} is not assigned to a layer; add it to LAYERS or TOP_LEVEL_BASE")
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every aam import in the file, wherever it stands."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "aam"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "aam":
                found.append((node.lineno, target))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("aam."):
                found.append((node.lineno, node.args[0].value))
    return found


def package_modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def upward_imports() -> list[str]:
    bad = []
    for path in package_modules():
        src_layer = LAYERS.index(layer_of(module_name(path)))
        for line, target in imported_modules(path):
            if LAYERS.index(layer_of(target)) > src_layer:
                bad.append(f"{path.relative_to(SRC.parent)}:{line} ({layer_of(module_name(path))}) imports "
                           f"{target} ({layer_of(target)})")
    return bad


def test_no_module_imports_up_the_layers():
    bad = upward_imports()
    assert not bad, "imports that run up the layers:\n" + "\n".join(bad)


def test_the_check_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function and a relative one are both found and judged."""
    pkg = tmp_path / "aam"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "x.py").write_text("def f():\n    from aam.training import trainer\n\nfrom ..cli import main\n")
    monkeypatch.setattr(__import__(__name__), "SRC", pkg)
    found = upward_imports()
    assert any("imports aam.training (training)" in b for b in found)
    assert any("imports aam.cli (cli)" in b for b in found)


def test_no_module_over_500_lines():
    long = [f"{p.relative_to(SRC.parent)}: {n}" for p in package_modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("pattern", [r"\bkw\[", r"\bkw\.get\("])
def test_no_option_dicts(pattern):
    hits = [f"{p.relative_to(SRC.parent)}:{i}" for p in package_modules()
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(pattern, line)]
    assert not hits, f"option dicts ({pattern}) left in the package: {hits}"
