"""The codebase's own rules (docs/development/architecture.md, "How it is built").

Size follows concern, not a line count: a wall on file length is met as easily by cutting a
module in two and re-exporting the halves as by finding the seam, so these checks look at what
fragmenting leaves behind instead: names re-exported through a module that does not define them,
private names borrowed across files, test files importing other test files, and long functions
(a long function is several steps that want names of their own; a long file is allowed when it
holds one concern).
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator
from pathlib import Path

import semimatch

SRC = Path(semimatch.__file__).parent
ROOT = SRC.parents[1]
TESTS = ROOT / "tests"
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def suite_files() -> list[Path]:
    """Every Python file of the test suite except the pip-installed plug-in packages."""
    return sorted(p for p in TESTS.rglob("*.py") if "plugins" not in p.relative_to(TESTS).parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> Path | None:
    """The file of a semimatch module or package, None for anything else."""
    if name != "semimatch" and not name.startswith("semimatch."):
        return None
    base = SRC.parent.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def is_facade(path: Path) -> bool:
    """A package's ``__init__.py``: the public face of its package."""
    return path.name == "__init__.py"


def bound_names(tree: ast.Module) -> tuple[set[str], dict[str, str]]:
    """(names a module defines, names it imports -> the module imported from).

    Top-level statements only, looking into ``if``/``try``/``with`` blocks (conditional
    definitions); imports anywhere in the module count as imports.
    """
    defined: set[str] = set()
    imported: dict[str, str] = {}

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined.update(
                    n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)
                )
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                handlers = getattr(node, "handlers", [])
                for block in (node.body, getattr(node, "orelse", []), *(h.body for h in handlers)):
                    walk(block)
                walk(getattr(node, "finalbody", []))

    walk(tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                imported[alias.asname or alias.name] = node.module or ""
        elif isinstance(node, ast.Import):
            for alias in node.names:
                imported[alias.asname or alias.name.split(".")[0]] = alias.name
    return defined - set(imported), imported


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imports_from(tree: ast.Module) -> Iterator[tuple[ast.ImportFrom, str]]:
    """Every ``from M import name`` (absolute: the code base has no relative imports)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                yield node, alias.name


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def reexport_violations() -> list[str]:
    """``from semimatch.M import name`` where M does not define ``name`` itself.

    A plain module that imports a name only to hand it on (``options.py`` carved out of a module
    and imported back, ``engine.py`` passing on ``resolve``) hides where the name lives and
    lets a split look like a design. The exception is a package's ``__init__.py``, which is the
    package's documented public face (``semimatch``: the API the docs show; ``semimatch.data``,
    ``.models``, ...: what their docstrings list): it may gather the public names of the
    modules under it, and only those. Everything else is imported from where it is defined.
    """
    cache: dict[Path, tuple[set[str], dict[str, str]]] = {}

    def names(path: Path) -> tuple[set[str], dict[str, str]]:
        if path not in cache:
            cache[path] = bound_names(parsed(path))
        return cache[path]

    found = []
    for path in [*modules(), *suite_files()]:
        tree = parsed(path)
        for node, name in imports_from(tree):
            target = module_path(node.module)
            if target is None or name == "*" or module_path(f"{node.module}.{name}"):
                continue  # not semimatch, or a submodule
            defined, imported = names(target)
            if name in defined:
                continue
            origin = imported.get(name, "")
            package = module_name(target)
            if is_facade(target) and (origin == package or origin.startswith(package + ".")):
                continue
            found.append(f"{path.relative_to(ROOT)}: {node.module}.{name} (defined in {origin})")
    for path in modules():
        if is_facade(path):
            continue
        tree = parsed(path)
        defined, _ = bound_names(tree)
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                exported = {e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant)}
                found += [
                    f"{path.relative_to(ROOT)}: __all__ lists {n}" for n in exported - defined
                ]
    return found


def test_no_module_passes_on_names_it_does_not_define():
    found = sorted(set(reexport_violations()))
    assert not found, (
        "import these names from the module that defines them (the 'defined in' one) and drop "
        f"them from the module that only passes them on: {found}"
    )


def local_test_modules() -> set[str]:
    """What the tests could import of each other: pytest puts every test folder on sys.path."""
    return {p.stem for p in suite_files() if "helpers" not in p.relative_to(TESTS).parts}


def private_import_violations() -> list[str]:
    """Private names imported across files, and test files imported by other test files.

    A ``_name`` is the private business of the file that defines it: code elsewhere that needs
    it wants it public, or wants it moved. A test file is not a library: what several test files
    share lives in ``tests/helpers/`` (a package) or a ``conftest.py`` fixture.
    """
    local_tests = local_test_modules()
    found = []
    for path in [*modules(), *suite_files()]:
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = node.module.split(".")[0]
                ours = top in ("semimatch", "helpers")
                if top in local_tests:
                    found.append(f"{where(path, node)}: from {node.module} (a test file)")
                elif ours:
                    found += [
                        f"{where(path, node)}: {node.module}.{a.name}"
                        for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")
                    ]
            elif isinstance(node, ast.Import):
                found += [
                    f"{where(path, node)}: import {a.name} (a test file)"
                    for a in node.names
                    if a.name.split(".")[0] in local_tests
                ]
    return found


def test_no_file_imports_another_files_privates_or_a_test_file():
    found = private_import_violations()
    assert not found, (
        "make these names public or move the code next to its user; move what test files "
        f"share into tests/helpers/ or a conftest.py fixture: {found}"
    )


def code_lines(source: str) -> set[int]:
    """Line numbers holding code: no blank lines, comments or docstrings."""
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip and tok.type != tokenize.ENDMARKER:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            lines.difference_update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def long_functions(path: Path) -> dict[str, int]:
    """``file: Class.function`` -> lines of code, for functions over MAX_FUNCTION_LINES."""
    source = path.read_text()
    lines = code_lines(source)
    found = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = sum(child.lineno <= line <= child.end_lineno for line in lines)
                if n > MAX_FUNCTION_LINES:
                    found[f"{path.relative_to(SRC)}: {prefix}{child.name}"] = n
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(
                    child, f"{prefix}{child.name}." if isinstance(child, ast.ClassDef) else prefix
                )

    visit(ast.parse(source), "")
    return found


def test_no_function_is_several_steps_in_one():
    long = {k: n for p in modules() for k, n in long_functions(p).items()}
    assert not long, (
        f"over {MAX_FUNCTION_LINES} lines of code (docstrings, comments and blank lines not "
        f"counted): give each step its own named function, split by what it does: {long}"
    )


#: The packages whose every module the architecture page lists one by one.
LAYERS = ("training", "runs", "methods")


def test_the_architecture_page_names_every_module_of_the_package():
    page = (ROOT / "docs" / "development" / "architecture.md").read_text()
    section = page[page.index("## How it is built") :]
    files = [*SRC.glob("*.py"), *(p for layer in LAYERS for p in (SRC / layer).glob("*.py"))]
    names = {p.name for p in files} - {"__init__.py", "__main__.py"}
    packages = [f"{p.name}/" for p in SRC.iterdir() if (p / "__init__.py").exists()]
    missing = [name for name in sorted(names) + packages if name not in section]
    assert not missing, f"docs/development/architecture.md does not mention {missing}"


#: How high each part of the package sits: a module imports only from its own height or below.
#: Top-level modules not named here are front doors (api, cli, sklearn, scoring, demo, flags).
HEIGHT = {
    **dict.fromkeys(["config", "presets", "errors", "log", "distributed"], 0),
    **dict.fromkeys(["methods", "data", "models"], 0),
    "training": 1,
    "runs": 2,
}
FRONT = 3


def height(module: str) -> int:
    """The height of a dotted semimatch module (``semimatch`` itself, the public API: the top)."""
    first = module.split(".")[1] if "." in module else ""
    return HEIGHT.get(first, FRONT)


def imported_modules(path: Path) -> Iterator[str]:
    """Every semimatch module a file imports, at any depth (``from semimatch import log``
    imports ``semimatch.log``; a name of ``semimatch/__init__.py`` imports ``semimatch``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("semimatch"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("semimatch"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield sub if module_path(sub) else node.module


def test_layers_import_only_downward():
    upward = [
        f"{path.relative_to(SRC)} imports {target}"
        for path in modules()
        for target in imported_modules(path)
        if height(target) > height(module_name(path))
    ]
    assert not upward, (
        "a layer imports only the layers below it (front doors -> runs/ -> training/ -> "
        f"methods/, data/, models/ and the shared modules): {upward}"
    )


#: Folders of tests that mirror something other than a package of semimatch.
NOT_MIRRORS = {"helpers", "plugins", "benchmarks"}


def module_under_test(test: Path) -> str | None:
    """The semimatch module a test file is named after, dotted from ``semimatch``: the longest
    module (or package) name that starts its name (``test_weighting_uda.py`` -> ``weighting.uda``
    over ``weighting``; ``test_engine_text.py`` -> ``runs.engine``). Where several modules share
    that name, the one under the test's own folder; None when nothing (``test_torchrun.py``, a
    cross-cutting check) or several modules elsewhere match."""
    words = test.stem.removeprefix("test_").split("_")
    folder = ".".join(test.parent.relative_to(TESTS).parts)
    found: dict[int, list[str]] = {}
    for path in modules():
        dotted = module_name(path).removeprefix("semimatch").lstrip(".")
        name = dotted.rpartition(".")[2].split("_")
        if dotted and words[: len(name)] == name:
            found.setdefault(len(name), []).append(dotted)
    if not found:
        return None
    best = found[max(found)]
    own = [m for m in best if m.rpartition(".")[0] == folder or m == folder]
    return (own or best)[0] if len(own or best) == 1 else None


def misplaced_tests() -> dict[str, str]:
    """Test file -> the folder it belongs in (``tests/`` + the tested module's package)."""
    found = {}
    for test in TESTS.rglob("test_*.py"):
        parts = test.relative_to(TESTS).parts
        if parts[0] in NOT_MIRRORS:
            continue
        module = module_under_test(test)
        if module is None:
            continue
        is_package = module_path(f"semimatch.{module}").name == "__init__.py"
        package = module if is_package else module.rpartition(".")[0]
        want = TESTS.joinpath(*package.split(".")) if package else TESTS
        if test.parent != want:
            found[str(test.relative_to(ROOT))] = str(want.relative_to(ROOT)) + "/"
    return found


def test_the_tests_mirror_the_package():
    wrong = misplaced_tests()
    assert not wrong, (
        "move each test file into the folder that mirrors the package of the module it is "
        f"named after (tests/data/ for semimatch/data/...): {wrong}"
    )


def test_every_test_folder_mirrors_a_package():
    folders = {p.parent for p in TESTS.rglob("test_*.py")} - {TESTS}
    stray = [
        str(f.relative_to(ROOT))
        for f in folders
        if f.relative_to(TESTS).parts[0] not in NOT_MIRRORS
        and not (SRC.joinpath(*f.relative_to(TESTS).parts) / "__init__.py").exists()
    ]
    assert not stray, f"these test folders mirror no package of src/semimatch: {stray}"
