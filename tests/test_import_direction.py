"""``fme/core`` knows nothing about the atmosphere: it never imports ``fme.ace``."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "fme" / "core"


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_core_never_imports_ace():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 10
    offenders = {
        str(path.relative_to(CORE)): [
            m for m in _imported_modules(path) if m.startswith("fme.ace")
        ]
        for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}
