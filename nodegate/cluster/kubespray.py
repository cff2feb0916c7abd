"""Run the operator's Kubespray playbook for one node and say what happened, in words.

`upgrade_node(profile=…, node=…)` runs, from the profile's checkout,

    ansible-playbook upgrade-cluster.yml -b -i <inventory> --limit=<node> -e kube_version=<current> [--skip-tags=multus]

bounded by a timeout, and returns a frozen `PlaybookResult` (rc, the play recap per host, the
failed tasks with their messages, the redacted output as evidence). A failed run raises
`KubesprayFailed` (a PermanentError) that names the known Kubespray issue and its fix
(knowledge.py: the multus `--limit` bug #9703, the package downgrade #9114, held packages #8200),
or, for anything else, the failing task, host and message; the result rides on the error.

Why ansible-playbook as a subprocess and not ansible-runner: the operator's Kubespray pins its
own ansible-core (v2.21: 2.12.5) in its own virtualenv, and the playbook must run with *that*
one; a subprocess runs any ansible-playbook we are pointed at, while ansible-runner's Python
API would drag the harness's ansible-core into the run. The default callback's text is what the
operator sees in a terminal, so the evidence reads the same, and nodegate.core.parsing already parses its
recap and failures. Output is forced to plain single-line results (no colour, no pretty JSON).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from nodegate.core import knowledge, parsing
from nodegate.core.errors import PermanentError, TransientError, UsageError
from nodegate.core.interrupts import checkpoint
from nodegate.core.kubespray_release import facts_playbook, kube_version_problem
from nodegate.core.secrets import inventory_secrets, redact, register_secrets
from nodegate.profile.model import Profile

log = logging.getLogger(__name__)

UPGRADE_PLAYBOOK = "upgrade-cluster.yml"
DEFAULT_TIMEOUT_S = 1800.0     # a real node's upgrade-cluster.yml run takes 5-20 min
KILL_GRACE_S = 5.0
# The upgrade role's variables that change what upgrade-cluster.yml does to the node, pinned on the
# command line (extra vars beat every inventory value) to what nodegate's procedure needs. Read at
# v2.21.0 and v2.28.1: roles/upgrade/pre-upgrade (upgrade_node_always_cordon, upgrade_node_confirm: a
# `pause` prompt), roles/upgrade/post-upgrade (upgrade_node_post_upgrade_confirm: a `pause` prompt)
# and, from v2.23, kubespray-defaults' system_upgrade (its own dist-upgrade and reboot). nodegate
# cordons, drains and uncordons itself (steps 3 and 13), the release upgrade is its steps 6-9, and
# no prompt can be answered (the playbook's stdin is closed). JSON, so they stay booleans.
PINNED_UPGRADE_VARS = {"upgrade_node_always_cordon": False, "upgrade_node_confirm": False,
                       "upgrade_node_post_upgrade_confirm": False, "system_upgrade": False}
# What ansible-core's pause prints when a prompt meets a closed stdin.
_PROMPT_SKIPPED = re.compile(r"Not waiting for response to prompt as stdin is not interactive")
# Where operators keep Kubespray's virtualenv (its docs: `kubespray-venv` beside the checkout).
_VENV_CANDIDATES = ("../kubespray-venv", "venv", ".venv", "../venv")


@dataclass(frozen=True)
class PlaybookResult:
    node: str
    argv: tuple[str, ...]
    cwd: Path
    rc: int
    output: str                                  # stdout+stderr, redacted
    recap: Mapping[str, parsing.RecapLine]
    failures: tuple[parsing.FailedTask, ...]
    duration_s: float
    ansible_version: str | None
    known_issue: knowledge.KnownIssue | None = None
    timed_out: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def node_recap(self) -> parsing.RecapLine | None:
        return self.recap.get(self.node)

    @property
    def succeeded(self) -> bool:
        """rc 0 and the node's recap says failed=0 unreachable=0 (what step 11 proves)."""
        recap = self.node_recap
        return self.rc == 0 and not self.timed_out and recap is not None and recap.succeeded

    @property
    def recap_line(self) -> str:
        recap = self.node_recap
        if recap is None:
            return f"{self.node}: no recap line"
        return (f"{self.node}: ok={recap.ok} changed={recap.changed} unreachable={recap.unreachable} "
                f"failed={recap.failed} skipped={recap.skipped}")

    @property
    def command(self) -> str:
        return shlex.join(self.argv)

    @property
    def summary(self) -> str:
        state = "succeeded" if self.succeeded else f"failed (rc {self.rc})"
        return f"Kubespray {self.argv[1] if len(self.argv) > 1 else ''} {state} in {self.duration_s:.1f}s; {self.recap_line}"


class KubesprayFailed(PermanentError):
    """The playbook failed; `.result` holds the output and the parsed failures, `.issue` the known issue."""

    def __init__(self, message: str, *, fix: str | None, result: PlaybookResult) -> None:
        super().__init__(message, fix=fix)
        self.result = result
        self.issue = result.known_issue


class KubesprayUnreachable(TransientError):
    """Ansible could not reach the node (down, rebooting, SSH refused): may clear by itself."""

    def __init__(self, message: str, *, fix: str | None, result: PlaybookResult) -> None:
        super().__init__(message, fix=fix)
        self.result = result


class KubesprayTimeout(TransientError):
    def __init__(self, message: str, *, fix: str | None, result: PlaybookResult) -> None:
        super().__init__(message, fix=fix)
        self.result = result


# --------------------------------------------------------------------------- the command

def find_ansible_playbook(checkout: Path, explicit: Path | str | None = None,
                          environ: Mapping[str, str] | None = None, configured: Path | None = None) -> Path:
    """The ansible-playbook to run (see locate_ansible_playbook)."""
    return locate_ansible_playbook(checkout, explicit, environ, configured)[0]


def locate_ansible_playbook(checkout: Path, explicit: Path | str | None = None,
                            environ: Mapping[str, str] | None = None,
                            configured: Path | None = None) -> tuple[Path, str]:
    """The ansible-playbook to run and how it was chosen: explicit, $NODEGATE_ANSIBLE_PLAYBOOK, the
    profile's [kubespray] ansible_playbook, the checkout's venv (kubespray-venv beside it, or
    venv/.venv in it), the harness's own venv, then PATH."""
    environ = os.environ if environ is None else environ
    for given, how, fix in (
            (explicit, "given to the run", "give the ansible-playbook of your Kubespray venv"),
            (environ.get("NODEGATE_ANSIBLE_PLAYBOOK"), "$NODEGATE_ANSIBLE_PLAYBOOK",
             "point NODEGATE_ANSIBLE_PLAYBOOK at the ansible-playbook of your Kubespray venv"),
            (configured, "[kubespray] ansible_playbook in the profile",
             "point [kubespray] ansible_playbook at the ansible-playbook of your Kubespray venv")):
        if not given:
            continue
        path = Path(given).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UsageError(f"ansible-playbook {str(path)!r} ({how}) is not an executable file", fix=fix)
        return path, how
    for rel in _VENV_CANDIDATES:
        candidate = Path(os.path.normpath(checkout / rel / "bin" / "ansible-playbook"))
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate, f"the checkout's virtualenv ({rel})"
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.is_file():
        return beside, "nodegate's own virtualenv (no Kubespray virtualenv was found beside the checkout)"
    found = shutil.which("ansible-playbook")
    if found:
        return Path(found), "the PATH"
    raise UsageError(f"no ansible-playbook found for the Kubespray checkout {checkout}",
                     fix="create Kubespray's venv beside the checkout (kubespray-venv, pip install -r requirements.txt), "
                         "set [kubespray] ansible_playbook in the profile or NODEGATE_ANSIBLE_PLAYBOOK")


@functools.lru_cache(maxsize=8)
def ansible_version(ansible_playbook: str) -> str | None:
    """'2.12.5' from `ansible-playbook --version` (evidence: Jinja error wording depends on it)."""
    try:
        out = subprocess.run([ansible_playbook, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\[core ([^\]]+)\]", out) or re.search(r"ansible(?:-playbook)? ([0-9][^\s]*)", out)
    return match.group(1) if match else None


def playbook_argv(profile: Profile, *, node: str, kube_version: str | None = None, skip_multus: bool | None = None,
                  playbook: str = UPGRADE_PLAYBOOK, extra_vars: Mapping[str, str] | None = None,
                  ansible_playbook: Path | str = "ansible-playbook") -> list[str]:
    """The exact command (validated: known node, kube_version in the form the release expects, passed
    back as written; playbook present)."""
    spec = profile.node(node)          # UsageError naming the known nodes
    version = kube_version or profile.kube_version
    if not version:
        raise UsageError("the cluster's Kubernetes version is unknown, so Kubespray cannot be told to keep it",
                         fix="set kube_version in the inventory's group_vars/k8s_cluster/k8s-cluster.yml "
                             "or [kubernetes] kube_version in the profile")
    problem = kube_version_problem(version, profile.kubespray.version)
    if problem:
        raise UsageError(problem, fix="write kube_version in the inventory in the form the Kubespray checkout's "
                                      "release expects (v1.25.6 before v2.28.0, 1.32.5 from v2.28.0): nodegate passes "
                                      "it to Kubespray as written")
    checkout = profile.kubespray.path
    if not (checkout / playbook).is_file():
        raise UsageError(f"the Kubespray checkout {checkout} has no {playbook}",
                         fix="point [kubespray] path at the directory holding cluster.yml and upgrade-cluster.yml")
    if skip_multus is None:
        skip_multus = knowledge.needs_skip_multus(profile.kubespray.version)
    argv = [str(ansible_playbook), playbook, "-b", "-i", str(profile.kubespray.inventory), f"--limit={spec.name}",
            "-e", f"kube_version={version}", "-e", json.dumps(PINNED_UPGRADE_VARS, separators=(",", ":"))]
    for key, value in (extra_vars or {}).items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise UsageError(f"extra variable name {key!r} is not an Ansible variable name", fix="use letters, digits, _")
        argv += ["-e", f"{key}={value}"]
    if skip_multus:
        argv.append("--skip-tags=multus")
    return argv


def facts_argv(profile: Profile, *, ansible_playbook: Path | str = "ansible-playbook") -> list[str]:
    """Kubespray's documented first run before a --limit run: its facts playbook over every host,
    without --limit, so facts computed from all hosts (no_proxy, etcd and API addresses) are right.
    It reads facts only. Where the playbook is depends on the release (facts.yml until v2.21,
    playbooks/facts.yml from v2.22.0)."""
    checkout = profile.kubespray.path
    playbook = facts_playbook(checkout, profile.kubespray.version)
    if playbook is None:
        raise UsageError(f"the Kubespray checkout {checkout} has no facts playbook (playbooks/facts.yml or facts.yml)",
                         fix="point [kubespray] path at a complete Kubespray checkout")
    return [str(ansible_playbook), playbook, "-b", "-i", str(profile.kubespray.inventory)]


def describe_facts(*, profile: Profile) -> str:
    """The plan line of the facts run (every host, read-only)."""
    try:
        playbook = find_ansible_playbook(profile.kubespray.path, configured=profile.kubespray.ansible_playbook)
    except UsageError:
        playbook = Path("ansible-playbook")
    return f"in {profile.kubespray.path}: {shlex.join(facts_argv(profile, ansible_playbook=playbook))}"


def refresh_facts(*, profile: Profile, node: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                  ansible_playbook: Path | str | None = None,
                  on_line: Callable[[str], None] | None = None) -> PlaybookResult:
    """Run the facts playbook over every host (before the --limit run for NODE); raise
    KubesprayFailed unless it ended with rc 0 and no host failed or unreachable."""
    executable = find_ansible_playbook(profile.kubespray.path, ansible_playbook,
                                       configured=profile.kubespray.ansible_playbook)
    argv = facts_argv(profile, ansible_playbook=executable)
    result = _execute(profile=profile, node=node, argv=argv, executable=executable, playbook=argv[1],
                      timeout_s=timeout_s, on_line=on_line)
    bad = sorted(host for host, line in result.recap.items() if not line.succeeded)
    if result.rc != 0 or bad or not result.recap:
        raise KubesprayFailed(f"Kubespray's facts run ({argv[1]}, every host, before the --limit run for {node}) "
                              f"failed (rc {result.rc})" + (f" on {', '.join(bad)}" if bad else "")
                              + f"; last output: {_last_line(result.output)}",
                              fix="every host of the inventory must answer (Kubespray computes settings such as "
                                  "no_proxy from all of them): bring them up or fix the inventory, then run again",
                              result=result)
    return result


def describe_upgrade(*, profile: Profile, node: str, kube_version: str | None = None) -> str:
    """The plan line: where and what would run (no secret is part of the command)."""
    checkout = profile.kubespray.path
    try:
        playbook = find_ansible_playbook(checkout, configured=profile.kubespray.ansible_playbook)
    except UsageError:
        playbook = Path("ansible-playbook")
    argv = playbook_argv(profile, node=node, kube_version=kube_version, ansible_playbook=playbook)
    return f"in {checkout}: {shlex.join(argv)}"


BECOME_PASSWORD_VARIABLE = "NODEGATE_ANSIBLE_BECOME_PASSWORD"
_become_helper_dir: tempfile.TemporaryDirectory | None = None


def _become_password_helper() -> Path:
    """An executable that prints $NODEGATE_ANSIBLE_BECOME_PASSWORD (no secret in the file itself),
    in a private folder removed when this process ends."""
    global _become_helper_dir
    if _become_helper_dir is None:
        _become_helper_dir = tempfile.TemporaryDirectory(prefix="nodegate-become-")
    path = Path(_become_helper_dir.name) / "become-password"
    if not path.exists():
        path.write_text("#!/bin/sh\n# nodegate: the sudo password given with --become-password-env, from the environment\n"
                        f'exec printf \'%s\\n\' "${BECOME_PASSWORD_VARIABLE}"\n')
        path.chmod(0o700)
    return path


def playbook_environment() -> dict[str, str]:
    """The environment ansible-playbook runs in: plain output, none of the harness's Python settings."""
    return _environment()


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_STDOUT_CALLBACK": "default",      # the parsers read the default callback's text
        "ANSIBLE_CALLBACK_FORMAT_PRETTY": "false",  # ansible-core >= 2.13: one line per result
        "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    })
    # The harness's own venv must not leak into Kubespray's ansible (its PYTHONPATH, VIRTUAL_ENV).
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(name, None)
    return env


# --------------------------------------------------------------------------- secrets

def register_inventory_secrets(inventory: Path) -> int:
    """Register every password/token-like value of the inventory and its group_vars/host_vars
    as a secret, so the playbook's output can never carry one into a log or a report."""
    return register_secrets(inventory_secrets(inventory.parent))


# --------------------------------------------------------------------------- running

# Kubespray's delegated tasks print the delegate unrendered in ansible-core < 2.13
# (`failed: [node4 -> {{ groups['kube_control_plane'][0] }}] (item=None) => …`): the brackets
# inside it would hide the failure from the parser, so the delegate is dropped before parsing.
_DELEGATE = re.compile(r"^((?:fatal|failed|ok|changed): \[[^\]\s]+) -> .*?\](?=:? (?:FAILED|UNREACHABLE)!| \(item=| =>)",
                       re.M)


def _normalise(output: str) -> str:
    return _DELEGATE.sub(r"\1]", parsing.strip_ansi(output))


def run_playbook(*, profile: Profile, node: str, kube_version: str | None = None, skip_multus: bool | None = None,
                 playbook: str = UPGRADE_PLAYBOOK, extra_vars: Mapping[str, str] | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, ansible_playbook: Path | str | None = None,
                 on_line: Callable[[str], None] | None = None) -> PlaybookResult:
    """Run the playbook for one node and return what happened (a failed play is a result, not an
    error; bad input is a UsageError before anything runs; a run past timeout_s is ended and
    raises KubesprayTimeout)."""
    if timeout_s <= 0:
        raise UsageError(f"timeout {timeout_s} s is not positive", fix="give the playbook a positive time limit")
    executable = find_ansible_playbook(profile.kubespray.path, ansible_playbook,
                                       configured=profile.kubespray.ansible_playbook)
    argv = playbook_argv(profile, node=node, kube_version=kube_version, skip_multus=skip_multus, playbook=playbook,
                         extra_vars=extra_vars, ansible_playbook=executable)
    return _execute(profile=profile, node=node, argv=argv, executable=executable, playbook=playbook,
                    timeout_s=timeout_s, on_line=on_line)


def _execute(*, profile: Profile, node: str, argv: list[str], executable: Path, playbook: str, timeout_s: float,
             on_line: Callable[[str], None] | None) -> PlaybookResult:
    """Run ARGV in the checkout, bounded by timeout_s, and return what happened."""
    checkout = profile.kubespray.path
    register_inventory_secrets(profile.kubespray.inventory)
    version = ansible_version(str(executable))
    log.info("kubespray: running in %s: %s (ansible-core %s)", checkout, shlex.join(argv), version or "?")
    lines: list[str] = []
    started = time.monotonic()
    env = _environment()
    if profile.ssh.become_password:
        # --become-password-env: Ansible runs an executable --become-password-file and reads its
        # output; the helper prints the password from the playbook's own environment, so it is
        # never on disk, in an argument or in the command line shown. The inventory's own
        # ansible_become_password, if it has one, still wins (Ansible's variable precedence).
        env[BECOME_PASSWORD_VARIABLE] = profile.ssh.become_password
        argv = [*argv, f"--become-password-file={_become_password_helper()}"]
    proc = subprocess.Popen(argv, cwd=checkout, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = redact(raw.rstrip("\n"))
            lines.append(line)
            if line.startswith(("TASK [", "PLAY [", "PLAY RECAP", "fatal:", "failed:")):
                log.info("kubespray %s: %s", node, line.rstrip(" *"))
            else:
                log.debug("kubespray %s: %s", node, line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=pump, name=f"kubespray-{node}", daemon=True)
    reader.start()
    timed_out = False
    deadline = started + timeout_s
    try:
        while True:
            # The playbook runs in a session of its own (the terminal's Ctrl-C reaches only this
            # process): a Ctrl-C that a finalizer swallowed must still end it within a second.
            checkpoint()
            try:
                rc = proc.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    raise
    except subprocess.TimeoutExpired:
        timed_out = True
        _end_group(proc)
        rc = proc.returncode if proc.returncode is not None else -9
    except BaseException:
        # Ctrl-C or any error in the harness: never leave ansible-playbook running on the nodes.
        _end_group(proc)
        raise
    reader.join(timeout=10)
    duration = time.monotonic() - started
    output = "\n".join(lines)
    result = _result(node=node, argv=argv, cwd=checkout, rc=rc, output=output, duration=duration,
                     version=version, timed_out=timed_out)
    log.info("kubespray: %s", result.summary)
    if timed_out:
        raise KubesprayTimeout(f"Kubespray {playbook} for {node} did not finish within {timeout_s:.0f} s and was "
                               f"stopped; last output: {_last_line(output)}",
                               fix="see the playbook output kept as evidence; rerun once the node answers "
                                   "(a longer timeout if it was only slow)", result=result)
    return result


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the playbook's process group (ansible forks workers and ssh), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _ansible_refusal(output: str) -> str:
    """Ansible's own error before any play ran: its `ERROR!` line (and the file and line it
    points at), or '' when there is none."""
    lines = [line.strip() for line in parsing.strip_ansi(output).splitlines()]
    first = next((i for i, line in enumerate(lines) if line.startswith(("ERROR!", "[ERROR]:"))), None)
    if first is None:
        return ""
    said = [lines[first]]
    said += [line for line in lines[first + 1:] if line.startswith("The error appears to be in")][:1]
    details = [line for line in lines[first + 1:first + 8] if line and not line.startswith(("JSON:", "The error"))
               and line not in said[0]][:2]
    return " ".join([said[0], *details, *said[1:]])[:600]


def _last_line(output: str) -> str:
    for line in reversed(output.splitlines()):
        if line.strip():
            return line.strip()[:300]
    return "(none)"


def _result(*, node: str, argv: list[str], cwd: Path, rc: int, output: str, duration: float, version: str | None,
            timed_out: bool) -> PlaybookResult:
    text = _normalise(output)
    recap = parsing.parse_ansible_recap(text)
    failures = parsing.failed_tasks(text)
    issue = None
    if rc != 0 or failures:
        haystack = "\n".join(f.message for f in failures) or text
        issue = knowledge.recognise_kubespray_failure(haystack)
    return PlaybookResult(node=node, argv=tuple(argv), cwd=cwd, rc=rc, output=output,
                          recap=MappingProxyType(dict(recap)), failures=failures, duration_s=duration,
                          ansible_version=version, known_issue=issue, timed_out=timed_out)


def _first_real_failure(result: PlaybookResult) -> parsing.FailedTask | None:
    """The failure that explains the run: not the generic 'One or more items failed' wrapper."""
    mine = [f for f in result.failures if f.host in (result.node, None)] or list(result.failures)
    for failure in mine:
        if failure.message not in ("One or more items failed", "All items completed"):
            return failure
    return mine[0] if mine else None


def check_result(result: PlaybookResult) -> PlaybookResult:
    """Raise KubesprayFailed unless the run succeeded for the node; return the result if it did."""
    if result.succeeded:
        return result
    playbook = result.argv[1] if len(result.argv) > 1 else "the playbook"
    failure = _first_real_failure(result)
    where = f" in task [{failure.task}]" if failure and failure.task else ""
    said = f": {failure.message}" if failure else f"; last output: {_last_line(result.output)}"
    recap = result.node_recap
    if recap is not None and recap.unreachable:
        raise KubesprayUnreachable(f"Kubespray {playbook} could not reach {result.node}{said}",
                                   fix="check that the node is up and answers SSH with the inventory's settings "
                                       "(ansible_host, user, key, known_hosts), then run again", result=result)
    prompt = _PROMPT_SKIPPED.search(result.output)
    if prompt is not None:
        task = next((f.task for f in result.failures if f.task), None) or "a pause task"
        raise KubesprayFailed(f"Kubespray {playbook} on {result.node} stopped at a prompt ({task}) that nobody can "
                              f"answer: stdin is closed{said}",
                              fix="find the variable that turns this prompt on in the inventory (nodegate already pins "
                                  + ", ".join(f"{k}=false" for k in PINNED_UPGRADE_VARS) + ") and turn it off",
                              result=result)
    issue = result.known_issue
    if issue is not None:
        raise KubesprayFailed(
            f"Kubespray {playbook} failed on {result.node}{where} with a known issue: {issue.title} "
            f"({'; '.join(issue.references)}){said}", fix=issue.fix, result=result)
    if failure is None and recap is None:
        refused = _ansible_refusal(result.output)
        if refused:
            # Ansible stopped before any play (a syntax error in the checkout, a missing role or
            # variable file): its own ERROR! line and where, not the last line ("^ here").
            raise KubesprayFailed(f"Ansible refused to run Kubespray {playbook} for {result.node} (rc {result.rc}): "
                                  f"{refused}",
                                  fix="correct the file it names in the Kubespray checkout (the full message is kept as "
                                      "evidence), then run the same command again", result=result)
        raise KubesprayFailed(f"Kubespray {playbook} for {result.node} ended with rc {result.rc} and no play recap "
                              f"for the node{said}",
                              fix="check that --limit names a host of the inventory and read the output kept "
                                  "as evidence", result=result)
    raise KubesprayFailed(f"Kubespray {playbook} failed on {failure.host if failure and failure.host else result.node}"
                          f"{where}{said}",
                          fix="this is not a known Kubespray issue: read the task's message and the playbook output "
                              "kept as evidence, fix the cause on the node or in the inventory, then run again",
                          result=result)


def upgrade_node(*, profile: Profile, node: str, kube_version: str | None = None, skip_multus: bool | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, extra_vars: Mapping[str, str] | None = None,
                 ansible_playbook: Path | str | None = None,
                 on_line: Callable[[str], None] | None = None) -> PlaybookResult:
    """Step 11: upgrade-cluster.yml limited to the node at the cluster's current kube_version.
    Returns the result when the node's recap says failed=0 unreachable=0; raises KubesprayFailed
    (known issue and fix, or the failing task and message), KubesprayUnreachable or KubesprayTimeout."""
    result = run_playbook(profile=profile, node=node, kube_version=kube_version, skip_multus=skip_multus,
                          extra_vars=extra_vars, timeout_s=timeout_s, ansible_playbook=ansible_playbook,
                          on_line=on_line)
    return check_result(result)
