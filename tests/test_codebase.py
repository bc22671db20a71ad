"""The codebase's own rules, checked on its source: no import cycles (imports inside
functions included), the runner never imports the analysis layer, the commands import the
installed package instead of editing ``sys.path``, and comments carry no issue history."""

import ast
import functools
import importlib
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("methods", "shared", "experiments", "analysis")


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported(name: str, path: pathlib.Path, known: dict) -> set[str]:
    """The project modules that ``name`` imports anywhere in its file: each import resolved
    to the deepest project module it names (``from pkg import mod`` → ``pkg.mod``)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


@functools.cache
def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from b import g\n")
    (tmp_path / "b.py").write_text("import a\n")
    (tmp_path / "c.py").write_text("import a\n")
    known = {"a": a, "b": tmp_path / "b.py", "c": tmp_path / "c.py"}
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert graph == {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(graph) == [["a", "b"]]


def test_no_module_imports_itself_back():
    graph = import_graph()
    assert len(graph) > 50  # the walk saw the project
    assert cycles(graph) == []


@pytest.mark.parametrize("package", ["methods", "shared", "experiments"])
def test_only_the_analysis_layer_imports_analysis(package):
    graph = import_graph()
    offenders = {
        m: sorted(t for t in targets if t.split(".")[0] == "analysis")
        for m, targets in graph.items()
        if m.split(".")[0] == package
    }
    assert {m: t for m, t in offenders.items() if t} == {}


def test_commands_import_the_installed_package_not_a_sys_path_edit():
    """The package is installed (editable), and pytest puts tests/ on the path for the
    helpers (pyproject's ``pythonpath``): no module, command or test edits sys.path."""
    tests = [p for p in sorted((ROOT / "tests").rglob("*.py")) if p != pathlib.Path(__file__)]
    files = [*modules().values(), *tests]
    edits = [
        str(path.relative_to(ROOT))
        for path in files
        if "sys.path.insert" in path.read_text() or "sys.path.append" in path.read_text()
    ]
    assert edits == []


def test_tests_mirror_the_packages_and_helpers_live_apart():
    """tests/<package>/test_*.py for methods, shared, experiments' runner and analysis; the
    helpers (toys, process tools, the scripts subprocess tests launch) in tests/helpers."""
    tests = ROOT / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert folders == {"methods", "shared", "runner", "analysis", "helpers"}
    top = {p.name for p in tests.glob("*.py")}
    assert top == {"conftest.py", "test_codebase.py", "test_dependencies.py"}
    for folder in folders - {"helpers"}:
        assert all(p.name.startswith("test_") for p in (tests / folder).glob("*.py")), folder
    assert not list((tests / "helpers").glob("test_*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_the_packages_are_imported_from_the_repository(package):
    """Each package is its own folder's ``__init__.py``, not a same-named test folder
    (tests/methods, tests/shared, tests/analysis) taken as a namespace package."""
    module = importlib.import_module(package)
    assert module.__file__ == str(ROOT / package / "__init__.py")


@pytest.mark.process
def test_bare_pytest_outside_the_root_imports_the_packages_not_the_test_folders(tmp_path):
    """The ``pytest`` script run from another folder puts no cwd on sys.path: the check above
    must still pass there."""
    script = pathlib.Path(sys.executable).parent / "pytest"
    if not script.exists():
        pytest.skip(f"no pytest script beside {sys.executable}")
    command = [str(script), __file__, "-q", "-p", "no:cacheprovider"]
    command += ["-k", "the_packages_are_imported_from_the_repository"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{len(PACKAGES)} passed" in done.stdout


HISTORY = re.compile(r"(?i)\bissues? #?\d+|(?<![\w&])#\d{1,2}(\.\d+)?\b")


def test_comments_name_no_issue_numbers():
    """Why a line is as it is belongs beside it; which issue changed it belongs in the
    commit log and CHANGELOG.md."""
    files = [p for p in modules().values()] + sorted((ROOT / "tests").rglob("*.py"))
    files += sorted((ROOT / "experiments").rglob("*.yaml")) + sorted(ROOT.glob("*/*.sh"))
    hits = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
        for path in files
        if path != pathlib.Path(__file__)
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert hits == []
    assert HISTORY.search("(issue #24: it stopped)") and HISTORY.search('"""#25.8: at')
    assert not HISTORY.search("color #1f77b4") and not HISTORY.search("&#39;")


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_short_and_every_docs_page_is_linked_and_exists():
    """The README is a first screen and an index: at most 300 lines, every page of docs/
    linked from it, and every local link in it and in docs/ pointing at a file that exists."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    assert len(text.splitlines()) <= 300
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ holds the README's topics"
    linked = {(ROOT / target).resolve() for target in LINK.findall(text)}
    assert [p.name for p in pages if p.resolve() not in linked] == []
    broken = [
        f"{doc.relative_to(ROOT)} → {target}"
        for doc in [readme, *pages]
        for target in LINK.findall(doc.read_text())
        if "://" not in target and not (doc.parent / target).exists()
    ]
    assert broken == []
    assert LINK.findall("see [a](docs/a.md#part) and [b](https://x.org)") == [
        "docs/a.md",
        "https://x.org",
    ]


def test_the_checks_choices_are_the_components_own():
    """The torch-free lists the start-up checks read (the method records, shared/choices.py)
    are the ones the components dispatch on."""
    import methods
    from experiments.runner.checks import ENUMS
    from methods.records import solvers
    from shared.choices import TOKENIZER_BACKENDS
    from shared.tokenizers import BACKENDS

    assert tuple(BACKENDS) == TOKENIZER_BACKENDS == ENUMS["tokenizer.backend"]
    assert set(methods.METHODS) == set(solvers())
