"""The package's folders follow the data flow and import only downward: a module may import its own layer and the
layers below it, never one above (nor a sibling of its layer: sweep and bench stand side by side)."""

import ast
from pathlib import Path

import rfgan

ROOT = Path(rfgan.__file__).parent

# Lowest first. A module's layer is the first entry its dotted name starts with.
LAYERS: list[tuple[str, ...]] = [
    ("rfgan", "rfgan.errors", "rfgan.storage", "rfgan.outputs", "rfgan.lease", "rfgan.config"),
    ("rfgan.data",),
    ("rfgan.gan",),
    ("rfgan.checkpoint",),
    ("rfgan.evaluate",),
    ("rfgan.run",),
    ("rfgan.sweep", "rfgan.bench"),
    ("rfgan.cli",),
    ("rfgan.__main__",),
]


def place(module: str) -> tuple[int, str]:
    """(layer index, the layer entry) of a dotted rfgan module name: the longest entry it is or lies under."""
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, module
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    """Whether rfgan's dotted name is a module or a package (not a name defined in one)."""
    path = ROOT.parent / dotted.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted rfgan module) of every import in a file, at any depth (function-level imports too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "rfgan"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "rfgan":
            # `from rfgan import storage` imports the module rfgan.storage
            subs = [f"{node.module}.{a.name}" for a in node.names]
            found += [(node.lineno, s if is_module(s) else node.module) for s in subs]
    return found


def upward_imports(path: Path, me: str) -> list[str]:
    """The imports of one file, module `me`, that reach above its layer or into a sibling of it."""
    layer, entry = place(me)
    bad = []
    for line, target in imports(path):
        their_layer, their_entry = place(target)
        if their_layer > layer or (their_layer == layer and layer > 0 and their_entry != entry):
            bad.append(f"{me}:{line} ({entry}) imports {target} ({their_entry})")
    return bad


def test_every_module_imports_only_its_own_layer_and_those_below():
    assert [bad for path in sorted(ROOT.rglob("*.py")) for bad in upward_imports(path, module_name(path))] == []


def test_every_module_has_a_layer():
    for path in ROOT.rglob("*.py"):
        place(module_name(path))


def test_the_check_sees_an_upward_import(tmp_path):
    """The walk finds function-level imports and `from rfgan import x` forms, so a real violation fails it."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from rfgan.data import rf\n\ndef f():\n    from rfgan.run.train import fit\n    from rfgan import cli\n"
    )
    assert upward_imports(probe, "rfgan.data.probe") == [
        "rfgan.data.probe:4 (rfgan.data) imports rfgan.run.train (rfgan.run)",
        "rfgan.data.probe:5 (rfgan.data) imports rfgan.cli (rfgan.cli)",
    ]
    assert upward_imports(probe, "rfgan.sweep.probe") == [
        "rfgan.sweep.probe:5 (rfgan.sweep) imports rfgan.cli (rfgan.cli)"
    ]
