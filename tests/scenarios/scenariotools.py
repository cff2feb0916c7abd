"""The scenario suite's tools (imported by conftest.py and the scenarios): run the real procedure as an operator does, read where the node,
the cluster and the journal stand, inject faults, interrupt, and put node4 back afterwards.

Everything is read through the harness's own modules (nodes, kube, ceph, journal) or the lab
CLI; the procedure itself always runs as `python -m pytest procedures/ …` in a subprocess.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from labkit import LabAccess

from nodegate.cluster.lock import read_lock
from nodegate.lab import apiclient
from nodegate.lab.config import LabConfig

ROOT = Path(__file__).resolve().parents[2]
PROCEDURES = ROOT / "procedures"
NODE = "node4"
TARGET = "22.04"
# hypothesis (a test extra, absent on an operator's machine) can deadlock-import annotated_types
# against nodegate.plugin.allure's background import of the Kubernetes client (see tests/checks)
QUIET_PLUGINS = ("-p", "no:hypothesispytest")
ROOK_NAMESPACE = "rook-ceph"
ROOK_OPERATOR_PATH = f"/apis/apps/v1/namespaces/{ROOK_NAMESPACE}/deployments/rook-ceph-operator"
CSI_RBDPLUGIN_PATH = f"/apis/apps/v1/namespaces/{ROOK_NAMESPACE}/daemonsets/csi-rbdplugin"
_CASE = re.compile(r"test_upgrade\[(?P<node>[^\]]+?)-(?P<n>\d\d)-(?P<step>\w+)\]")


# --------------------------------------------------------------------------- a procedure run

@dataclass
class Run:
    rc: int
    text: str
    seconds: float
    outcomes: dict[str, str]              # step -> passed / failed / skipped
    messages: dict[str, str] = field(default_factory=dict)

    def failed_step(self) -> str | None:
        return next((s for s, o in self.outcomes.items() if o == "failed"), None)

    def message(self) -> str:
        step = self.failed_step()
        return self.messages.get(step, "") if step else ""

    def passed(self) -> list[str]:
        return [s for s, o in self.outcomes.items() if o == "passed"]


def _junit(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    if not path.exists():
        return outcomes, messages
    for case in ET.parse(path).getroot().iter("testcase"):
        found = _CASE.search(case.get("name", ""))
        if not found:
            continue
        outcome = "passed"
        for kind, word in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
            element = case.find(kind)
            if element is not None:
                outcome = word
                messages[found.group("step")] = (element.get("message") or "") + "\n" + (element.text or "")
                break
        outcomes[found.group("step")] = outcome
    return outcomes, messages


class Operator:
    """Runs `pytest procedures/ --cluster P --node node4 --target-release 22.04 --execute …` from one
    working folder; every run shares the folder's reports (so its journal), as one operator's would."""

    def __init__(self, work: Path, lab: LabConfig) -> None:
        self.work = work
        self.lab = lab
        self.reports = work / "reports"
        self.count = 0
        # Kubespray's ssh ControlPath must stay under the 108-byte socket limit
        self.control = Path(tempfile.mkdtemp(prefix="ngs-cp-", dir="/tmp"))
        weakref.finalize(self, shutil.rmtree, self.control, ignore_errors=True)   # at the latest when pytest exits

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["NODEGATE_REPORTS"] = str(self.reports)
        env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(self.control)
        env.pop("NODEGATE_CLUSTER", None)
        return env

    def argv(self, profile: Path, *extra: str, target: str = TARGET) -> tuple[list[str], Path]:
        self.count += 1
        junit = self.work / f"junit-{self.count}.xml"
        return ([sys.executable, "-m", "pytest", str(PROCEDURES), "--cluster", str(profile), "--node", NODE,
                 "--target-release", target, "--execute", "-v", "-rA", "--color=no", "-p", "no:randomly",
                 "-p", "no:cacheprovider", *QUIET_PLUGINS, f"--junitxml={junit}", *extra], junit)

    def run(self, profile: Path, *extra: str, timeout: float = 900, target: str = TARGET) -> Run:
        argv, junit = self.argv(profile, *extra, target=target)
        started = time.monotonic()
        done = subprocess.run(argv, cwd=self.work, env=self.env(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        text = done.stdout + "\n" + done.stderr
        (self.work / f"run-{self.count}.log").write_text(text)
        outcomes, messages = _junit(junit)
        return Run(rc=done.returncode, text=text, seconds=time.monotonic() - started, outcomes=outcomes,
                   messages=messages)

    def start(self, profile: Path, *extra: str, target: str = TARGET) -> tuple[subprocess.Popen, Path, Path]:
        """The same run in the background (to be interrupted); returns (process, junit, log)."""
        argv, junit = self.argv(profile, *extra, target=target)
        log = self.work / f"run-{self.count}.log"
        proc = subprocess.Popen(argv, cwd=self.work, env=self.env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115 - the child writes it
                                preexec_fn=terminal_signals,
                                stdin=subprocess.DEVNULL)
        return proc, junit, log

    def finish(self, proc: subprocess.Popen, junit: Path, log: Path, *, timeout: float = 120) -> Run:
        started = time.monotonic()
        proc.wait(timeout=timeout)
        outcomes, messages = _junit(junit)
        return Run(rc=proc.returncode, text=log.read_text(), seconds=time.monotonic() - started, outcomes=outcomes,
                   messages=messages)

    def journal(self, *, target: str = TARGET) -> list[dict]:
        path = self.reports / "runs" / "journal" / "nodegate-lab" / f"{NODE}-{target}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def last(self, step: str) -> str | None:
        """The status of the step's last journal record."""
        found = [r["status"] for r in self.journal() if r["step"] == step]
        return found[-1] if found else None

    def wait_journal(self, predicate, *, proc: subprocess.Popen | None = None, timeout: float = 300,
                     since: int = 0) -> dict:
        """The first journal record (from index ``since`` on) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.journal()[since:]:
                if predicate(record):
                    return record
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError("the journal never showed the awaited record; it has: "
                             f"{[(r['step'], r['status']) for r in self.journal()]}")


# --------------------------------------------------------------------------- where things stand

@dataclass(frozen=True)
class Standing:
    release: str | None
    held: dict[str, str]
    audit: str
    cordoned: bool
    cordoned_by: str | None
    annotation: dict | None
    evictable_pods: tuple[str, ...]
    noout: bool
    lock_holder: str | None
    lock_node: str | None
    ceph_healthy: bool


class Lab(LabAccess):
    """The lab seen through the harness's own modules, plus the lab CLI for faults and resets."""

    def host(self):
        return self.nodes.reconnect(NODE)

    def fault(self, name: str, *args: str) -> None:
        self.cli("fault", name, *args)

    def clear(self, name: str, *args: str) -> None:
        self.cli("fault", name, "--clear", *args)

    def ssh(self, command: str, *, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["ssh", "-F", str(self.config.dir / "ssh" / "config"), NODE, command],
                              capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"ssh {NODE} {command!r}: rc {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def standing(self) -> Standing:
        from nodegate.core.journal import ANNOTATION

        host = self.host()
        status = self.kube.node(NODE)
        pods = tuple(p.ref for p in self.kube.list_pods(node=NODE) if not (p.daemonset or p.mirror or p.finished))
        annotation = status.annotations.get(ANNOTATION)
        lock = read_lock(self.kube)
        return Standing(release=host.release.os_release().version_id, held=host.packages.held(),
                        audit=host.packages.audit(), cordoned=bool(status.unschedulable),
                        cordoned_by=status.annotations.get("nodegate.io/cordoned-by"),
                        annotation=json.loads(annotation) if annotation else None, evictable_pods=pods,
                        noout=NODE in self.ceph.noout_hosts(),
                        lock_holder=lock.holder if lock is not None and lock.held else None,
                        lock_node=lock.node if lock is not None and lock.held else None,
                        ceph_healthy=self.ceph.status().healthy_in_full)

    # -- the lock, as another operator's run would leave it ---------------------------------------
    def plant_lock(self, *, holder: str, node: str, run_id: str, renewed_s_ago: float) -> None:
        from nodegate.cluster.lock import LOCK_NAME, LOCK_NAMESPACE, LOCK_NODE_ANNOTATION, LOCK_RUN_ANNOTATION

        self.kube.delete_lease(LOCK_NAMESPACE, LOCK_NAME)
        stamp = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=renewed_s_ago)).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LOCK_NAME, "namespace": LOCK_NAMESPACE,
                             "annotations": {LOCK_NODE_ANNOTATION: node, LOCK_RUN_ANNOTATION: run_id}},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": 60, "acquireTime": stamp,
                         "renewTime": stamp, "leaseTransitions": 0}}
        request = urllib.request.Request(
            f"{self.config.api_url}/apis/coordination.k8s.io/v1/namespaces/{LOCK_NAMESPACE}/leases",
            data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with apiclient.urlopen(self.config, request) as response:
            assert response.status in (200, 201), response.status

    # -- a PodDisruptionBudget, as an application team would add one -------------------------------
    def _api(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(f"{self.config.api_url}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json"})
        with apiclient.urlopen(self.config, request) as response:
            return json.load(response)

    def node4_pdb(self) -> tuple[str, str, dict]:
        """(namespace, name, spec) of the PodDisruptionBudget that covers the pod a drain of node4
        evicts (in the lab: Rook's OSD PDB)."""
        pods = [p for p in self.kube.list_pods(node=NODE) if not (p.daemonset or p.mirror or p.finished)]
        assert pods, f"no evictable pod on {NODE}"
        # The scheduler may also have put the demo app's pods there (their PDB has minAvailable,
        # which set_pdb's maxUnavailable cannot tighten): Rook's OSD budget is the one wanted.
        covering = []
        for pod in pods:
            labels = self._api("GET", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}")["metadata"].get("labels", {})
            for pdb in self._api("GET", f"/apis/policy/v1/namespaces/{pod.namespace}/poddisruptionbudgets")["items"]:
                wanted = pdb["spec"].get("selector", {}).get("matchLabels", {})
                if wanted and all(labels.get(k) == v for k, v in wanted.items()) and "maxUnavailable" in pdb["spec"]:
                    covering.append((pdb["metadata"]["namespace"], pdb["metadata"]["name"], pdb["spec"]))
        assert covering, f"no PodDisruptionBudget with maxUnavailable covers any of {[p.ref for p in pods]}"
        return min(covering, key=lambda found: found[1] != "rook-ceph-osd")

    def set_pdb(self, namespace: str, name: str, spec_change: dict) -> None:
        """Change a PDB (merge patch), as Rook does when it tightens its OSD budgets."""
        request = urllib.request.Request(
            f"{self.config.api_url}/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{name}",
            method="PATCH", data=json.dumps({"spec": spec_change}).encode(),
            headers={"Content-Type": "application/merge-patch+json"})
        with apiclient.urlopen(self.config, request) as response:
            assert response.status == 200, response.status

    # -- Rook, as an upgrade or a downgrade of it leaves the cluster -------------------------------
    def rook_images(self) -> tuple[frozenset[str], frozenset[str]]:
        """(operator images, csi-rbdplugin images) of the pods as the harness reads them: every
        pod with the label, terminating ones included."""
        operator = self.kube.list_pods(namespace=ROOK_NAMESPACE, selector="app=rook-ceph-operator")
        plugins = self.kube.list_pods(namespace=ROOK_NAMESPACE, selector="app=csi-rbdplugin")
        return (frozenset(c.image for p in operator for c in p.containers),
                frozenset(c.image for p in plugins for c in p.containers if c.name == "csi-rbdplugin"))

    def set_rook(self, version: str, *, timeout: float = 120) -> bool:
        """Move the lab's Rook to `version` as Rook's upgrade guide does it: the
        operator Deployment gets rook/ceph:<version>, and the operator then rolls the csi-rbdplugin
        DaemonSet to that release's default cephcsi (ROOK_CEPHCSI). Returns once every operator and
        plugin pod runs the new images, Ready, with no old pod left; False if nothing had to change."""
        from nodegate.core.waits import Done, NotYet, wait_for
        from nodegate.lab.config import ROOK_CEPHCSI

        operator_image, csi_image = f"rook/ceph:{version}", f"quay.io/cephcsi/cephcsi:{ROOK_CEPHCSI[version]}"
        changed = False
        for path, repository, image in ((ROOK_OPERATOR_PATH, "rook/ceph", operator_image),
                                        (CSI_RBDPLUGIN_PATH, "cephcsi/cephcsi", csi_image)):
            body = self._api("GET", path)
            containers = body["spec"]["template"]["spec"]["containers"]
            mine = [c for c in containers if c["image"].rsplit(":", 1)[0].endswith(repository)]
            assert mine, f"no {repository} container in {path}"
            if all(c["image"] == image for c in mine):
                continue
            for c in mine:
                c["image"] = image
            self._api("PUT", path, body)
            changed = True
        if not changed:
            return False
        nodes = len(self.config.nodes)

        def probe():
            operator = self.kube.list_pods(namespace=ROOK_NAMESPACE, selector="app=rook-ceph-operator")
            plugins = self.kube.list_pods(namespace=ROOK_NAMESPACE, selector="app=csi-rbdplugin")
            old = sorted({c.image for p in operator for c in p.containers if c.image != operator_image}
                         | {c.image for p in plugins for c in p.containers
                            if "cephcsi/cephcsi" in c.image and c.image != csi_image})
            unready = [p.name for p in [*operator, *plugins] if not p.ready or p.deleting]
            if old or unready or not operator or len(plugins) != nodes:
                return NotYet(f"old images {old}, not Ready {unready}, {len(plugins)}/{nodes} csi-rbdplugin pods")
            return Done(True)

        wait_for(probe, what=f"Rook {version} (cephcsi {ROOK_CEPHCSI[version]}) rolled out", timeout=timeout,
                 interval=0.5)
        return True

    # -- inside node4, seen from this machine --------------------------------------------------------
    def node_processes(self) -> list[tuple[int, str]]:
        """(pid, command line) of every process running inside node4."""
        root = str(self.config.dir / "nodes" / NODE / "root")
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "root") != root:
                    continue
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()))
            except OSError:
                continue
        return found

    def drop_ssh(self) -> list[int]:
        """Cut every SSH session into node4 the way a network drop does: its per-session sshd
        processes end (the listener, node4's PID 1, stays); what they ran loses its stdout."""
        killed = []
        for pid, command in self.node_processes():
            if command.startswith("sshd:") and "listener" not in command:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
        return killed

    # -- back to the start -----------------------------------------------------------------------------
    def _toolbox_running(self):
        from nodegate.core.waits import Done, NotYet

        ceph = self.profile.ceph
        pods = self.kube.list_pods(namespace=ceph.namespace, selector=ceph.toolbox_selector)
        if any(p.ready and not p.deleting for p in pods):
            return Done(True)
        return NotYet(", ".join(f"{p.name} ({p.phase})" for p in pods) or "no toolbox pod")

    def restore(self) -> None:
        """node4 as `lab up` left it: root reset (20.04, held packages, legacy key), uncordoned, no
        noout, no upgrade annotation, no lock, no fault, the lab's Rook and cephcsi."""
        from nodegate.cluster.lock import LOCK_NAME, LOCK_NAMESPACE
        from nodegate.core.journal import ANNOTATION
        from nodegate.core.waits import wait_for

        active = json.loads((self.config.dir / "faults.json").read_text() or "{}") \
            if (self.config.dir / "faults.json").exists() else {}
        for name in active:   # `fault --clear` needs the fault's name
            self.cli("fault", name, "--clear")
        for pdb in self._api("GET", "/apis/policy/v1/poddisruptionbudgets").get("items", []):
            if pdb["spec"].get("maxUnavailable") == 0 and pdb["metadata"]["name"].startswith("rook-ceph-"):
                self.set_pdb(pdb["metadata"]["namespace"], pdb["metadata"]["name"], {"maxUnavailable": 1})
        self.set_rook(self.config.rook_version)   # a scenario may have moved it (Rook downgrade)
        self.cli("reset", NODE)
        self.kube.uncordon(NODE)
        self.kube.set_node_annotation(NODE, key=ANNOTATION, value=None)
        self.kube.set_node_annotation(NODE, key="nodegate.io/cordoned-by", value=None)
        # the toolbox may not run yet: on a lab that has just come up, or just evicted from node4
        wait_for(self._toolbox_running, what="the Ceph toolbox running", timeout=120, interval=1.0)
        self.ceph.unset_group_noout(NODE)
        self.kube.delete_lease(LOCK_NAMESPACE, LOCK_NAME)
        self.nodes.close()
        self.wait_healthy()


def write_profile(lab: LabConfig, path: Path, *, kubespray: Path | None = None, **upgrade: float) -> Path:
    """The lab's profile with short [upgrade] limits (and another Kubespray checkout if given)."""
    text = (lab.dir / "cluster.toml").read_text()
    if kubespray is not None:
        text = text.replace(str(lab.dir / "kubespray"), str(kubespray))
    body = "".join(f"{k} = {v}\n" for k, v in upgrade.items())
    text = re.sub(r"(?ms)^\[upgrade\]\n.*?(?=^\[|\Z)", "", text) + "\n[upgrade]\n" + body
    path.write_text(text)
    return path


def secrets_of(lab: LabConfig) -> dict[str, str]:
    inventory = (lab.dir / "kubespray" / "inventory" / "mycluster" / "hosts.yaml").read_text()
    found = {"API token": lab.token}
    become = re.search(r"ansible_become_password:\s*(\S+)", inventory)
    if become:
        found["inventory become password"] = become.group(1)
    return found


def leaked_secrets(lab: LabConfig, op: Operator) -> list[str]:
    """Each planted secret (secrets_of) found in the operator's reports or in its runs' terminal output."""
    secrets = secrets_of(lab)
    files = [*(p for p in op.reports.rglob("*") if p.is_file()), *op.work.glob("run-*.log")]
    return [f"{what} in {p}" for p in files for what, value in secrets.items()
            if value in p.read_text(errors="replace")]


def no_traceback(run: Run) -> None:
    assert "Traceback (most recent call last)" not in run.text, run.text[-4000:]


def lock_free(lab: Lab) -> None:
    info = read_lock(lab.kube)
    assert info is None or not info.held, f"the upgrade lock is still held: {info.describe()}"


def terminal_signals() -> None:
    """preexec_fn for an operator's run: SIGINT/SIGQUIT at their defaults, as in a terminal. A
    command started in the background by a non-interactive shell (make test's second stream, or
    a CI runner) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    import signal as _signal

    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    _signal.signal(_signal.SIGQUIT, _signal.SIG_DFL)
