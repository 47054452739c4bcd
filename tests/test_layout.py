"""The plan of the tree (issue 15): only tuner/ui/ and app.py import gradio; the engine's
run records need neither torch nor gradio; no function in the engine is a room of its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = sorted(p for folder in ("tuner", "ratings") for p in (ROOT / folder).rglob("*.py")
                if "ui" not in p.relative_to(ROOT).parts)


def imported(path: Path) -> set[str]:
    """Top-level package names a module imports, anywhere in it (function bodies too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
            if node.module.startswith("tuner.ui") or (node.module == "tuner" and any(a.name == "ui" for a in node.names)):
                names.add("tuner.ui")
    return names


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_modules_import_neither_gradio_nor_the_ui(path):
    found = imported(path) & {"gradio", "tuner.ui"}
    assert not found, f"{path.relative_to(ROOT)} imports {sorted(found)}: UI code belongs in tuner/ui/"


def test_importing_the_whole_engine_loads_no_gradio():
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in ENGINE if p.name != "__main__.py"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "bad = sorted(m for m in sys.modules if m == 'gradio' or m.startswith(('gradio.', 'tuner.ui')))\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr



LONGEST = 80  # lines: a function past this is a room of its own, to be split by what it does


def test_no_function_in_the_engine_or_the_ui_is_longer_than_about_80_lines():
    long = []
    for path in sorted(p for folder in ("tuner", "ratings") for p in (ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - first + 1 > LONGEST:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                                f"({node.end_lineno - first + 1} lines)")
    assert not long, long


def test_the_web_layer_uses_only_gradios_public_api():
    """app.py and tuner/ui import `gradio` itself only (no gradio.<submodule>: its internals change
    between releases) and read no private attribute of anything but their own objects (self)."""
    import ast

    found = []
    for path in [ROOT / "app.py", *sorted((ROOT / "tuner" / "ui").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                found += [f"{where} import {a.name}" for a in node.names if a.name.startswith("gradio.")]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gradio."):
                found.append(f"{where} from {node.module} import …")
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                  and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{where} {ast.unparse(node)}")
    assert not found, found
