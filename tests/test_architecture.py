"""The arrows between packages run one way (docs/architecture.md), read from the import statements.

    python tests/test_architecture.py docs/architecture.png     # redraws the picture in the docs
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("artifact", "imagesets", "cliconfig", "training", "export", "service", "bench")
# The parts docs/architecture.md draws: a module belongs to the longest prefix listed here.
PARTS = (
    "artifact", "imagesets", "cliconfig", "training", "training.paper", "export",
    "service", "service.cli", "service.api", "service.gate", "service.web", "service.dataplane", "service.depth",
    "service.engine",
    "bench", "bench.scenarios", "bench.gpu",
)  # fmt: skip


def modules() -> dict[str, Path]:
    """Every first-party module by dotted name."""
    found = {}
    for root in ROOTS:
        if (REPO / f"{root}.py").is_file():
            found[root] = REPO / f"{root}.py"
        for path in sorted((REPO / root).rglob("*.py")) if (REPO / root).is_dir() else ():
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports() -> set[tuple[str, str]]:
    """(importer, imported) pairs between first-party modules, lazy imports inside functions included."""
    known = modules()
    edges = set()
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add((name, target))
    return edges


def part(module: str) -> str:
    return max((p for p in PARTS if module == p or module.startswith(p + ".")), key=len)


def _cycles(edges: set[tuple[str, str]], within: str) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        if a.startswith(within) and b.startswith(within):
            graph.setdefault(a, set()).add(b)
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_export_does_not_import_the_service():
    assert not [(a, b) for a, b in imports() if a.startswith("export") and b.startswith("service")]


def test_the_service_imports_neither_training_nor_export():
    bad = [(a, b) for a, b in imports() if a.startswith("service") and b.split(".")[0] in ("training", "export", "bench")]
    assert not bad


def test_the_model_contract_and_the_image_sets_import_nothing_of_ours_above_them():
    bad = [(a, b) for a, b in imports() if a.split(".")[0] in ("artifact", "imagesets")
           and b.split(".")[0] not in ("artifact", "imagesets")]  # fmt: skip
    assert not bad


def test_no_circle_of_imports_in_any_package():
    for root in ("service", "bench", "training", "export", "artifact"):
        assert _cycles(imports(), root) == [], root


def test_the_service_parts_are_layered_api_over_dataplane_over_depth_over_engine():
    layer = {"service.cli": 4, "service.api": 3, "service.gate": 2.5, "service.web": 2.5, "service.dataplane": 2,
             "service.depth": 1, "service.engine": 0, "service": -1}
    bad = [(a, b) for a, b in imports() if part(a) in layer and part(b) in layer and layer[part(a)] < layer[part(b)]]
    assert not bad


def draw(out: Path) -> None:
    """The package picture of docs/architecture.md: one box per part, one arrow per imported part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = Counter((part(a), part(b)) for a, b in imports() if part(a) != part(b))
    place = {
        "bench": (0.5, 5.2), "bench.scenarios": (2.0, 5.2), "bench.gpu": (3.5, 5.2),
        "training.paper": (0.4, 3.9), "service.api": (6.0, 5.2),
        "export": (2.2, 3.9), "service.dataplane": (6.0, 3.9), "service": (8.6, 2.0), "service.cli": (8.6, 5.2),
        "service.gate": (7.6, 4.3), "service.web": (4.6, 4.6),
        "training": (1.0, 2.6), "service.depth": (6.0, 2.6),
        "service.engine": (6.0, 1.3), "cliconfig": (8.6, 0.2),
        "imagesets": (2.0, 0.2), "artifact": (4.6, 0.2),
    }  # fmt: skip
    fig, ax = plt.subplots(figsize=(11, 7))
    for (a, b), n in sorted(counts.items()):
        if a in place and b in place:
            ax.annotate("", xy=place[b], xytext=place[a], arrowprops=dict(
                arrowstyle="-|>", color="#4a6fa5", lw=0.6 + 0.25 * min(n, 8), alpha=0.55,
                shrinkA=22, shrinkB=22, connectionstyle="arc3,rad=0.08"))  # fmt: skip
    colours = {"training": "#f4cccc", "export": "#fce5cd", "service": "#d9ead3", "bench": "#d9d2e9"}
    for name, (x, y) in place.items():
        colour = colours.get(name.split(".")[0], "#fff2cc")
        torch = name.split(".")[0] in ("training", "export")
        ax.text(x, y, name + ("\n(torch)" if torch else ""), ha="center", va="center", fontsize=10,
                bbox=dict(boxstyle="round,pad=0.5", fc=colour, ec="#444444"))  # fmt: skip
    ax.set_xlim(-0.6, 9.6)
    ax.set_ylim(-0.5, 5.8)
    ax.axis("off")
    ax.set_title("resnet-serving: packages and their imports (arrow: imports; width: how many modules)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    draw(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/architecture.png"))
