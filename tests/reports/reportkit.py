"""Helpers for the reporting tests (imported by name: a conftest is not importable reliably): a small but real cluster profile with planted secrets, and a
pytester suite of checks and a procedure that exercise the Allure layer like the real catalogue."""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from clusterfiles import write_cluster

# Values planted in the profile's kubeconfig and inventory; no report file may ever contain them.
BEARER_TOKEN = "ngtok-7f3c9a1e5b2d4c6e8a0b1d3f5e7c9a2b"
INVENTORY_PASSWORD = "Inv-Pa55w0rd-q8Zr2LmX"
TICKET = "CHG-1234"
TICKET_PATTERN = "https://tickets.example.test/browse/{ticket}"

KUBECONFIG = f"""\
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: http://127.17.3.1:6443
contexts:
- name: test
  context: {{cluster: test, user: admin}}
current-context: test
users:
- name: admin
  user:
    token: {BEARER_TOKEN}
"""

# The hosts.yaml of tests/unit/clusterfiles with an ansible_password on node4 and a become password
HOSTS_WITH_SECRETS = """\
all:
  vars:
    ansible_become_password: "{password}"
  hosts:
    node1: {{ansible_host: 127.9.1.1, ip: 127.9.1.1}}
    node2: {{ansible_host: 127.9.1.2, ip: 127.9.1.2}}
    node3: {{ansible_host: 127.9.1.3, ip: 127.9.1.3}}
    node4: {{ansible_host: 127.9.1.4, ip: 127.9.1.4, ansible_password: "{password}"}}
  children:
    kube_control_plane: {{hosts: {{node1: {{}}, node2: {{}}}}}}
    kube_node: {{hosts: {{node3: {{}}, node4: {{}}}}}}
    etcd: {{hosts: {{node1: {{}}, node2: {{}}, node3: {{}}}}}}
    k8s_cluster: {{children: {{kube_control_plane: {{}}, kube_node: {{}}}}}}
""".format(password=INVENTORY_PASSWORD)

CHECKS = '''
import logging
import pytest

log = logging.getLogger("checks")


@pytest.mark.preflight
def test_release_is_supported(node, evidence):
    with evidence.step(f"read /etc/os-release on {node.name}"):
        evidence.text("os-release", 'VERSION_ID="20.04"')
    assert node.name


@pytest.mark.preflight
def test_container_packages_held(node, evidence):
    evidence.table("held packages", ["package", "version", "held"],
                   [["containerd.io", "1.6.4-1", "yes"], ["docker-ce", "5:20.10.20~3-0~ubuntu-focal", "no"]])
    assert node.name != "node4", (
        "docker-ce is not held on node4: held-package drift (apt would upgrade it)\\n"
        "  fix: apt-mark hold containerd.io docker-ce docker-ce-cli")
'''

PROCEDURE = '''
import pytest


class Result:  # the shape of nodegate.cluster.nodes.ssh.CommandResult
    def __init__(self, node, args, rc, stdout, stderr):
        self.node, self.args, self.rc, self.stdout, self.stderr, self.duration = node, args, rc, stdout, stderr, 0.25

    @property
    def command(self):
        return " ".join(self.args)


@pytest.mark.procedure
def test_upgrade_node(node, evidence, request):
    from nodegate.plugin.allure import set_environment

    set_environment(request.config, "rook.version", "v1.14.8")
    set_environment(request.config, "cephcsi.version", "v3.11.0")
    with evidence.step("cordon"):
        evidence.json("node status before", {"name": node.name, "unschedulable": False})
    with evidence.step("drain"):
        evidence.text("drain outcome", "demo/web-1 evicted")
    with evidence.step("apt-get dist-upgrade"):
        evidence.command(Result(node.name, ["apt-get", "dist-upgrade", "-y"], 0, "0 upgraded", ""))
'''


def write_profile(root: Path, *, ticket_pattern: str | None = TICKET_PATTERN) -> Path:
    extra = f'ticket_link_pattern = "{ticket_pattern}"\n' if ticket_pattern else ""
    toml = ("[cluster]\nname = \"test-cluster\"\n" + extra +
            "[kubespray]\npath = \"kubespray\"\ninventory = \"inventory/mycluster/hosts.yaml\"\n"
            "[kubernetes]\nkubeconfig = \"kubeconfig\"\ncontext = \"test\"\n[ssh]\nuser = \"root\"\n")
    profile = write_cluster(root, inventory=HOSTS_WITH_SECRETS, toml=toml)
    (root / "kubeconfig").write_text(KUBECONFIG)
    return profile


# The procedure and fixture layers of other work are left out of these runs: this is a test of the
# Allure layer, and those layers would reach for a real cluster.
ISOLATE = ("-p", "no:nodegate_procedures", "-p", "no:nodegate_fixtures", "-p", "no:randomly",
           "-p", "no:cacheprovider")


def run_suite(pytester, *args: str):
    return pytester.runpytest_subprocess(*ISOLATE, "--cluster", "cluster.toml", *args)


def only_run(reports: Path) -> Path:
    runs = sorted((reports / "runs").iterdir())
    assert len(runs) == 1, f"expected one run folder, found {[r.name for r in runs]}"
    return runs[0]


def load_results(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*-result.json"))]


def labels(result: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for label in result.get("labels", []):
        out.setdefault(label["name"], []).append(label["value"])
    return out


def html_payloads(html: str) -> str:
    """The single-file report keeps its data base64-encoded in d("name","…") calls: decode them all,
    so a search covers what the browser will show, not just the page's markup."""
    parts = [html]
    for _, value in re.findall(r'd\("([^"]+)","([A-Za-z0-9+/=]*)"\)', html):
        parts.append(base64.b64decode(value).decode("utf-8", "replace"))
    return "\n".join(parts)


# --------------------------------------------------------------------------- headless Chromium

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  # the report must need no network: any name lookup fails, so nothing can load from outside
                  "--host-resolver-rules=MAP * ~NOTFOUND")


def chromium(url: str, *, workdir: Path, screenshot: Path | None = None, budget_ms: int = 8000) -> str:
    """Open url in a fresh headless Chromium; return the DOM after the page's scripts ran (or take a
    screenshot). Each call gets its own profile directory."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is installed by `make setup`"
    profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
    args = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
    args += [f"--screenshot={screenshot}", "--window-size=1400,1100"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "HOME": str(workdir)})
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {proc.stderr[-1500:]}"
    shutil.rmtree(profile, ignore_errors=True)
    return proc.stdout


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style|svg)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)).replace("&gt;", ">").replace("&lt;", "<")


def tree_leaves(dom: str) -> dict[str, str]:
    """Leaf title -> status, as the report's result tree shows them."""
    dom = re.sub(r"<style\b.*?</style>", " ", dom, flags=re.S)
    starts = [m.start() for m in re.finditer(r'data-testid="tree-leaf"', dom)] + [len(dom)]
    leaves = {}
    for a, b in zip(starts, starts[1:]):
        chunk = dom[a:b]
        status = re.search(r'data-testid="tree-leaf-status-(\w+)"', chunk)
        title = re.search(r'data-testid="tree-leaf-title"[^>]*>(.*?)</', chunk, flags=re.S)
        if status and title:
            leaves[visible_text(title.group(1)).strip()] = status.group(1)
    return leaves


def result_steps(dom: str) -> list[tuple[str, str]]:
    """(step title, status) in the order the result page shows them."""
    dom = re.sub(r"<style\b.*?</style>", " ", dom, flags=re.S)
    starts = [m.start() for m in re.finditer(r'data-testid="test-result-step"', dom)] + [len(dom)]
    steps = []
    for a, b in zip(starts, starts[1:]):
        chunk = dom[a:b]
        status = re.search(r'data-testid="tree-leaf-status-(\w+)"', chunk)
        title = re.search(r'data-testid="test-result-step-title"[^>]*>(.*?)</', chunk, flags=re.S)
        if status and title:
            steps.append((visible_text(title.group(1)).strip(), status.group(1)))
    return steps


def report_results(html: str) -> dict[str, dict]:
    """Result name -> the report's own data for it (id, status, history), decoded from the file."""
    out = {}
    for _name, value in re.findall(r'd\("(data/test-results/[^"]+)","([A-Za-z0-9+/=]*)"\)', html):
        data = json.loads(base64.b64decode(value))
        out[data["name"]] = data
    return out


def keep(path: Path) -> Path:
    """Copy a test's screenshot to reports/test-output/ ($NODEGATE_TEST_OUTPUT): pytest's own
    temporary folders rotate away after three sessions."""
    out = Path(os.environ.get("NODEGATE_TEST_OUTPUT", Path(__file__).resolve().parents[2] / "reports" / "test-output"))
    out.mkdir(parents=True, exist_ok=True)
    kept = out / path.name
    shutil.copyfile(path, kept)
    print(f"kept: {kept}")
    return kept

