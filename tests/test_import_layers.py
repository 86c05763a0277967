"""Imports run one way, by layer (README, "Layout"):

    strokevision_jax.models, strokevision_jax.data      (the library: networks, inputs)
    tfds_builder, checkpoints_convert                    (build on the library)
    strokevision_jax.<commands and their modules>       (train, evaluate, study, benchmark, ...)

Every import statement counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = ("strokevision_jax", "tfds_builder", "checkpoints_convert")

# package -> the project packages its modules may import (besides themselves)
ALLOWED = {
    "strokevision_jax.models": (),
    "strokevision_jax.data": (),
    "tfds_builder": ("strokevision_jax.data", "strokevision_jax.models"),
    "checkpoints_convert": ("strokevision_jax.models", "strokevision_jax.data"),
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from strokevision_jax import train` imports strokevision_jax.train
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            found.append((node.lineno, module))
    return found


def _layer(module: str) -> str | None:
    for package in ALLOWED:
        if module == package or module.startswith(package + "."):
            return package
    return None


def _is_module(name: str) -> bool:
    """Whether `name` is a module or package of this project (not a class or function)."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _violations(path: pathlib.Path) -> list[str]:
    layer = _layer(_module_name(path))
    if layer is None:
        return []
    allowed = (layer,) + ALLOWED[layer]
    bad = []
    for line, module in _imports(path):
        if not module.startswith(PROJECT) or not _is_module(module):
            continue
        if module in ("strokevision_jax",) or any(module == a or module.startswith(a + ".") for a in allowed):
            continue
        bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def _library_files() -> list[pathlib.Path]:
    files = []
    for package in ALLOWED:
        files += sorted(ROOT.joinpath(*package.split(".")).rglob("*.py"))
    return [f for f in files if not f.name.endswith("_test.py")]


def test_imports_run_one_way():
    files = _library_files()
    assert len(files) > 20, "the layer packages were not found"
    problems = [problem for path in files for problem in _violations(path)]
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("from strokevision_jax import train\n", ["imports strokevision_jax.train"]),
    ("def f():\n    from tfds_builder.strokevision import Builder\n", ["imports tfds_builder.strokevision"]),
    ("import checkpoints_convert.api\n", ["imports checkpoints_convert.api"]),
    ("from strokevision_jax.data import keypoints\nimport numpy\n", []),
])
def test_the_check_sees_lazy_and_plain_imports(tmp_path, monkeypatch, source, expected):
    """The checker itself: a data module importing upward is caught, wherever the import sits."""
    module = ROOT / "strokevision_jax" / "data" / "_layering_probe.py"
    monkeypatch.setattr(pathlib.Path, "read_text",
                        lambda self, *a, **k: source if self == module else _read(self, *a, **k))
    found = _violations(module)
    assert [any(e in problem for problem in found) for e in expected] == [True] * len(expected)
    assert bool(found) == bool(expected)


_read = pathlib.Path.read_text
