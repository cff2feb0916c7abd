"""Finalizers on pods in the lab API server: a deleted (or evicted) pod whose finalizer nobody
removes stays Terminating, its containers stopped, until the finalizer goes; kubectl drain then
waits for it until its --timeout, as against a real cluster (the scenario "a pod that never
terminates", tests/scenarios/test_stuck_and_refused.py, relies on this).

One real server (`python -m nodegate.lab.apiserver`) over a lab directory whose nodes exist only as
the supervisor's state.json files; the same address octet as test_apiserver.py (modules run one
after the other, each stops its server at its end).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from nodegate.lab.config import LabConfig
from nodegate.lab.profile_files import kubeconfig

pytestmark = pytest.mark.lab

TEST_NET = int(os.environ.get("NODEGATE_TEST_NET", "0"))
NET = (TEST_NET + 71) % 250      # test_apiserver.py's octet: never both at once in one session
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
FOCAL = 'NAME="Ubuntu"\nVERSION_ID="20.04"\nPRETTY_NAME="Ubuntu 20.04.6 LTS"\nID=ubuntu\n'
FINALIZER = "example.com/never-removed"


def _wait(probe, *, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")


class Server:
    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.kubeconfig = config.dir / "kubeconfig"
        self.proc: subprocess.Popen | None = None

    def api(self, method: str, path: str, body: dict | None = None, *,
            ctype: str = "application/json") -> tuple[int, dict]:
        request = urllib.request.Request(f"{self.config.api_url}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Authorization": f"Bearer {self.config.token}",
                                                  "Content-Type": ctype})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def kubectl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([KUBECTL, "--kubeconfig", str(self.kubeconfig), *args], capture_output=True,
                              text=True, timeout=timeout)


@pytest.fixture(scope="module")
def server():
    lab_dir = Path(f"/tmp/nodegate-test-apiserver-finalizers-net{NET}")
    pidfile = lab_dir / "pids" / "apiserver.pid"
    if pidfile.exists():  # a server left by an interrupted run, stopped by its recorded PID
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            time.sleep(0.5)
        except (ProcessLookupError, ValueError):
            pass
    shutil.rmtree(lab_dir, ignore_errors=True)
    for sub in ("pids", "logs", "nodes"):
        (lab_dir / sub).mkdir(parents=True)
    config = LabConfig.new(lab_dir, 4, net=NET, ready_delay_s=0.3)
    config.save()
    (lab_dir / "kubeconfig").write_text(kubeconfig(config))
    for node in config.nodes:
        root = lab_dir / "nodes" / node.name
        (root / "root/etc").mkdir(parents=True)
        (root / "root/etc/os-release").write_text(FOCAL)
        (root / "state.json").write_text(json.dumps({"name": node.name, "state": "up", "pid": None,
                                                     "boot_id": str(uuid.uuid4()), "boot_count": 1,
                                                     "changed_at": time.time()}))
    made = Server(config)
    with open(lab_dir / "logs" / "apiserver.log", "ab") as log:
        made.proc = subprocess.Popen([sys.executable, "-m", "nodegate.lab.apiserver", "--dir", str(lab_dir)],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    pidfile.write_text(str(made.proc.pid))

    def answering() -> bool:
        assert made.proc.poll() is None, f"API server ended; see {lab_dir}/logs/apiserver.log"
        try:
            urllib.request.urlopen(f"{config.api_url}/healthz", timeout=1)
            return True
        except OSError:
            return False

    try:
        _wait(answering, timeout=30, what="API server answering")
        yield made
    finally:
        made.proc.terminate()
        try:
            made.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            made.proc.kill()
            made.proc.wait(timeout=5)
        pidfile.unlink(missing_ok=True)


def _pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}, "finalizers": [FINALIZER]},
            "spec": {"nodeName": "node4", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "busybox:1.36"}]}}


def _running(server: Server, name: str) -> dict | None:
    code, pod = server.api("GET", f"/api/v1/namespaces/default/pods/{name}")
    ready = code == 200 and any(c["type"] == "Ready" and c["status"] == "True"
                                for c in pod.get("status", {}).get("conditions", []))
    return pod if ready else None


def _stopped(server: Server, name: str) -> dict | None:
    code, pod = server.api("GET", f"/api/v1/namespaces/default/pods/{name}")
    assert code == 200, (code, pod)
    states = [s["state"] for s in pod["status"].get("containerStatuses", [])]
    return pod if states and all("terminated" in s for s in states) else None


def test_an_evicted_pod_with_a_finalizer_stays_terminating_and_kubectl_drain_times_out(server):
    code, _ = server.api("POST", "/api/v1/namespaces/default/pods", _pod("stuck"))
    assert code == 201
    _wait(lambda: _running(server, "stuck"), timeout=15, what="pod stuck Running and Ready")

    code, body = server.api("POST", "/api/v1/namespaces/default/pods/stuck/eviction",
                            {"apiVersion": "policy/v1", "kind": "Eviction",
                             "metadata": {"name": "stuck", "namespace": "default"}})
    assert (code, body.get("status")) == (201, "Success")
    # its containers end after the grace period (1 s); the object stays, Terminating
    pod = _wait(lambda: _stopped(server, "stuck"), timeout=10, what="containers of pod stuck terminated")
    meta = pod["metadata"]
    assert meta["deletionTimestamp"] and meta["deletionGracePeriodSeconds"] == 0, meta
    assert meta["finalizers"] == [FINALIZER]
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "False"
    time.sleep(1.5)
    assert server.api("GET", "/api/v1/namespaces/default/pods/stuck")[0] == 200, "gone without its finalizer removed"
    listed = server.kubectl("get", "pod", "stuck", "--no-headers")
    assert "Terminating" in listed.stdout, listed.stdout + listed.stderr

    # kubectl drain waits for the pod to be gone, until its --timeout, naming it
    started = time.monotonic()
    drain = server.kubectl("drain", "node4", "--pod-selector=app=stuck", "--force", "--ignore-daemonsets",
                           "--timeout=3s")
    took = time.monotonic() - started
    assert drain.returncode != 0, drain.stdout + drain.stderr
    # kubectl 1.32: error when waiting for pod "stuck" in namespace "default" to terminate: ...
    assert 'pod "stuck"' in drain.stderr and "terminat" in drain.stderr, drain.stderr
    assert 2.5 < took < 30, took

    # the finalizer's owner removes it: the pod is deleted at once
    code, _ = server.api("PATCH", "/api/v1/namespaces/default/pods/stuck", {"metadata": {"finalizers": None}},
                         ctype="application/merge-patch+json")
    assert code == 200
    _wait(lambda: server.api("GET", "/api/v1/namespaces/default/pods/stuck")[0] == 404, timeout=3,
          what="pod stuck gone after its finalizer was removed")
    drained = server.kubectl("drain", "node4", "--pod-selector=app=stuck", "--force", "--ignore-daemonsets",
                             "--timeout=10s")
    assert drained.returncode == 0 and "drained" in drained.stdout, drained.stdout + drained.stderr
    assert server.kubectl("uncordon", "node4").returncode == 0


def test_a_pod_deleted_at_once_with_a_finalizer_waits_for_it(server):
    code, _ = server.api("POST", "/api/v1/namespaces/default/pods", _pod("held"))
    assert code == 201
    _wait(lambda: _running(server, "held"), timeout=15, what="pod held Running and Ready")
    code, body = server.api("DELETE", "/api/v1/namespaces/default/pods/held?gracePeriodSeconds=0")
    assert code == 200 and body["metadata"]["deletionTimestamp"], (code, body)
    _wait(lambda: _stopped(server, "held"), timeout=5, what="containers of pod held terminated")
    # another finalizer added and one removed: still there while any is left
    code, _ = server.api("PATCH", "/api/v1/namespaces/default/pods/held",
                         {"metadata": {"finalizers": ["example.com/other"]}}, ctype="application/merge-patch+json")
    assert code == 200
    time.sleep(0.5)
    assert server.api("GET", "/api/v1/namespaces/default/pods/held")[0] == 200
    code, pod = server.api("GET", "/api/v1/namespaces/default/pods/held")
    pod["metadata"]["finalizers"] = []
    code, _ = server.api("PUT", "/api/v1/namespaces/default/pods/held", pod)
    assert code == 200
    assert server.api("GET", "/api/v1/namespaces/default/pods/held")[0] == 404
