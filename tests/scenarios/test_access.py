"""Scenarios: the access paths of production clusters, end to end, on a lab of their own.

The lab: API over HTTPS with its own CA, nodes reached as `ubuntu` on port 2222 only through a
bastion, and `ubuntu`'s sudo asking for a password (`lab up --https --ssh-user ubuntu
--ssh-port 2222 --bastion --sudo-password`). The operator's profile uses the bastion from the
Kubespray inventory and a bearer-token kubeconfig. In order, on node4 as it starts:
- sudo needs a password and none is given: refused before any check, naming node and fix;
- the password typed once at --ask-become-pass's prompt on a pseudo-terminal reaches sudo;
- the restricted RBAC user: the gate's preflight lists each missing permission;
- a kubeconfig with the wrong CA, and a changed host key on the bastion: each refused with its cause;
  after each of these, nothing on the node or in the cluster changed;
- with --become-password-env the full upgrade completes through the bastion, verified on the node
  by its own SSH, and the password is in no log, journal, Allure result or HTML report.
"""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace

import pytest
import yaml
from labkit import net_beside, nodegate, run_on_terminal
from scenariotools import NODE, Lab, Operator, leaked_secrets, no_traceback, write_profile

from nodegate.lab.config import LabConfig
from nodegate.lab.kubespray import planted_secrets
from nodegate.lab.pki import make_ca
from nodegate.upgrade import STEP_NAMES

pytestmark = pytest.mark.lab

PASSWORD_ENV = "NODEGATE_TEST_BECOME_PASSWORD"


@pytest.fixture(scope="module")
def access_lab(tmp_path_factory):
    lab_dir = tmp_path_factory.mktemp("access-scenarios") / "lab"
    nodegate("lab", "up", "--dir", str(lab_dir), "--net", str(net_beside("access-scenarios")), "--https",
             "--ssh-user", "ubuntu", "--ssh-port", "2222", "--bastion", "--sudo-password", timeout=600)
    config = LabConfig.load(lab_dir)
    # the documented fix of kubespray #9114 (the preflight names it), as an operator applies it
    from nodegate.lab.kubespray import apply_force_fix

    assert apply_force_fix(lab_dir / "kubespray")
    view = Lab(config)
    # the tests compare the node and the cluster before and after, Ceph's health included: start
    # from a Ceph that stays healthy (lab up returns at its first healthy look)
    view.wait_healthy(settled_s=6)
    yield view
    view.kube.close()
    nodegate("lab", "down", "--dir", str(lab_dir))


class PasswordOperator(Operator):
    """An operator whose shell holds the sudo password in PASSWORD_ENV (when told to)."""

    extra_env: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra_env}


@pytest.fixture(scope="module")
def operator(access_lab, tmp_path_factory):
    return PasswordOperator(tmp_path_factory.mktemp("access-operator"), access_lab.config)


def profile_with(lab: LabConfig, path, *, kubeconfig=None, known_hosts=None):
    """The lab's profile with a short settle time; no ssh_config (the bastion comes from the
    inventory alone, through the paramiko backend) unless known_hosts is changed for ssh."""
    write_profile(lab, path, settle_s=1)
    text = path.read_text()
    text = re.sub(r'(?m)^config = ".*/ssh/config"\n', "", text)
    if kubeconfig is not None:
        text = re.sub(r'(?m)^kubeconfig = .*$', f'kubeconfig = "{kubeconfig}"', text)
    if known_hosts is not None:
        text = re.sub(r'(?m)^known_hosts = .*$', f'known_hosts = "{known_hosts}"', text)
    path.write_text(text)
    return path


def refused_before_any_change(run) -> None:
    """Refused up front (exit 4), or by the gate's own preflight (step 1 fails): no step ran."""
    assert run.rc == 4 or (run.rc == 1 and run.failed_step() == "gate"), run.text[-3000:]
    assert run.passed() == [], run.outcomes


def unchanged(lab: Lab, before) -> None:
    """Nothing changed, except the journal's record that a run stopped at its gate (by design: a
    stopped run leaves the node in a stated place)."""
    after = lab.standing()
    if after.annotation is not None:
        assert (after.annotation["step"], after.annotation["status"]) == ("gate", "failed"), after.annotation
        after = replace(after, annotation=before.annotation)
    assert after == before, f"the node or the cluster changed:\n{before}\n{after}"
    assert not after.cordoned and after.lock_holder is None


def test_sudo_asking_is_refused_at_preflight(access_lab, operator, tmp_path):
    before = access_lab.standing()
    run = operator.run(profile_with(access_lab.config, tmp_path / "p.toml",
                                    kubeconfig=access_lab.config.dir / "kubeconfig-token"))
    # the gate's preflight refuses before its first check (rc 4 there): the procedure stops at step 1
    assert run.rc == 1 and run.failed_step() == "gate" and run.passed() == [], run.text[-3000:]
    message = run.message()
    assert "sudo on node4 (127." in message and "user ubuntu) asks for a password" in message, message
    assert "--become-password-env" in message and "NOPASSWD" in message
    no_traceback(run)
    unchanged(access_lab, before)


def test_restricted_user_gets_each_missing_permission_listed(access_lab, operator, tmp_path):
    before = access_lab.standing()
    password = planted_secrets(access_lab.config.dir)["ansible_become_password"]
    run = _run_with_env(operator, profile_with(access_lab.config, tmp_path / "p.toml",
                                               kubeconfig=access_lab.config.dir / "kubeconfig-restricted"),
                        {PASSWORD_ENV: password}, "--become-password-env", PASSWORD_ENV)
    assert run.rc != 0 and run.failed_step() == "gate", run.text[-3000:]
    for missing in ("create pods/eviction", "create pods/exec in namespace rook-ceph",
                    "create leases.coordination.k8s.io in namespace kube-system",
                    "update leases.coordination.k8s.io in namespace kube-system"):
        assert missing in run.text, missing
    assert "lacks 4 of the 12 API permissions" in run.text
    no_traceback(run)
    unchanged(access_lab, before)


def test_sudo_password_asked_once_on_the_terminal(access_lab, operator, tmp_path):
    """--ask-become-pass (as Ansible's -K) on a real pseudo-terminal: the password typed once at
    the prompt reaches sudo on node4, also in the gate's own preflight run (a subprocess that must
    not ask again); it is never echoed nor written anywhere. With the restricted user the gate then
    stops on the missing permissions, so nothing changes; a wrong password is refused by name."""
    lab = access_lab.config
    before = access_lab.standing()
    password = planted_secrets(lab.dir)["ansible_become_password"]
    prompt = "BECOME password (sudo on the nodes): "
    profile = profile_with(lab, tmp_path / "p.toml", kubeconfig=lab.dir / "kubeconfig-restricted")
    argv, _ = operator.argv(profile, "--ask-become-pass")
    rc, shown, asked = run_on_terminal(argv, answers={prompt: password}, cwd=operator.work, env=operator.env(),
                                       timeout=900)
    (operator.work / "terminal-1.log").write_text(shown)
    assert asked == [prompt], shown[-3000:]                 # asked once, by the operator's run only
    assert rc == 1 and "lacks 4 of the 12 API permissions" in shown, shown[-3000:]
    assert "asks for a password" not in shown and "rejected the password" not in shown, shown[-3000:]
    assert password not in shown                             # getpass: no echo
    assert leaked_secrets(lab, operator) == []
    unchanged(access_lab, before)
    rc, shown, asked = run_on_terminal(argv, answers={prompt: "wrong-" + password}, cwd=operator.work,
                                       env=operator.env(), timeout=900)
    assert asked == [prompt] and rc != 0, shown[-3000:]
    assert "sudo on node4 (127." in shown and "rejected the password given" in shown, shown[-3000:]
    assert password not in shown
    unchanged(access_lab, before)


def test_wrong_ca_and_changed_bastion_key_are_refused_by_cause(access_lab, operator, tmp_path):
    lab = access_lab.config
    before = access_lab.standing()
    password = planted_secrets(lab.dir)["ansible_become_password"]
    # a kubeconfig that trusts another CA
    make_ca(tmp_path / "other-ca.crt", tmp_path / "other-ca.key", common_name="other")
    data = yaml.safe_load((lab.dir / "kubeconfig-token").read_text())
    del data["clusters"][0]["cluster"]["certificate-authority-data"]
    data["clusters"][0]["cluster"]["certificate-authority"] = str(tmp_path / "other-ca.crt")
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(data))
    run = _run_with_env(operator, profile_with(lab, tmp_path / "ca.toml", kubeconfig=tmp_path / "kubeconfig"),
                        {PASSWORD_ENV: password}, "--become-password-env", PASSWORD_ENV)
    refused_before_any_change(run)
    assert "TLS verification of the Kubernetes API" in run.text and str(tmp_path / "other-ca.crt") in run.text
    no_traceback(run)
    # the bastion answers with another host key than the one recorded
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    impostor = (tmp_path / "impostor.pub").read_text().split()[1]
    lines = [(f"{ln.split()[0]} {ln.split()[1]} {impostor}" if lab.bastion_node.address in ln.split()[0] else ln)
             for ln in (lab.dir / "ssh/known_hosts").read_text().splitlines()]
    (tmp_path / "known_hosts").write_text("\n".join(lines) + "\n")
    run = _run_with_env(operator, profile_with(lab, tmp_path / "key.toml", kubeconfig=lab.dir / "kubeconfig-token",
                                               known_hosts=tmp_path / "known_hosts"),
                        {PASSWORD_ENV: password}, "--become-password-env", PASSWORD_ENV)
    refused_before_any_change(run)
    assert f"the host key of the jump host ubuntu@{lab.bastion_node.address}:2222" in run.text
    assert "does not match known_hosts" in run.text
    no_traceback(run)
    unchanged(access_lab, before)


def test_full_upgrade_through_the_bastion_with_become_env(access_lab, operator, tmp_path):
    lab = access_lab.config
    password = planted_secrets(lab.dir)["ansible_become_password"]
    run = _run_with_env(operator, profile_with(lab, tmp_path / "p.toml", kubeconfig=lab.dir / "kubeconfig-token"),
                        {PASSWORD_ENV: password}, "--become-password-env", PASSWORD_ENV, timeout=1200)
    assert run.rc == 0, run.text[-5000:]
    assert len(run.passed()) == len(STEP_NAMES), run.outcomes
    # the node says so itself, over its own SSH (root, through the bastion)
    release = access_lab.ssh(". /etc/os-release; echo $VERSION_ID; dpkg -l | awk '/^hi/ {print $2}'").stdout.split()
    assert release == ["22.04", "containerd.io", "docker-ce", "docker-ce-cli"], release
    log = (lab.dir / f"logs/{NODE}.log").read_text()
    assert f"Accepted publickey for ubuntu from {lab.bastion_node.address}" in log
    # the password is in no log, journal, Allure result or HTML report
    html = operator.reports / "report.html"
    done = subprocess.run([sys.executable, "-m", "nodegate", "report", "--out", str(html)], cwd=operator.work,
                          env=operator.env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and html.is_file(), done.stdout + done.stderr
    assert list(operator.reports.rglob("*-result.json")), "no Allure results were written"
    assert leaked_secrets(lab, operator) == []
    logs = [p for p in (lab.dir / "logs").iterdir() if p.is_file() and password in p.read_text(errors="replace")]
    assert logs == []


def _run_with_env(operator: PasswordOperator, profile, env: dict, *extra: str, timeout: float = 900):
    operator.extra_env = env
    try:
        return operator.run(profile, *extra, timeout=timeout)
    finally:
        operator.extra_env = {}
