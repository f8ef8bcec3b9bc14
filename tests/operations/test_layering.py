"""The project's layering, held by reading its imports: settings and the WSGI
plumbing in ``config/`` depend on no app, so an app can be read, tested and
replaced without them pulling it in."""

import ast
from pathlib import Path

from django.conf import settings

_APPS = ("users", "bench")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_config_imports_no_app():
    offending = {
        str(path.relative_to(settings.BASE_DIR)): sorted(
            module for module in _imported_modules(path) if module.split(".")[0] in _APPS
        )
        for path in sorted((Path(settings.BASE_DIR) / "config").rglob("*.py"))
    }
    assert {path: modules for path, modules in offending.items() if modules} == {}
