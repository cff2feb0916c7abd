"""Bad input, through pytest itself (pytester), against the session's lab.

Every case is something an operator could type or have in a file: a malformed or missing profile,
inventory or kubeconfig; node names with spaces, quotes, `;`, `$()` or unicode; a release that
skips one; options that contradict each other. For each one:
- pytest ends with a usage error (exit code 4) whose message names the problem and the fix;
- no Python traceback appears anywhere in the output;
- nothing changed on any node: node4's dpkg state, holds and boot id, and every node's
  cordon state are the same as before, and no command planted in a name ran (each planted
  command would create /tmp/ng-pwned-* on the lab node or on this machine; neither exists).
The cases that fail while reading options or files run in-process (fast); those that need the
cluster or --execute run as a real `pytest` subprocess, as an operator would.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nodegate.lab import apiclient

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "checks"
PROCEDURES = ROOT / "procedures"
CANARY = "/tmp/ng-pwned"
TRIED: list[str] = []          # every bad input tried in this module, for the summary line


# --------------------------------------------------------------------------- the lab's state

@dataclass(frozen=True)
class LabState:
    dpkg: dict[str, str]                 # node -> sha256 of its dpkg status lines and holds
    boot_ids: dict[str, str]
    unschedulable: dict[str, bool]       # node -> cordoned
    canaries: tuple[str, ...] = field(default=())


def _api_nodes(lab) -> dict[str, bool]:
    request = urllib.request.Request(f"{lab.api_url}/api/v1/nodes")
    with apiclient.urlopen(lab, request) as response:
        items = json.load(response)["items"]
    return {i["metadata"]["name"]: bool(i.get("spec", {}).get("unschedulable")) for i in items}


def lab_state(lab, lab_ssh, nodes=("node1", "node2", "node3", "node4")) -> LabState:
    dpkg, boots, canaries = {}, {}, []
    for name in nodes:
        out = lab_ssh(name, "dpkg-query -W -f '${db:Status-Abbrev} ${Package} ${Version}\\n'; echo --; "
                            "apt-mark showhold; echo --; cat /proc/sys/kernel/random/boot_id; echo --; "
                            f"ls -d {CANARY}* 2>/dev/null; true").stdout
        packages, holds, boot, planted = out.split("--\n")
        dpkg[name] = hashlib.sha256((packages + holds).encode()).hexdigest()
        boots[name] = boot.strip()
        canaries += [f"{name}:{p}" for p in planted.split()]
    canaries += [f"local:{p}" for p in map(str, Path("/tmp").glob("ng-pwned*"))]
    return LabState(dpkg=dpkg, boot_ids=boots, unschedulable=_api_nodes(lab), canaries=tuple(canaries))


@pytest.fixture(scope="module")
def before(lab, lab_ssh):
    for stale in Path("/tmp").glob("ng-pwned*"):
        stale.unlink()
    state = lab_state(lab, lab_ssh)
    assert not state.canaries, f"canary files exist before any bad input was tried: {state.canaries}"
    return state


# --------------------------------------------------------------------------- profiles with one thing wrong

@dataclass
class Variant:
    """A copy of the lab's profile and inventory in a temporary folder, to spoil one thing of."""
    root: Path
    toml: str
    inventory: Path
    net: int = 0          # the lab's address octet: "127.NET." in an edit stands for the lab's addresses

    @property
    def profile(self) -> Path:
        path = self.root / "cluster.toml"
        path.write_text(self.toml)
        return path

    def set_toml(self, section: str, key: str, value: str) -> "Variant":
        """Replace (or add) `key = value` in [section]."""
        pattern = re.compile(rf"(?ms)^(\[{re.escape(section)}\]\n)(.*?)(?=^\[|\Z)")
        match = pattern.search(self.toml)
        if match is None:
            self.toml += f"\n[{section}]\n{key} = {value}\n"
            return self
        body = re.sub(rf"(?m)^{re.escape(key)}\s*=.*\n", "", match.group(2))
        self.toml = self.toml[:match.start()] + match.group(1) + f"{key} = {value}\n" + body + self.toml[match.end():]
        return self

    def write_inventory(self, text: str, name: str = "hosts.yaml") -> "Variant":
        path = self.inventory.parent / name
        if name != self.inventory.name:
            self.inventory.unlink()
        path.write_text(text)
        self.inventory = path
        return self.set_toml("kubespray", "inventory", json.dumps(str(path)))

    def edit_inventory(self, old: str, new: str, *, count: int = 1) -> "Variant":
        old, new = (x.replace("127.NET.", f"127.{self.net}.") for x in (old, new))
        text = self.inventory.read_text()
        assert old in text, f"{old!r} is not in the lab's inventory"
        return self.write_inventory(text.replace(old, new, count), self.inventory.name)

    def rename_node4(self, name: str) -> "Variant":
        """node4 renamed everywhere in the inventory (its host entry and its groups)."""
        return self.edit_inventory("node4:", f"{name}:", count=-1)


@pytest.fixture
def variant(lab, tmp_path) -> Variant:
    inventory_dir = tmp_path / "inventory"
    shutil.copytree(lab.dir / "kubespray" / "inventory" / "mycluster", inventory_dir)
    v = Variant(root=tmp_path, toml=(lab.dir / "cluster.toml").read_text(), inventory=inventory_dir / "hosts.yaml",
                net=lab.net)
    return v.set_toml("kubespray", "inventory", json.dumps(str(v.inventory)))


# --------------------------------------------------------------------------- running pytest

@dataclass
class Outcome:
    ret: int
    text: str


@pytest.fixture
def run_pytest(pytester, lab, lab_ssh, before, monkeypatch):
    """run_pytest(label, *args, subprocess=False, where=CHECKS) → Outcome, after asserting the
    common promises: a usage error, no traceback, the lab unchanged, no planted command ran."""
    monkeypatch.setenv("NODEGATE_REPORTS", str(pytester.path / "reports"))
    monkeypatch.delenv("NODEGATE_CLUSTER", raising=False)

    def run(label: str, *args: str, subprocess: bool = False, where: Path = CHECKS, expect: tuple[str, ...] = (),
            fix: str = "fix:", rets: tuple[int, ...] = (pytest.ExitCode.USAGE_ERROR,)) -> Outcome:
        TRIED.append(label)
        # no hypothesis plugin in the runs (see tests/checks/conftest.py: an import race, not nodegate's)
        argv = [str(where), "-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "--color=no",
                *args]
        result = pytester.runpytest_subprocess(*argv, timeout=300) if subprocess else pytester.runpytest_inprocess(*argv)
        text = result.stdout.str() + "\n" + result.stderr.str()
        outcome = Outcome(ret=int(result.ret), text=text)
        assert outcome.ret in rets, f"{label}: expected exit code {rets}, got {outcome.ret}\n{text}"
        assert "Traceback" not in text and not re.search(r'^\s*File "', text, re.M), f"{label}: a traceback:\n{text}"
        assert re.search(fix, text), f"{label}: the message names no fix:\n{text}"
        for words in expect:
            assert re.search(words, text, re.I), f"{label}: the message does not say {words!r}:\n{text}"
        after = lab_state(lab, lab_ssh, nodes=("node4",))
        assert not after.canaries, f"{label}: a planted command ran: {after.canaries}"
        assert after.dpkg["node4"] == before.dpkg["node4"], f"{label}: node4's dpkg state changed"
        assert after.boot_ids["node4"] == before.boot_ids["node4"], f"{label}: node4 rebooted"
        assert after.unschedulable == before.unschedulable, f"{label}: a node's cordon state changed"
        return outcome

    return run


def _lease(lab) -> dict | None:
    """The upgrade lock's Lease, or None when no run holds it."""
    import urllib.error

    request = urllib.request.Request(f"{lab.api_url}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases")
    with apiclient.urlopen(lab, request) as response:
        items = json.load(response).get("items", [])
    held = [i for i in items if (i.get("spec") or {}).get("holderIdentity")]
    return held[0] if held else None


def lab_args(lab, *more: str, node: str | None = "node4") -> list[str]:
    args = ["--cluster", str(lab.dir / "cluster.toml")]
    # --node=VALUE: a value starting with '-' must reach nodegate, not argparse's option parsing
    return args + ([f"--node={node}"] if node is not None else []) + list(more)


# --------------------------------------------------------------------------- options

HOSTILE_NODE_NAMES = [
    ("semicolon", "node4;touch /tmp/ng-pwned-node-1"),
    ("command-substitution", "$(touch /tmp/ng-pwned-node-2)"),
    ("backticks", "node4`touch /tmp/ng-pwned-node-3`"),
    ("space", "node 4"),
    ("single-quote", "node4'"),
    ("double-quote", 'node4"'),
    ("unicode", "nöde4"),
    ("zero-width", "\u200bnode4"),
    ("newline", "node4\ntouch /tmp/ng-pwned-node-4"),
    ("pipe", "node4|touch /tmp/ng-pwned-node-5"),
    ("dash-option", "-oProxyCommand=touch /tmp/ng-pwned-node-6"),
    ("path", "../node4"),
    ("unknown", "node9"),
    ("empty-item", "node4,"),
    ("empty", ""),
    ("blank", "   "),
]


@pytest.mark.parametrize("label,name", HOSTILE_NODE_NAMES, ids=[c[0] for c in HOSTILE_NODE_NAMES])
def test_hostile_node_option_is_rejected(lab, run_pytest, label, name):
    outcome = run_pytest(f"--node {label}", *lab_args(lab, "-m", "preflight", node=name))
    assert "known nodes: node1, node2, node3, node4" in outcome.text or "--node" in outcome.text


def test_hostile_node_option_through_a_real_pytest_process(lab, run_pytest):
    # the same as an operator's shell would pass it: one argv element, never re-parsed by a shell
    run_pytest("--node with $() in a real process", *lab_args(lab, "-m", "preflight",
                                                                node="node4;$(touch /tmp/ng-pwned-proc)"),
               subprocess=True, expect=("not a valid node name",))


OPTION_CASES = [
    ("target 26.04", ["--target-release", "26.04"], ("26.04", "22.04 or 24.04")),
    ("target 18.04", ["--target-release", "18.04"], ("18.04",)),
    ("target with ;", ["--target-release", "22.04;touch /tmp/ng-pwned-t"], ("not a release",)),
    ("drain timeout negative", ["--drain-timeout", "-5"], ("positive number",)),
    ("drain timeout word", ["--drain-timeout", "ten"], ("positive number",)),
    ("drain timeout nan", ["--drain-timeout", "nan"], ("positive number",)),
    ("drain timeout inf", ["--drain-timeout", "inf"], ("positive number",)),
    ("drain timeout zero", ["--drain-timeout", "0"], ("positive number",)),
    ("parallel zero", ["--parallel", "0"], ("not auto or a whole number of nodes", "--parallel auto")),
    ("parallel word", ["--parallel", "many"], ("not auto or a whole number of nodes",)),
    ("window end without a zone", ["--window-end", "23:30"], ("with a time zone", "Europe/Berlin")),
    ("window end unknown zone", ["--window-end", "23:30 Mars/Olympus"], ("not a known time zone",)),
    ("window minutes negative", ["--window-minutes", "-5"], ("positive, finite number of minutes",)),
    ("window end and minutes", ["--window-end", "23:30Z", "--window-minutes", "60"], ("only one of them",)),
    ("ticket with ;", ["--ticket", "CHG-1;touch /tmp/ng-pwned-ticket"], ("not a ticket id",)),
    ("ticket with $()", ["--ticket", "$(touch /tmp/ng-pwned-ticket2)"], ("not a ticket id",)),
    ("unknown marker", ["-m", "preflght"], ("unknown marker", "preflght")),
    ("postflight without target", ["-m", "postflight"], ("--target-release",)),
]


@pytest.mark.parametrize("label,args,expect", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_option_is_rejected(lab, run_pytest, label, args, expect):
    # pytest itself refuses an unknown -m marker first, pointing at `pytest --markers`
    run_pytest(label, *lab_args(lab, *args), expect=expect, fix="fix:|pytest --markers")


CONTRADICTIONS = [
    ("execute without node", ["--execute", "--target-release", "22.04"], None, ("--execute needs --node",)),
    ("execute without target", ["--execute"], "node4", ("--execute needs --target-release",)),
    ("take-over without execute", ["--take-over-stale-lock", "--target-release", "22.04"], "node4",
     ("only makes sense with --execute",)),
    ("target without node for node checks", ["--target-release", "22.04", "-m", "preflight"], None,
     ("no --node was given",)),
    ("ask and env for the sudo password", ["--ask-become-pass", "--become-password-env", "PATH"], "node4",
     ("both say where sudo's password comes from",)),
]


@pytest.mark.parametrize("label,args,node,expect", CONTRADICTIONS, ids=[c[0] for c in CONTRADICTIONS])
def test_contradicting_options_are_rejected(lab, run_pytest, label, args, node, expect):
    run_pytest(label, *lab_args(lab, *args, node=node), where=PROCEDURES if "--execute" in args else CHECKS,
               expect=expect)


def test_ask_become_pass_without_a_terminal_names_the_alternative(lab):
    """A run with no controlling terminal (a new session: cron, CI) cannot be asked: it is refused
    before anything runs, naming --become-password-env."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", str(CHECKS), *lab_args(lab, "-m", "preflight",
                                                                                 "--ask-become-pass"),
                           "-p", "no:cacheprovider", "-p", "no:randomly"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, start_new_session=True)
    text = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, text[-3000:]
    assert "--ask-become-pass: there is no terminal to ask on" in text and "--become-password-env NAME" in text
    assert "Traceback" not in text


def test_a_release_that_skips_one_is_refused_before_any_check(lab, run_pytest):
    # node4 runs 20.04; 24.04 is two steps away and do-release-upgrade moves one at a time
    run_pytest("target skips a release (preflight)", *lab_args(lab, "-m", "preflight", "--target-release", "24.04"),
               expect=("not the next release", "use --target-release 22.04 first"))


def test_a_release_that_skips_one_is_refused_before_the_procedure_changes_anything(lab, run_pytest):
    # With --execute the procedure's first step, the gate, refuses it (a failed test, exit code 1):
    # nothing after the gate runs, and the lock is not left behind.
    outcome = run_pytest("target skips a release (--execute)",
                         *lab_args(lab, "--execute", "--target-release", "24.04"), "-v", subprocess=True,
                         where=PROCEDURES, expect=("not the next", "--target-release 22.04"),
                         rets=(pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.TESTS_FAILED))
    if outcome.ret == pytest.ExitCode.TESTS_FAILED:
        assert re.search(r"(?m)^FAILED \S*test_upgrade\[node4-01-gate\]", outcome.text), outcome.text
        summary = [line for line in outcome.text.splitlines() if re.search(r"=+ .* in [\d.]+s", line)][-1]
        assert "1 failed" in summary and "passed" not in summary, summary   # every later step was skipped
    assert _lease(lab) is None, "the upgrade lock is still held after the refused run"


# --------------------------------------------------------------------------- profile, inventory, kubeconfig

def test_missing_profile(lab, run_pytest, tmp_path):
    run_pytest("--cluster missing", "--cluster", str(tmp_path / "nope.toml"), "--node", "node4",
               expect=("does not exist",))


def test_no_profile_anywhere(lab, run_pytest):
    run_pytest("no profile at all", "--node", "node4", "-m", "preflight", expect=("no cluster profile",))


def test_profile_from_the_environment_missing(lab, run_pytest, monkeypatch, tmp_path):
    monkeypatch.setenv("NODEGATE_CLUSTER", str(tmp_path / "gone.toml"))
    run_pytest("$NODEGATE_CLUSTER missing", "--node", "node4", expect=("NODEGATE_CLUSTER",))


PROFILE_CASES = [
    ("not TOML", lambda v: setattr(v, "toml", v.toml + "\n[ssh\nuser = root\n"), ("not valid TOML",)),
    ("deeply nested TOML", lambda v: setattr(v, "toml", v.toml + "\nx = " + "[" * 3000 + "\n"), ("TOML",)),
    ("unknown key", lambda v: v.set_toml("ssh", "usr", '"root"'), ("usr",)),
    ("unknown section", lambda v: setattr(v, "toml", v.toml + "\n[sshh]\nuser = \"root\"\n"), ("sshh",)),
    ("wrong type", lambda v: v.set_toml("upgrade", "drain_timeout_s", '"ten minutes"'), ("drain_timeout_s",)),
    ("ssh user with ;", lambda v: v.set_toml("ssh", "user", '"root;touch /tmp/ng-pwned-user"'), ("user",)),
    ("kubespray path missing", lambda v: v.set_toml("kubespray", "path", '"/nonexistent/kubespray"'),
     ("does not exist",)),
    ("inventory missing", lambda v: v.set_toml("kubespray", "inventory", '"/nonexistent/hosts.yaml"'),
     ("does not exist",)),
    ("kubeconfig missing", lambda v: v.set_toml("kubernetes", "kubeconfig", '"/nonexistent/kubeconfig"'),
     ("kubeconfig",)),
    ("identity file missing", lambda v: v.set_toml("ssh", "identity_file", '"/nonexistent/id"'),
     ("identity_file",)),
    ("known_hosts missing", lambda v: v.set_toml("ssh", "known_hosts", '"/nonexistent/known_hosts"'),
     ("known_hosts",)),
    ("bmc empty", lambda v: setattr(v, "toml", v.toml + '\n[nodes.node4]\nbmc = ""\n'), ("bmc",)),
    ("nodes table for an unknown node", lambda v: setattr(v, "toml", v.toml + '\n[nodes."node4;id"]\nbmc = "x"\n'),
     ("not in the inventory",)),
]


@pytest.mark.parametrize("label,spoil,expect", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_bad_profile_is_rejected(run_pytest, variant, label, spoil, expect):
    spoil(variant)
    run_pytest(f"profile: {label}", "--cluster", str(variant.profile), "--node", "node4", "-m", "preflight",
               expect=expect)


INVENTORY_CASES = [
    ("invalid YAML", lambda v: v.write_inventory("all:\n  hosts:\n    node4: [\n"), ("not valid YAML",)),
    ("empty", lambda v: v.write_inventory(""), ("empty",)),
    ("not a mapping", lambda v: v.write_inventory("- node4\n- node3\n"), ("mapping",)),
    ("group loop through aliases", lambda v: v.write_inventory(
        "all:\n  children:\n    a: &x\n      children:\n        b:\n          children:\n            a: *x\n"),
     ("own descendant",)),
    ("no Kubespray groups", lambda v: v.write_inventory("all:\n  hosts:\n    node4:\n      ansible_host: 127.0.0.1\n"),
     ("kube_control_plane",)),
    ("INI bad header", lambda v: v.write_inventory("[kube_node\nnode4 ansible_host=127.0.0.1\n", "inventory.ini"),
     ("section header",)),
    ("INI unbalanced quote", lambda v: v.write_inventory("[kube_node]\nnode4 ansible_host='127.0.0.1\n",
                                                          "inventory.ini"), ("quote",)),
    ("host name with ;", lambda v: v.rename_node4('"node4;touch /tmp/ng-pwned-inv1"'), ("not a valid node name",)),
    ("host name with $()", lambda v: v.rename_node4('"$(touch /tmp/ng-pwned-inv2)"'), ("not a valid node name",)),
    ("host name with space", lambda v: v.rename_node4('"node 4"'), ("not a valid node name",)),
    ("host name with quote", lambda v: v.rename_node4("'node4'''"), ("not a valid node name",)),
    ("host name with double quote", lambda v: v.rename_node4("'node4\"'"), ("not a valid node name",)),
    ("host name unicode", lambda v: v.rename_node4('"nöde4"'), ("not a valid node name",)),
    ("ansible_host with ;", lambda v: v.edit_inventory("ansible_host: 127.NET.",
                                                       "ansible_host: 127.NET.1.4;touch /tmp/ng-pwned-inv3 #"),
     ("ansible_host",)),
    ("ansible_host as an ssh option", lambda v: v.edit_inventory("ansible_host: 127.NET.", "ansible_host: -Jevil.example #"),
     ("ansible_host",)),
    ("ansible_user with $()", lambda v: v.edit_inventory("ansible_host: 127.NET.",
                                                         "ansible_user: $(touch /tmp/ng-pwned-inv4)\n"
                                                         "      ansible_host: 127.NET."),
     ("ansible_user",)),
    ("ansible_port with ;", lambda v: v.edit_inventory("ansible_host: 127.NET.",
                                                       "ansible_port: 22;touch /tmp/ng-pwned-inv5\n"
                                                       "      ansible_host: 127.NET."),
     ("ansible_port",)),
]


@pytest.mark.parametrize("label,spoil,expect", INVENTORY_CASES, ids=[c[0] for c in INVENTORY_CASES])
def test_bad_inventory_is_rejected(run_pytest, variant, label, spoil, expect):
    spoil(variant)
    run_pytest(f"inventory: {label}", "--cluster", str(variant.profile), "--node", "node4", "-m", "preflight",
               expect=expect)


def test_inventory_password_never_shows_in_an_error(run_pytest, variant):
    secret = "S3cret-inventory-Pw-4711"
    variant.edit_inventory("    node4:\n      ansible_host", f"    node4:\n      ansible_password: {secret}\n"
                                                             "      ansible_user: 'bad user'\n      ansible_host")
    outcome = run_pytest("inventory: password beside a bad user", "--cluster", str(variant.profile), "--node",
                         "node4", expect=("ansible_user",))
    assert secret not in outcome.text


KUBECONFIG_CASES = [
    ("kubeconfig not YAML", "garbage: [\n", ("not valid YAML",)),
    ("kubeconfig without clusters", "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n",
     ("kubeconfig",)),
    ("kubeconfig server unreachable", None, ("cannot be reached|refused|unreachable",)),
]


@pytest.mark.parametrize("label,text,expect", KUBECONFIG_CASES, ids=[c[0] for c in KUBECONFIG_CASES])
def test_bad_kubeconfig_is_reported_before_any_check(lab, run_pytest, variant, label, text, expect):
    path = variant.root / "kubeconfig"
    if text is None:   # the lab's own kubeconfig, pointing at a port where nothing listens
        text = (lab.dir / "kubeconfig").read_text().replace(f":{lab.api_port}", ":6999")
    path.write_text(text)
    variant.set_toml("kubernetes", "kubeconfig", json.dumps(str(path)))
    outcome = run_pytest(label, "--cluster", str(variant.profile), "--node", "node4", "-m", "preflight",
                         expect=expect)
    assert lab.token not in outcome.text


def test_wrong_ssh_key_is_reported_before_any_check(run_pytest, variant, tmp_path):
    import subprocess

    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    # without the lab's ssh_config (which names its own key), the profile's identity_file is the one used
    variant.toml = re.sub(r"(?m)^config = .*\n", "", variant.toml)
    variant.set_toml("ssh", "identity_file", json.dumps(str(key)))
    run_pytest("ssh key not accepted", "--cluster", str(variant.profile), "--node", "node4", "-m", "preflight",
               expect=("did not accept the key",))


# --------------------------------------------------------------------------- the whole lab afterwards

def test_nothing_changed_on_any_node_after_every_bad_input(lab, lab_ssh, before, record_property):
    after = lab_state(lab, lab_ssh)
    assert after.canaries == (), f"planted commands ran: {after.canaries}"
    assert after.dpkg == before.dpkg
    assert after.boot_ids == before.boot_ids
    assert after.unschedulable == before.unschedulable
    record_property("bad_inputs_tried", len(TRIED))
    print(f"\nbad inputs tried in this module: {len(TRIED)}")
