"""The package's shape, read from the source with ``ast`` (nothing of pld_spark is imported).

- a pipeline stage (``STAGES``) never imports another stage (stages talk through stored tables,
  read by ``pld_spark.storage.readers``); ``clusterers`` and ``embedders`` are plug-in registries;
  a stage's helper module (``HELPERS``) is imported by that stage only;
- ``pld_spark.prompts`` depends on the LLM layer only through its light modules
  (``llm.types``, ``llm.jsonparse``, ``llm.calibrate``: data types, JSON parsing and calibration
  arithmetic, no model code), never a backend;
- module-level imports between ``pld_spark`` modules form no cycle;
- no module is a god module (over 400 lines), and the stage runners that wire a stage to the
  run context stay short (``resolve.run``, ``evaluate.run`` under 60 lines).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "pld_spark"
STAGES = ("ingest", "extract", "cluster", "consolidate", "select", "resolve", "review", "score", "evaluate")
REGISTRIES = ("clusterers", "embedders")
#: a stage's helper module -> the one stage that may import it (a helper imports no stage)
HELPERS = {"prompt_extras": "consolidate"}
PROMPTS_MAY_USE = ("pld_spark.llm.types", "pld_spark.llm.jsonparse", "pld_spark.llm.calibrate")
MAX_MODULE_LINES = 400
MAX_RUN_LINES = 60


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported(tree: ast.AST, this: str, is_package: bool = False, top_level_only: bool = False):
    """(line, fully qualified name) of everything imported in ``tree``: ``import a.b`` gives
    ``a.b``; ``from a import b`` gives ``a.b`` (b may be a module or a name in a, callers
    check both); relative imports are resolved against ``this``. ``top_level_only``: statements
    that run at import time (module body, including if/try blocks), not inside functions or
    classes' methods."""
    def walk(node):
        for child in ast.iter_child_nodes(node):
            if top_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            yield child
            yield from walk(child)

    pkg_parts = this.split(".") if is_package else this.split(".")[:-1]
    for node in walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = pkg_parts[: len(pkg_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield node.lineno, base
            for a in node.names:
                yield node.lineno, f"{base}.{a.name}"


def _in_type_checking(tree: ast.Module) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:`` (never executed)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    lines.add(sub.lineno)
    return lines


# ----------------------------------------------------------------------------- the rules
def test_helpers_see_every_import_form():
    src = ("import pld_spark.pipeline.score\nfrom pld_spark.pipeline import extract as ex\n"
           "from pld_spark.pipeline.cluster import run\nfrom . import resolve\nfrom .evaluate import x\n"
           "def f():\n    from pld_spark.pipeline import ingest\n")
    names = {n for _, n in imported(ast.parse(src), "pld_spark.pipeline.review")}
    assert {"pld_spark.pipeline.score", "pld_spark.pipeline.extract", "pld_spark.pipeline.cluster.run",
            "pld_spark.pipeline.resolve", "pld_spark.pipeline.evaluate.x", "pld_spark.pipeline.ingest"} <= names
    top = {n for _, n in imported(ast.parse(src), "pld_spark.pipeline.review", top_level_only=True)}
    assert "pld_spark.pipeline.ingest" not in top and "pld_spark.pipeline.score" in top
    assert stage_of("pld_spark.pipeline.cluster.run") == "cluster" and stage_of("pld_spark.pipeline.clusterers") is None


def stage_of(name: str) -> str | None:
    """The stage a dotted import name refers to (``pld_spark.pipeline.<stage>[.x]``), else None."""
    parts = name.split(".")
    if parts[:2] == ["pld_spark", "pipeline"] and len(parts) >= 3 and parts[2] in STAGES:
        return parts[2]
    return None


def test_no_stage_module_imports_another_stage():
    found = sorted(p.stem for p in (PKG / "pipeline").glob("*.py") if p.stem != "__init__")
    assert set(STAGES) <= set(found), f"stage modules missing from pld_spark/pipeline: {set(STAGES) - set(found)}"
    unexpected = set(found) - set(STAGES) - set(REGISTRIES) - set(HELPERS)
    assert not unexpected, (f"pld_spark/pipeline has modules that are neither a stage {STAGES}, a registry "
                            f"{REGISTRIES} nor a stage's helper {sorted(HELPERS)}: {sorted(unexpected)}; classify "
                            "them in this test")
    offences = []
    for stem in (*STAGES, *HELPERS):
        path = PKG / "pipeline" / f"{stem}.py"
        for line, name in imported(parse(path), f"pld_spark.pipeline.{stem}"):
            other = stage_of(name)
            if other is not None and other != stem:
                offences.append(f"pld_spark/pipeline/{stem}.py:{line} imports stage '{other}' ({name})")
    for path in sorted(PKG.rglob("*.py")):
        for line, name in imported(parse(path), module_name(path), is_package=path.stem == "__init__"):
            helper = next((h for h in HELPERS if name == f"pld_spark.pipeline.{h}"
                           or name.startswith(f"pld_spark.pipeline.{h}.")), None)
            if helper and module_name(path) != f"pld_spark.pipeline.{HELPERS[helper]}":
                offences.append(f"{path.relative_to(PKG.parent)}:{line} imports '{helper}', a helper of stage "
                                f"'{HELPERS[helper]}' only")
    assert not offences, ("a stage imports another stage (read its stored output through "
                          "pld_spark.storage.readers instead):\n" + "\n".join(sorted(set(offences))))


def test_prompts_use_only_the_light_llm_modules():
    offences: dict[str, str] = {}  # "file:line" -> the module imported there
    for path in sorted((PKG / "prompts").glob("*.py")):
        for line, name in imported(parse(path), module_name(path), is_package=path.stem == "__init__"):
            # `from pld_spark.llm import x` yields pld_spark.llm (the package) and pld_spark.llm.x (checked)
            if name.startswith("pld_spark.llm.") and not any(name == ok or name.startswith(ok + ".")
                                                              for ok in PROMPTS_MAY_USE):
                where = f"{path.relative_to(PKG.parent)}:{line}"
                offences[where] = min(offences.get(where, name), name, key=len)
    assert not offences, (f"pld_spark/prompts may import from pld_spark.llm only {PROMPTS_MAY_USE}:\n"
                          + "\n".join(f"{k} imports {v}" for k, v in sorted(offences.items())))


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported pld_spark module: line} for imports that run at import time."""
    mods = modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        tree = parse(path)
        skip = _in_type_checking(tree)
        edges: dict[str, int] = {}
        for line, target in imported(tree, name, is_package=path.stem == "__init__", top_level_only=True):
            if line in skip or not target.startswith("pld_spark"):
                continue
            # `from a import b`: b is a module when a.b is one, else a name in module a
            mod = target if target in mods else target.rsplit(".", 1)[0] if target.rsplit(".", 1)[0] in mods else None
            if mod is not None and mod != name and mod != "pld_spark":
                edges.setdefault(mod, line)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative DFS, deterministic order)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for root in sorted(graph):
        if colour[root] != WHITE:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = GREY
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = BLACK
                stack.pop()
                path.pop()
                continue
            if nxt not in colour:
                continue
            if colour[nxt] == GREY:
                return path[path.index(nxt):] + [nxt]
            if colour[nxt] == WHITE:
                colour[nxt] = GREY
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def test_cycle_finder_reports_the_cycle():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1}}) is None


def test_no_import_cycle_at_module_level():
    graph = import_graph()
    assert "pld_spark.pipeline.resolve" in graph and graph["pld_spark.pipeline.resolve"], "graph is empty"
    cycle = find_cycle(graph)
    if cycle:
        steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("module-level import cycle in pld_spark:\n  " + "\n  ".join(steps))


def test_no_module_is_over_the_line_limit():
    over = {str(p.relative_to(PKG.parent)): n for p in sorted(PKG.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split them): " + ", ".join(
        f"{k} ({v})" for k, v in sorted(over.items(), key=lambda kv: -kv[1]))


@pytest.mark.parametrize("stage", ["resolve", "evaluate"])
def test_stage_runner_is_short(stage):
    tree = parse(PKG / "pipeline" / f"{stage}.py")
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"), None)
    assert fn is not None, f"pld_spark/pipeline/{stage}.py has no module-level run()"
    first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
    span = fn.end_lineno - first + 1
    assert span < MAX_RUN_LINES, (f"{stage}.run spans {span} lines (lines {first}-{fn.end_lineno}); keep it under "
                                  f"{MAX_RUN_LINES}: move logic into pure functions it calls")
