"""The package's shape, checked from its sources: no import circles, and only the unit files and the
model adapter know where a timm block keeps its FFN."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prune"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the `prune` modules it imports, at any depth of its code (lazy imports inside functions
    count: a circle through them still couples the modules)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # `from pkg import sub` imports the submodule; any other name comes from pkg itself
                candidates = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target
                              for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for c in candidates:
                if c in modules and c != name:
                    edges.add(c)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (depth-first search with colours)."""
    colour, stack = {}, []

    def visit(n):
        colour[n] = "grey"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m) == "grey":
                return stack[stack.index(m):] + [m]
            if m not in colour:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = "black"
        return None

    for n in sorted(graph):
        if n not in colour:
            found = visit(n)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert "prune.units" in graph["prune.gates"]  # module level, relative
    assert "prune.stages.importance" in graph["prune.stages.prune"]  # `from . import importance`
    assert "prune.artifacts" in graph["prune.commands.bench"]  # inside a function
    assert "prune.commands.bench" in graph["prune.cli"]  # `from .commands import bench`


def test_no_import_circles_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_module_but_stages_and_the_pipeline_imports_a_stage():
    for name, edges in import_graph().items():
        if name.startswith("prune.stages") or name == "prune.pipeline":
            continue
        assert not any(e.startswith("prune.stages") for e in edges), f"{name} imports a stage"


def test_only_the_units_and_the_adapter_name_the_ffn_layers():
    allowed = {PACKAGE / "models.py"} | set((PACKAGE / "units").glob("*.py"))
    offenders = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
                 if p not in allowed and re.search(r"mlp\.(fc1|fc2|act)\b", p.read_text())]
    assert not offenders, f"modules reaching into blocks[i].mlp directly: {offenders}"


def test_pruning_is_surgery_and_does_not_import_the_criteria():
    """Surgery builds its Torch-Pruning graph from `prune.units`; scores reach it as tables, never as criteria."""
    edges = import_graph()["prune.pruning"]
    assert not any(e == "prune.criteria" or e.startswith("prune.criteria.") for e in edges), edges
    assert "prune.checkpoint" not in edges, "pruning.py is surgery only: saving and loading is checkpoint.py's"


MODEL_FILES = ("structure.json", "model.safetensors")


def test_only_the_checkpoint_module_names_the_model_files():
    """A file name of a model format, as a string of its own (what a path is built from), is written in
    `prune/checkpoint.py` only; everyone else uses its constants or its readers and writers. Longer
    strings (messages, docstrings) may mention the names."""
    offenders = []
    for p in PACKAGE.rglob("*.py"):
        if p == PACKAGE / "checkpoint.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and node.value in MODEL_FILES:
                offenders.append(f"{p.relative_to(PACKAGE.parent)}:{node.lineno} {node.value!r}")
    assert not offenders, f"model file names outside prune/checkpoint.py: {offenders}"


def test_the_model_file_check_sees_a_planted_literal(tmp_path):
    tree = ast.parse('weights = path / "model.safetensors"\nmsg = "no structure.json here"')
    found = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in MODEL_FILES]
    assert found == ["model.safetensors"]


def test_only_the_artifacts_module_says_which_stage_holds_a_model():
    """Stages load a model from the stage `prune.artifacts` names (`cut_stage`, `input_stage`, `final_stage`),
    never from a stage they name themselves, so a new model-producing stage is one line in `artifacts.CHAIN`."""
    named = re.compile(r"load_pruned\(\s*ctx\.run_dir\.path\(\s*(\w+\.NAME|[\"'])")
    offenders = [str(p.relative_to(PACKAGE.parent)) for p in (PACKAGE / "stages").glob("*.py")
                 if named.search(p.read_text())]
    assert not offenders, f"stages loading a model from a stage they name: {offenders}"
    assert named.search('load_pruned(ctx.run_dir.path(prune.NAME))')


def test_only_the_data_module_builds_image_datasets():
    """Images reach the stages, the commands and the benchmarks through `prune.data.load_images` (one path:
    the split, its columns, the model's transform); nobody else constructs an `ImageDataset` from a split."""
    offenders = []
    for p in PACKAGE.rglob("*.py"):
        if p == PACKAGE / "data.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ImageDataset":
                offenders.append(f"{p.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, f"ImageDataset built outside prune/data.py (use data.load_images): {offenders}"


def test_seams_are_abstract_not_stubs():
    """The unit, criterion and schedule seams are abstract classes: a missing method fails at instantiation,
    not as a `NotImplementedError` deep in a run."""
    offenders = [f"{p.relative_to(PACKAGE.parent)}:{node.lineno}" for p in PACKAGE.rglob("*.py")
                 for node in ast.walk(ast.parse(p.read_text()))
                 if isinstance(node, ast.Raise) and node.exc is not None
                 and "NotImplementedError" in ast.unparse(node.exc)]
    assert not offenders, f"NotImplementedError stubs: {offenders}"
    import inspect

    from prune.criteria.base import BlockCriterion, Criterion
    from prune.schedule import Schedule
    from prune.units.base import Unit

    for seam in (Unit, Criterion, BlockCriterion, Schedule):
        assert inspect.isabstract(seam), seam


def test_a_schedule_is_one_class_in_the_registry():
    """`prune.mode` values are the schedules in `schedule.SCHEDULES`; the stages ask the registry, never the mode."""
    import typing

    from prune.recipe import PruneCfg
    from prune.schedule import SCHEDULES

    assert set(typing.get_args(PruneCfg.model_fields["mode"].annotation)) == set(SCHEDULES)
    assert "prune.progressive" not in import_graph()
    context = (PACKAGE / "stages" / "context.py").read_text()
    assert '"progressive"' not in context and '"iterative"' not in context
