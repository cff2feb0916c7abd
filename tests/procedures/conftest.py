"""Run the real procedure (procedures/) through pytester against the session's lab, and put the
nodes it changed back afterwards.

`procedure(...)` runs `pytest procedures/ --cluster … --node … --target-release … [--execute]` in
a subprocess exactly as an operator would, with this test's own reports directory (so its journal
is its own), and reads each step's outcome from a JUnit XML file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from labkit import LabAccess, fixed_kubespray_checkout

from nodegate.lab.config import LabConfig

ROOT = Path(__file__).resolve().parents[2]
PROCEDURES = ROOT / "procedures"
_CASE = re.compile(r"test_upgrade\[(?P<node>[^\]]+?)-(?P<n>\d\d)-(?P<step>\w+)\]")


@dataclass
class ProcedureRun:
    ret: int
    stdout: str
    stderr: str
    seconds: float
    outcomes: dict[tuple[str, str], str]            # (node, step) -> passed/failed/skipped
    messages: dict[tuple[str, str], str] = field(default_factory=dict)
    times: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.stdout + "\n" + self.stderr

    def steps(self, node: str, outcome: str) -> list[str]:
        return [step for (n, step), o in self.outcomes.items() if n == node and o == outcome]

    def failed(self) -> list[tuple[str, str]]:
        return [k for k, o in self.outcomes.items() if o == "failed"]


def read_junit(path: Path) -> tuple[dict, dict, dict]:
    outcomes, messages, times = {}, {}, {}
    if not path.exists():
        return outcomes, messages, times
    for case in ET.parse(path).getroot().iter("testcase"):
        found = _CASE.search(case.get("name", ""))
        if not found:
            continue
        key = (found.group("node"), found.group("step"))
        times[key] = float(case.get("time") or 0)
        outcome = "passed"
        for kind, word in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
            el = case.find(kind)
            if el is not None:
                outcome = word
                messages[key] = (el.get("message") or "") + "\n" + (el.text or "")
                break
        outcomes[key] = outcome
    return outcomes, messages, times


class Procedure:
    """Runs the procedure for one test; every run of one test shares its journal."""

    def __init__(self, pytester: pytest.Pytester, lab: LabConfig) -> None:
        self.pytester = pytester
        self.lab = lab
        self.reports = pytester.path / "reports"
        self.cluster = lab.dir / "cluster.toml"
        self.runs = 0

    def argv(self, *args: str, node: str | None, target: str, execute: bool, cluster: Path | None) -> list[str]:
        self.runs += 1
        junit = self.pytester.path / f"junit-{self.runs}.xml"
        argv = [str(PROCEDURES), "--cluster", str(cluster or self.cluster), "--target-release", target, "-v",
                "--color=no", "-p", "no:randomly", "-p", "no:cacheprovider", f"--junitxml={junit}", *args]
        if node:
            argv += ["--node", node]
        if execute:
            argv.append("--execute")
        return argv

    def __call__(self, *args: str, node: str | None = "node4", target: str = "22.04", execute: bool = True,
                 cluster: Path | None = None, timeout: float = 900) -> ProcedureRun:
        argv = self.argv(*args, node=node, target=target, execute=execute, cluster=cluster)
        started = time.monotonic()
        result = self.pytester.runpytest_subprocess(*argv, timeout=timeout)
        seconds = time.monotonic() - started
        outcomes, messages, times = read_junit(self.pytester.path / f"junit-{self.runs}.xml")
        return ProcedureRun(ret=int(result.ret), stdout=result.stdout.str(), stderr=result.stderr.str(),
                            seconds=seconds, outcomes=outcomes, messages=messages, times=times)

    def start(self, *args: str, node: str = "node4", target: str = "22.04",
              cluster: Path | None = None) -> subprocess.Popen:
        """The same run, started in the background (to be interrupted)."""
        argv = self.argv(*args, node=node, target=target, execute=True, cluster=cluster)
        log = open(self.pytester.path / f"run-{self.runs}.log", "w")  # noqa: SIM115 - the child process writes it
        return subprocess.Popen([sys.executable, "-m", "pytest", *argv], cwd=self.pytester.path, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(os.environ))

    def journal(self, node: str = "node4", target: str = "22.04") -> list[dict]:
        path = self.reports / "runs" / "journal" / "nodegate-lab" / f"{node}-{target}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def procedure(pytester, lab, monkeypatch):
    monkeypatch.setenv("NODEGATE_REPORTS", str(pytester.path / "reports"))
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    # pytester's HOME is a long path; Ansible's ssh ControlPath under it would pass the 108-byte
    # socket limit ("ControlPath too long"), so Kubespray's connections get a short directory.
    control = Path(tempfile.mkdtemp(prefix="ngp-cp-", dir="/tmp"))
    monkeypatch.setenv("ANSIBLE_SSH_CONTROL_PATH_DIR", str(control))
    yield Procedure(pytester, lab)
    shutil.rmtree(control, ignore_errors=True)


@pytest.fixture
def fixed_kubespray(lab, tmp_path) -> Path:
    """A profile whose Kubespray checkout carries the operator's fix for kubespray #9114 (`force: true`
    on the docker package task), on a copy of the lab's checkout; returns the profile path."""
    checkout = fixed_kubespray_checkout(lab, tmp_path)
    profile = tmp_path / "cluster.toml"
    profile.write_text((lab.dir / "cluster.toml").read_text().replace(str(lab.dir / "kubespray"), str(checkout)))
    return profile


SEEDED_HOLDS = {"containerd.io": "1.6.4-1", "docker-ce": "5:20.10.20~3-0~ubuntu-focal",
                "docker-ce-cli": "5:20.10.20~3-0~ubuntu-focal"}


class LabNodes(LabAccess):
    """What the tests read from and do to the lab, through the harness's own modules."""

    def host(self, name: str):
        return self.nodes.reconnect(name)

    def boot_count(self, name: str) -> int:
        return int(json.loads((self.config.dir / "nodes" / name / "state.json").read_text())["boot_count"])

    def fresh(self, name: str) -> bool:
        """The node looks as `lab up` left it (cheap reads only)."""
        from nodegate.core.journal import ANNOTATION

        status = self.kube.node(name)
        faults = self.config.dir / "faults.json"
        return (self.host(name).release.os_release().version_id == "20.04" and not status.unschedulable
                and ANNOTATION not in status.annotations and name not in self.ceph.noout_hosts()
                and (not faults.exists() or faults.read_text().strip() in ("", "{}")))

    def untouched_root(self, name: str) -> bool:
        """The node's files are as the lab seeded them where the procedure changes them (release,
        holds, legacy key): then a root reset (and the OSD restart it costs) is not needed."""
        try:
            host = self.host(name)
            return (host.release.os_release().version_id == "20.04" and host.exists("/etc/apt/trusted.gpg")
                    and host.packages.held() == SEEDED_HOLDS)
        except Exception:  # noqa: BLE001 - a node that does not answer is reset
            return False

    def restore(self, *names: str) -> None:
        """Put nodes back to the lab's starting state: root reset (20.04, held packages, legacy key),
        uncordoned, no noout, no upgrade annotation, no lock, no fault."""
        from nodegate.cluster.lock import LOCK_NAME, LOCK_NAMESPACE
        from nodegate.core.journal import ANNOTATION

        self.cli("fault", "--clear", check=False)
        for name in names:
            if not self.untouched_root(name):
                self.cli("reset", name)
            self.kube.uncordon(name)
            self.kube.set_node_annotation(name, key=ANNOTATION, value=None)
            self.ceph.unset_group_noout(name)
        self.kube.delete_lease(LOCK_NAMESPACE, LOCK_NAME)
        self.nodes.close()
        self.wait_healthy()


@pytest.fixture(scope="session")
def lab_nodes(lab) -> LabNodes:
    return LabNodes(lab)


@pytest.fixture
def restore_node4(lab_nodes):
    """node4 is changed by the test: put it back after, and before if an earlier test left it changed."""
    if not lab_nodes.fresh("node4"):
        lab_nodes.restore("node4")
    yield lab_nodes
    lab_nodes.restore("node4")


def wait_for_journal(procedure: Procedure, predicate, *, timeout: float, node: str = "node4",
                     proc: subprocess.Popen | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in procedure.journal(node):
            if predicate(record):
                return record
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"the journal never showed the awaited record; it has: "
                         f"{[(r['step'], r['status']) for r in procedure.journal(node)]}")


@pytest.fixture
def journal_wait():
    """journal_wait(procedure, predicate, timeout=…, proc=…): the first journal record matching."""
    return wait_for_journal
