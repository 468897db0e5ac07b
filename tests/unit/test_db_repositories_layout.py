"""The shape of the `db.repositories` package: small modules, and one flat namespace for callers.

Callers write ``from db import repositories as repo; repo.add_image(...)``, so every public name of a
module in the package must be re-exported by ``db/repositories/__init__.py`` and listed in its
``__all__``; a function added to a module and forgotten there would be reachable only by its module
path. The modules stay small enough to read in one sitting.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from db import repositories as repo

PACKAGE_DIR = Path(repo.__file__).parent
MAX_LINES = 400
MODULES = sorted(path.stem for path in PACKAGE_DIR.glob("*.py") if not path.stem.startswith("_"))


def _public_names(path: Path) -> list[str]:
    """The public functions, classes and UPPER_CASE constants defined at the top of a module."""
    names = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names.extend(t.id for t in node.targets if isinstance(t, ast.Name) and t.id.isupper())
    return [name for name in names if not name.startswith("_")]


def test_the_package_has_the_expected_modules() -> None:
    # Guards the glob below from passing vacuously (a wrong path would find no module at all).
    assert {"images", "predictions", "model_versions", "label_tasks"} <= set(MODULES)
    assert (PACKAGE_DIR / "_common.py").is_file()


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda path: path.name)
def test_each_module_stays_under_the_line_limit(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines < MAX_LINES, f"{path.name} has {lines} lines; split it by table group below {MAX_LINES}"


@pytest.mark.parametrize("module_name", MODULES)
def test_every_public_name_of_a_module_is_exported_by_the_package(module_name: str) -> None:
    module = importlib.import_module(f"db.repositories.{module_name}")
    public = _public_names(PACKAGE_DIR / f"{module_name}.py")
    assert public, f"db.repositories.{module_name} defines no public name"
    missing = sorted(set(public) - set(repo.__all__))
    assert not missing, f"add {missing} to db/repositories/__init__.py (import and __all__)"
    for name in public:
        assert getattr(repo, name) is getattr(module, name), f"repo.{name} is not {module_name}.{name}"


def test_all_names_only_what_the_modules_define() -> None:
    defined = {name for module_name in MODULES for name in _public_names(PACKAGE_DIR / f"{module_name}.py")}
    assert len(repo.__all__) == len(set(repo.__all__)), "a name is listed twice in __all__"
    assert set(repo.__all__) == defined
    assert not _public_names(PACKAGE_DIR / "_common.py"), "_common holds private helpers only"
