"""The package reads bottom-up: each module imports only from its own layer or the
layers below it, facts never need torch, and no module reaches into another's
private names. The import graph is read with `ast`, so every import counts,
module-level or inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "imrseg"

# The layer order, bottom first: a module may import from its own layer and those before it.
LAYERS = [
    ("base", ["imrseg", "imrseg.errors", "imrseg.arguments", "imrseg.paths", "imrseg.durable", "imrseg.guard", "imrseg.images"]),
    ("facts", ["imrseg.data"]),
    ("compute", ["imrseg.devices", "imrseg.distributed", "imrseg.interrupts", "imrseg.prefetch", "imrseg.scores",
                 "imrseg.multiclass", "imrseg.models", "imrseg.transforms"]),
    ("clip", ["imrseg.clip"]),
    ("hub", ["imrseg.hub"]),
    ("predictor", ["imrseg.predictor"]),
    ("outputs", ["imrseg.outputs"]),
    ("runs", ["imrseg.runner", "imrseg.evaluation", "imrseg.training", "imrseg.serve", "imrseg.cvat"]),
    ("apps", ["imrseg.studio"]),
    ("cli", ["imrseg.cli", "imrseg.__main__"]),
]
# What the ground floor may not import: facts are plain data, read without a model.
NO_TORCH = ("base", "facts")
HEAVY = ("torch", "torchvision", "open_clip", "cv2")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def home(module: str) -> str:
    """The longest layer entry that `module` is or lies under."""
    matches = [entry for _, entries in LAYERS for entry in entries
               if module == entry or module.startswith(entry + ".")]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches, key=len)


def layer(module: str) -> int:
    entry = home(module)
    return next(i for i, (_, entries) in enumerate(LAYERS) if entry in entries)


def imports(path: Path, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) of every import in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            # `from pkg import submodule` imports the submodule
            submodules = [n for n in names if f"{target}.{n}" in MODULES]
            out += [(node.lineno, f"{target}.{n}", []) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                out.append((node.lineno, target, rest))
    return out


def internal_imports():
    for module, path in MODULES.items():
        for line, target, names in imports(path, module):
            if target == "imrseg" or target.startswith("imrseg."):
                yield module, path, line, target, names


def test_every_module_has_a_layer():
    for module in MODULES:
        home(module)


def test_no_import_runs_upward():
    upward = [f"{path.relative_to(ROOT)}:{line}: {module} ({LAYERS[layer(module)][0]}) imports {target} "
              f"({LAYERS[layer(target)][0]})"
              for module, path, line, target, _ in internal_imports() if layer(target) > layer(module)]
    assert not upward, "\n".join(upward)


def test_no_loop_between_homes():
    """Within a layer too, one home (package or module) depends on another one way only."""
    edges: dict[str, set[str]] = {}
    for module, _, _, target, _ in internal_imports():
        a, b = home(module), home(target)
        if a != b and a != "imrseg" and b != "imrseg":
            edges.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen))
                   for n in edges.get(start, ()))

    loops = sorted({tuple(sorted((a, b))) for a, targets in edges.items() for b in targets if reaches(b, a, set())})
    assert not loops, f"homes that import each other (directly or through others): {loops}"


def test_the_ground_floor_needs_no_torch():
    heavy = [f"{path.relative_to(ROOT)}:{line}: {target}" for module, path in MODULES.items()
             if LAYERS[layer(module)][0] in NO_TORCH
             for line, target, _ in imports(path, module) if target.split(".")[0] in HEAVY]
    assert not heavy, "\n".join(heavy)


@pytest.mark.parametrize("folder", ["imrseg", "benchmarks"])
def test_no_private_name_crosses_modules(folder):
    root = ROOT / folder
    crossing = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path)
        for line, target, names in imports(path, module):
            crossing += [f"{path.relative_to(ROOT)}:{line}: {target}.{n}" for n in names
                         if n.startswith("_") and not n.startswith("__")]
            if target.rpartition(".")[2].startswith("_") and not target.rpartition(".")[2].startswith("__"):
                crossing.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert not crossing, "\n".join(crossing)


def private_uses(path: Path, defined: dict[str, set[Path]], root: Path = ROOT) -> list[str]:
    """`thing._name` in `path`, not on self or cls, for a private function or method that
    another file defines."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and node.attr in defined and path not in defined[node.attr]
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.append(f"{path.relative_to(root)}:{node.lineno}: .{node.attr}")
    return found


def private_definitions() -> dict[str, set[Path]]:
    defined: dict[str, set[Path]] = {}
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith("_")
                    and not node.name.startswith("__")):
                defined.setdefault(node.name, set()).add(path)
    return defined


@pytest.mark.parametrize("folder", ["imrseg", "benchmarks"])
def test_no_private_method_is_called_from_another_module(folder):
    defined = private_definitions()
    crossing = [use for path in sorted((ROOT / folder).rglob("*.py")) for use in private_uses(path, defined)]
    assert not crossing, "\n".join(crossing)


def test_the_private_check_sees_a_private_method_called_from_outside(tmp_path):
    path = tmp_path / "bench.py"
    path.write_text("def f(predictor):\n    self = predictor\n    return predictor._grad_cams(1), self._grad_cams(2)\n")
    assert private_uses(path, private_definitions(), tmp_path) == ["bench.py:3: ._grad_cams"]


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The checker itself: a model importing the runner is caught."""
    path = tmp_path / "imrseg" / "models" / "bad.py"
    path.parent.mkdir(parents=True)
    path.write_text("from ..runner import run_folder\nfrom ..errors import InputError\n")
    found = [(target, layer(target) > layer("imrseg.models.bad"))
             for _, target, _ in imports(path, module_name(path, tmp_path))]
    assert found == [("imrseg.runner", True), ("imrseg.errors", False)]
