"""The package's layering: no import cycle among its modules.

Every module of ``disco_score`` (with ``disco_score.bench`` and ``disco_score.integrations``, the
latter living in ``integrations/``) is parsed, and every import it makes -- at module level or
inside a function -- is an edge of a directed graph. A cycle means two modules that cannot be
understood (or loaded) one without the other; the interface (``base.py``) must sit below every
implementation. Run as a script, this prints the graph's cycles.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"disco_score": ROOT / "disco_score", "disco_score.bench": ROOT / "disco_score" / "bench",
            "disco_score.integrations": ROOT / "integrations"}


def package_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    for package, directory in PACKAGES.items():
        for path in sorted(directory.glob("*.py")):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree`` (function bodies included, ``if TYPE_CHECKING:`` not)."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = package_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.stem == "__init__"
        here = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = here
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                # "from pkg import mod" imports the module pkg.mod; "from mod import name" imports mod
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:  # "import a.b.c" of a non-module tail
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each with one cycle
    through it written out: ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for component in components:  # a shortest cycle through the component's first module
        start = min(component)
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & component):
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        out.append(cycle or sorted(component))
    return out


def test_graph_sees_the_modules_and_their_function_level_imports():
    graph = import_graph()
    assert {"disco_score.base", "disco_score.discoformer", "disco_score.integrations.pyro"} <= set(graph)
    assert "disco_score.base" in graph["disco_score.kde"]
    assert "disco_score.train" in graph["disco_score.cli"]  # imported inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles among the package's modules:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_interface_imports_no_implementation():
    allowed = {"disco_score._checks"}
    assert import_graph()["disco_score.base"] <= allowed


def test_samplers_depend_on_the_interface_not_on_discoformer():
    graph = import_graph()
    for module in ("disco_score.samplers", "disco_score.particles", "disco_score.information",
                   "disco_score.components", "disco_score.integrations._jax_bridge"):
        assert "disco_score.discoformer" not in graph[module], module
        assert not {"disco_score.geometric_net", "disco_score.set_transformer_net"} & graph[module], module


def test_every_oracle_takes_a_default_convolution_threshold():
    from disco_score import KDE, DiScoFormer

    x = np.random.default_rng(0).normal(size=(200, 2))
    kde = KDE().fit(x)
    assert kde.with_default_convolution_threshold(0.4) is kde  # no switch: unchanged
    for blend in (False, True):
        fit = DiScoFormer.pretrained(blend=blend).fit(x)
        moved = fit.with_default_convolution_threshold(0.4)
        assert getattr(moved, "network", moved)._convolution_threshold == 0.4  # a ScoreBlend's: its network part's
        fixed = DiScoFormer.pretrained(convolution_threshold=2.0, blend=blend).fit(x)
        assert fixed.with_default_convolution_threshold(0.4) is fixed  # the user's choice stands


def test_stored_configs_map_to_their_architectures():
    from disco_score.geometric_net import GeometricConfig
    from disco_score.model import ModelConfig, config_from_dict
    from disco_score.set_transformer_net import SetTransformerConfig

    for card_path in sorted((ROOT / "disco_score" / "weights").glob("*.json")):
        card = json.loads(card_path.read_text())
        cfg = config_from_dict(card["model_config"])  # the flat dicts written before the split
        assert config_from_dict(cfg.to_dict()) == cfg
        train_model = card["meta"].get("train_config", {}).get("model")
        if train_model:
            assert config_from_dict(train_model) == cfg
    for config_path in sorted((ROOT / "configs").glob("*.json")):
        raw = json.loads(config_path.read_text()).get("model", {})
        assert isinstance(config_from_dict(raw), (GeometricConfig, SetTransformerConfig))
    assert ModelConfig(width=32) == GeometricConfig(width=32)
    assert ModelConfig(architecture="set_transformer", dim=3, gram_rank=8) == SetTransformerConfig(dim=3)
    with pytest.raises(TypeError, match="widht"):
        ModelConfig(widht=32)
    with pytest.raises(ValueError, match="architecture"):
        ModelConfig(architecture="mlp")


if __name__ == "__main__":
    g = import_graph()
    for c in cycles(g):
        print(" -> ".join(c))
    for name in sorted(g):
        print(f"{name}: {', '.join(sorted(m.removeprefix('disco_score.') for m in g[name]))}")
