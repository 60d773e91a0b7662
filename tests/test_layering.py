"""The layout is the architecture: the core imports no service, the services never import each other, and
nothing below the applications imports them. Checked on every import statement, lazy ones included."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each package may import from the project's own packages.
ALLOWED = {
    "proto": {"proto"},
    "a3c": {"a3c", "proto"},
    "learner": {"learner", "a3c", "proto"},
    "actor": {"actor", "a3c", "proto"},
    "evaluator": {"evaluator", "a3c", "proto"},
    "apps": {"apps", "learner", "actor", "evaluator", "a3c", "proto"},
}
PROJECT = set(ALLOWED) | {"bench", "tests"}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a file that names one of the project's packages."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in PROJECT}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in files
             for line, name in sorted(imported_packages(path)) if name not in ALLOWED[package]]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_lazy_imports(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def run():\n    from learner.service import main\n    import actor.client\n")
    assert imported_packages(module) == {(2, "learner"), (3, "actor")}
