"""The plan of the tree: only tuner/ui/ and app.py import gradio; the engine's
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


PROJECT = sorted([ROOT / "app.py", *(p for folder in ("tuner", "ratings") for p in (ROOT / folder).rglob("*.py"))])


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(paths=PROJECT, root: Path = ROOT) -> dict[str, dict[str, str]]:
    """{module: {module it imports: "file:line" of the first such import}} among the given files,
    counting every import wherever it stands (in a function, under `if TYPE_CHECKING`). `from x
    import y` is an import of the module x.y where there is one, else of x."""
    names = {module_name(p, root): p for p in paths}
    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package, `level - 1` up
                    up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(filter(None, [*up, base]))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in names:  # `import a.b.c`: the deepest module of ours
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.setdefault(target, f"{path.relative_to(root)}:{node.lineno}")
    return graph


def import_circles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One circle of modules (its first module repeated at its end) for each group of modules
    that import each other, directly or round about (Tarjan's strongly connected components)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.get(module, {}):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    circles = []
    for group in groups:  # a shortest way back from the group's first module to itself
        start = min(group)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            step = sorted(m for m in graph[path[-1]] if m in group)
            if start in step:
                circles.append([*path, start])
                break
            for other in step:
                if other not in seen:
                    seen.add(other)
                    paths.append([*path, other])
    return circles


def test_the_import_graph_finds_a_circle_and_resolves_from_imports(tmp_path):
    """The checker itself, on a small package: `from pkg import b` is an import of pkg.b, a
    function's own import counts, and a circle through three modules is reported in order."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from . import c\n")
    (package / "c.py").write_text("import pkg.a\nfrom pkg.a import something\n")
    (package / "d.py").write_text("from pkg import a, c\n")
    graph = import_graph(sorted(package.glob("*.py")), tmp_path)
    assert graph["pkg.a"] == {"pkg.b": "pkg/a.py:1"} and set(graph["pkg.b"]) == {"pkg.c"}
    assert set(graph["pkg.c"]) == {"pkg.a"} and set(graph["pkg.d"]) == {"pkg.a", "pkg.c"}
    assert import_circles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_no_import_circle_among_the_projects_modules():
    """tuner/, ratings/ and app.py import each other in one direction only: every import
    counted, those inside functions too (a lazy import hides a circle, it does not break it)."""
    graph = import_graph()
    circles = import_circles(graph)
    said = ["  " + " -> ".join(circle) + "\n" + "".join(f"    {a} -> {b} at {graph[a][b]}\n"
                                                         for a, b in zip(circle, circle[1:]))
            for circle in circles]
    assert not circles, "import circles:\n" + "".join(said)


def test_no_test_file_imports_another():
    """Tests share code through tests/helpers.py, browser.py, gradio_http.py and conftest.py's
    fixtures, never `from test_x import …`: that runs the other file's module code again and ties
    the two files together."""
    found = []
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert not found, "\n".join(found)


def test_no_module_uses_another_modules_private_names():
    """A leading underscore means "this module's own": no module of tuner/, ratings/ or app.py
    imports one from another module, or reads one through another module's name."""
    import ast

    files = [ROOT / "app.py", *sorted((ROOT / "tuner").rglob("*.py")), *sorted((ROOT / "ratings").rglob("*.py"))]
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in files}
    found = []
    for path in files:
        tree, aliases = ast.parse(path.read_text(encoding="utf-8")), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases |= {a.asname or a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:
                        aliases.add(alias.asname or alias.name)
                    elif alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {alias.name}")
        found += [f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}" for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                  and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not found, found
