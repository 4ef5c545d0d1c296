"""The package's floors, as import contracts (read from the source with `ast`, so lazy imports inside functions count
too): each module imports only from its own floor or the floors below it, and no two modules import each other,
directly or round a loop. The floors, top to bottom:

    app        the `minift` command, compare and its report, run folders
    training   the loop, checkpoints, pretraining, fine-tuning, evaluation
    measure    the memory model, timing and FLOPs, the lens, intruder dimensions
    learner    what a learner reads: the model, the LoRA family, the optimizer, the methods, the base, generation
    fast       speed, tested against the reference: fused kernels, workers
    ops        the reference forward/backward pairs: they import only backend and errors
    data       corpora, tasks, batches
    formats    files on disk: atomic writes, safetensors, Hugging Face folders, the tokenizer
    core       backend, config, errors, version
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minift"
FLOORS = [                      # top first; a module belongs to the floor of its longest matching prefix
    ("app", ("minift.app", "minift.__main__")),
    ("training", ("minift.training",)),
    ("measure", ("minift.measure",)),
    ("learner", ("minift", "minift.model", "minift.lora", "minift.optim", "minift.gradcheck", "minift.methods",
                 "minift.base", "minift.generate", "minift.dispatch", "minift.quant")),
    ("fast", ("minift.fast",)),
    ("ops", ("minift.ops",)),
    ("data", ("minift.data",)),
    ("formats", ("minift.formats",)),
    ("core", ("minift.backend", "minift.config", "minift.errors", "minift.version")),
]
OPS_MAY_IMPORT = {"minift.backend", "minift.errors"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor_of(module: str) -> int:
    """The floor of a module: that of its longest listed prefix ("minift" itself only for the package's __init__)."""
    matches = [(len(prefix), i) for i, (_, prefixes) in enumerate(FLOORS) for prefix in prefixes
               if module == prefix or (prefix != "minift" and module.startswith(prefix + "."))]
    if not matches:
        raise LookupError(f"{module} has no floor: add it to FLOORS in tests/test_layers.py")
    return max(matches)[1]


def imports_of(module: str, source: str | None = None) -> set:
    """The minift modules `module` imports anywhere in its file (or in `source`, given instead): `from .x import y`
    counts as x.y when that is a module, else as x."""
    path = MODULES.get(module)
    is_package = path is not None and path.name == "__init__.py"
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source if source is not None else path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "minift"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "minift":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    found.discard(module)
    return {m for m in found if m in MODULES}


GRAPH = {m: imports_of(m) for m in MODULES}


def test_every_module_has_a_floor():
    """A new top-level module must be placed on a floor on purpose (floor_of raises for one that is not)."""
    unplaced = []
    for m in MODULES:
        try:
            floor_of(m)
        except LookupError:
            unplaced.append(m)
    assert not unplaced, f"modules on no floor: {unplaced}"
    with pytest.raises(LookupError):
        floor_of("minift.somewhere_new")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_floor_and_below(module):
    upward = sorted(t for t in GRAPH[module] if floor_of(t) < floor_of(module))
    assert not upward, (f"{module} (floor {FLOORS[floor_of(module)][0]}) imports from a higher floor: "
                        + ", ".join(f"{t} ({FLOORS[floor_of(t)][0]})" for t in upward))


def test_reference_ops_import_only_backend_and_errors():
    for module in (m for m in MODULES if m.startswith("minift.ops")):
        outside = {t for t in GRAPH[module] if not t.startswith("minift.ops")} - OPS_MAY_IMPORT
        assert not outside, f"{module} imports {sorted(outside)}: a reference op knows no kernel, block or worker"


def test_no_import_cycles():
    """Tarjan's strongly connected components: a component of more than one module is a cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_reads_lazy_and_relative_imports():
    """The reader under the contracts: an import inside a function, two dots up, is seen and resolved."""
    source = "def f():\n    from ..app.cli import main\n    from ..fast import kernels\n"
    found = imports_of("minift.ops.gelu", source)
    assert found == {"minift.app.cli", "minift.fast.kernels"}
    assert all(floor_of(t) < floor_of("minift.ops.gelu") for t in found)     # both would be refused


TESTS = Path(__file__).resolve().parent


def test_the_tests_mirror_the_package():
    """Each subpackage has its tests in the folder of the same name, each test file sits in the folder of the code it
    tests (or in tests/ itself for top-level modules and whole-project checks), and no test imports another test file:
    what tests share lives in tests/helpers.py."""
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    assert folders == subpackages, f"tests/ folders {sorted(folders)} vs minift/ subpackages {sorted(subpackages)}"
    for path in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0].startswith("test_") for n in names), \
                f"{path.relative_to(TESTS)} imports another test file: move what it shares to tests/helpers.py"


def test_the_lora_config_needs_no_model():
    """LoRAConfig names the linears it may adapt from minift.config (LINEAR_MODULES lives there, one floor down; the
    model re-exports it), so reading a configuration does not import the model."""
    assert "minift.model" not in GRAPH["minift.lora.config"]
    assert "minift.config" in GRAPH["minift.lora.config"]
