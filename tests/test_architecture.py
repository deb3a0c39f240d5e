"""Structure that review alone does not keep: no import cycle between the package's modules, imports that point
down the data flow only, small functions, and no branch on the name of a head kind, an algorithm or a task
outside the registries that map those names."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    names = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of the package that `name` imports anywhere (in functions and under TYPE_CHECKING too),
    with the packages above each, whose __init__ runs first (but for `name`'s own packages)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            while target:
                if target in modules and target != name and not name.startswith(f"{target}."):
                    found.add(target)  # a package's own modules import beside it: its __init__ already runs
                target = target.rpartition(".")[0]
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        path.append(node)
        for child in sorted(graph[node]):
            if cycle := visit(child):
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            return cycle
    return None


def test_no_module_of_the_package_imports_itself_through_others():
    modules = _modules()
    graph = {name: _imports(name, path, modules) - {"qsharp_exp"} for name, path in modules.items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _registered_names() -> set[str]:
    """The names that registries map: head kinds, algorithms (pi_ref, guidance rules, policy trainers), tasks."""
    from qsharp_exp.algos import algo_names
    from qsharp_exp.models.heads import HEADS
    from qsharp_exp.tasks import TASKS

    return {*HEADS, *algo_names(), *TASKS}


def _name_comparisons(source: str, names: set[str]) -> list[str]:
    """Comparisons (==, !=, in, is) of a value with a string literal, or a literal tuple/list/set of them, that is
    one of `names`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        literals = set()
        for side in [node.left, *node.comparators]:
            elements = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            literals |= {e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        if literals & names:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_code_branches_on_a_head_kind_algorithm_or_task_name():
    names = _registered_names()
    found = [f"{path.relative_to(SRC)} {hit}" for path in sorted(SRC.rglob("*.py"))
             for hit in _name_comparisons(path.read_text(), names)]
    assert not found, "ask the registry (or a table keyed by the name) instead:\n" + "\n".join(found)


def test_the_name_branch_finder_finds_one():
    names = {"q", "gsm8k"}
    assert _name_comparisons("if cfg.head == 'q':\n    pass", names) == ["line 1: cfg.head == 'q'"]
    assert _name_comparisons("x = task in ('gsm8k', 'math')", names) == ["line 1: task in ('gsm8k', 'math')"]
    assert _name_comparisons("if HEADS[cfg.head].label_shift:\n    pass", names) == []


# The package's floors, in the order data flows (docs/architecture.md): a module imports from its own floor or
# below, never from above. A name is a module or a package (all modules under it).
FLOORS = [
    ("foundations", ["config", "registry", "files", "failures", "progress", "padding", "sealing", "distributed",
                     "calibration"]),
    ("hardware, settings and tracking", ["hardware", "config_view", "tracking"]),
    ("task data", ["tasks", "prompts"]),
    ("guidance formulas and models", ["guidance", "models"]),
    ("decoding", ["sampling"]),
    ("training", ["training"]),
    ("measuring and reporting", ["metrics", "algos", "reporting"]),
    ("composing a run's config", ["compose", "sweep"]),
    ("stages", ["stages"]),
    ("a run", ["pipeline", "api", "harness"]),
    ("programs", ["__main__", "cli"]),
]


def _floor(module: str) -> int:
    name = module.removeprefix("qsharp_exp.")
    for number, (_, members) in enumerate(FLOORS):
        if any(name == m or name.startswith(f"{m}.") for m in members):
            return number
    raise AssertionError(f"{module} is on no floor: add it to FLOORS (and to docs/architecture.md)")


def _upward_imports(modules: dict[str, Path]) -> list[str]:
    found = []
    for name, path in sorted(modules.items()):
        if name == "qsharp_exp":  # the package's __init__: the lazy public API
            continue
        for target in sorted(_imports(name, path, modules) - {"qsharp_exp"}):
            if _floor(target) > _floor(name):
                found.append(f"{name} ({FLOORS[_floor(name)][0]}) imports {target} ({FLOORS[_floor(target)][0]})")
    return found


def test_every_import_points_down_the_data_flow():
    found = _upward_imports(_modules())
    assert not found, "a module imports from a floor above its own:\n" + "\n".join(found)


def test_the_floor_check_finds_an_upward_import(tmp_path):
    (tmp_path / "qsharp_exp" / "sampling").mkdir(parents=True)
    (tmp_path / "qsharp_exp" / "__init__.py").write_text("")
    (tmp_path / "qsharp_exp" / "pipeline.py").write_text("")
    (tmp_path / "qsharp_exp" / "sampling" / "__init__.py").write_text("")
    (tmp_path / "qsharp_exp" / "sampling" / "batched.py").write_text("from qsharp_exp.pipeline import run\n")
    modules = {"qsharp_exp.pipeline": tmp_path / "qsharp_exp" / "pipeline.py",
               "qsharp_exp.sampling": tmp_path / "qsharp_exp" / "sampling" / "__init__.py",
               "qsharp_exp.sampling.batched": tmp_path / "qsharp_exp" / "sampling" / "batched.py"}
    assert _upward_imports(modules) == ["qsharp_exp.sampling.batched (decoding) imports qsharp_exp.pipeline (a run)"]


MAX_LINES, MAX_PARAMETERS = 60, 6


def _oversized(source: str) -> list[str]:
    """Functions longer than MAX_LINES lines or with more than MAX_PARAMETERS parameters (self and cls not
    counted; *args and **kwargs count one each)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        args = node.args
        names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
        count = len(names) - (names[:1] in (["self"], ["cls"])) + bool(args.vararg) + bool(args.kwarg)
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_LINES or count > MAX_PARAMETERS:
            found.append(f"{node.name} (line {node.lineno}): {lines} lines, {count} parameters")
    return found


def test_no_function_is_over_60_lines_or_6_parameters():
    found = [f"{path.relative_to(SRC)} {hit}"
             for path in sorted(SRC.rglob("*.py")) for hit in _oversized(path.read_text())]
    assert not found, "split the function, or group what travels together in a dataclass:\n" + "\n".join(found)


def test_the_size_check_finds_a_long_function_and_a_long_signature():
    assert _oversized("def f(self, a, b, c, d, e, g):\n    pass") == []
    assert _oversized("def f(a, b, c, d, e, g, h):\n    pass") == ["f (line 1): 2 lines, 7 parameters"]
    assert _oversized("def f(*a, **k):\n" + "    x = 1\n" * 60) == ["f (line 1): 61 lines, 2 parameters"]


def test_module_names_are_unique_across_folders():
    """A file name says which module it is: `policy.py` in two folders would not."""
    seen: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.name != "__init__.py":
            seen.setdefault(path.name, []).append(str(path.relative_to(SRC)))
    assert not {name: paths for name, paths in seen.items() if len(paths) > 1}
