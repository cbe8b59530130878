"""The package layout holds: no import circle and no upward import in mixcli/ and plugins/ (lazy imports
inside functions count), plugins import only the plugin-author surface, package __init__ files stay empty
or lazy, and the report commands start without importing torch (read with ``python -X importtime``).

The import graph is read from the code (the AST of every module), not from what happens to be imported."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (("mixcli", ROOT / "mixcli"), ("mixcli_plugins", ROOT / "plugins"))

# Higher layers may import lower ones, never the other way. Data flows config -> execution -> training ->
# results; execution drives training, training writes results, and all of them read the config.
LAYERS = {
    "mixcli": 0, "mixcli.errors": 0, "mixcli.fs": 0, "mixcli.registry": 0, "mixcli.metrics": 0, "mixcli.api": 0,
    "mixcli.data": 1, "mixcli.mixing": 1,
    "mixcli.config": 2,
    "mixcli.results": 3,
    "mixcli.training": 4,
    "mixcli.execution": 5,
    "mixcli.cli": 6, "mixcli.entry": 6,
}
PLUGIN_SURFACE = ("mixcli.api", "mixcli.mixing", "mixcli.data")


def modules() -> dict[str, Path]:
    found = {}
    for pkg, root in PACKAGES:
        for path in root.rglob("*.py"):
            parts = [pkg, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def _resolve(name: str) -> str | None:
    """The module of ours that ``name`` (a module or an attribute of one) lives in, or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imported(module: str):
    """``(target, names)`` of every import statement of ``module`` (top level or inside a function): the
    module a ``from`` import reads (relative ones resolved) with the names it takes, or each imported
    module with no names."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names]


def imports_of(module: str) -> set[str]:
    """Every module of ours that ``module`` imports anywhere (top level or inside a function)."""
    out = set()
    for target, taken in imported(module):
        names = [target] + [f"{target}.{n}" for n in taken if f"{target}.{n}" in MODULES]
        for n in names:
            m = _resolve(n)
            if m and m != module:
                out.add(m)
    return out


GRAPH = {m: imports_of(m) for m in MODULES}


def missing_imports() -> list[str]:
    """Imports of a module of ours that does not exist (e.g. a relative import left behind by a move)."""
    return [f"{module} imports {target}, which does not exist" for module in MODULES
            for target, _ in imported(module)
            if target.split(".")[0] in ("mixcli", "mixcli_plugins") and target not in MODULES]


def layer(module: str) -> int | None:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    return None


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read_from_the_code():
    # a sample of known edges, lazy ones included: the reader sees what the modules import
    assert "mixcli.training.engine" in GRAPH["mixcli.execution.worker"]
    assert "mixcli.config.spec" in GRAPH["mixcli.execution.status"]  # imported inside a function
    assert "mixcli.mixing.boxes" in GRAPH["mixcli_plugins.methods.cutmix"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_of_ours_exists():
    assert missing_imports() == []


def test_no_import_circles():
    assert circles(GRAPH) == []


def test_no_upward_imports():
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in GRAPH.items() if m.startswith("mixcli.") or m == "mixcli"
              for d in deps if layer(m) is not None and layer(d) is not None and layer(d) > layer(m)]
    assert upward == []
    unplaced = [m for m in GRAPH if m.startswith("mixcli.") and layer(m) is None]
    assert unplaced == []  # every new package gets a layer here


def test_plugins_import_only_the_plugin_author_surface():
    bad = []
    for m, deps in GRAPH.items():
        if not m.startswith("mixcli_plugins."):
            continue
        for d in deps:
            if d.startswith("mixcli_plugins"):
                bad.append(f"{m} imports another plugin module {d}")
            elif not any(d == s or d.startswith(s + ".") for s in PLUGIN_SURFACE):
                bad.append(f"{m} imports {d}, outside {', '.join(PLUGIN_SURFACE)}")
    assert bad == []


def test_package_init_files_are_empty_or_lazy():
    for name, path in MODULES.items():
        if path.name != "__init__.py" or name == "mixcli_plugins":
            continue
        tree = ast.parse(path.read_text())
        eager = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                 and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")
                 and not (isinstance(n, ast.Import) and [a.name for a in n.names] == ["importlib"])]
        assert eager == [], f"{path} imports at module level (use a lazy module __getattr__)"


def _results(out: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from mixcli.results.store import Store

    store = Store(out)
    for seed in (0, 1):
        cfg = {"name": "tiny", "task": "classification", "dataset": {"name": "digits"}, "model": {"name": "mlp"},
               "method": {"name": "erm"}, "loss": {"name": "soft_ce"}, "train": {"epochs": 2},
               "eval": {"selection": "final"}, "seed": seed}
        rid = f"erm-s{seed}"
        store.write_run({"run_id": rid, "experiment": "tiny", "method": "erm", "dataset": "digits", "model": "mlp",
                         "loss": "soft_ce", "task": "classification", "seed": seed, "status": "finished",
                         "config": json.dumps(cfg), "selection": "final", "epochs": 2})
        store.write_epochs(rid, [{"epoch": e, "test_accuracy": 0.5 + 0.1 * e + 0.01 * seed} for e in (1, 2)])
    return out


@pytest.mark.parametrize("args", [["--help"], ["compare", "OUT"], ["curves", "OUT"], ["status", "OUT"]],
                         ids=["help", "compare", "curves", "status"])
def test_report_commands_start_without_torch(tmp_path, args):
    out = _results(tmp_path / "res")
    argv = [str(out) if a == "OUT" else a for a in args]
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "mixcli.cli", *argv], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "mixcli.errors" in imported  # the importtime lines were read (the CLI imports it first)
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}
