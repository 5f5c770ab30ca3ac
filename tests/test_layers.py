"""The import map of the package: every arrow points from a higher layer to a lower (or the same) one."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ocrloop"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    {"errors", "atomic", "locking", "extras", "distributed", "profiling"},
    {"config", "pii", "registry"},
    {"data"},
    {"models"},
    {"evaluate"},
    {"train"},
    {"workspace", "agent"},
    {"loop"},
    {"serve", "bench", "doctor"},
    {"cli_flags", "cli", "plan_api", "__main__"},
]


def _part(module: str) -> str:
    """The top-level part of ``ocrloop.<part>...`` a module belongs to."""
    return module.split(".")[1] if "." in module else module


def import_map() -> set[tuple[str, str, str]]:
    """(importing part, imported part, file) for every import of another part of ocrloop."""
    arrows = set()
    for path in PACKAGE.rglob("*.py"):
        source = _part(".".join(("ocrloop", *path.relative_to(PACKAGE).with_suffix("").parts)))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("ocrloop.") and _part(name) != source:
                    arrows.add((source, _part(name), path.relative_to(PACKAGE).as_posix()))
    return arrows


def test_every_part_has_a_layer():
    parts = {_part(".".join(("ocrloop", *p.relative_to(PACKAGE).with_suffix("").parts))) for p in PACKAGE.rglob("*.py")}
    assert parts - {"__init__"} <= set().union(*LAYERS), parts - set().union(*LAYERS)


def test_no_arrow_points_up():
    layer = {part: index for index, parts in enumerate(LAYERS) for part in parts}
    upward = sorted(f"{file}: {source} -> {target}" for source, target, file in import_map() if layer[target] > layer[source])
    assert upward == []
