"""The import contract between the packages, read from the source (AST) and checked in a fresh interpreter.

- ``app`` (the HTTP side, no torch) imports ``worker`` only lazily, inside a function, and only in the
  CLI (app/cli/), dispatch (app/dispatch.py) and monitoring's queue-depth probe
  (``queue_depths`` in app/monitoring/service.py). Imports under ``if TYPE_CHECKING:`` do not count:
  they never run.
- ``actlab`` (the client package) imports neither ``app`` nor ``worker``.
- Importing ``app.main`` never loads torch; importing ``worker.tasks`` never loads matplotlib, pandas or scipy.

A broken rule is reported as ``path:line: what``, one line per offending import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]

# Where app may import worker lazily: a folder or file, and the functions allowed there (None: any function).
LAZY_WORKER_IMPORTS: Mapping[str, frozenset[str] | None] = {
    "app/cli/": None,
    "app/dispatch.py": None,
    "app/monitoring/service.py": frozenset({"queue_depths"}),
}


@dataclass(frozen=True)
class ImportSite:
    """One import statement (or importlib.import_module call with a literal name) in a module."""

    module: str
    line: int
    functions: tuple[str, ...]  # the enclosing functions, outermost first; empty at import time

    @property
    def lazy(self) -> bool:
        """True when the import runs only when a function is called."""
        return bool(self.functions)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    if (
        isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))
        )
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [node.args[0].value]
    return []


def import_sites(source: str) -> Iterator[ImportSite]:
    """Every import that can run, with its line and enclosing functions (``if TYPE_CHECKING:`` bodies skipped)."""

    def visit(node: ast.AST, functions: tuple[str, ...]) -> Iterator[ImportSite]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from visit(child, functions)
            return
        for name in _imported_names(node):
            yield ImportSite(module=name, line=getattr(node, "lineno", 0), functions=functions)
        inner = (*functions, node.name) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else functions
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inner)

    yield from visit(ast.parse(source), ())


def _imports_package(name: str, package: str) -> bool:
    return name == package or name.startswith(f"{package}.")


def _lazy_rule(relative_path: str) -> tuple[bool, frozenset[str] | None]:
    for place, functions in LAZY_WORKER_IMPORTS.items():
        if relative_path == place or (place.endswith("/") and relative_path.startswith(place)):
            return True, functions
    return False, None


def worker_import_violations(relative_path: str, source: str) -> list[str]:
    """How the module at ``relative_path`` (under app/) breaks the app-imports-worker rule, one line each."""
    allowed_here, allowed_functions = _lazy_rule(relative_path)
    problems = []
    for site in import_sites(source):
        if not _imports_package(site.module, "worker"):
            continue
        where = f"{relative_path}:{site.line}: imports {site.module}"
        if not site.lazy:
            problems.append(f"{where} when the module is imported; import it inside the function that needs it")
        elif not allowed_here:
            problems.append(f"{where}; only {', '.join(LAZY_WORKER_IMPORTS)} may import worker (lazily)")
        elif allowed_functions is not None and not allowed_functions & set(site.functions):
            problems.append(
                f"{where} in {'.'.join(site.functions)}; here only {', '.join(sorted(allowed_functions))} may"
            )
    return problems


def client_import_violations(relative_path: str, source: str) -> list[str]:
    """How the module at ``relative_path`` (under actlab/) imports the service's packages, one line each."""
    return [
        f"{relative_path}:{site.line}: imports {site.module}; actlab talks to the service over HTTP only"
        for site in import_sites(source)
        if _imports_package(site.module, "app") or _imports_package(site.module, "worker")
    ]


def _modules(package: str) -> list[Path]:
    return sorted((REPOSITORY / package).rglob("*.py"))


def test_app_imports_worker_only_lazily_in_the_cli_dispatch_and_the_queue_depth_probe() -> None:
    modules = _modules("app")
    assert len(modules) > 20
    problems = [
        problem
        for path in modules
        for problem in worker_import_violations(path.relative_to(REPOSITORY).as_posix(), path.read_text("utf-8"))
    ]
    assert not problems, "app imports worker against the contract:\n" + "\n".join(problems)


def test_the_client_package_imports_nothing_of_the_service() -> None:
    modules = _modules("actlab")
    assert modules
    problems = [
        problem
        for path in modules
        for problem in client_import_violations(path.relative_to(REPOSITORY).as_posix(), path.read_text("utf-8"))
    ]
    assert not problems, "\n".join(problems)


# A fresh interpreter: the one running the tests has long imported everything. On failure it prints the import chain.
_PROBE = textwrap.dedent(
    """
    import sys, traceback

    MODULE, FORBIDDEN = sys.argv[1], tuple(sys.argv[2:])

    class Tripwire:
        stack = None

        def find_spec(self, name, path=None, target=None):
            if Tripwire.stack is None and name.split(".")[0] in FORBIDDEN:
                Tripwire.stack = "".join(traceback.format_stack(limit=40))
            return None

    sys.meta_path.insert(0, Tripwire())
    __import__(MODULE)
    if any(name in sys.modules for name in FORBIDDEN) or Tripwire.stack is not None:
        print(f"importing {MODULE} loaded one of {FORBIDDEN}:")
        print(Tripwire.stack)
        sys.exit(1)
    """
)


def _loads_none_of(module: str, *forbidden: str) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", _PROBE, module, *forbidden],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr


def test_importing_the_app_never_loads_torch() -> None:
    _loads_none_of("app.main", "torch")


def test_importing_the_worker_tasks_never_loads_the_plotting_and_statistics_libraries() -> None:
    # The worker's main process imports worker.tasks at every start (seconds under load; bench/RESULTS.md, Cold
    # workers): the status it records links plots by name only (app.results.plot_kinds).
    _loads_none_of("worker.tasks", "matplotlib", "pandas", "scipy")


# --- the checker itself finds what it must, and only that --------------------------------------------------

_EXAMPLE = textwrap.dedent(
    """
    from typing import TYPE_CHECKING
    import app.db
    from worker.celery_app import celery_app
    if TYPE_CHECKING:
        from worker.training.reports import EpochReport
    else:
        import worker.tasks

    class Probe:
        import worker.maintenance

        def queue_depths(self):
            from worker.celery_app import embedded_broker_folders

        def other(self):
            def inner():
                import importlib
                importlib.import_module("worker.runner")
    """
)


@pytest.mark.parametrize(
    ("path", "expected_lines"),
    [
        # Anywhere in app: the three imports that run at import time (line 4, the else branch 8, the class body 11).
        ("app/results/service.py", [4, 8, 11, 14, 19]),
        ("app/cli/train.py", [4, 8, 11]),
        ("app/monitoring/service.py", [4, 8, 11, 19]),
    ],
)
def test_the_checker_names_the_module_and_line_of_each_broken_rule(path: str, expected_lines: list[int]) -> None:
    problems = worker_import_violations(path, _EXAMPLE)
    assert [int(problem.split(":")[1]) for problem in problems] == expected_lines
    assert all(problem.startswith(f"{path}:") for problem in problems)
    assert "worker.training.reports" not in "\n".join(problems)
    assert client_import_violations("actlab/http.py", _EXAMPLE)[0].startswith("actlab/http.py:3: imports app.db")
