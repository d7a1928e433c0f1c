"""What imports what inside bnserve: the package graph for docs/architecture.md, and its cycles.

Every `import` and `from … import` of a bnserve module counts, including those under
`if TYPE_CHECKING:` and inside functions (a lazy import is still a dependency). Modules are
read from the repository's folders (server/, training/, export/, bnserve/), named as installed
(`bnserve.server.plane.dataplane`).

    python scripts/import_graph.py            # print the package graph and any module cycle
    python scripts/import_graph.py --check    # exit 1 if a module cycle exists or the graph in
                                              # docs/architecture.md differs from this one
    python scripts/import_graph.py --write    # rewrite the graph in docs/architecture.md
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "training", "export")
DOC = REPO / "docs" / "architecture.md"
BEGIN, END = "<!-- import-graph:begin -->", "<!-- import-graph:end -->"


def module_files() -> dict[str, Path]:
    """Installed module name -> source file, generated code left out."""
    files: dict[str, Path] = {}
    roots = [(REPO / name, f"bnserve.{name}") for name in PACKAGES]
    for path in sorted((REPO / "bnserve").glob("*.py")):
        files["bnserve" if path.stem == "__init__" else f"bnserve.{path.stem}"] = path
    for root, prefix in roots:
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root).with_suffix("")
            if "gen" in relative.parts:
                continue
            parts = [p for p in relative.parts if p != "__init__"]
            files[".".join([prefix, *parts])] = path
    return files


def _imported(tree: ast.Module, module: str, is_package: bool) -> Iterator[str]:
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def module_graph() -> dict[str, set[str]]:
    """Module -> the bnserve modules it imports (an imported package counts as its __init__)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = {
            name
            for name in _imported(tree, module, path.name == "__init__.py")
            if name in files and name != module
        }
        graph[module] = targets - {p for p in _parents(module)}
    return graph


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _folder(module: str) -> str:
    """The folder a module lives in, as a package name (bnserve.server.plane)."""
    files = module_files()
    return module if files[module].name == "__init__.py" else module.rpartition(".")[0]


def package_graph(graph: dict[str, set[str]]) -> str:
    """One line per folder: the folders its modules import, in name order."""
    folders: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = _folder(module)
        folders.setdefault(source, set()).update(
            folder for folder in map(_folder, targets) if folder != source
        )
    short = {name: name.removeprefix("bnserve.") or "bnserve" for name in folders}
    width = max(map(len, short.values()))
    lines = [
        f"{short[name]:<{width}}  -> {', '.join(short.get(t, t) for t in sorted(folders[name]))}"
        if folders[name]
        else f"{short[name]:<{width}}  -> (nothing of bnserve)"
        for name in sorted(folders)
    ]
    return "\n".join(lines)


def _documented() -> str | None:
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN not in text or END not in text:
        return None
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    return block.strip().removeprefix("```").removesuffix("```").strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail on a cycle or a stale doc")
    mode.add_argument("--write", action="store_true", help="rewrite the graph in the doc")
    args = parser.parse_args(argv)
    graph = module_graph()
    found = cycles(graph)
    drawn = package_graph(graph)
    for component in found:
        print("import cycle: " + " <-> ".join(component), file=sys.stderr)
    if args.write:
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOC.write_text(f"{head}{BEGIN}\n```\n{drawn}\n```\n{END}{tail}")
    elif args.check:
        if _documented() != drawn:
            print(
                f"{DOC.relative_to(REPO)}: the import graph is stale; run "
                "`python scripts/import_graph.py --write`",
                file=sys.stderr,
            )
            return 1
    else:
        print(drawn)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
