"""A lab reached the way production clusters are: the API over HTTPS with the lab's CA and the
kubeconfigs an operator meets (client certificate as Kubespray's admin.conf, token, exec
plugin, a restricted user), nodes logged into as `ubuntu` with sudo on port 2222, only through
a bastion; and the harness's own SSH (both backends) and API client on it."""
from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from labkit import debian_kubectl, net_beside, nodegate

from nodegate.lab.config import LabConfig
from nodegate.lab.pki import Pki, make_ca

pytestmark = pytest.mark.lab

KUBECONFIGS = ("kubeconfig", "kubeconfig-admin", "kubeconfig-token", "kubeconfig-exec", "kubeconfig-restricted")
PORT = 2222


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> LabConfig:
    lab_dir = tmp_path_factory.mktemp("access") / "lab"
    nodegate("lab", "up", "--dir", str(lab_dir), "--nodes", "2", "--net", str(net_beside("lab-access")),
             "--https", "--ssh-user", "ubuntu", "--ssh-port", str(PORT), "--bastion", timeout=600)
    yield LabConfig.load(lab_dir)
    nodegate("lab", "down", "--dir", str(lab_dir))


def kubectls() -> list[str]:
    """The image's kubectl (PATH) and Debian's kubernetes-client."""
    return [shutil.which("kubectl") or "/usr/bin/kubectl", str(debian_kubectl())]


def kubectl(binary: str, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                          timeout=60)


# --------------------------------------------------------------------------- the API

def test_kubectl_with_every_kubeconfig(lab):
    for binary in kubectls():
        for name in KUBECONFIGS:
            done = kubectl(binary, lab.dir / name, "get", "nodes", "-o", "name")
            assert done.returncode == 0, f"{binary} {name}: {done.stderr}"
            assert done.stdout.split() == ["node/node1", "node/node2"], (binary, name, done.stdout)
        # RBAC answered per user (SelfSubjectAccessReview, as `kubectl auth can-i` sends it)
        for name, verb, resource, answer in (
                ("kubeconfig", "create", "pods/eviction", "yes"),
                ("kubeconfig-exec", "update", "leases.coordination.k8s.io", "yes"),
                ("kubeconfig-restricted", "create", "pods/eviction", "no"),
                ("kubeconfig-restricted", "create", "pods/exec", "no"),
                ("kubeconfig-restricted", "update", "leases.coordination.k8s.io", "no"),
                ("kubeconfig-restricted", "patch", "nodes", "yes")):
            done = kubectl(binary, lab.dir / name, "auth", "can-i", verb, resource, "-A")
            assert done.stdout.strip() == answer, (binary, name, verb, resource, done.stdout, done.stderr)


def test_the_admin_kubeconfig_is_shaped_like_admin_conf(lab):
    data = yaml.safe_load((lab.dir / "kubeconfig").read_text())
    cluster = data["clusters"][0]["cluster"]
    user = data["users"][0]
    assert cluster["server"] == f"https://{lab.api_address}:6443" and cluster["certificate-authority-data"]
    assert user["name"] == "kubernetes-admin"
    assert set(user["user"]) == {"client-certificate-data", "client-key-data"}
    exec_user = yaml.safe_load((lab.dir / "kubeconfig-exec").read_text())["users"][0]["user"]["exec"]
    out = json.loads(subprocess.run([exec_user["command"]], capture_output=True, text=True, check=True).stdout)
    assert out["kind"] == "ExecCredential" and out["status"]["token"]


def _get(lab: LabConfig, path: str, *, token: str | None = None, context: ssl.SSLContext | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    context = context or ssl.create_default_context(cafile=str(Pki.of(lab.dir).ca_cert))
    request = urllib.request.Request(lab.api_url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_https_refuses_what_does_not_authenticate(lab, tmp_path):
    assert _get(lab, "/api/v1/nodes", token=lab.token)[0] == 200
    assert _get(lab, "/api/v1/nodes")[0] == 401                  # no credentials at all
    assert _get(lab, "/api/v1/nodes", token="not-" + lab.token)[0] == 401
    # a client certificate from another CA is not accepted
    other_ca, other_key = tmp_path / "ca.crt", tmp_path / "ca.key"
    make_ca(other_ca, other_key, common_name="someone-else")
    from nodegate.lab.pki import _issue

    _issue(other_ca, other_key, tmp_path / "u.crt", tmp_path / "u.key", common_name="kubernetes-admin",
           organization="system:masters")
    context = ssl.create_default_context(cafile=str(Pki.of(lab.dir).ca_cert))
    context.load_cert_chain(tmp_path / "u.crt", tmp_path / "u.key")
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _get(lab, "/api/v1/nodes", context=context)
    # and the server's certificate is not trusted without the lab's CA
    with pytest.raises(urllib.error.URLError) as caught:
        _get(lab, "/version", token=lab.token, context=ssl.create_default_context())
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)


def test_restricted_user_gets_kube_apiservers_forbidden(lab):
    from nodegate.cluster.kube.client import Kube
    from nodegate.profile.model import KubeSettings

    kube = Kube.connect(settings=KubeSettings(kubeconfig=lab.dir / "kubeconfig-restricted"))
    try:
        pod = next(p for p in kube.list_pods(node="node2") if not (p.daemonset or p.mirror))
        with pytest.raises(Exception) as caught:
            kube._request("evict", "POST", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/eviction",
                          body={"apiVersion": "policy/v1", "kind": "Eviction",
                                "metadata": {"name": pod.name, "namespace": pod.namespace}})
        assert (f'pods "{pod.name}" is forbidden: User "nodegate-restricted" cannot create resource '
                f'"pods/eviction" in API group "" in the namespace "{pod.namespace}"') in str(caught.value)
        assert kube.may("patch", "nodes") and not kube.may("create", "pods", subresource="eviction")
    finally:
        kube.close()


@pytest.mark.parametrize("name", KUBECONFIGS)
def test_official_client_with_every_kubeconfig(lab, name):
    from nodegate.cluster.kube.client import Kube
    from nodegate.profile.model import KubeSettings

    kube = Kube.connect(settings=KubeSettings(kubeconfig=lab.dir / name))
    try:
        assert kube.server == lab.api_url
        assert {n.name for n in kube.list_nodes()} == {"node1", "node2"}
    finally:
        kube.close()


def test_wrong_ca_is_a_named_cause(lab, tmp_path):
    from nodegate.cluster.kube.client import Kube
    from nodegate.core.errors import UsageError
    from nodegate.profile.model import KubeSettings

    make_ca(tmp_path / "other-ca.crt", tmp_path / "other-ca.key", common_name="other")
    data = yaml.safe_load((lab.dir / "kubeconfig").read_text())
    del data["clusters"][0]["cluster"]["certificate-authority-data"]
    data["clusters"][0]["cluster"]["certificate-authority"] = str(tmp_path / "other-ca.crt")
    wrong = tmp_path / "kubeconfig"
    wrong.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError) as caught:
        Kube.connect(settings=KubeSettings(kubeconfig=wrong))
    text = str(caught.value)
    assert "TLS verification of the Kubernetes API" in text and "certificate verify failed" in text
    assert str(tmp_path / "other-ca.crt") in text and "Traceback" not in text


# --------------------------------------------------------------------------- the nodes

def ssh(lab: LabConfig, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-F", str(lab.dir / "ssh/config"), "-o", "ControlPath=none", *args],
                          capture_output=True, text=True, timeout=60)


def test_nodes_accept_ssh_only_through_the_bastion(lab):
    direct = ssh(lab, "-o", "ProxyJump=none", "node2", "true")
    assert direct.returncode == 255 and "Permission denied" in direct.stderr, direct.stderr
    through = ssh(lab, "-l", "ubuntu", "node2", "id -un; sudo -n id -u; cat /proc/1/comm")
    assert through.returncode == 0, through.stderr
    assert through.stdout.split() == ["ubuntu", "0", "sshd"]
    log = (lab.dir / "logs/node2.log").read_text()
    assert f"from {lab.bastion_node.address} port" in log           # the bastion's own address
    assert f"{lab.node('node2').address}:{PORT}" in (lab.dir / "nodes/node2/root/etc/ssh/sshd_config.d/00-nodegate-lab.conf").read_text()


def test_inventory_says_it_as_kubespray_does(lab):
    hosts = yaml.safe_load((lab.dir / "kubespray/inventory/mycluster/hosts.yaml").read_text())["all"]
    assert hosts["vars"]["ansible_user"] == "ubuntu" and hosts["vars"]["ansible_port"] == PORT
    assert hosts["children"]["bastion"] == {"hosts": {"bastion": None}}
    assert hosts["hosts"]["bastion"]["ansible_host"] == lab.bastion_node.address
    proxy = hosts["hosts"]["node2"]["ansible_ssh_common_args"]
    assert f"-W %h:%p -p {PORT} ubuntu@{lab.bastion_node.address}" in proxy and "StrictHostKeyChecking=yes" in proxy


@pytest.mark.parametrize("backend", ["ssh-config", "paramiko"])
def test_harness_reaches_nodes_through_the_bastion_as_ubuntu(lab, backend, tmp_path):
    from dataclasses import replace

    from nodegate.cluster.nodes.ssh import Nodes
    from nodegate.profile.load import load_profile

    profile = load_profile(lab.dir / "cluster.toml")
    settings = profile.ssh if backend == "ssh-config" else replace(profile.ssh, config=None)
    nodes = Nodes(settings=settings, nodes=profile.nodes)
    try:
        host = nodes.host("node2")
        assert (host.user, host.port, host.route.jump.host) == ("ubuntu", PORT, lab.bastion_node.address)
        assert host.run(["id", "-un"]).stdout.strip() == "ubuntu"
        assert host.run(["id", "-u"], sudo=True).stdout.strip() == "0"
        assert "without a password" in host.privilege()
    finally:
        nodes.close()


@pytest.mark.parametrize("backend", ["ssh-config", "paramiko"])
def test_changed_bastion_host_key_is_refused_by_name(lab, backend, tmp_path):
    from dataclasses import replace

    from nodegate.cluster.nodes.ssh import HostKeyMismatch, Nodes
    from nodegate.profile.load import load_profile

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    impostor = (tmp_path / "impostor.pub").read_text().split()
    known = []
    for line in (lab.dir / "ssh/known_hosts").read_text().splitlines():
        names, kind, _ = line.split()[:3]
        known.append(f"{names} {kind} {impostor[1]}" if lab.bastion_node.address in names else line)
    (tmp_path / "known_hosts").write_text("\n".join(known) + "\n")
    profile = load_profile(lab.dir / "cluster.toml")
    settings = replace(profile.ssh, known_hosts=tmp_path / "known_hosts",
                       config=profile.ssh.config if backend == "ssh-config" else None)
    if backend == "ssh-config":
        # an ssh_config whose own known_hosts line would not see the change must not be used here
        text = (lab.dir / "ssh/config").read_text().replace(str(lab.dir / "ssh/known_hosts"), str(tmp_path / "known_hosts"))
        text = text.replace(f"ControlPath {lab.dir}/ssh/cm/%C", "ControlPath none")
        (tmp_path / "config").write_text(text)
        settings = replace(settings, config=tmp_path / "config")
    nodes = Nodes(settings=settings, nodes=profile.nodes)
    try:
        with pytest.raises(HostKeyMismatch) as caught:
            nodes.host("node2").run(["true"])
    finally:
        nodes.close()
    assert f"the jump host ubuntu@{lab.bastion_node.address}:{PORT}" in str(caught.value), str(caught.value)
    assert "bastion" in str(caught.value)


# --------------------------------------------------------------------------- sudo with a password

def test_sudo_password_lab(tmp_path_factory):
    from dataclasses import replace

    from nodegate.cluster.nodes.ssh import Nodes, SudoPasswordRejected, SudoPasswordRequired
    from nodegate.lab.kubespray import planted_secrets
    from nodegate.profile.load import load_profile

    lab_dir = tmp_path_factory.mktemp("sudo") / "lab"
    nodegate("lab", "up", "--dir", str(lab_dir), "--nodes", "1", "--bare", "--net", str(net_beside("lab-sudo")),
             "--sudo-password", timeout=300)
    try:
        profile = load_profile(lab_dir / "cluster.toml")
        password = planted_secrets(lab_dir)["ansible_become_password"]
        nodes = Nodes(settings=profile.ssh, nodes=profile.nodes)
        with pytest.raises(SudoPasswordRequired) as caught:
            nodes.host("node1").privilege()
        assert "node1" in str(caught.value) and "--become-password-env" in caught.value.fix
        nodes.close()
        for given, expected in ((password, None), ("wrong-" + password, SudoPasswordRejected)):
            nodes = Nodes(settings=replace(profile.ssh, become_password=given), nodes=profile.nodes)
            try:
                if expected is None:
                    assert nodes.host("node1").run(["id", "-u"], sudo=True).stdout.strip() == "0"
                    # the password line is read by sudo, never left on the command's stdin
                    assert nodes.host("node1").run(["cat"], sudo=True).stdout == ""
                else:
                    with pytest.raises(expected):
                        nodes.host("node1").privilege()
            finally:
                nodes.close()
        assert password not in (lab_dir / "logs/node1.log").read_text()
    finally:
        nodegate("lab", "down", "--dir", str(lab_dir))


def test_plan_says_which_commands_need_root(lab):
    """Plan mode (no --execute) on a node logged into as ubuntu: root's commands go through sudo."""
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "procedures/", "--cluster", str(lab.dir / "cluster.toml"),
                           "--node", "node2", "--target-release", "22.04", "-p", "no:cacheprovider", "-q"],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert f"[node2 (ssh ubuntu@{lab.node('node2').address}, as root via sudo)] sudo apt-mark unhold" in text, text[-3000:]
    assert f"[node2 (ssh ubuntu@{lab.node('node2').address})] dpkg-query -W" in text
