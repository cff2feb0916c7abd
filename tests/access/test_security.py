"""Security promises, proven against the session's lab through the real command line:

- SSH host keys are verified against the profile's known_hosts by default, on both backends
  (ssh with the operator's ssh_config, and paramiko without one): a node missing from
  known_hosts stops the run before any check with HostKeyUnknown and a fix naming
  --trust-new-host-keys; with that option the key is accepted and recorded; a *changed* key
  (HostKeyMismatch) is refused with or without it.
- Commands run on nodes are argument lists: no harness module builds a shell line from a
  value (checked over the source), and hostile values arrive verbatim, also through the
  batched one-round-trip runner.
- No secret (the API token, the inventory's become password, the SSH private key) appears in
  the terminal output, the log file, the journal, the Allure results or the Node annotation.
"""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

from nodegate.lab import apiclient

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "checks"
PROCEDURES = ROOT / "procedures"


# --------------------------------------------------------------------------- helpers

@pytest.fixture
def short_dir():
    """A short folder for ControlMaster sockets (sockaddr_un holds 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ngsec-", dir="/tmp"))
    yield path
    for sock in path.glob("cm/*"):   # end the master connections this test started, by their socket
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], capture_output=True, timeout=10)
    shutil.rmtree(path, ignore_errors=True)


def lab_known_hosts(lab) -> list[str]:
    return (lab.dir / "ssh" / "known_hosts").read_text().splitlines()


def write_profile(lab, where: Path, *, known_hosts: list[str], backend: str) -> tuple[Path, Path]:
    """The lab's profile with its own known_hosts, reached through `backend`:
    'ssh' (a copy of the lab's ssh_config with a private ControlPath, so no master connection of
    another run is reused and the host key is really checked) or 'paramiko' (no ssh_config)."""
    kh = where / "known_hosts"
    kh.write_text("".join(line + "\n" for line in known_hosts))
    toml = (lab.dir / "cluster.toml").read_text()
    toml = re.sub(r'(?m)^known_hosts = .*$', f"known_hosts = {json.dumps(str(kh))}", toml)
    if backend == "paramiko":
        toml = re.sub(r"(?m)^config = .*\n", "", toml)
    else:
        (where / "cm").mkdir(mode=0o700)
        config = (lab.dir / "ssh" / "config").read_text()
        config = re.sub(r"(?m)^(\s*ControlPath) .*$", rf"\1 {where / 'cm'}/%C", config)
        config = re.sub(r"(?m)^(\s*UserKnownHostsFile) .*$", rf"\1 {kh}", config)
        (where / "ssh_config").write_text(config)
        (where / "ssh_config").chmod(0o600)
        toml = re.sub(r'(?m)^config = .*$', f"config = {json.dumps(str(where / 'ssh_config'))}", toml)
    profile = where / "cluster.toml"
    profile.write_text(toml)
    return profile, kh


def other_key(where: Path) -> str:
    key = where / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    kind, body = key.with_suffix(".pub").read_text().split()[:2]
    return f"{kind} {body}"


def run(pytester, *args: str):
    result = pytester.runpytest_subprocess(*args, "-p", "no:randomly", "-p", "no:cacheprovider",
                                           "-p", "no:hypothesispytest", "--color=no", timeout=300)
    text = result.stdout.str() + "\n" + result.stderr.str()
    assert "Traceback" not in text, text
    return int(result.ret), text


PREFLIGHT_ONE = ("-m", "preflight", "-k", "test_dpkg_audit_clean")   # one node check: enough to connect


# --------------------------------------------------------------------------- host keys

@pytest.mark.parametrize("backend", ["ssh", "paramiko"])
def test_unknown_host_key_stops_the_run_and_trusting_needs_the_option(lab, pytester, short_dir, backend):
    others = [line for line in lab_known_hosts(lab) if not line.startswith("node4,")]
    profile, kh = write_profile(lab, short_dir, known_hosts=others, backend=backend)

    ret, text = run(pytester, str(CHECKS), "--cluster", str(profile), "--node", "node4", *PREFLIGHT_ONE)
    assert ret == pytest.ExitCode.USAGE_ERROR, text
    assert re.search(r"has no host key for node4", text), text
    assert "--trust-new-host-keys" in text, f"the fix does not name the option:\n{text}"
    assert kh.read_text() == "".join(line + "\n" for line in others), "a refused run changed known_hosts"

    ret, text = run(pytester, str(CHECKS), "--cluster", str(profile), "--node", "node4", "--trust-new-host-keys",
                    *PREFLIGHT_ONE)
    assert ret == pytest.ExitCode.OK, text
    real_key = next(line for line in lab_known_hosts(lab) if line.startswith("node4,")).split()[1:3]
    recorded = [line.split() for line in kh.read_text().splitlines() if line.strip()]
    assert any(entry[-2:] == real_key for entry in recorded), f"node4's key was not recorded in {kh}:\n{recorded}"


@pytest.mark.parametrize("backend,trust", [("ssh", False), ("paramiko", True), ("ssh", True)],
                         ids=["ssh-verify", "paramiko-trust-new", "ssh-trust-new"])
def test_changed_host_key_is_refused_even_when_trusting_new_keys(lab, pytester, short_dir, backend, trust):
    impostor = other_key(short_dir)
    lines = [line if not line.startswith("node4,") else f"{line.split()[0]} {impostor}" for line in lab_known_hosts(lab)]
    profile, kh = write_profile(lab, short_dir, known_hosts=lines, backend=backend)
    before = kh.read_text()
    ret, text = run(pytester, str(CHECKS), "--cluster", str(profile), "--node", "node4", *PREFLIGHT_ONE,
                    *(["--trust-new-host-keys"] if trust else []))
    assert ret == pytest.ExitCode.USAGE_ERROR, text
    assert re.search(r"host key of node4 .* does not match known_hosts", text), text
    assert "fix:" in text
    assert kh.read_text() == before, "known_hosts was changed by a run that met a changed host key"


# --------------------------------------------------------------------------- no shell interpolation

_HARNESS = [p for p in sorted((ROOT / "nodegate").rglob("*.py")) if p.relative_to(ROOT / "nodegate").parts[0] != "lab"]


def _shell_lists(tree: ast.AST):
    """List/tuple literals that start with "sh", "-c" (or bash): their script argument."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) >= 3:
            first, second = node.elts[0], node.elts[1]
            if (isinstance(first, ast.Constant) and first.value in ("sh", "bash", "/bin/sh")
                    and isinstance(second, ast.Constant) and second.value == "-c"):
                yield node.elts[2]
        if isinstance(node, ast.Call):   # _ssh(up, "sh", "-c", script): the same, as arguments
            args = node.args
            for i in range(len(args) - 2):
                if (isinstance(args[i], ast.Constant) and args[i].value in ("sh", "bash")
                        and isinstance(args[i + 1], ast.Constant) and args[i + 1].value == "-c"):
                    yield args[i + 2]


def _safe_piece(value: ast.AST) -> bool:
    """A piece of a shell script that cannot carry input: a constant, an UPPER_CASE constant
    (module or class attribute), or a shlex.quote()/shlex.join() of anything."""
    if isinstance(value, ast.Constant):
        return True
    if isinstance(value, ast.FormattedValue):
        return _safe_piece(value.value)
    if isinstance(value, ast.Name):
        return value.id.isupper()
    if isinstance(value, ast.Attribute):
        return value.attr.isupper()
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
        return isinstance(value.func.value, ast.Name) and value.func.value.id == "shlex" \
            and value.func.attr in ("quote", "join")
    return False


def _script_is_safe(script: ast.AST, assigned: dict[str, ast.AST]) -> bool:
    if isinstance(script, ast.Constant):
        return True
    if isinstance(script, ast.JoinedStr):
        return all(_safe_piece(v) for v in script.values)
    if isinstance(script, ast.BinOp):
        return _script_is_safe(script.left, assigned) and _script_is_safe(script.right, assigned)
    if isinstance(script, ast.Name) and script.id in assigned:   # a local built from literals above
        return _script_is_safe(assigned[script.id], assigned)
    if isinstance(script, ast.Call) and isinstance(script.func, ast.Attribute) and script.func.attr == "join":
        return False   # "\n".join(lines): judged where the lines are built (run_batch, below)
    return False


def test_no_harness_module_builds_a_shell_line_from_a_value():
    assert {"snapshot.py", "resources.py", "release.py"} <= {p.name for p in _HARNESS}, "the harness's modules"
    unsafe = []
    for path in _HARNESS:
        tree = ast.parse(path.read_text(), filename=str(path))
        assigned = {t.id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "shell" and getattr(node.value, "value", False):
                unsafe.append(f"{path.name}:{node.value.lineno}: shell=True")
        for script in _shell_lists(tree):
            if not _script_is_safe(script, assigned) and not (path.name == "snapshot.py" and _in_run_batch(tree, script)):
                unsafe.append(f"{path.name}:{script.lineno}: {ast.unparse(script)[:120]}")
    assert not unsafe, "shell scripts built from values (quote them with shlex or pass an argument list):\n" + \
        "\n".join(unsafe)


def _in_run_batch(tree: ast.AST, script: ast.AST) -> bool:
    """run_batch joins lines it built with shlex.join per command (proven on a node below)."""
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and fn.name == "run_batch":
            return any(n is script for n in ast.walk(fn))
    return False


HOSTILE = ["$(touch /tmp/ng-pwned-sec1)", "`touch /tmp/ng-pwned-sec2`", "a; touch /tmp/ng-pwned-sec3", "'\"", "\\",
           "x\ny", "", " lead", "ünï", "$HOME", "*", "-n", "--", "%s %d", ">/tmp/ng-pwned-sec4"]


def test_hostile_values_arrive_verbatim_on_a_node(lab):
    from nodegate.cluster.nodes.snapshot import run_batch
    from nodegate.cluster.nodes.ssh import NodeHost
    from nodegate.profile.load import load_profile

    profile = load_profile(lab.dir / "cluster.toml")
    host = NodeHost(spec=profile.node("node4"), settings=profile.ssh)
    try:
        single = [host.run(["printf", "%s", value]).stdout for value in HOSTILE]
        batched = [r.stdout for r in run_batch(host, [["printf", "%s", value] for value in HOSTILE])]
        planted = host.run(["sh", "-c", "ls /tmp/ng-pwned* 2>/dev/null; true"]).stdout
    finally:
        host.close()
    assert single == HOSTILE
    assert batched == HOSTILE
    assert planted == "" and not list(Path("/tmp").glob("ng-pwned-sec*"))


# --------------------------------------------------------------------------- secrets

def _secrets(lab) -> dict[str, str]:
    inventory = (lab.dir / "kubespray" / "inventory" / "mycluster" / "hosts.yaml").read_text()
    become = re.search(r"ansible_become_password:\s*(\S+)", inventory)
    key_body = "".join((lab.dir / "ssh" / "id_ed25519").read_text().splitlines()[1:-1])
    found = {"API token": lab.token, "SSH private key": key_body[10:60]}
    if become:
        found["inventory become password"] = become.group(1)
    return found


def test_no_secret_in_output_log_journal_report_or_annotation(lab, pytester, monkeypatch):
    """A preflight, a plan and an --execute run that the gate stops (so the journal and the
    Node annotation are written), all at DEBUG level into a log file: no secret anywhere."""
    secrets = _secrets(lab)
    assert "inventory become password" in secrets, "the lab's inventory plants no password to look for"
    reports = pytester.path / "reports"
    monkeypatch.setenv("NODEGATE_REPORTS", str(reports))
    log = pytester.path / "debug.log"
    common = ["--cluster", str(lab.dir / "cluster.toml"), "--node", "node4", "-v", "-rA",
              f"--log-file={log}", "--log-file-level=DEBUG", "--log-level=DEBUG"]
    texts = []
    for args in ([str(CHECKS), "-m", "preflight"],
                 [str(PROCEDURES)],
                 [str(PROCEDURES), "--execute", "--target-release", "24.04"]):   # refused by the gate
        ret, text = run(pytester, *args, *common)
        texts.append(text)
        texts.append(log.read_text() if log.exists() else "")
    files = [p for p in reports.rglob("*") if p.is_file()]
    assert any("journal" in str(p) for p in files), f"no journal was written under {reports}"
    assert any(p.name.endswith("-result.json") for p in files), f"no Allure result under {reports}"
    request = urllib.request.Request(f"{lab.api_url}/api/v1/nodes/node4")
    with apiclient.urlopen(lab, request) as response:
        annotations = json.dumps(json.load(response)["metadata"].get("annotations", {}))
    corpus = {"terminal and log": "\n".join(texts), "node annotations": annotations}
    corpus.update({str(p.relative_to(reports)): p.read_text(errors="replace") for p in files})
    leaks = [f"{what} in {where}" for where, text in corpus.items() for what, value in secrets.items() if value in text]
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks)
