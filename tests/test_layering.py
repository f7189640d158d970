"""`genrec/` is a plain library: serving must never pull in the pipeline SDK."""

import subprocess
import sys
from pathlib import Path

GENREC = Path(__file__).resolve().parents[1] / "genrec"


def test_no_kfp_import_in_library_source() -> None:
    def imports_kfp(path: Path) -> bool:
        return any(line.strip().startswith(("import kfp", "from kfp")) for line in path.read_text().splitlines())

    offenders = [str(p) for p in GENREC.rglob("*.py") if imports_kfp(p)]
    assert offenders == []


def test_importing_the_library_loads_no_kfp() -> None:
    modules = sorted({".".join(p.relative_to(GENREC.parent).with_suffix("").parts)
                      for p in GENREC.rglob("*.py") if p.name != "__main__.py"})
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + \
        "print(sorted(m for m in sys.modules if m == 'kfp' or m.startswith('kfp.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


REPO = GENREC.parent
PACKAGES = ("genrec", "components", "pipelines", "benchmarks", "testbed")


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, at any depth of the file (a lazy import inside a
    function is still a dependency of the file)."""
    import ast

    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                resolved = resolve(target)
                if resolved and resolved != module:
                    graph[module].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_file_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 80, "the graph covers the project's modules"
    assert cycles(graph) == []


def test_benchmarks_and_the_library_import_nothing_from_tests() -> None:
    """What tests and benchmarks share lives in testbed/ and benchmarks/common.py, not in tests/."""
    graph = import_graph()
    for module, targets in graph.items():
        assert not {t for t in targets if t.startswith("tests")}, module
    imports_of_benchmarks = {m for m, targets in graph.items()
                             if m.startswith("benchmarks.bench_") and any(t.startswith("benchmarks.bench_")
                                                                         for t in targets)}
    # One benchmark builds on another's measurements only through their public results, except the
    # soak, which reuses the serving benchmark's model and request bodies.
    assert imports_of_benchmarks <= {"benchmarks.bench_soak"}, imports_of_benchmarks


def test_the_config_depends_on_no_process() -> None:
    """One typed config flows to every process; it must not import any of them."""
    assert {m for m in import_graph()["genrec.config"] if m.startswith("genrec")} == set()


def test_the_predictor_and_the_controller_share_only_the_contract() -> None:
    graph = import_graph()
    serving = {m for m in graph if m.startswith("genrec.serving")}
    controller = {m for m in graph if m.startswith("genrec.controller")}
    assert controller, "the controller is a package of its own"
    for module in serving:
        assert not graph[module] & controller, module
    for module in controller:
        assert not graph[module] & serving - {"genrec.serving.policy"}, module
    assert "genrec.contract" in graph["genrec.serving.admin"]
    assert "genrec.contract" in graph["genrec.controller.replicas"]
