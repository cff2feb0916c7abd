"""nodegate.upgrade.preload: after it, no harness module is left for a worker thread to import first."""
from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import importlib, pkgutil, sys
from nodegate.upgrade.preload import PACKAGES, import_harness_modules
import_harness_modules()
before = set(sys.modules)
for package in PACKAGES:
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if ".remote" not in info.name:
            importlib.import_module(info.name)
print(sorted(set(sys.modules) - before))
print(len([m for m in before if m.startswith("nodegate.")]))
"""


def test_every_harness_module_is_imported_before_threads_start():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    left, count = done.stdout.splitlines()
    assert left == "[]", f"imported only later, by whoever comes first: {left}"
    assert int(count) > 60, count       # core, profile, cluster and upgrade, not an empty walk


def test_node_side_programs_are_not_imported():
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom nodegate.upgrade.preload import "
                           "import_harness_modules\nimport_harness_modules()\n"
                           "print([m for m in sys.modules if '.remote.' in m])"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
