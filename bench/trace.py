"""A pytest plugin for the benchmarks (`-p bench.trace`, output file in $BENCH_TRACE): records
every external operation of a nodegate run — each node command, API request, Ceph command,
Kubespray run and wait for outside state — with its start and end, one JSON line each.

The preflight baseline is generated from what it recorded (the very same SSH commands, API
requests and Ceph commands), and `overhead_s` is the run's wall time minus the union of these
intervals. Loaded through PYTEST_ADDOPTS it also traces the checks subprocess of a procedure.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time

_lock = threading.Lock()
_out = None


def _record(kind: str, what: str, start: float, end: float, **extra) -> None:
    global _out
    path = os.environ.get("BENCH_TRACE")
    if not path:
        return
    with _lock:
        if _out is None:
            _out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the process
        _out.write(json.dumps({"pid": os.getpid(), "kind": kind, "what": what, "start": start, "end": end,
                               **extra}) + "\n")
        _out.flush()


def _wrap(owner, name: str, kind: str, describe) -> None:
    original = getattr(owner, name)
    if getattr(original, "_bench_traced", False):
        return

    @functools.wraps(original)
    def traced(*args, **kwargs):
        start = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            try:
                what, extra = describe(*args, **kwargs)
            except Exception:  # noqa: BLE001 - a description must never break the run
                what, extra = name, {}
            _record(kind, what, start, time.time(), **extra)

    traced._bench_traced = True
    setattr(owner, name, traced)
    # modules that did `from x import name` hold the original: point them at the traced one
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("nodegate") and getattr(module, name, None) is original:
            setattr(module, name, traced)


def install() -> None:
    import urllib3

    import nodegate.cluster.ceph
    import nodegate.cluster.kube.client
    import nodegate.cluster.kubespray
    import nodegate.cluster.nodes.ssh
    import nodegate.core.waits
    import nodegate.upgrade.engine

    _wrap(nodegate.cluster.nodes.ssh.NodeHost, "_execute", "ssh",
          lambda self, command, *a, **k: (command, {"node": self.name}))
    _wrap(nodegate.cluster.ceph.Ceph, "_run_once", "ceph",
          lambda self, args, expect: (" ".join(args), {"mode": self.settings.mode}))
    _wrap(urllib3.connectionpool.HTTPConnectionPool, "urlopen", "api",
          lambda self, method, url, *a, **k: (f"{method} {url}", {"base": f"{self.scheme}://{self.host}:{self.port}"}))
    _wrap(nodegate.cluster.kubespray, "run_playbook", "kubespray", lambda *a, **k: (f"upgrade-cluster.yml {k.get('node')}", {}))
    _wrap(nodegate.cluster.kube.client.Kube, "watch_node", "wait", lambda self, name, **k: (f"watch node {name}", {"node": name}))
    _wrap(nodegate.cluster.kube.client.Kube, "wait_node_ready", "wait-ready",
          lambda self, name, **k: (f"node {name} Ready", {"node": name}))
    _wrap(nodegate.cluster.kube.client.Kube, "wait_pods_gone", "wait", lambda self, node, **k: (f"pods gone from {node}", {}))
    _wrap(nodegate.cluster.kube.client.Kube, "drain", "wait", lambda self, name, **k: (f"drain {name}", {}))
    _wrap(nodegate.core.waits, "wait_for", "wait", lambda probe, **k: (k.get("what", "?"), {}))
    _wrap(nodegate.cluster.nodes.ssh, "wait_for_ssh", "wait", lambda nodes, name, **k: (f"ssh on {name}", {"node": name}))


def pytest_configure(config) -> None:
    if os.environ.get("BENCH_TRACE"):
        install()
        start = time.time()
        config.add_cleanup(lambda: _record("session", " ".join(sys.argv[1:])[:300], start, time.time()))
