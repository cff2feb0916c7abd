"""Plain helpers shared by tests in every folder, imported by name (`from labkit import nodegate`):
a conftest is not importable reliably, so what a test module or a helper module needs lives here.
tests/conftest.py puts this folder on sys.path and offers the same helpers as fixtures (`cli`,
`node_ssh`, `poll`)."""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from nodegate.lab.config import LabConfig

PROJECT = Path(__file__).resolve().parents[1]
# The harness's own code: what an in-process pytester run (tests/plugin) can reach. The lab is
# never imported by the harness (architecture.md), so its lazy imports do not matter here.
HARNESS_CODE = ("nodegate/*.py", *(f"nodegate/{layer}/**/*.py" for layer in ("core", "profile", "cluster", "upgrade", "plugin", "report")),
                "checks/*.py", "procedures/*.py")

# The session's lab runs on address octet TEST_NET (127.0.<net>.x; CI: 0 and 40 side by side, a
# developer picks their own). Every lab part a test brings up beside it gets its own octet, offset
# from TEST_NET, all in this one table so that no two collide (nor a developer's labs with CI's).
TEST_NET = int(os.environ.get("NODEGATE_TEST_NET", "0"))
NET_OFFSETS = {
    "access-nodes": 60,        # tests/access: bare 2-node lab (sshd + apt)
    "access-api": 61,          # tests/access: standalone API server
    "access-ceph": 62,         # tests/access: standalone Ceph
    "lab-ceph": 63,            # tests/lab/test_ceph.py: 3-node Ceph
    "lab-ceph-single": 64,     # tests/lab/test_ceph.py: 1-node Ceph
    "lab-ceph-racks": 83,      # tests/lab/test_ceph.py: 6-node Ceph in 3 racks
    "lab-rook-budgets": 85,    # tests/lab/test_rook_budgets.py: 4 nodes in 2 racks, Rook's OSD budgets
    "lab-etcd": 65,            # tests/lab/test_etcd.py
    "lab-access": 66,          # tests/lab/test_lab_access.py: HTTPS, ubuntu, port 2222, bastion
    "lab-sudo": 67,            # tests/lab/test_lab_access.py: a bare node whose sudo asks a password
    "access-scenarios": 68,    # tests/scenarios/test_access.py: its own full lab
    "bench-16": 70,            # tests/bench: the bench's 16-node lab (bare) from a cold seed pin
    "lab-apiserver": 71,       # tests/lab/test_apiserver*.py (one module at a time)
    "batches-preview": 84,     # tests/scenarios/test_batches_preview.py: 8 nodes in 4 racks (read-only)
    "storage-field": 2,        # tests/scenarios/test_storage_field.py: --domain, --rook v1.18.9, Rook's noout
    "first-commands": 77,      # tests/scenarios/test_first_commands.py: a lab in a clean copy's ./.lab
    "kubespray-v2.28": 78,     # tests/scenarios/test_kubespray_v2_28.py: a lab with Kubespray v2.28's layout
    "control-plane": 79,       # tests/scenarios/test_control_plane.py: 5 nodes, 3 control plane + etcd
    "rollout": 81,             # tests/scenarios/test_rollout.py: 8 nodes in 4 racks
    "rollout-racks": 80,       # tests/scenarios/test_rollout_racks.py: 10 nodes in 4 racks
    "extra-labs": 100,         # tests/conftest.py make_lab: 100, 101, ... upwards
    "kubespray-standin": 150,  # tests/lab/test_kubespray_standin.py
}


def net_beside(part: str) -> int:
    """The address octet of a lab part brought up beside the session's lab (see NET_OFFSETS)."""
    return (TEST_NET + NET_OFFSETS[part]) % 250


def nodegate(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `nodegate` CLI (as `python -m nodegate`) and return its result."""
    result = subprocess.run([sys.executable, "-m", "nodegate", *args], capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"nodegate {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def ssh(config: LabConfig, node: str, command: str, *, check: bool = True, timeout: float = 60,
        multiplex: bool = True) -> subprocess.CompletedProcess:
    """Run one command on a lab node over real ssh with the lab's ssh/config."""
    argv = ["ssh", "-F", str(config.dir / "ssh/config")]
    if not multiplex:
        argv += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
    result = subprocess.run([*argv, node, command], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"ssh {node} {command!r} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def debian_kubectl() -> Path:
    """Debian's kubectl (package kubernetes-client, 1.20): /usr/bin/kubectl when the package is
    installed, else unpacked once beside the lab's cache (it conflicts with the image's kubectl,
    lab-notes.md), fetched with apt-get as `make setup` fetches the lab's packages."""
    import tempfile

    from nodegate.lab.image import CACHE_ROOT

    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "kubernetes-client"], capture_output=True, text=True)
    if "install ok installed" in status.stdout:
        return Path("/usr/bin/kubectl")
    unpacked = CACHE_ROOT / "kubernetes-client"
    kubectl = unpacked / "usr/bin/kubectl"
    if kubectl.is_file():
        return kubectl
    with tempfile.TemporaryDirectory(dir=CACHE_ROOT) as tmp:
        subprocess.run(["apt-get", "download", "-q", "kubernetes-client"], cwd=tmp, check=True, capture_output=True,
                       timeout=300)
        deb = next(Path(tmp).glob("kubernetes-client_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")], check=True, timeout=120)
        if not kubectl.is_file():
            (Path(tmp) / "root").rename(unpacked)
    return kubectl


def run_on_terminal(argv: list[str], *, answers: dict[str, str], cwd: Path, env: dict[str, str],
                    timeout: float) -> tuple[int, str, list[str]]:
    """Run argv on a new pseudo-terminal (its controlling tty, as an operator's shell gives it) and
    type answers[prompt] + Enter each time a prompt appears in what the terminal shows; returns
    (exit code, everything the terminal showed, the prompts answered in order)."""
    import os
    import pty
    import select
    import signal

    pid, fd = pty.fork()
    if pid == 0:   # the child: a session leader whose controlling terminal is the pty
        try:
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    shown, answered, seen = b"", [], 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"{argv} did not end within {timeout} s on its terminal:\n"
                                     f"{shown.decode(errors='replace')[-3000:]}")
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:   # EIO: the child closed its side (it ended)
                break
            if not chunk:
                break
            shown += chunk
            for prompt, answer in answers.items():
                at = shown.find(prompt.encode(), seen)
                if at >= 0:
                    seen = at + len(prompt)
                    answered.append(prompt)
                    os.write(fd, answer.encode() + b"\n")
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace"), answered


def wait_until(probe, *, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll probe() until it returns something truthy (and return that); fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def lazy_third_party_imports() -> set[str]:
    """Modules of other projects that the harness imports inside functions (lazily, to start fast),
    found by reading its source: every `import x.y` / `from x.y import z` below module level."""
    found: set[str] = set()
    for pattern in HARNESS_CODE:
        for path in sorted(PROJECT.glob(pattern)):
            tree = ast.parse(path.read_text(), filename=str(path))
            top_level = set(map(id, tree.body))
            for node in ast.walk(tree):
                if id(node) in top_level:
                    continue
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    # `from kubernetes import watch` imports the submodule kubernetes.watch
                    names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names
                                            if _is_module(f"{node.module}.{alias.name}"))]
                else:
                    continue
                found.update(n for n in names if n.split(".")[0] not in sys.stdlib_module_names
                             and n.split(".")[0] not in ("nodegate", "__future__"))
    return found


def preimport_lazy_dependencies() -> set[str]:
    """Import now what the harness would import lazily, and return those names.

    Why: an in-process pytester run drops every module it imported from sys.modules when it ends,
    but libraries keep class objects across that: cryptography's Rust cipher registry kept the
    first `algorithms.AES` ("cipher AES in CTR mode is not supported" for paramiko afterwards), and
    a kubernetes client made later raised an `ApiException` class that `pytest.raises` of a
    re-imported module no longer matched (both seen in CI). Modules already imported before a run
    stay as they are."""
    names = lazy_third_party_imports()
    for name in sorted(names):
        importlib.import_module(name)
    return names


class LabAccess:
    """The lab seen through the harness's own modules (profile, Kubernetes API, Ceph, SSH), plus the
    lab CLI: what the procedure tests' LabNodes and the scenarios' Lab both start from."""

    def __init__(self, lab: LabConfig) -> None:
        from nodegate.cluster.ceph import Ceph
        from nodegate.cluster.kube.client import Kube
        from nodegate.cluster.nodes.ssh import Nodes
        from nodegate.profile.load import load_profile

        self.config = lab
        self.profile = load_profile(lab.dir / "cluster.toml")
        self.kube = Kube.connect(settings=self.profile.kube)
        self.ceph = Ceph(settings=self.profile.ceph, kube=self.kube)
        self.nodes = Nodes(settings=self.profile.ssh, nodes=self.profile.nodes)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`nodegate lab ARGS --dir <this lab>`."""
        done = subprocess.run([sys.executable, "-m", "nodegate", "lab", *args, "--dir", str(self.config.dir)],
                              capture_output=True, text=True, timeout=300)
        if check and done.returncode != 0:
            raise AssertionError(f"nodegate lab {' '.join(args)}: rc {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def wait_healthy(self, timeout: float = 240, *, settled_s: float = 0.0) -> None:
        """Every lab node Ready and Ceph healthy in full (bounded). With ``settled_s``, healthy on
        every look for that long: after a pool change (size, rule) the mgr's PG statistics lag the
        new osdmap by up to its stats period (5 s), so one healthy look may predate the change."""
        from nodegate.core.waits import Done, NotYet, wait_for

        since: list[float] = []

        def probe():
            not_ready = [n.name for n in self.kube.list_nodes() if not n.is_ready]
            status = None if not_ready else self.ceph.status()
            if not_ready or not status.healthy_in_full:
                since.clear()
                return NotYet(f"not Ready: {not_ready}" if not_ready else "; ".join(status.reasons()))
            since[:] = since or [time.monotonic()]
            held = time.monotonic() - since[0]
            return Done(True) if held >= settled_s else NotYet(f"healthy for {held:.1f}s of {settled_s:g}s")

        wait_for(probe, what="lab nodes Ready and ceph healthy", timeout=timeout, interval=0.5)


def fixed_kubespray_checkout(lab: LabConfig, where: Path) -> Path:
    """A copy of the lab's Kubespray checkout in WHERE/kubespray with the operator's fix for
    kubespray #9114 (`force: true` on the docker package task); the lab's Ansible venv beside it."""
    checkout = where / "kubespray"
    shutil.copytree(lab.dir / "kubespray", checkout, symlinks=True)
    venv = lab.dir / "kubespray-venv"
    if venv.exists() and not (where / "kubespray-venv").exists():
        (where / "kubespray-venv").symlink_to(venv)
    from nodegate.lab.kubespray import apply_force_fix

    apply_force_fix(checkout)
    return checkout
