"""The layered package (issue 13): one-way imports, no hidden imports, heavy libraries stay lazy.

Layers, each importing only from itself and the layers before it::

    core (exceptions, util, progress, metrics) <- data <- models <- inference <- extraction
    <- study <- report (and bench*) <- cli

The facade ``xrayfx/__init__.py`` is exempt (it maps names lazily onto every layer).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG_DIR = ROOT / "xrayfx"

LAYERS = ("core", "data", "models", "inference", "extraction", "study", "report", "cli")
#: Top-level modules of the core layer (small, dependency-free helpers).
CORE_MODULES = {"exceptions", "util", "progress", "metrics", "csvsafe", "storage"}
#: Subpackages and their layer; top-level ``bench*.py`` sits in the report layer.
SUBPACKAGE_LAYER = {name: name for name in LAYERS if name != "core"}
#: Modules where function-level imports of xrayfx's own modules are allowed (lazy on purpose).
#: Nowhere else, not even inside one package: an import cycle means a piece belongs in a lower module.
LAZY_IMPORTERS = ("xrayfx", "xrayfx.cli")
#: Optional heavy libraries: imported inside the functions that need them, never at import time.
HEAVY = ("tensorflow", "keras", "tf2onnx", "openvino", "dask", "distributed", "skops", "pydicom")
#: Modules allowed to import a heavy library at module level (none today).
HEAVY_AT_IMPORT_OK: set[str] = set()


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module name imported (or the name a `from` imports from)
    names: tuple[str, ...]
    line: int
    in_function: bool
    type_checking: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG_DIR.rglob("*.py")) if "__pycache__" not in p.parts}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path) -> list[Import]:
    """Every import statement of a module, with where it sits."""
    found: list[Import] = []
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, type_checking)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), in_function, True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), in_function, type_checking)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(name, alias.name, (), child.lineno, in_function, type_checking))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                found.append(Import(name, base, tuple(a.name for a in child.names), child.lineno, in_function,
                                    type_checking))
            else:
                visit(child, in_function, type_checking)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), False, False)
    return found


def own_targets(imp: Import, modules: dict[str, Path]) -> list[str]:
    """The xrayfx modules an import reaches (``from xrayfx import X`` reaches xrayfx.X when X is a module)."""
    if imp.target != "xrayfx" and not imp.target.startswith("xrayfx."):
        return []
    if imp.names:
        subs = [f"{imp.target}.{n}" for n in imp.names if f"{imp.target}.{n}" in modules]
        if subs:
            return subs
    return [imp.target]


def layer_of(module: str) -> str | None:
    """The layer of a dotted xrayfx module; None for the facade; 'unknown' if it has no place."""
    parts = module.split(".")
    if parts == ["xrayfx"]:
        return None
    first = parts[1]
    if first in SUBPACKAGE_LAYER:
        return SUBPACKAGE_LAYER[first]
    if first in CORE_MODULES:
        return "core"
    if first.startswith("bench"):
        return "report"
    if first == "__main__":
        return "cli"
    return "unknown"


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def lazy_allowed(module: str) -> bool:
    return module == "xrayfx" or any(module == p or module.startswith(p + ".") for p in LAZY_IMPORTERS[1:])


def all_imports() -> tuple[dict[str, Path], list[Import]]:
    modules = package_modules()
    return modules, [imp for name, path in modules.items() for imp in imports_of(name, path)]


def test_every_module_has_a_layer():
    unknown = [m for m in package_modules() if layer_of(m) == "unknown"]
    assert not unknown, (
        f"modules outside every layer: {unknown}; move them into a subpackage (data, models, inference, "
        "extraction, study, report, cli) or, if it is a small dependency-free helper, add it to CORE_MODULES"
    )


def test_imports_point_only_to_earlier_layers():
    modules, imports = all_imports()
    bad = []
    for imp in imports:
        src = layer_of(imp.importer)
        if src is None:
            continue  # the facade
        for target in own_targets(imp, modules):
            dst = layer_of(target)
            if dst is None or package_of(target) == package_of(imp.importer):
                continue  # the facade itself (__version__), or the importer's own package
            if dst == "unknown" or LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{imp.importer} ({src}) line {imp.line} imports {target} ({dst})")
    assert not bad, "imports against the layer order " + " <- ".join(LAYERS) + ":\n" + "\n".join(bad)


def test_own_modules_are_imported_at_module_level():
    modules, imports = all_imports()
    hidden = [
        f"{imp.importer} line {imp.line}: {imp.target}"
        for imp in imports
        if imp.in_function and own_targets(imp, modules) and not lazy_allowed(imp.importer)
    ]
    assert not hidden, (
        "function-level imports of xrayfx modules (allowed only in xrayfx/cli/ and the facade); import at "
        "module level, or move the piece to an earlier layer if it is an import cycle:\n" + "\n".join(hidden)
    )


def test_heavy_libraries_are_not_imported_at_module_level():
    _, imports = all_imports()
    eager = [
        f"{imp.importer} line {imp.line}: {imp.target}"
        for imp in imports
        if not imp.in_function and not imp.type_checking and imp.importer not in HEAVY_AT_IMPORT_OK
        and imp.target.split(".")[0] in HEAVY
    ]
    assert not eager, "heavy optional libraries imported at module level (import them where used):\n" + "\n".join(
        eager
    )


def test_importing_every_module_loads_no_heavy_library():
    names = [m for m in package_modules() if m not in HEAVY_AT_IMPORT_OK and not m.endswith("__main__")]
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing xrayfx's modules loaded {loaded}; keep them lazy (import inside functions)"


def test_subpackages_state_their_responsibility():
    missing = []
    for folder in sorted(p for p in PKG_DIR.iterdir() if p.is_dir() and p.name in SUBPACKAGE_LAYER):
        init = folder / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) if init.is_file() else None
        if not doc:
            missing.append(str(folder.relative_to(ROOT)))
    assert not missing, f"subpackages without a one-line responsibility docstring in __init__.py: {missing}"


def test_no_module_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in PKG_DIR.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, f"modules over 600 lines (split them): {long}"
