"""The codebase's own rules (docs/development/architecture.md, "How it is built"): small files,
no borrowed privates."""

from __future__ import annotations

import ast
from pathlib import Path

import semimatch

SRC = Path(semimatch.__file__).parent
MAX_LINES = 600


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_source_file_is_a_catch_all():
    long = {
        str(p.relative_to(SRC)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by concern (over {MAX_LINES} lines): {long}"


def test_no_module_imports_another_modules_privates():
    borrowed = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("semimatch"):
                borrowed += [
                    f"{path.relative_to(SRC)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not borrowed, f"make these public or move them: {borrowed}"


def test_the_architecture_page_names_every_module_of_the_package():
    page = (SRC.parents[1] / "docs" / "development" / "architecture.md").read_text()
    section = page[page.index("## How it is built") :]
    top = [p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    missing = [name for name in top if name not in section]
    assert not missing, f"docs/development/architecture.md does not mention {missing}"
