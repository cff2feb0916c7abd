"""The API server inside the real lab: nodes, OSDs and the toolbox follow real node processes
and the real Ceph cluster (the session's `lab` fixture)."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from nodegate.lab.ceph import LabCeph

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def core(lab):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(lab.dir / "kubeconfig"), client_configuration=cfg)
    api = client.ApiClient(cfg)
    yield client.CoreV1Api(api)
    api.close()


def ready(core, node: str) -> str:
    return next(c.status for c in core.read_node(node).status.conditions if c.type == "Ready")


def osd_up(ceph: LabCeph, osd: int) -> bool:
    tree = json.loads(ceph.run("osd", "tree", "-f", "json", check=True).stdout)
    return next(n["status"] for n in tree["nodes"] if n.get("name") == f"osd.{osd}") == "up"


def osd_pod(core, osd: int):
    return core.list_namespaced_pod("rook-ceph", label_selector=f"app=rook-ceph-osd,osd={osd}").items[0]


def test_node_reboot_is_seen_and_its_osd_follows(lab, core, lab_ssh, poll, record_property):
    ceph = LabCeph(lab)
    node = lab.nodes[-1].name
    osd = ceph.osd_id(node)
    poll(lambda: ready(core, node) == "True" and osd_up(ceph, osd), timeout=60, interval=0.5,
         what=f"{node} Ready with osd.{osd} up")
    ceph.wait_healthy(120)
    old_boot = core.read_node(node).status.node_info.boot_id
    state_path = lab.dir / "nodes" / node / "state.json"
    started = time.monotonic()
    lab_ssh(node, "reboot", check=False)  # the node's own reboot; ssh may lose the connection
    poll(lambda: ready(core, node) == "Unknown", timeout=10, what=f"{node} Ready=Unknown")
    not_ready_s = time.monotonic() - started
    poll(lambda: not ceph.osd_running(node) or osd_up(ceph, osd) is False, timeout=15, interval=0.2,
         what=f"osd.{osd} stopped with {node}")

    def booted_at():
        data = json.loads(state_path.read_text())
        return data["state"] == "up" and data["boot_id"] != old_boot and data["changed_at"]
    boot_epoch = poll(booted_at, timeout=30, what=f"{node} booted again")
    booted = time.monotonic() - (time.time() - boot_epoch)
    poll(lambda: ready(core, node) == "True", timeout=30, what=f"{node} Ready after boot")
    ready_s = time.monotonic() - booted
    info = core.read_node(node).status.node_info
    state = json.loads((lab.dir / "nodes" / node / "state.json").read_text())
    assert info.boot_id == state["boot_id"] != old_boot
    poll(lambda: osd_up(ceph, osd), timeout=30, interval=0.5, what=f"osd.{osd} up after boot")
    assert osd_pod(core, osd).status.container_statuses[0].restart_count >= 1
    ceph.wait_healthy(120)
    health_s = time.monotonic() - booted
    record_property("not_ready_after_reboot_s", round(not_ready_s, 1))
    record_property("ready_after_boot_s", round(ready_s, 1))
    record_property("health_ok_after_boot_s", round(health_s, 1))
    print(f"NotReady {not_ready_s:.1f} s after `reboot`; Ready {ready_s:.1f} s and HEALTH_OK "
          f"{health_s:.1f} s after the node booted")


def test_drain_stops_the_osd_and_uncordon_brings_it_back(lab, core, poll):
    ceph = LabCeph(lab)
    node = lab.nodes[-1].name
    osd = ceph.osd_id(node)
    poll(lambda: ready(core, node) == "True" and osd_up(ceph, osd), timeout=60, interval=0.5,
         what=f"{node} Ready with osd.{osd} up")
    ceph.wait_healthy(120)
    kubectl = ["kubectl", "--kubeconfig", str(lab.dir / "kubeconfig")]
    try:
        # exactly the seed's flags for the last worker (the bare pod lives on the first worker)
        out = subprocess.run([*kubectl, "drain", node, "--ignore-daemonsets", "--delete-emptydir-data",
                              "--timeout=120s"], capture_output=True, text=True, timeout=150)
        assert out.returncode == 0, out.stderr
        assert f"evicting pod rook-ceph/{osd_pod_name_prefix(osd)}" in out.stdout + out.stderr
        poll(lambda: not osd_up(ceph, osd), timeout=15, interval=0.5, what=f"osd.{osd} down after drain")
        pending = osd_pod(core, osd)
        assert pending.status.phase == "Pending" and pending.spec.node_name is None
    finally:
        subprocess.run([*kubectl, "uncordon", node], capture_output=True, timeout=60)
    poll(lambda: osd_up(ceph, osd), timeout=30, interval=0.5, what=f"osd.{osd} up after uncordon")
    assert osd_pod(core, osd).spec.node_name == node
    ceph.wait_healthy(120)


def osd_pod_name_prefix(osd: int) -> str:
    return f"rook-ceph-osd-{osd}-"


def test_toolbox_exec_runs_the_real_ceph(lab, core):
    from kubernetes.stream import stream

    tools = core.list_namespaced_pod("rook-ceph", label_selector="app=rook-ceph-tools").items[0].metadata.name
    ws = stream(core.connect_get_namespaced_pod_exec, tools, "rook-ceph",
                command=["ceph", "osd", "ls-tree", lab.nodes[0].name, "-f", "json"],
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    ws.run_forever(timeout=30)
    assert ws.returncode == 0
    assert json.loads(ws.read_stdout()) == [LabCeph(lab).osd_id(lab.nodes[0].name)]
    # ok-to-stop says no with exit 16 (EBUSY) and keeps its JSON on stdout
    everyone = [str(LabCeph(lab).osd_id(n.name)) for n in lab.nodes]
    ws = stream(core.connect_get_namespaced_pod_exec, tools, "rook-ceph",
                command=["ceph", "osd", "ok-to-stop", *everyone, "-f", "json"],
                stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    ws.run_forever(timeout=30)
    assert ws.returncode == 16
    assert json.loads(ws.read_stdout())["ok_to_stop"] is False
    assert "EBUSY" in ws.read_stderr()


def test_loaded_modules_are_read_inside_the_running_node(lab, lab_ssh):
    """The csi-rbdplugin rule reads `rbd` from the node's own /run (its modprobe stand-in's list)."""
    from nodegate.lab.apiserver.nodes import NodeMirror

    node = lab.nodes[0].name
    mirror = NodeMirror(lab)
    mirror.poll(time.time())
    view = mirror.views[node]
    had = lab_ssh(node, "cat /run/nodegate-lab/modules").stdout.split()
    try:
        lab_ssh(node, "grep -qx rbd /run/nodegate-lab/modules || echo rbd >> /run/nodegate-lab/modules")
        mirror.refresh_modules(view)
        assert "rbd" in view.modules
        lab_ssh(node, "sed -i '/^rbd$/d' /run/nodegate-lab/modules")
        mirror.refresh_modules(view)
        assert "rbd" not in view.modules
    finally:
        if "rbd" in had:
            lab_ssh(node, "grep -qx rbd /run/nodegate-lab/modules || echo rbd >> /run/nodegate-lab/modules")
