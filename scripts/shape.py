"""Report the core's shape: lines, longest functions and the in-package import graph (with cycles).

`python scripts/shape.py` from the repository root; the core is the package without `testing/`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "airflow_provider_cartesia"


def core_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / PACKAGE).rglob("*.py") if "testing" not in p.relative_to(root).parts)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith(PACKAGE):
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    files = core_files(root)
    total, functions, graph = 0, [], {}
    for path in files:
        text = path.read_text()
        total += len(text.splitlines())
        tree = ast.parse(text)
        name = module_name(root, path)
        graph[name] = imports(tree, name, path.name == "__init__.py") - {name}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append(
                    (node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.lineno} {node.name}")
                )
    print(f"core lines: {total} in {len(files)} files")
    print("longest functions:")
    for length, where in sorted(functions, reverse=True)[: int(sys.argv[1]) if len(sys.argv) > 1 else 12]:
        print(f"  {length:4d}  {where}")
    print("import graph (in-package, including imports inside functions):")
    for name in sorted(graph):
        if graph[name]:
            print(f"  {name} -> {', '.join(sorted(n.removeprefix(PACKAGE + '.') for n in graph[name]))}")
    found = cycles(graph)
    print(f"cycles: {len(found)}")
    for cycle in found:
        print("  " + " -> ".join(cycle))


if __name__ == "__main__":
    main()
