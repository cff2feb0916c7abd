"""Refused at the gate, before any change: the toolchain and the API endpoint.

- A profile whose [kubespray] ansible_playbook is nodegate's own (ansible-core 2.19), outside the
  lab's Kubespray v2.21.0 range (its ansible_version.yml: 2.11.0 <= ansible-core < 2.13.0, which
  upgrade-cluster.yml would assert only at step 11, after both reboots): the run of node4 stops at
  the gate naming the range and the fix.
- A profile whose kubeconfig is Kubespray's artifacts/admin.conf, whose server is the first
  control-plane node (kubeconfig_localhost without loadbalancer_apiserver; the lab writes it and
  its API server answers on node1's address as node1's kube-apiserver would): the run of node1
  stops at the gate naming a load balancer or another control-plane node; the same kubeconfig
  for the worker node4 passes the whole preflight.
Each time the node is seen unchanged afterwards: not cordoned, its packages and release as before,
the journal holding nothing past the gate.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from labkit import fixed_kubespray_checkout, ssh
from scenariotools import QUIET_PLUGINS, _junit, write_profile

ROOT = Path(__file__).resolve().parents[2]
LIMITS = dict(reboot_timeout_worker_s=60, storage_timeout_s=120, lock_stale_after_s=600, settle_s=0)


def _run(work: Path, profile: Path, node: str, *args: str, what: str = "procedures") -> tuple[int, str, dict, dict]:
    junit = work / f"junit-{node}-{what}.xml"
    argv = [sys.executable, "-m", "pytest", str(ROOT / what), "--cluster", str(profile), "--node", node,
            "--target-release", "22.04", "-v", "-rA", "--color=no", "-p", "no:randomly", "-p", "no:cacheprovider",
            *QUIET_PLUGINS, f"--junitxml={junit}", *args]
    env = {k: v for k, v in os.environ.items() if k != "NODEGATE_CLUSTER"}
    env["NODEGATE_REPORTS"] = str(work / "reports")
    done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900,
                          stdin=subprocess.DEVNULL)
    text = done.stdout + "\n" + done.stderr
    outcomes, messages = _junit(junit)
    return done.returncode, text, outcomes, messages


def _standing(lab, node: str) -> dict:
    """What a change would alter: cordon, packages, release (read over SSH and the API)."""
    return {"unschedulable": lab.kube.node(node).unschedulable,
            "packages": ssh(lab.config, node, "dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n' "
                                              "| sort").stdout,
            "release": ssh(lab.config, node, ". /etc/os-release; echo $VERSION_ID").stdout.strip()}


def _journal_steps(work: Path, node: str) -> list[tuple[str, str]]:
    import json

    path = work / "reports" / "runs" / "journal" / "nodegate-lab" / f"{node}-22.04.jsonl"
    if not path.exists():
        return []
    return [(r["step"], r["status"]) for r in map(json.loads, path.read_text().splitlines()) if r.get("step")]


def _refused_at_gate(lab, work: Path, profile: Path, node: str) -> str:
    before = _standing(lab, node)
    assert before["unschedulable"] is False and before["release"] == "20.04"
    rc, text, outcomes, messages = _run(work, profile, node, "--execute")
    assert "Traceback (most recent call last)" not in text, text[-4000:]
    assert rc != 0 and outcomes, text[-4000:]
    failed = [step for step, outcome in outcomes.items() if outcome == "failed"]
    assert failed and failed[0] == "gate", outcomes
    assert not [s for s, o in outcomes.items() if o == "passed" and s != "begin"], outcomes
    assert _standing(lab, node) == before, "the node changed although the gate refused"
    steps = {step for step, _ in _journal_steps(work, node)}
    assert steps <= {"begin", "gate"}, steps
    return messages["gate"]


@pytest.fixture
def checkout(scenario_lab, tmp_path) -> Path:
    """The lab's checkout with the operator's fix for kubespray #9114 (so that is not what blocks)."""
    return fixed_kubespray_checkout(scenario_lab.config, tmp_path)


def test_ansible_outside_the_checkout_range_is_refused_at_the_gate(scenario_lab, checkout, tmp_path):
    harness_ansible = Path(sys.executable).parent / "ansible-playbook"
    version = subprocess.run([str(harness_ansible), "--version"], capture_output=True, text=True).stdout
    assert "[core 2.1" in version and "[core 2.12." not in version and "[core 2.11." not in version, version
    profile = write_profile(scenario_lab.config, tmp_path / "other-ansible.toml", kubespray=checkout, **LIMITS)
    profile.write_text(profile.read_text().replace(
        "[kubespray]\n", f"[kubespray]\nansible_playbook = \"{harness_ansible}\"\n", 1))
    # the plan names the ansible-playbook and what the gate checks about it
    rc, plan, _, _ = _run(tmp_path, profile, "node4")
    assert rc == 0 and "nodegate upgrade plan (nothing was changed)" in plan, plan[-4000:]
    assert (f"toolchain, checked at the gate (read-only): {harness_ansible} (ansible-core 2.1" in plan
            and "[kubespray] ansible_playbook in the profile) against the checkout's 2.11.0 <= ansible-core < "
                "2.13.0 and requirements.txt" in plan), plan[-4000:]

    message = _refused_at_gate(scenario_lab, tmp_path, profile, "node4")
    assert "test_ansible_in_checkout_range" in message, message
    assert "outside the range Kubespray v2.21.0 accepts: 2.11.0 <= ansible-core < 2.13.0" in message, message
    assert "[kubespray] ansible_playbook in the profile" in message, message
    assert "(fix: use an ansible-playbook with ansible-core>=2.11.0,<2.13.0: install the checkout's toolchain" in \
        message, message
    assert "nothing was changed" in message


def test_kubeconfig_on_the_node_is_refused_at_the_gate(scenario_lab, checkout, tmp_path):
    admin_conf = checkout / "inventory" / "mycluster" / "artifacts" / "admin.conf"
    node1 = scenario_lab.config.node("node1").address
    assert f"//{node1}:{scenario_lab.config.api_port}" in admin_conf.read_text()
    profile = write_profile(scenario_lab.config, tmp_path / "admin-conf.toml", kubespray=checkout, **LIMITS)
    text = profile.read_text()
    old = next(line for line in text.splitlines() if line.startswith("kubeconfig = "))
    profile.write_text(text.replace(old, f'kubeconfig = "{admin_conf}"', 1))

    message = _refused_at_gate(scenario_lab, tmp_path, profile, "node1")
    assert "test_api_endpoint_not_on_node" in message, message
    assert f"is node1 itself (ansible_host {node1}" in message, message
    assert "(fix: point the kubeconfig's server at a load balancer" in message, message
    assert "or at another control-plane node" in message or "only a load balancer can stand in" in message, message

    # the worker node4 with the same kubeconfig (the API reached through node1's address): not refused
    rc, out, outcomes, _ = _run(tmp_path, profile, "node4", "-m", "preflight", what="checks")
    assert rc == 0, out[-4000:]
    assert "test_api_endpoint_not_on_node[node4] PASSED" in out, out[-4000:]
