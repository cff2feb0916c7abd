"""A step says what, a resource says how: no module under nodegate/upgrade/steps/ holds an
apt/dpkg/do-release-upgrade command or runs one on its host; those live in the node's resources
(nodegate.cluster.nodes.resources), as pytest-testinfra's modules hold theirs. Read from the
source (an AST scan), so a new step cannot quietly build its own apt-get line.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

STEPS = Path(__file__).resolve().parents[3] / "nodegate" / "upgrade" / "steps"
COMMANDS = ("apt", "apt-get", "apt-mark", "apt-cache", "apt-key", "dpkg", "dpkg-query", "dpkg-reconfigure",
            "do-release-upgrade", "unattended-upgrade")
# the resources' apt settings: a step that needs one is building the command itself
APT_SETTINGS = frozenset({"APT_ENV", "APT_UPDATE", "DIST_UPGRADE", "DPKG_KEEP_CONFIG", "DPKG_FORMAT"})
_WORDS = "|".join(re.escape(c) for c in sorted(COMMANDS, key=len, reverse=True))
# a command line: the command first (after an optional sudo/env), then an option or nothing more
_COMMAND_LINE = re.compile(rf"^\s*(?:sudo\s+)?(?:env\s+(?:\S+=\S*\s+)*)?(?:{_WORDS})(?:\s+-|\s*$)")
# a command word anywhere (inside what a step hands to host.run, e.g. an `sh -c` script)
_COMMAND_WORD = re.compile(rf"(?<![\w/.-])(?:{_WORDS})(?![\w-])")


def _strings(node: ast.AST) -> list[ast.Constant]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _runs_on_host(call: ast.Call) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr == "run" and ast.unparse(func.value).split(".")[-1] == "host"


def command_findings(source: str, where: str = "<step>") -> list[str]:
    """Every place in ``source`` that builds or runs an apt/dpkg command itself."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _COMMAND_LINE.match(node.value):
            found.append(f"{where}:{node.lineno}: command string {node.value[:60]!r}")
        elif isinstance(node, ast.Name) and node.id in APT_SETTINGS:
            found.append(f"{where}:{node.lineno}: uses {node.id}")
        elif isinstance(node, ast.ImportFrom) and any(a.name in APT_SETTINGS for a in node.names):
            found.append(f"{where}:{node.lineno}: imports " + ", ".join(a.name for a in node.names
                                                                        if a.name in APT_SETTINGS))
        elif isinstance(node, ast.Call) and _runs_on_host(node):
            words = [s for s in _strings(node) if _COMMAND_WORD.search(s.value)]
            if words:
                found.append(f"{where}:{node.lineno}: host.run with {words[0].value[:60]!r}")
    return found


def test_no_step_builds_or_runs_an_apt_command():
    modules = sorted(STEPS.glob("*.py"))
    assert len(modules) >= 6, f"expected the step modules under {STEPS}"
    found = [f for path in modules for f in command_findings(path.read_text(encoding="utf-8"), path.name)]
    assert not found, ("apt/dpkg commands belong to nodegate.cluster.nodes.resources, not to steps:\n"
                       + "\n".join(found))


@pytest.mark.parametrize("snippet", [
    'up.host.run(["apt-get", "install", "-y", "x"], sudo=True)',
    'argv = ("apt-mark", "hold", "--", *names)',
    'host.run(["sh", "-c", "dpkg --configure -a"], sudo=True)',
    'up.host.run(["sh", "-c", "test -f x && apt-get -f install"])',
    'on_node(up, "do-release-upgrade", "-f", "DistUpgradeViewNonInteractive")',
    'cmd = "sudo apt-get -y dist-upgrade"',
    'from nodegate.cluster.nodes.resources import APT_ENV',
    'up.host.run(list(argv), env=APT_ENV)',
    'x = [*DIST_UPGRADE]',
])
def test_a_command_in_a_step_is_found(snippet):
    assert command_findings(snippet), snippet


@pytest.mark.parametrize("snippet", [
    'title = "apt-get update and a non-interactive dist-upgrade keeping config files"',
    'raise StepFailed(f"`apt-get update` on {up.name} failed", fix="run apt-get dist-upgrade by hand")',
    'up.host.apt.dist_upgrade(timeout=60)',
    'up.host.packages.hold(sorted(wanted))',
    'on_node(up, *Packages.unhold_command(names))',
    'up.host.run(["ps", "-e", "-o", "pid=,comm="])',
])
def test_saying_what_is_not_a_command(snippet):
    assert command_findings(snippet) == []
