"""The read-ahead threads (nodegate.plugin.reads) run while pytest runs the first checks. pytest
walks logging's dict of loggers, without logging's lock, each time it enters a test's setup, call
or teardown (_pytest.logging.catching_logs attaches its handler to the non-propagating loggers); a
module imported for the first time by a read-ahead thread at that moment adds its logger to that
dict, and the check fails with "RuntimeError: dictionary changed size during iteration" (seen in a
postflight run: a nodegate-ceph thread importing nodegate.cluster.ceph during the first check).

The interleaving is forced, not waited for: an entry of the dict runs the read-ahead thread's
imports (and waits for them) when pytest looks at it, in a fresh interpreter that has loaded
nodegate's pytest plugins and started the read-ahead the way a run does."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nodegate

PACKAGE = Path(nodegate.__file__).resolve().parent
# the code the read-ahead threads run: the reads, the connections they open on first use, and
# the checks of the input (run in a pool at session start under xdist)
THREAD_CODE = ("plugin/reads.py", "cluster/session.py", "plugin/validation.py")

SCRIPT = r"""
import json, logging, sys, threading
import nodegate.plugin.options, nodegate.plugin.allure, nodegate.plugin.fixtures, nodegate.plugin.procedures
from _pytest.logging import LogCaptureHandler, catching_logs
from nodegate.cluster.session import Access
from nodegate.plugin.reads import Reads

modules = json.loads(sys.argv[1])
reads = Reads(Access(None))
reads.prefetch(lambda: None)             # as validate_access starts the reads ahead
reads.prefetch(lambda: None, ceph=True)
reads.close()
added = []

def read_ahead():                         # what a read-ahead thread imports on first use
    before = set(logging.root.manager.loggerDict)
    for name in modules:
        __import__(name)
    added.extend(sorted(set(logging.root.manager.loggerDict) - before))

class Probe:
    fired = False
    @property
    def __class__(self):                  # read by catching_logs' isinstance(), mid-iteration
        if not Probe.fired:
            Probe.fired = True
            thread = threading.Thread(target=read_ahead, name="nodegate-read_0")
            thread.start()
            thread.join()
        return Probe

logging.root.manager.loggerDict["nodegate-test-probe"] = Probe()
try:
    with catching_logs(LogCaptureHandler(), level=logging.INFO):
        error = None
except RuntimeError as exc:
    error = str(exc)
print(json.dumps({"fired": Probe.fired, "error": error, "added": added}))
"""


def modules_imported_on_first_use() -> list[str]:
    """The nodegate modules imported inside functions of the read-ahead code."""
    found: set[str] = set()
    for relative in THREAD_CODE:
        tree = ast.parse((PACKAGE / relative).read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nodegate"):
                    found.add(node.module)
                elif isinstance(node, ast.Import):
                    found.update(a.name for a in node.names if a.name.startswith("nodegate"))
    return sorted(found)


def test_the_read_ahead_code_imports_modules_on_first_use():
    # the premise of the next test: it would pass vacuously if the reads imported nothing lazily
    assert "nodegate.cluster.ceph" in modules_imported_on_first_use()


def test_a_read_ahead_thread_adds_no_logger_while_pytest_enters_a_test():
    modules = modules_imported_on_first_use()
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(modules)], capture_output=True, text=True,
                          timeout=120, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["fired"], "the probe was not reached: pytest no longer walks the loggers this way"
    assert outcome == {"fired": True, "error": None, "added": []}, (
        f"a read-ahead thread created the loggers {outcome['added']} while pytest walked them "
        f"({outcome['error']}): import their modules in nodegate.upgrade.preload (called by nodegate.plugin.reads)")
