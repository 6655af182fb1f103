"""The package layout shows the call path: deciding, executing and trust, with imports flowing one way.

``graphcap.decide`` decides which graph serves a call and never captures or
replays: it imports nothing from ``graphcap.execute``, ``graphcap.trust`` or
the call path above it. ``graphcap.execute`` does what was decided, consulting
``graphcap.trust``, and never imports the call path above it either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "graphcap"
CALL_PATH = ("graphcap.registry", "graphcap.graphed_function")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, lazily inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("graphcap")}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("package, refused", [
    ("decide", ("graphcap.execute", "graphcap.trust", *CALL_PATH)),
    ("execute", CALL_PATH),
    ("trust", ("graphcap.execute", *CALL_PATH)),
])
def test_imports_flow_one_way(package, refused):
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files
    wrong = {f"{path.relative_to(PACKAGE)} imports {name}" for path in files for name in _imports(path)
             if _under(name, refused)}
    assert not wrong, sorted(wrong)


def test_the_file_that_decides_and_the_one_that_captures_and_replays_are_where_the_readme_says():
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    for path in ("decide/", "dispatch.py", "execute/", "runner.py", "backends/", "trust/"):
        assert path in layout, path
    assert (PACKAGE / "decide" / "dispatch.py").exists() and (PACKAGE / "execute" / "runner.py").exists()
    flat = sorted(path.name for path in PACKAGE.glob("*.py"))
    # The top level holds the flag, errors, counters, the buffers and the call path: no decider, no executor.
    for name in ("dispatch.py", "runner.py", "buckets.py", "size_planner.py", "replan.py", "agreement.py"):
        assert name not in flat, name
