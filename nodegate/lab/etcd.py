"""Real etcd members for the lab, one per etcd node, as Kubespray runs etcd: a host service on
node1-node3 (node1 alone below three nodes).

Each member listens on its node's address (client 127.<net>.1.N:2379, peer :2380), keeps its
data in `DIR/etcd/<node>`, logs to `DIR/logs/etcd-<node>.log` and runs in its own session with
its PID in `DIR/pids/etcd-<node>.pid`. State is kept in files only, so the supervisor can stop
and start a member with its node from any process.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from nodegate.core.errors import PermanentError, TransientError, UsageError
from nodegate.lab.ceph import pid_alive, read_pid, start_daemon, stop_daemons
from nodegate.lab.config import LabConfig, LabNode

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
CLIENT_PORT = 2379
PEER_PORT = 2380
STOP_GRACE_S = 10.0
HEALTH_TIMEOUT_S = 2  # etcdctl's per-command timeout: a stopped member answers no sooner

log = logging.getLogger(__name__)


class LabEtcd:
    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.dir = config.dir / "etcd"
        self.pids = config.dir / "pids"
        self.logs = config.dir / "logs"

    # -- layout --------------------------------------------------------------------
    def _member(self, node: str) -> LabNode:
        member = self.config.node(node)
        if member not in self.config.etcd_nodes:
            names = ", ".join(n.name for n in self.config.etcd_nodes)
            raise UsageError(f"{node} runs no etcd member; etcd runs on {names}")
        return member

    @staticmethod
    def client_url(node: LabNode) -> str:
        return f"http://{node.address}:{CLIENT_PORT}"

    @staticmethod
    def peer_url(node: LabNode) -> str:
        return f"http://{node.address}:{PEER_PORT}"

    def endpoints(self) -> list[str]:
        """Client URLs of every member, in node order."""
        return [self.client_url(n) for n in self.config.etcd_nodes]

    def _data(self, node: str) -> Path:
        return self.dir / node

    def _pidfile(self, node: str) -> Path:
        return self.pids / f"etcd-{node}.pid"

    def _marker(self, node: str) -> str:
        # The data dir on the command line tells this lab's member from any other process.
        return f"--data-dir {self._data(node)} "

    def _command(self, member: LabNode, token: str) -> list[str]:
        cluster = ",".join(f"{n.name}={self.peer_url(n)}" for n in self.config.etcd_nodes)
        # The --initial-* flags matter only for the first start; later starts read the
        # membership from the data dir.
        return [ETCD, "--name", member.name, "--data-dir", str(self._data(member.name)),
                "--listen-client-urls", self.client_url(member),
                "--advertise-client-urls", self.client_url(member),
                "--listen-peer-urls", self.peer_url(member),
                "--initial-advertise-peer-urls", self.peer_url(member),
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", token, "--logger", "zap", "--log-outputs", "stderr"]

    @property
    def _token_file(self) -> Path:
        return self.dir / "cluster-token"

    @staticmethod
    def _env() -> dict[str, str]:
        # ETCD_* variables would override flags (etcd reads them as configuration).
        return {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}

    # -- life cycle ----------------------------------------------------------------
    def create(self, *, timeout: float = 30.0) -> None:
        """Initialise and start every member, then wait (bounded) until all are healthy."""
        if self.dir.exists():
            raise UsageError(f"a lab etcd cluster already exists in {self.dir}",
                             fix="destroy it first (nodegate lab down)")
        began = time.monotonic()
        self.dir.mkdir(parents=True)
        # A token unique to this cluster keeps members of another lab from joining it.
        self._token_file.write_text(f"nodegate-lab-{self.config.net}-{uuid.uuid4().hex[:12]}\n")
        for member in self.config.etcd_nodes:
            self.start_member(member.name)
        self.wait_healthy(timeout)
        log.info("etcd: %d members healthy in %.1f s", len(self.config.etcd_nodes),
                 time.monotonic() - began)

    def start_member(self, node: str) -> int:
        """Start the node's member (no-op if it runs); its PID."""
        member = self._member(node)
        if not self._token_file.exists():
            raise UsageError(f"no lab etcd cluster in {self.dir}", fix="create it first")
        self._data(node).mkdir(parents=True, exist_ok=True, mode=0o700)
        token = self._token_file.read_text().strip()
        return start_daemon(self._command(member, token), pidfile=self._pidfile(node),
                            log=self.logs / f"etcd-{node}.log", marker=self._marker(node),
                            env=self._env())

    def stop_member(self, node: str, *, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM the node's member by PID, SIGKILL after `grace`."""
        self._member(node)
        stop_daemons([(self._pidfile(node), self._marker(node))], grace=grace)

    def member_running(self, node: str) -> bool:
        self._member(node)
        pid = read_pid(self._pidfile(node))
        return bool(pid) and pid_alive(pid, self._marker(node))

    def stop_all(self, *, grace: float = STOP_GRACE_S) -> None:
        # One at a time: a member stopped while its peers run hands leadership over in
        # ~0.1 s; all at once, each waits ~7 s for peers that are leaving too.
        for member in self.config.etcd_nodes:
            self.stop_member(member.name, grace=grace)

    def destroy(self) -> None:
        """Stop every member and remove their data."""
        self.stop_all()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- health --------------------------------------------------------------------
    def etcdctl(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
        """etcdctl (API v3) against every member."""
        cmd = [ETCDCTL, f"--endpoints={','.join(self.endpoints())}", "--dial-timeout=1s",
               f"--command-timeout={HEALTH_TIMEOUT_S}s", *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env={**self._env(), "ETCDCTL_API": "3"})
        except subprocess.TimeoutExpired as exc:
            raise TransientError(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from exc

    def health(self) -> dict[str, bool]:
        """Node name → whether its member committed a proposal (`etcdctl endpoint health`)."""
        result = self.etcdctl("endpoint", "health", "-w", "json")
        try:
            answers = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise PermanentError(f"etcdctl endpoint health gave no JSON (rc {result.returncode}): "
                                 f"{result.stderr.strip()[-500:]}") from exc
        by_url = {a["endpoint"]: bool(a.get("health")) for a in answers}
        return {n.name: by_url.get(self.client_url(n), False) for n in self.config.etcd_nodes}

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if all(health.values()):
                return
            if time.monotonic() >= deadline:
                sick = ", ".join(n for n, ok in health.items() if not ok)
                raise TransientError(f"etcd members unhealthy after {timeout:.0f} s: {sick}",
                                     fix=f"see {self.logs}/etcd-<node>.log")
            time.sleep(0.2)
