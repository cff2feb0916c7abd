"""Import every harness module (core, profile, cluster, upgrade) on the calling thread, before
threads start that would otherwise import them on first use. Two things go wrong when a worker
thread is the first importer:

- pytest rewrites the asserts of its plugins' modules, parsing their source with `ast`; CPython
  3.11 keeps the AST converter's recursion depth in one interpreter-wide counter, so two threads
  parsing at once fail with "SystemError: AST constructor recursion depth mismatch";
- a new module creates its logger while pytest walks logging's dict of loggers, unlocked, as it
  enters each test phase ("RuntimeError: dictionary changed size during iteration").

The node-side programs under cluster/nodes/remote/ are scripts, not modules, and are left out.
Costs about 0.35 s once per process (most of it the Kubernetes client, which the reads import
anyway)."""
from __future__ import annotations

import importlib
import pkgutil
import threading

PACKAGES = ("nodegate.core", "nodegate.profile", "nodegate.cluster", "nodegate.upgrade")
_done = threading.Event()


def import_harness_modules() -> None:
    """Idempotent; call it on the main thread before a pool or a batch's threads start."""
    if _done.is_set():
        return
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            if ".remote" not in info.name:
                importlib.import_module(info.name)
    _done.set()
