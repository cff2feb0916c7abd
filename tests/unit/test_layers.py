"""The import rules of nodegate's layers, read from the source (every import statement, also those
inside functions and under TYPE_CHECKING):

    core <- profile <- cluster <- upgrade <- plugin;   report -> core;

a layer imports only itself and the layers before it; only plugin/ imports pytest and allure; the
harness never imports nodegate.lab and the lab never imports the harness (nodegate/cli.py, the
command line, is the one module that dispatches to both); the lab shares only the error classes
of nodegate.core.errors.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nodegate"
LAYERS = ("core", "profile", "cluster", "upgrade", "plugin")
# what each top-level part of nodegate/ may import from nodegate
ALLOWED: dict[str, frozenset[str]] = {
    **{layer: frozenset(LAYERS[: i + 1]) for i, layer in enumerate(LAYERS)},
    "report": frozenset({"report", "core"}),
    # the lab raises the harness's one error hierarchy (the CLI reports both alike), nothing else of it
    "lab": frozenset({"lab", "core.errors"}),
    "cli": frozenset({"cli", "core", "report", "lab"}),
    "__main__": frozenset({"cli"}),
    "__init__": frozenset(),
}
TEST_FRAMEWORKS = ("pytest", "_pytest", "allure", "allure_commons")


def part_of(path: Path, package: Path = PACKAGE) -> str:
    """The layer a file of nodegate/ belongs to: its top folder, or its name at the top."""
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_modules(source: str, *, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            if name == "nodegate":   # `from nodegate import x`: x is the part imported
                found += [(node.lineno, f"nodegate.{alias.name}") for alias in node.names]
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        part = part_of(path, package)
        rel = path.relative_to(package.parent)
        module = ".".join(rel.with_suffix("").parts)
        imports = imported_modules(path.read_text(encoding="utf-8"), module=module,
                                   is_package=path.name == "__init__.py")
        for line, name in imports:
            top = name.split(".")
            if top[0] in TEST_FRAMEWORKS and part not in ("plugin", "lab"):
                problems.append(f"{rel}:{line}: {part} imports {name} (only plugin/ imports pytest and allure)")
            if top[0] != "nodegate" or len(top) < 2:
                continue
            if not any(name == f"nodegate.{ok}" or name.startswith(f"nodegate.{ok}.") for ok in ALLOWED[part]):
                problems.append(f"{rel}:{line}: {part} imports {name} (allowed: {', '.join(sorted(ALLOWED[part]))})")
    return problems


def test_every_part_of_the_package_has_a_rule():
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")}
    assert parts <= set(ALLOWED), f"no import rule for {sorted(parts - set(ALLOWED))}: add it to ALLOWED"
    assert set(LAYERS) | {"report", "lab"} <= parts


def test_imports_run_one_way():
    problems = violations()
    assert not problems, "imports against the layering:\n" + "\n".join(problems)


@pytest.mark.parametrize(("where", "line", "why"), [
    ("core/extra.py", "from nodegate.cluster.kube.client import Kube", "core imports nodegate.cluster.kube.client"),
    ("profile/extra.py", "from nodegate.upgrade import STEPS", "profile imports nodegate.upgrade"),
    ("cluster/extra.py", "import nodegate.plugin.options", "cluster imports nodegate.plugin.options"),
    ("report/extra.py", "from nodegate.plugin.allure import run_id", "report imports nodegate.plugin.allure"),
    ("upgrade/extra.py", "import pytest", "upgrade imports pytest"),
    ("core/extra.py", "def f():\n    from nodegate.lab import cli\n", "core imports nodegate.lab"),
    ("lab/extra.py", "from nodegate.core.journal import Journal", "lab imports nodegate.core.journal"),
    ("plugin/extra.py", "from ..lab import seed", "plugin imports nodegate.lab"),
])
def test_a_forbidden_import_is_found(tmp_path, where, line, why):
    fake = tmp_path / "nodegate"
    (fake / where).parent.mkdir(parents=True)
    (fake / where).write_text(line + "\n")
    (fake / "plugin").mkdir(exist_ok=True)
    (fake / "plugin" / "ok.py").write_text("import pytest\nfrom nodegate.core import errors\n")
    assert [p.split(": ", 1)[1].split(" (")[0] for p in violations(fake)] == [why]
