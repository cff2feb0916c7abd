"""The toolchain preflight: the Ansible nodegate will run Kubespray with, tested read-only before any change.

Step 11 runs the checkout's upgrade-cluster.yml after both reboots; whatever is wrong with the
toolchain then (an ansible-core outside the checkout's ansible_version.yml range, which stops the
playbook at its first play; a package of requirements.txt missing; a playbook Ansible refuses to
parse; a tag nodegate skips that the checkout does not have, so the skip protects nothing) leaves
the node cordoned on the new release. Each is found here first, in four findings the preflight
checks (checks/test_toolchain.py) turn into refusals at the gate:

- `ansible_range`: `ansible-playbook --version`'s core version inside the checkout's range;
- `requirements`: every pin of requirements.txt installed, at its version, in the Python that
  runs that ansible-playbook (the interpreter of its `#!` line);
- `syntax`: the exact upgrade command with `--syntax-check` (inventory and variables included);
- `skipped_tags`: the command's `--skip-tags` all listed by the same command with `--list-tags`.

Nothing here writes anywhere or reaches a node: `--syntax-check` and `--list-tags` only parse.
"""
from __future__ import annotations

import functools
import json
import shlex
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from nodegate.cluster import kubespray
from nodegate.core import ansible_toolchain as at
from nodegate.core.errors import UsageError
from nodegate.core.secrets import redact
from nodegate.profile.model import Profile

COMMAND_TIMEOUT_S = 300.0
_LIST_DISTRIBUTIONS = ("import importlib.metadata as m, json; "
                       "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions() "
                       "if d.metadata['Name']}))")


@dataclass(frozen=True)
class AnsiblePlaybook:
    """The ansible-playbook nodegate will run, and what it says about itself."""
    path: Path
    chosen_by: str
    core_version: str | None
    python: str | None
    version_output: str

    @property
    def label(self) -> str:
        return f"{self.path} (ansible-core {self.core_version or '?'}; {self.chosen_by})"


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    message: str
    fix: str = ""
    details: tuple[str, ...] = ()
    evidence: str = field(default="", repr=False)


def ansible_playbook(profile: Profile) -> AnsiblePlaybook:
    """The ansible-playbook the Kubespray step will use (UsageError when there is none)."""
    path, how = kubespray.locate_ansible_playbook(profile.kubespray.path,
                                                  configured=profile.kubespray.ansible_playbook)
    output = _version_output(str(path))
    python = None
    try:
        with path.open(errors="replace") as handle:
            python = at.python_from_shebang(handle.readline().strip())
    except OSError:
        pass
    python = python or at.python_from_output(output)
    return AnsiblePlaybook(path=path, chosen_by=how, core_version=at.core_version_from_output(output),
                           python=python, version_output=output)


@functools.lru_cache(maxsize=16)
def _version_output(executable: str) -> str:
    try:
        done = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=120,
                              env=kubespray.playbook_environment(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(could not run {executable} --version: {exc})"
    return (done.stdout + done.stderr).strip()


def _fix_install(profile: Profile, tool: AnsiblePlaybook) -> str:
    requirements = profile.kubespray.path / at.REQUIREMENTS_FILE
    python = tool.python or "<the python of your Kubespray venv>"
    return (f"install the checkout's toolchain into the venv that runs it: `{python} -m pip install -r {requirements}`"
            f", or point [kubespray] ansible_playbook in the profile (or NODEGATE_ANSIBLE_PLAYBOOK) at an "
            f"ansible-playbook from a venv built that way (Kubespray's docs: kubespray-venv beside the checkout)")


def ansible_range(profile: Profile, tool: AnsiblePlaybook) -> Finding:
    """ansible-core inside the checkout's ansible_version.yml range."""
    try:
        wanted = at.ansible_range(profile.kubespray.path)
    except (at.ToolchainFileError, ValueError) as exc:
        return Finding("ansible_range", False, f"cannot tell which Ansible the Kubespray checkout accepts: {exc}",
                       fix=f"restore {' or '.join(at.ANSIBLE_VERSION_FILES)} in {profile.kubespray.path} "
                           "(a complete checkout has one)")
    evidence = f"{wanted.source}: {wanted.text}\n$ {tool.path} --version\n{tool.version_output}"
    if tool.core_version is None:
        return Finding("ansible_range", False, f"{tool.path} ({tool.chosen_by}) does not say its ansible-core version "
                       f"(`--version` printed: {tool.version_output.splitlines()[0] if tool.version_output else 'nothing'})",
                       fix=_fix_install(profile, tool), evidence=evidence)
    try:
        inside = wanted.admits(tool.core_version)
    except ValueError:
        inside = False
    if not inside:
        return Finding("ansible_range", False,
                       f"ansible-core {tool.core_version} of {tool.path} ({tool.chosen_by}) is outside the range "
                       f"Kubespray {profile.kubespray.version or '(version unknown)'} accepts: {wanted.text} "
                       f"({wanted.source}); upgrade-cluster.yml would stop at its first play in step 11, after both "
                       "reboots",
                       fix=f"use an ansible-playbook with {wanted.pip_spec()}: " + _fix_install(profile, tool),
                       evidence=evidence)
    return Finding("ansible_range", True, f"ansible-core {tool.core_version} of {tool.label} is inside "
                                          f"{wanted.text} ({wanted.source})", evidence=evidence)


def requirements(profile: Profile, tool: AnsiblePlaybook) -> Finding:
    """Every pin of requirements.txt installed in the Python that runs the ansible-playbook."""
    path = profile.kubespray.path / at.REQUIREMENTS_FILE
    if not path.is_file():
        return Finding("requirements", False, f"the Kubespray checkout {profile.kubespray.path} has no "
                       f"{at.REQUIREMENTS_FILE}, so its toolchain cannot be checked",
                       fix=f"restore {at.REQUIREMENTS_FILE} (every Kubespray release has one)")
    includes = {p.name: p.read_text(errors="replace") for p in path.resolve().parent.glob("requirements*.txt")}
    try:
        pins = at.parse_requirements(path.read_text(errors="replace"), at.REQUIREMENTS_FILE, includes)
    except at.ToolchainFileError as exc:
        return Finding("requirements", False, f"cannot read the checkout's requirements: {exc}",
                       fix=f"repair {path} (pip must be able to install it)")
    if tool.python is None:
        return Finding("requirements", False, f"cannot tell which Python runs {tool.path} ({tool.chosen_by}): its "
                       "first line names no interpreter and `--version` no path, so requirements.txt cannot be checked",
                       fix=_fix_install(profile, tool))
    installed = _installed(tool.python)
    if installed is None:
        return Finding("requirements", False, f"the Python {tool.python} that runs {tool.path} did not list its "
                       "installed packages", fix=_fix_install(profile, tool))
    problems = at.requirement_problems(pins, installed)
    evidence = (f"{path} ({len(pins)} requirements): " + ", ".join(p.line for p in pins)
                + f"\nPython {tool.python}: " + ", ".join(f"{k}=={v}" for k, v in sorted(installed.items())))
    if problems:
        return Finding("requirements", False,
                       f"the Python that runs {tool.path} ({tool.chosen_by}) does not meet the checkout's "
                       f"{at.REQUIREMENTS_FILE}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if problems[1:]
                                                                  else ""),
                       fix=_fix_install(profile, tool), details=tuple(problems), evidence=evidence)
    return Finding("requirements", True, f"{tool.python} has all {len(pins)} requirements of {at.REQUIREMENTS_FILE}",
                   evidence=evidence)


@functools.lru_cache(maxsize=16)
def _installed(python: str) -> dict[str, str] | None:
    try:
        done = subprocess.run([python, "-I", "-c", _LIST_DISTRIBUTIONS], capture_output=True, text=True,
                              timeout=120, env=kubespray.playbook_environment(), stdin=subprocess.DEVNULL)
        return dict(json.loads(done.stdout)) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def _run(profile: Profile, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    kubespray.register_inventory_secrets(profile.kubespray.inventory)
    try:
        return subprocess.run(argv, cwd=profile.kubespray.path, capture_output=True, text=True, errors="replace",
                              timeout=COMMAND_TIMEOUT_S, env={**kubespray.playbook_environment(), **(env or {})},
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, -9, "", f"(no answer within {COMMAND_TIMEOUT_S:.0f} s)")
    except OSError as exc:
        return subprocess.CompletedProcess(argv, 127, "", str(exc))


def _upgrade_argv(profile: Profile, node: str, tool: AnsiblePlaybook) -> list[str]:
    return kubespray.playbook_argv(profile, node=node, ansible_playbook=tool.path)


def syntax(profile: Profile, node: str, tool: AnsiblePlaybook, fleet: "FleetRuns | None" = None) -> Finding:
    """The upgrade command as step 11 will run it, with --syntax-check (``fleet``: one run for the
    run's nodes whose commands differ only in --limit, see FleetRuns)."""
    try:
        argv = [*_upgrade_argv(profile, node, tool), "--syntax-check"]
    except UsageError as exc:
        return Finding("syntax", False, f"the upgrade command cannot be built: {exc.message}", fix=exc.fix or "")
    shared = fleet.passed(node, lambda name: [*_upgrade_argv(profile, name, tool), "--syntax-check"]) if fleet else None
    argv, done = shared or (argv, _run(profile, argv))
    output = redact((done.stdout + done.stderr).strip())
    evidence = f"$ {shlex.join(argv)}\n{output}"
    if done.returncode != 0:
        said = kubespray._ansible_refusal(output) or (output.splitlines()[-1] if output else "(no output)")
        return Finding("syntax", False, f"{argv[1]} --syntax-check with the inventory failed (rc {done.returncode}) "
                       f"with {tool.path}: {said}",
                       fix="correct what Ansible names (a file of the checkout or the inventory), or use the "
                           "ansible-playbook the checkout is meant for; the full output is kept as evidence",
                       evidence=evidence)
    return Finding("syntax", True, f"{argv[1]} parses with the inventory ({tool.label})", evidence=evidence)


def skipped_tags(profile: Profile, node: str, tool: AnsiblePlaybook, fleet: "FleetRuns | None" = None) -> Finding:
    """Every tag the upgrade command skips exists in the playbook (a skip of a missing tag skips nothing)."""
    try:
        upgrade = _upgrade_argv(profile, node, tool)
    except UsageError as exc:
        return Finding("skipped_tags", False, f"the upgrade command cannot be built: {exc.message}", fix=exc.fix or "")
    skipped = at.skipped_tags(upgrade)

    def list_tags(name: str) -> list[str]:
        return [word for word in _upgrade_argv(profile, name, tool) if not word.startswith("--skip-tags")] + ["--list-tags"]

    argv = [word for word in upgrade if not word.startswith("--skip-tags")] + ["--list-tags"]
    shared = fleet.passed(node, list_tags) if fleet else None
    argv, done = shared or (argv, _run(profile, argv))
    output = redact((done.stdout + done.stderr).strip())
    evidence = f"$ {shlex.join(argv)}\n{output}"
    if done.returncode != 0:
        said = kubespray._ansible_refusal(output) or (output.splitlines()[-1] if output else "(no output)")
        return Finding("skipped_tags", False, f"{argv[1]} --list-tags failed (rc {done.returncode}) with "
                       f"{tool.path}: {said}", fix="correct what Ansible names, then run again", evidence=evidence)
    tags = at.tags_of(output)
    missing = [t for t in skipped if t not in tags]
    if missing:
        return Finding("skipped_tags", False,
                       f"{argv[1]} has no tag {', '.join(missing)}, which nodegate skips (--skip-tags="
                       f"{','.join(skipped)}, for the multus --limit failure, kubespray #9703): the skip would skip "
                       "nothing",
                       fix="check that [kubespray] path is a complete checkout of the release the profile says "
                           f"({profile.kubespray.version or 'unknown'}: {profile.kubespray.version_source or '?'}), or "
                           "set [kubespray] version to the release you really checked out",
                       details=(f"tags listed: {', '.join(sorted(tags)) or 'none'}",), evidence=evidence)
    what = f"the skipped tags ({', '.join(skipped)}) exist" if skipped else "no tag is skipped"
    return Finding("skipped_tags", True, f"{argv[1]} lists {len(tags)} tags; {what}", evidence=evidence)


class FleetRuns:
    """The --syntax-check and --list-tags runs of one preflight, each made once for all its nodes.

    The upgrade commands of the nodes of one inventory differ only in `--limit=<node>`: the same
    playbook, inventory and variables. In a --syntax-check or --list-tags run Ansible looks at the
    limit once, before any play (ansible-playbook refuses a limit that leaves no host; playbook
    hosts are not resolved when only parsing or listing tags), so one run with `--limit=a,b,…`
    parses what each node's run parses. With ANSIBLE_HOST_PATTERN_MISMATCH=error it also refuses
    a name of the limit that matches no host, where one node's own run would have found none. A
    fleet of 40 nodes so runs Ansible twice instead of 80 times (each run of a real Kubespray
    parses hundreds of role files). When the shared run fails, each node's own command is run
    (``passed`` returns None), so a failure is always reported from the node's exact command."""

    def __init__(self, profile: Profile, nodes: Sequence[str]) -> None:
        self.profile = profile
        self.nodes = tuple(dict.fromkeys(nodes))
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, ...], Future] = {}

    @property
    def commands_run(self) -> int:
        """How many shared Ansible commands this fleet has run."""
        with self._lock:
            return len(self._runs)

    def passed(self, node: str, argv_of: Callable[[str], list[str]]) -> tuple[list[str], subprocess.CompletedProcess] | None:
        """(argv, result) of the shared run covering ``node`` when it passed, else None."""
        try:
            own = _without_limit(argv_of(node))
            together = [n for n in self.nodes if n == node or _without_limit(argv_of(n)) == own]
        except UsageError:
            return None
        if node not in together or len(together) < 2:
            return None
        argv = [f"--limit={','.join(together)}" if w.startswith("--limit=") else w for w in argv_of(node)]
        done = self._once(argv)
        return (argv, done) if done.returncode == 0 else None

    def _once(self, argv: list[str]) -> subprocess.CompletedProcess:
        key = tuple(argv)
        with self._lock:
            future = self._runs.get(key)
            owner = future is None
            if owner:
                future = self._runs[key] = Future()
        if owner:
            try:
                future.set_result(_run(self.profile, argv, env={"ANSIBLE_HOST_PATTERN_MISMATCH": "error"}))
            except BaseException as exc:  # noqa: BLE001 - handed to every node that waits for this run
                future.set_exception(exc)
        return future.result()


def _without_limit(argv: list[str]) -> list[str]:
    return [w for w in argv if not w.startswith("--limit=")]


def describe(profile: Profile, node: str) -> str:
    """The plan line: which ansible-playbook, and what the gate checks about it (read-only)."""
    try:
        tool = ansible_playbook(profile)
    except UsageError as exc:
        return f"toolchain: {exc.message}"
    try:
        wanted = at.ansible_range(profile.kubespray.path).text
    except (at.ToolchainFileError, ValueError) as exc:
        wanted = f"range unknown: {exc}"
    return (f"toolchain, checked at the gate (read-only): {tool.label} against the checkout's {wanted} and "
            f"{at.REQUIREMENTS_FILE}; {kubespray.UPGRADE_PLAYBOOK} --syntax-check and --list-tags with the "
            f"inventory (every --skip-tags tag must exist) before any change to {node}")
