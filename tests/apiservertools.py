"""The lab's real API server (`python -m nodegate.lab.apiserver`) run on its own, outside a full lab,
for the tests that drive it (tests/access: the `api_lab` fixture; tests/lab/test_apiserver.py:
`fake_lab`). Imported by name (see labkit.py). Its nodes exist only as the supervisor's state.json
files (and, when asked, a root with /etc/os-release), so node boots, reboots and release upgrades
are file writes: exactly what the server reads from a real lab."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from labkit import wait_until

from nodegate.lab import apiclient, shared_files
from nodegate.lab.config import LabConfig
from nodegate.lab.pki import write_pki
from nodegate.lab.profile_files import kubeconfig

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


class StandaloneApiServer:
    """One running server over its lab directory, and the file writes that stand in for the lab."""

    def __init__(self, config: LabConfig, proc: subprocess.Popen) -> None:
        self.config = config
        self.proc = proc  # replaced by a test that restarts the server; teardown stops the current one
        self.kubeconfig = config.dir / "kubeconfig"

    def node_dir(self, name: str) -> Path:
        return self.config.dir / "nodes" / name

    def state(self, name: str) -> dict:
        return json.loads((self.node_dir(name) / "state.json").read_text())

    def set_state(self, name: str, *, up: bool, new_boot: bool | None = None) -> dict:
        """Write the node's state.json as the supervisor does (shared_files.write_json) and return it. A node
        that comes up from down (or is written for the first time) gets a new boot id, as a real boot
        does; new_boot=True forces one, new_boot=False keeps the old one."""
        path = self.node_dir(name) / "state.json"
        old = self.state(name) if path.exists() else {}
        if new_boot is None:
            new_boot = up and (not old or old.get("state") != "up")
        new_boot = new_boot or not old
        state = {"name": name, "state": "up" if up else "down", "pid": None,
                 "boot_id": str(uuid.uuid4()) if new_boot else old["boot_id"],
                 "boot_count": int(old.get("boot_count", 0)) + (1 if new_boot else 0),
                 "changed_at": time.time()}
        shared_files.write_json(path, state)
        return state

    def set_release(self, name: str, text: str) -> None:
        """The node's /etc/os-release (the server reads osImage from it at each boot)."""
        path = self.node_dir(name) / "root/etc/os-release"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def set_faults(self, data: dict) -> None:
        """Replace faults.json as a whole (as `nodegate lab fault` does) and return once the server
        has read it (a condition, not a sleep: a busy machine can take longer than one poll)."""
        with self.faults_applied():
            shared_files.write_json(self.config.dir / "faults.json", data)

    @contextmanager
    def faults_applied(self, timeout: float = 15) -> Iterator[None]:
        """Wait, after the block changed faults.json, until the server logged the new set of faults
        (it logs "faults now: …" each time the file's content changed). A block that left the
        content as it was waits for nothing."""
        path = self.config.dir / "faults.json"
        before_data = shared_files.read_json(path, {})
        seen = self._faults_lines()
        yield
        if shared_files.read_json(path, {}) == before_data:
            return
        wait_until(lambda: self._faults_lines() > seen, timeout=timeout,
                   what=f"the API server reading faults.json (log: {self.config.dir}/logs/apiserver.log)")

    def _faults_lines(self) -> int:
        try:
            return (self.config.dir / "logs" / "apiserver.log").read_text(errors="replace").count(" faults now: ")
        except FileNotFoundError:
            return 0

    def request(self, method: str, path: str, body: object = None, *,
                content_type: str = "application/json") -> tuple[int, dict]:
        """One request with the lab's admin credentials, as bytes on the wire (set-up
        nodegate.cluster.kube.client does not offer, and what the official client refuses to
        send); (status, decoded JSON body)."""
        return apiclient.request(self.config, method, path, body, content_type=content_type)

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run([KUBECTL, "--kubeconfig", str(self.kubeconfig), *args], capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def settings(self, **overrides):
        """KubeSettings for nodegate.cluster.kube.client on this server's kubeconfig (overrides replace fields)."""
        from nodegate.profile.model import KubeSettings

        values = dict(kubeconfig=self.kubeconfig, context="nodegate-lab")
        values.update(overrides)
        return KubeSettings(**values)


def start_server(config: LabConfig) -> subprocess.Popen:
    """Start the server over config.dir, record its PID, and return once it answers over HTTP."""
    with open(config.dir / "logs" / "apiserver.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nodegate.lab.apiserver", "--dir", str(config.dir)],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    (config.dir / "pids" / "apiserver.pid").write_text(str(proc.pid))

    def answering() -> bool:
        try:
            with apiclient.urlopen(config, "/healthz", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # an HTTP answer of any kind: the server is up
        except OSError:
            assert proc.poll() is None, f"API server ended; see {config.dir}/logs/apiserver.log"
            return False

    wait_until(answering, timeout=30, what=f"API server answering (log: {config.dir}/logs/apiserver.log)")
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (the server saves its objects on the way out), SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextmanager
def standalone_api_server(lab_dir: Path, *, net: int, nodes: int = 4, os_release: str | None = None,
                          **settings) -> Iterator[StandaloneApiServer]:
    """A fresh lab directory at lab_dir (a server left there by an interrupted run is stopped by its
    recorded PID first) with `nodes` nodes on address octet `net`, every node up (with os_release
    as its /etc/os-release when given); the server runs until the block ends. settings go to
    LabConfig.new (ready_delay_s defaults to 0.3 s so boots are quick)."""
    pidfile = lab_dir / "pids" / "apiserver.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
            time.sleep(0.5)
        except (ProcessLookupError, ValueError):
            pass
    shutil.rmtree(lab_dir, ignore_errors=True)
    for sub in ("pids", "logs", "nodes"):
        (lab_dir / sub).mkdir(parents=True)
    config = LabConfig.new(lab_dir, nodes, net=net, **{"ready_delay_s": 0.3, **settings})
    config.save()
    if config.api_tls:
        write_pki(lab_dir, config.api_address, config.token)
    (lab_dir / "kubeconfig").write_text(kubeconfig(config))
    server = StandaloneApiServer(config, start_server(config))
    try:
        for node in config.nodes:
            if os_release is not None:
                server.set_release(node.name, os_release)
            server.set_state(node.name, up=True)
        yield server
    finally:
        stop_server(server.proc)
        pidfile.unlink(missing_ok=True)
