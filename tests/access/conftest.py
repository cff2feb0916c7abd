"""Fixtures for the access-layer tests (nodes, kube, ceph, waits) against real lab parts.

Each lab part these tests need runs on its own address octet, derived from NODEGATE_TEST_NET
(default 0) so a developer's labs and CI never collide:
  bare node lab (2 nodes, sshd + apt only)  net = TEST_NET + 60
  standalone API server                     net = TEST_NET + 61
  standalone Ceph                           net = TEST_NET + 62
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodegate.lab.config import LabConfig
from nodegate.profile import NodeSpec, SSHSettings

TEST_NET = int(os.environ.get("NODEGATE_TEST_NET", "0"))
NODES_NET = (TEST_NET + 60) % 250
API_NET = (TEST_NET + 61) % 250
CEPH_NET = (TEST_NET + 62) % 250


def run_nodegate(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "nodegate", *args], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"nodegate {' '.join(args)}: rc {result.returncode}\n{result.stdout}{result.stderr}"
    return result


def node_specs(config: LabConfig) -> list[NodeSpec]:
    return [NodeSpec(name=n.name, address=n.address, user="root",
                     roles=frozenset(r for r in n.roles if r in ("control-plane", "worker", "etcd")))
            for n in config.nodes]


def ssh_settings(lab: LabConfig, *, with_config: bool = True, **overrides) -> SSHSettings:
    d = lab.dir / "ssh"
    values = dict(config=d / "config" if with_config else None, user="root", identity_file=d / "id_ed25519",
                  known_hosts=d / "known_hosts")
    values.update(overrides)
    return SSHSettings(**values)


@pytest.fixture(scope="session")
def bare_lab():
    """Two real nodes (sshd as PID 1, dpkg/apt) with no other services; taken down at the end."""
    lab_dir = Path(f"/tmp/nodegate-access-nodes-net{NODES_NET}")
    run_nodegate("lab", "up", "--dir", str(lab_dir), "--nodes", "2", "--net", str(NODES_NET), "--bare",
                 "--boot-delay", "1")
    config = LabConfig.load(lab_dir)
    yield config
    subprocess.run([sys.executable, "-m", "nodegate", "lab", "down", "--dir", str(lab_dir)],
                   capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def specs_for():
    """node_specs(config) → NodeSpec list for a lab (the profile loader's view, built directly)."""
    return node_specs


@pytest.fixture(scope="session")
def settings_for():
    """ssh_settings(config, with_config=True, **overrides) → SSHSettings for a lab."""
    return ssh_settings


@pytest.fixture(scope="session")
def lab_ceph():
    """A real Ceph cluster (mon, mgr, one OSD per CRUSH host node1..node3), created for the
    session and destroyed at the end; yields (LabConfig, LabCeph)."""
    import shutil

    from nodegate.lab.ceph import LabCeph

    lab_dir = Path(f"/tmp/nodegate-access-ceph-net{CEPH_NET}")
    if lab_dir.exists():
        if (lab_dir / "lab.json").exists():
            LabCeph(LabConfig.load(lab_dir)).destroy()
        shutil.rmtree(lab_dir)
    lab_dir.mkdir(parents=True)
    config = LabConfig.new(lab_dir, 3, net=CEPH_NET)
    config.save()
    ceph = LabCeph(config)
    try:
        ceph.create(timeout=120)
        yield config, ceph
    finally:
        ceph.destroy()


class ApiLab:
    """The lab's real API server run on its own over a lab directory whose nodes exist only as
    state.json files (the supervisor's contract), so node boots and reboots are file writes."""

    def __init__(self, config: LabConfig, proc: subprocess.Popen) -> None:
        self.config = config
        self.proc = proc
        self.kubeconfig = config.dir / "kubeconfig"

    def state(self, name: str) -> dict:
        import json

        return json.loads((self.config.dir / "nodes" / name / "state.json").read_text())

    def set_state(self, name: str, *, up: bool, boot_id: str | None = None) -> dict:
        """Write the node's state.json as the supervisor would (atomic rename)."""
        import json
        import time
        import uuid

        old = self.state(name) if (self.config.dir / "nodes" / name / "state.json").exists() else {}
        new_boot = up and (boot_id is not None or not old or old.get("state") != "up")
        state = {"name": name, "state": "up" if up else "down", "pid": None,
                 "boot_id": boot_id or (str(uuid.uuid4()) if new_boot else old.get("boot_id", str(uuid.uuid4()))),
                 "boot_count": int(old.get("boot_count", 0)) + (1 if new_boot else 0),
                 "changed_at": time.time()}
        path = self.config.dir / "nodes" / name / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)
        return state

    def settings(self, **overrides):
        from nodegate.profile import KubeSettings

        values = dict(kubeconfig=self.kubeconfig, context="nodegate-lab")
        values.update(overrides)
        return KubeSettings(**values)


@pytest.fixture(scope="session")
def api_lab():
    """The lab API server (python -m nodegate.lab.apiserver) on net TEST_NET+61, 4 nodes up."""
    import shutil
    import signal
    import time
    import urllib.error
    import urllib.request

    from nodegate.lab.profile_files import kubeconfig

    lab_dir = Path(f"/tmp/nodegate-access-api-net{API_NET}")
    pidfile = lab_dir / "pids" / "apiserver.pid"
    if pidfile.exists():  # a previous session's server, stopped by its recorded PID
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            time.sleep(0.5)
        except (ProcessLookupError, ValueError):
            pass
    shutil.rmtree(lab_dir, ignore_errors=True)
    for sub in ("pids", "logs", "nodes"):
        (lab_dir / sub).mkdir(parents=True)
    config = LabConfig.new(lab_dir, 4, net=API_NET, ready_delay_s=0.3)
    config.save()
    (lab_dir / "kubeconfig").write_text(kubeconfig(config))
    log = open(lab_dir / "logs" / "apiserver.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "nodegate.lab.apiserver", "--dir", str(lab_dir)],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    pidfile.write_text(str(proc.pid))
    lab = ApiLab(config, proc)
    for node in config.nodes:
        lab.set_state(node.name, up=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{config.api_url}/version/", timeout=1)
            break
        except urllib.error.HTTPError:
            break  # answering (401 without a token): up
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"API server did not start; see {lab_dir}/logs/apiserver.log")
            time.sleep(0.1)
    try:
        yield lab
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        pidfile.unlink(missing_ok=True)
        log.close()
