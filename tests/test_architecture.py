"""Structure that review alone does not keep: no import cycle between the package's modules, and no branch on the
name of a head kind, an algorithm or a task outside the registries that map those names."""

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
