"""Imports point down only (docs/architecture.md): read every module's imports with `ast` --
the lazy ones inside functions too -- and check them against the layer order and the package
rules written here and in docs/architecture.md; no module-level import cycle; and importing the
pure `aggregate` loads no model code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "robust_rlhf"

# Bottom to top; a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", [PKG, "_lazy", "errors", "utils", "config", "checkpoint", "threads"]),
    ("components", ["models", "data", "gold", "aggregate", "reward", "policy", "integrations"]),
    ("recipes", ["reward.train", "reward.train_deep_ensemble", "reward.train_config", "reward.stage2", "policy.recipe", "policy.tracking",
                 "policy.ppo", "policy.rloo", "policy.best_of_n"]),
    ("lab", ["experiments", "report"]),
    ("cli", ["cli"]),
]

# Arrows inside a layer that must not exist (importer prefix -> prefixes it may not import).
_COMPONENTS = ["models", "data", "gold", "aggregate", "reward", "policy", "integrations"]
FORBIDDEN: dict[str, list[str]] = {
    "models": ["data", "gold", "aggregate", "reward", "policy", "integrations"],
    "gold": ["data", "aggregate", "reward", "policy", "integrations"],
    "data": ["aggregate", "reward", "policy", "integrations"],
    "reward.output": _COMPONENTS,
    "aggregate": [c for c in _COMPONENTS if c != "reward"] + ["reward.model", "reward.heads", "reward.losses",
                                                               "reward.layer_ensemble", "reward.evaluate", "reward.sources"],
    "reward": ["policy", "integrations"],
    "integrations": ["policy"],
    "policy": ["integrations"],
    "policy.kl": _COMPONENTS,
    "policy.losses": _COMPONENTS,
    "report": ["experiments"] + [c for c in _COMPONENTS if c != "reward"]
              + ["reward.output", "reward.model", "reward.heads", "reward.losses", "reward.layer_ensemble",
                 "reward.sources", "reward.train", "reward.train_config", "reward.stage2"],
}


def _rel(module: str) -> str:
    return module[len(PKG) + 1 :] if module.startswith(PKG + ".") else module


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _layer(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if _matches(module, p) and len(p) > best:
                best, rank = len(p), i
    assert rank >= 0, f"{module}: in no layer of tests/test_architecture.py"
    return rank


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module (relative to the package, e.g. ``reward.model``) -> the package modules it imports,
    at the top level or inside functions. ``from robust_rlhf.x import y`` counts as importing
    ``x.y`` when that is a module, else ``x``."""
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                           for a in node.names]
            for t in targets:
                if t == PKG or t.startswith(PKG + "."):
                    deps.add(_rel(t) if t != PKG else PKG)
        deps.discard(_rel(name))
        graph[_rel(name) if name != PKG else PKG] = deps
    return graph


GRAPH = import_graph()


def test_every_import_points_down_or_sideways_within_its_layer():
    up = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
          for m, deps in GRAPH.items() for d in deps if _layer(d) > _layer(m)]
    assert not up, "imports pointing up:\n" + "\n".join(sorted(up))


def test_no_forbidden_arrows_inside_a_layer():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps
           for src, banned in FORBIDDEN.items() if _matches(m, src) and any(_matches(d, b) for b in banned)]
    assert not bad, "\n".join(sorted(set(bad)))


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph (package __init__ files,
    which only name lazy exports, are left out)."""
    nodes = [m for m in GRAPH if m not in (PKG, "_lazy")]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH or w in (PKG, "_lazy"):
                continue
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
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in nodes:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_lazy_imports_and_flags_an_upward_one(tmp_path):
    """The graph holds imports made inside functions, and an upward one would be reported."""
    assert "reward.train" in GRAPH["policy.recipe"]  # imported inside build_reward_source
    assert _layer("cli.rm") > _layer("experiments.overopt") > _layer("policy.ppo") > _layer("policy.losses") > _layer("utils")
    assert _layer("reward.train") > _layer("reward.model")
    graph = {"utils": {"policy.ppo"}}
    assert [d for m, deps in graph.items() for d in deps if _layer(d) > _layer(m)] == ["policy.ppo"]


@pytest.mark.parametrize("module, absent", [
    ("robust_rlhf.aggregate", ["robust_rlhf.reward.model", "robust_rlhf.reward.heads", "safetensors", "tqdm",
                               "transformers"]),
    ("robust_rlhf.reward.output", ["robust_rlhf.reward.model", "robust_rlhf.aggregate", "safetensors", "transformers"]),
])
def test_importing_a_pure_module_loads_no_model_code(module, absent):
    """In a fresh interpreter, what importing ``module`` loads beyond torch (which itself imports
    tqdm, for torch.hub) holds none of ``absent``. (On 0.1.0 ``aggregate`` loaded the reward model
    and safetensors through ``robust_rlhf.reward``'s eager imports.)"""
    code = (f"import sys, torch; base = set(sys.modules); import {module}; "
            f"print(sorted(m for m in set(sys.modules) - base for a in {absent!r} if m == a or m.startswith(a + '.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
