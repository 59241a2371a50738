"""House rules that a reader of the package relies on: imports of hyperscale's own modules sit at the top of
each file (none hidden inside functions, none behind ``except ImportError``)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hyperscale"


def _own(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").startswith("hyperscale")
    return isinstance(node, ast.Import) and any(a.name.startswith("hyperscale") for a in node.names)


def test_own_imports_are_at_the_top_of_each_file():
    hidden = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for scope in ast.walk(tree):
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try)):
                body = list(ast.walk(scope)) if not isinstance(scope, ast.Try) else \
                    [n for h in scope.handlers for n in ast.walk(h)] + [n for s in scope.body for n in ast.walk(s)]
                hidden += [f"{path.relative_to(PACKAGE.parent)}:{n.lineno}" for n in body if _own(n)]
    assert not hidden, "imports of hyperscale's own modules inside functions or try blocks:\n" + "\n".join(sorted(set(hidden)))
