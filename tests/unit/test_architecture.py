"""The import structure: no cycle among the project's modules, and an engine that knows nothing of HTTP.

The graph is grimp's: every import each module writes, those under TYPE_CHECKING and inside functions included.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import grimp
import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("app", "loadtests", "benchmarks", "tests")
HTTP_PACKAGES = ("fastapi", "starlette")  # the engine names neither, nor app.api
TASKS = ("app.engine.tasks",)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)


def import_cycles(graph: grimp.ImportGraph, modules: Iterable[str]) -> list[list[str]]:
    """The strongly connected groups of more than one module (or a module importing itself), by Tarjan's
    algorithm, iterative so that a deep chain cannot hit the recursion limit; each group sorted."""
    inside = set(modules)
    edges = {module: sorted(graph.find_modules_directly_imported_by(module) & inside) for module in sorted(inside)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            module, position = work.pop()
            if position == 0:
                index[module] = low[module] = len(index)
                stack.append(module)
                on_stack.add(module)
            targets = edges[module]
            if position < len(targets):
                work.append((module, position + 1))
                target = targets[position]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[module] = min(low[module], index[target])
                continue
            if low[module] == index[module]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == module:
                        break
                if len(group) > 1 or module in edges[module]:
                    groups.append(sorted(group))
            if work:  # back in the module that reached this one
                parent = work[-1][0]
                low[parent] = min(low[parent], low[module])
    return sorted(groups)


def project_modules(graph: grimp.ImportGraph) -> set[str]:
    return {module for module in graph.modules if module.split(".")[0] in PACKAGES}


def test_the_graph_holds_the_project() -> None:
    built = grimp.build_graph(*PACKAGES, cache_dir=None)
    expected = {"app.engine.engine", "app.api.app", "loadtests.compare", "benchmarks.service", "tests.support.helpers"}
    assert expected <= set(built.modules)


def test_no_import_cycle(graph: grimp.ImportGraph) -> None:
    cycles = import_cycles(graph, project_modules(graph))
    loops = [
        (graph.find_shortest_chain(importer=group[0], imported=group[-1]),
         graph.find_shortest_chain(importer=group[-1], imported=group[0]))
        for group in cycles
    ]  # fmt: skip
    assert cycles == [], f"import cycles (groups of modules that import each other): {cycles}; there and back: {loops}"


@pytest.mark.parametrize(
    ("imports", "expected"),
    [
        ([("a", "b"), ("b", "c")], []),
        ([("a", "b"), ("b", "a"), ("b", "c")], [["a", "b"]]),
        ([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d")], [["a", "b", "c"], ["d", "e"]]),
        ([("a", "a")], [["a"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(imports: list[tuple[str, str]], expected: list[list[str]]) -> None:
    built = grimp.ImportGraph()
    for importer, imported in imports:
        built.add_import(importer=importer, imported=imported)
    assert import_cycles(built, built.modules) == expected


def test_the_engine_imports_nothing_of_http(graph: grimp.ImportGraph) -> None:
    engine = {"app.engine", *graph.find_descendants("app.engine")}
    direct = sorted(
        (module, imported)
        for module in engine
        for imported in graph.find_modules_directly_imported_by(module)
        if imported.split(".")[0] in HTTP_PACKAGES or imported == "app.api" or imported.startswith("app.api.")
    )
    assert direct == [], f"app.engine imports HTTP layers: {direct}"
    for layer in ("app.api", *HTTP_PACKAGES):  # nor through another module it imports
        chains = graph.find_shortest_chains(importer="app.engine", imported=layer, as_packages=True)
        assert not chains, f"app.engine reaches {layer}: {sorted(chains)}"


def direct_imports_of(graph: grimp.ImportGraph, package: str, targets: tuple[str, ...]) -> list[tuple[str, str]]:
    """(module of ``package``, what it imports) for every direct import of one of ``targets`` or their modules."""
    inside = {package, *graph.find_descendants(package)}
    return sorted(
        (module, imported)
        for module in inside
        for imported in graph.find_modules_directly_imported_by(module)
        if any(imported == target or imported.startswith(target + ".") for target in targets)
    )


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        # The batcher runs any backend through the runner and stages protocols; a backend hands its stages over.
        (
            "app.engine.scheduler",
            ("app.engine.backends", "app.engine.models", "app.engine.traffic", "app.engine.tasks"),
        ),
        # A task is its labels, encoder, post-processing and rows: it knows nothing of how or where it runs.
        (
            "app.engine.tasks",
            ("app.engine.scheduler", "app.engine.backends", "app.engine.models", "app.engine.traffic"),
        ),
        # The engine serves every transport and front end; it knows none of them.
        ("app.engine", ("app.service", "app.api", "app.multiprocess", "app.cli")),
        # Protocol-neutral services: no HTTP, no process plumbing.
        ("app.service", ("app.api", "app.multiprocess", *HTTP_PACKAGES)),
        # gRPC (issue #26): the engine and the services know no transport; gRPC knows nothing of HTTP.
        ("app.engine", ("app.grpc",)),
        ("app.service", ("app.grpc",)),
        ("app.grpc", ("app.api", "app.multiprocess", "app.cli", *HTTP_PACKAGES)),
        # Tracing (issue #27) serves every layer (transports, service, engine, processes): it imports none of them.
        (
            "app.tracing",
            ("app.api", "app.grpc", "app.service", "app.engine", "app.multiprocess", "app.cli", *HTTP_PACKAGES),
        ),
    ],
)
def test_layers_import_only_downwards(graph: grimp.ImportGraph, package: str, forbidden: tuple[str, ...]) -> None:
    assert direct_imports_of(graph, package, forbidden) == []
    for layer in forbidden:  # nor through another module it imports
        if layer in graph.modules:
            chains = graph.find_shortest_chains(importer=package, imported=layer, as_packages=True)
            assert not chains, f"{package} reaches {layer}: {sorted(chains)}"


def test_only_the_http_transport_imports_fastapi(graph: grimp.ImportGraph) -> None:
    importers = {
        module
        for module in project_modules(graph)
        if module.startswith("app")
        and any(imported.split(".")[0] in HTTP_PACKAGES for imported in graph.find_modules_directly_imported_by(module))
    }
    assert importers, "no module imports FastAPI: the graph is not the project's"
    assert sorted(module for module in importers if not module.startswith("app.api")) == []


def test_http_reaches_grpc_only_where_the_process_starts_both(graph: grimp.ImportGraph) -> None:
    """gRPC runs beside uvicorn in one loop (issue #26): app.api.server starts it; no route or middleware knows it."""
    assert direct_imports_of(graph, "app.api", ("app.grpc",)) == [("app.api.server", "app.grpc.server")]
