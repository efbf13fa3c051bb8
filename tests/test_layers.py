"""The layers of `panoptic_train`: every import points down, and nothing imports in a circle.

A module belongs to a *part*: its subpackage (`panoptic_train.train.loop` is in `train`), or
itself at the top of the package (`panoptic_train._io` is `_io`). The `_cli` modules beside each
subpackage's code are the part `cli`, with `cli.py` that dispatches to them: a subcommand may
use everything below it. The package's `__init__` (the lazy public API) is the part `__init__`.

The layers, lowest first; a part imports from its own layer and the layers below, never above:

    core                    errors, _types, _version, _io, _validate, _lazy, _distributed,
                            _host_memory
    data and models         data, models
    evaluation and runtime  evaluation, runtime
    export                  export
    inference               inference
    train                   train
    serve                   serve
    top                     cli, _demo, __main__, __init__

`runtime` holds what more than one of train, inference, export and serve needs to run a model:
the panoptic merge and its array backends, image inputs and preprocessing, the exported-model
file format. `export` sits below `inference`: the exporters take any model with a network and
its metadata (`export.exportable.ExportableModel`), and `PanopticSegmentationModel.export_onnx` /
`export_tensorrt` are those functions, bound as methods.

Parts of one layer may import each other, but not both ways (directly or around a longer
circle), and neither may two modules, of one part or of two. Every import statement counts: at
module level, inside functions and under `TYPE_CHECKING`; a lazy import delays a dependency, it
does not remove it. Modules named in strings are not seen: the lazy `_EXPORTS` tables have
`TYPE_CHECKING` imports of the same modules beside them, and `cli.COMMANDS` names the `_cli`
modules of the top layer.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"

LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "core",
        frozenset(
            {
                "errors",
                "_types",
                "_version",
                "_io",
                "_validate",
                "_lazy",
                "_distributed",
                "_host_memory",
            }
        ),
    ),
    ("data and models", frozenset({"data", "models"})),
    ("evaluation and runtime", frozenset({"evaluation", "runtime"})),
    ("export", frozenset({"export"})),
    ("inference", frozenset({"inference"})),
    ("train", frozenset({"train"})),
    ("serve", frozenset({"serve"})),
    ("top", frozenset({"cli", "_demo", "__main__", "__init__"})),
)


@dataclass(frozen=True)
class Import:
    """`importer` (a module) imports `imported` (the deepest module the statement names)."""

    importer: str
    imported: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def find_modules(source: Path, package: str) -> dict[str, Path]:
    """Module name -> file, for every .py file of `package` under `source`."""
    modules = {}
    for path in sorted((source / package).rglob("*.py")):
        parts = path.relative_to(source).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def find_imports(modules: Mapping[str, Path], package: str) -> list[Import]:
    """Every import of a module of `package` by another, wherever the statement stands."""
    imports = []
    for importer, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in _imported_names(node, importer, is_package):
                if name == package or name.startswith(package + "."):
                    imported = _deepest_module(name, modules)
                    if imported != importer:
                        imports.append(Import(importer, imported, path, node.lineno))
    return imports


def _imported_names(node: ast.AST, importer: str, is_package: bool) -> list[str]:
    """The dotted names an import statement loads: `from a import b` gives a.b (a module b of
    package a, or a name defined in a)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the importer's package, one level up per extra dot
        base = importer.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        module = ".".join([*base, *([node.module] if node.module else [])])
    else:
        module = node.module or ""
    return [f"{module}.{alias.name}" for alias in node.names]


def _deepest_module(name: str, modules: Mapping[str, Path]) -> str:
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def part_of(module: str) -> str:
    """The part a module belongs to (see the module docstring)."""
    names = module.split(".")[1:]
    if not names:
        return "__init__"
    if names[-1] == "_cli" or names == ["cli"]:
        return "cli"
    return names[0]


def check(source: Path, package: str, layers: Sequence[tuple[str, frozenset[str]]]) -> list[str]:
    """Every breach of the layering of `package` under `source`, one message each."""
    modules = find_modules(source, package)
    imports = find_imports(modules, package)
    layer_of = {part: (index, name) for index, (name, parts) in enumerate(layers) for part in parts}
    problems = [
        f"{path}: {module} is in the part {part_of(module)!r}, which is in no layer; add it to "
        "LAYERS in tests/test_layers.py (and to the list in README's Layers section)"
        for module, path in modules.items()
        if part_of(module) not in layer_of
    ]
    for found in imports:
        low, high = part_of(found.importer), part_of(found.imported)
        if low in layer_of and high in layer_of and layer_of[low][0] < layer_of[high][0]:
            problems.append(
                f"{found}: upward import, {low!r} (layer {layer_of[low][1]!r}) may not import "
                f"{high!r} (layer {layer_of[high][1]!r}, higher). Move what both need down (code "
                "several parts run belongs in runtime) or the importing code up."
            )
    part_imports = [
        found for found in imports if part_of(found.importer) != part_of(found.imported)
    ]
    problems += _circles("parts", part_imports, part_of)
    problems += _circles("modules", imports, lambda module: module)
    return problems


def _circles(kind: str, imports: Iterable[Import], node_of: Callable[[str], str]) -> list[str]:
    """One message per group of `kind` that reach each other through imports: its shortest
    circle, with an import statement for each step."""
    example: dict[tuple[str, str], Import] = {}
    for found in imports:
        example.setdefault((node_of(found.importer), node_of(found.imported)), found)
    graph: dict[str, set[str]] = defaultdict(set)
    for start, end in example:
        graph[start].add(end)
    messages = []
    for group in _strongly_connected(graph):
        circle = _shortest_circle(graph, min(group), group)
        steps = "; ".join(str(example[step]) for step in itertools.pairwise(circle))
        more = f" (a tangle of {len(group)} {kind})" if len(group) > len(circle) - 1 else ""
        messages.append(
            f"circle between the {kind} {' -> '.join(circle)}{more}: {steps}. Import in one "
            "direction only: move what they share into a lower module."
        )
    return messages


def _shortest_circle(graph: Mapping[str, set[str]], start: str, group: set[str]) -> list[str]:
    """start -> ... -> start through `group` in the fewest steps (breadth first)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while start not in previous:
        node = queue.popleft()
        for successor in sorted(graph[node] & group):
            if successor not in previous:
                previous[successor] = node
                queue.append(successor)
    circle = [start]
    while len(circle) == 1 or circle[-1] != start:
        circle.append(previous[circle[-1]])
    return circle[::-1]


def _strongly_connected(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """The groups of two or more nodes that reach each other (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_every_import_points_down_and_nothing_imports_in_a_circle() -> None:
    problems = check(SOURCE, "panoptic_train", LAYERS)
    assert not problems, "\n".join(problems)


def test_the_check_sees_every_subpackage_and_imports_of_each_kind() -> None:
    modules = find_modules(SOURCE, "panoptic_train")
    parts = {part_of(module) for module in modules}
    assert {"data", "models", "runtime", "export", "inference", "train", "serve"} <= parts
    imports = {
        (found.importer, found.imported) for found in find_imports(modules, "panoptic_train")
    }
    # a module-level, a function-level and a TYPE_CHECKING import
    assert ("panoptic_train.runtime.postprocess", "panoptic_train.runtime.array_ops") in imports
    assert ("panoptic_train.inference._cli", "panoptic_train.inference.model") in imports
    assert ("panoptic_train", "panoptic_train.train.api") in imports


def _write(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


TINY_LAYERS = (
    ("core", frozenset({"errors"})),
    ("low", frozenset({"low", "side"})),
    ("high", frozenset({"high", "__init__"})),
)


def test_a_package_importing_only_downwards_passes(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/errors.py": "",
            "pkg/low/__init__.py": "",
            "pkg/low/a.py": "from pkg.errors import Error\nfrom . import b\n",
            "pkg/low/b.py": "import pkg.errors\n",
            "pkg/side.py": "from pkg.low import a\n",
            "pkg/high/__init__.py": "",
            "pkg/high/c.py": "def f():\n    from pkg.low.a import g\n    from ..side import h\n",
        },
    )
    assert check(tmp_path, "pkg", TINY_LAYERS) == []


def test_planted_upward_imports_and_circles_are_named_with_file_and_line(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/errors.py": "",
            "pkg/stray.py": "",
            "pkg/low/__init__.py": "",
            # upward, inside a function, and under TYPE_CHECKING through a relative import
            "pkg/low/a.py": "import os\n\n\ndef f():\n    from pkg.high.c import g\n",
            "pkg/low/b.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
            "    from ..high import c\n",
            # two modules of one part importing each other
            "pkg/low/d.py": "from pkg.low import e\n",
            "pkg/low/e.py": "def f():\n    import pkg.low.d\n",
            # two parts of one layer importing each other, no module circle
            "pkg/side.py": "from pkg.low.a import f\n",
            "pkg/low/s.py": "from pkg import side\n",
            "pkg/high/__init__.py": "",
            "pkg/high/c.py": "",
        },
    )
    problems = check(tmp_path, "pkg", TINY_LAYERS)
    low = tmp_path / "pkg" / "low"
    assert sorted(problems) == sorted(
        [
            f"{tmp_path / 'pkg' / 'stray.py'}: pkg.stray is in the part 'stray', which is in no "
            "layer; add it to LAYERS in tests/test_layers.py (and to the list in README's "
            "Layers section)",
            f"{low / 'a.py'}:5: pkg.low.a imports pkg.high.c: upward import, 'low' (layer 'low') "
            "may not import 'high' (layer 'high', higher). Move what both need down (code several "
            "parts run belongs in runtime) or the importing code up.",
            f"{low / 'b.py'}:4: pkg.low.b imports pkg.high.c: upward import, 'low' (layer 'low') "
            "may not import 'high' (layer 'high', higher). Move what both need down (code several "
            "parts run belongs in runtime) or the importing code up.",
            f"circle between the parts low -> side -> low: {low / 's.py'}:1: pkg.low.s imports "
            f"pkg.side; {tmp_path / 'pkg' / 'side.py'}:1: pkg.side imports pkg.low.a. Import in "
            "one direction only: move what they share into a lower module.",
            f"circle between the modules pkg.low.d -> pkg.low.e -> pkg.low.d: {low / 'd.py'}:1: "
            f"pkg.low.d imports pkg.low.e; {low / 'e.py'}:2: pkg.low.e imports pkg.low.d. Import "
            "in one direction only: move what they share into a lower module.",
        ]
    )
