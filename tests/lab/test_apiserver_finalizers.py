"""Finalizers on pods in the lab API server: a deleted (or evicted) pod whose finalizer nobody
removes stays Terminating, its containers stopped, until the finalizer goes; kubectl drain then
waits for it until its --timeout, as against a real cluster (the scenario "a pod that never
terminates", tests/scenarios/test_stuck_and_refused.py, relies on this).

One real server (`python -m nodegate.lab.apiserver`, started by tests/apiservertools.py) over a lab
directory whose nodes exist only as the supervisor's state.json files; the same address octet as
test_apiserver.py (modules run one after the other, each stops its server at its end).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from apiservertools import StandaloneApiServer, standalone_api_server
from labkit import net_beside, wait_until

pytestmark = pytest.mark.lab

NET = net_beside("lab-apiserver")   # one of the two modules at a time in a session
FOCAL = 'NAME="Ubuntu"\nVERSION_ID="20.04"\nPRETTY_NAME="Ubuntu 20.04.6 LTS"\nID=ubuntu\n'
FINALIZER = "example.com/never-removed"


@pytest.fixture(scope="module")
def server():
    with standalone_api_server(Path(f"/tmp/nodegate-test-apiserver-finalizers-net{NET}"), net=NET,
                               os_release=FOCAL) as made:
        yield made


def _pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}, "finalizers": [FINALIZER]},
            "spec": {"nodeName": "node4", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "busybox:1.36"}]}}


def _running(server: StandaloneApiServer, name: str) -> dict | None:
    code, pod = server.request("GET", f"/api/v1/namespaces/default/pods/{name}")
    ready = code == 200 and any(c["type"] == "Ready" and c["status"] == "True"
                                for c in pod.get("status", {}).get("conditions", []))
    return pod if ready else None


def _stopped(server: StandaloneApiServer, name: str) -> dict | None:
    code, pod = server.request("GET", f"/api/v1/namespaces/default/pods/{name}")
    assert code == 200, (code, pod)
    states = [s["state"] for s in pod["status"].get("containerStatuses", [])]
    return pod if states and all("terminated" in s for s in states) else None


def test_an_evicted_pod_with_a_finalizer_stays_terminating_and_kubectl_drain_times_out(server):
    code, _ = server.request("POST", "/api/v1/namespaces/default/pods", _pod("stuck"))
    assert code == 201
    # the control case: the same pod without a finalizer, evicted just after it
    free = _pod("free")
    free["metadata"]["finalizers"] = []
    code, _ = server.request("POST", "/api/v1/namespaces/default/pods", free)
    assert code == 201
    wait_until(lambda: _running(server, "stuck") and _running(server, "free"), timeout=15,
               what="pods stuck and free Running and Ready")

    for name in ("stuck", "free"):
        code, body = server.request("POST", f"/api/v1/namespaces/default/pods/{name}/eviction",
                                    {"apiVersion": "policy/v1", "kind": "Eviction",
                                     "metadata": {"name": name, "namespace": "default"}})
        assert (code, body.get("status")) == (201, "Success")
    # its containers end after the grace period (1 s); the object stays, Terminating
    pod = wait_until(lambda: _stopped(server, "stuck"), timeout=10, what="containers of pod stuck terminated")
    meta = pod["metadata"]
    assert meta["deletionTimestamp"] and meta["deletionGracePeriodSeconds"] == 0, meta
    assert meta["finalizers"] == [FINALIZER]
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "False"
    # the pod evicted after it, without a finalizer, is gone: this one, with its finalizer, is not
    wait_until(lambda: server.request("GET", "/api/v1/namespaces/default/pods/free")[0] == 404, timeout=30,
               what="pod free (no finalizer) gone after its grace period")
    assert server.request("GET", "/api/v1/namespaces/default/pods/stuck")[0] == 200, "gone without its finalizer removed"
    listed = server.kubectl("get", "pod", "stuck", "--no-headers", check=False)
    assert "Terminating" in listed.stdout, listed.stdout + listed.stderr

    # kubectl drain waits for the pod to be gone, until its --timeout, naming it
    started = time.monotonic()
    drain = server.kubectl("drain", "node4", "--pod-selector=app=stuck", "--force", "--ignore-daemonsets",
                           "--timeout=3s", check=False)
    took = time.monotonic() - started
    assert drain.returncode != 0, drain.stdout + drain.stderr
    # kubectl 1.32: error when waiting for pod "stuck" in namespace "default" to terminate: ...
    assert 'pod "stuck"' in drain.stderr and "terminat" in drain.stderr, drain.stderr
    assert took > 2.5, took     # it waited, until its --timeout

    # the finalizer's owner removes it: the pod is deleted at once
    code, _ = server.request("PATCH", "/api/v1/namespaces/default/pods/stuck", {"metadata": {"finalizers": None}},
                             content_type="application/merge-patch+json")
    assert code == 200
    wait_until(lambda: server.request("GET", "/api/v1/namespaces/default/pods/stuck")[0] == 404, timeout=3,
              what="pod stuck gone after its finalizer was removed")
    drained = server.kubectl("drain", "node4", "--pod-selector=app=stuck", "--force", "--ignore-daemonsets",
                             "--timeout=10s", check=False)
    assert drained.returncode == 0 and "drained" in drained.stdout, drained.stdout + drained.stderr
    assert server.kubectl("uncordon", "node4", check=False).returncode == 0


def test_a_pod_deleted_at_once_with_a_finalizer_waits_for_it(server):
    code, _ = server.request("POST", "/api/v1/namespaces/default/pods", _pod("held"))
    assert code == 201
    wait_until(lambda: _running(server, "held"), timeout=15, what="pod held Running and Ready")
    code, body = server.request("DELETE", "/api/v1/namespaces/default/pods/held?gracePeriodSeconds=0")
    assert code == 200 and body["metadata"]["deletionTimestamp"], (code, body)
    wait_until(lambda: _stopped(server, "held"), timeout=5, what="containers of pod held terminated")
    # another finalizer added and one removed: still there while any is left
    code, _ = server.request("PATCH", "/api/v1/namespaces/default/pods/held",
                             {"metadata": {"finalizers": ["example.com/other"]}}, content_type="application/merge-patch+json")
    assert code == 200
    # the API server decides on the write that changes the finalizers (the 404 right after the last
    # one is removed, below, shows it): read at once, it is still there
    assert server.request("GET", "/api/v1/namespaces/default/pods/held")[0] == 200
    code, pod = server.request("GET", "/api/v1/namespaces/default/pods/held")
    pod["metadata"]["finalizers"] = []
    code, _ = server.request("PUT", "/api/v1/namespaces/default/pods/held", pod)
    assert code == 200
    assert server.request("GET", "/api/v1/namespaces/default/pods/held")[0] == 404
