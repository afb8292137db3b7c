"""The data side of the package imports nothing of the model: release reading, the builder, the synthetic generator,
the modality protocol, split loading and video ingestion depend only on `schema` and on each other, one way."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "modeling_m3d"
# Each data module and the package modules it may import (the graph has no cycle: each imports only earlier ones).
ALLOWED = {
    "schema": set(),
    "release": {"schema"},
    "builder": {"release"},
    "synthetic": {"schema"},
    "modality": {"schema"},
    "data": {"builder", "modality", "synthetic"},
    "video_m3d": {"schema"},
}


def package_imports(module: str) -> set[str]:
    """The package modules `module` imports, relatively (`from .x import ...`) or absolutely."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("modeling_m3d."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(
                alias.name.split(".")[1] for alias in node.names if alias.name.startswith("modeling_m3d.")
            )
    return names


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_data_modules_import_only_the_schema_and_each_other(module):
    assert package_imports(module) == ALLOWED[module]


def test_the_allowed_graph_has_no_cycle():
    order = list(ALLOWED)
    assert all(
        order.index(dependency) < order.index(module) for module in order for dependency in ALLOWED[module]
    )
