"""Tools of the interruption scenario (tests/scenarios/test_interrupts.py): start the procedure as an
operator does, send it SIGINT (to its whole process group, as Ctrl-C in a terminal does) or SIGTERM
(to the pytest process, as `kill PID` does) at a chosen moment, and read where node4 really stands
straight from the lab — ssh, the Kubernetes API, the ceph CLI — without the harness's own modules,
so the harness is not asked to vouch for itself.

The journal-versus-node rules (``disagreements``) are the heart: whatever the journal says is
finished holds on the node (the journal is never ahead), and whatever the upgrade changed on the
node is announced in the journal (the journal is never behind).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scenariotools import NODE, Operator, terminal_signals

from nodegate.lab import apiclient
from nodegate.lab.config import LabConfig

HELD = ("containerd.io", "docker-ce", "docker-ce-cli")
LOCK = ("kube-system", "nodegate-upgrade-lock")
UPGRADE_ANNOTATION = "nodegate.io/upgrade"
CORDONED_BY = "nodegate.io/cordoned-by"
PACKAGE_TOOLS = ("apt-get", "dpkg", "do-release-upgrade")
HERE = Path(__file__).resolve().parent
LEFTOVERS_GRACE_S = 10.0     # how long a process the run started may take to end after the run did   # do-release-upgrade: a python3 script in the lab


# --------------------------------------------------------------------------- reading the lab directly

@dataclass(frozen=True)
class Live:
    """node4 as the lab shows it right now."""
    release: str
    boot_id: str
    held: dict[str, str]          # held package -> installed version
    versions: dict[str, str]      # every watched package -> installed version
    audit: str                    # `dpkg --audit` (empty: consistent)
    legacy_keyring: bool
    cordoned: bool
    cordoned_by: str | None
    annotation: dict | None
    ready: bool
    noout: bool
    lock_holder: str | None       # the Lease's holderIdentity, None when free or absent
    lock_node: str | None
    health: str

    def brief(self) -> str:
        return (f"{self.release}, {'cordoned' if self.cordoned else 'schedulable'}, noout={'on' if self.noout else 'off'}, "
                f"held={sorted(self.held) or 'none'}, lock={'held by ' + str(self.lock_holder) if self.lock_holder else 'free'}, "
                f"{self.health}{', dpkg half done' if self.audit else ''}")


class Reader:
    """Direct reads of the lab: plain ssh with the lab's ssh config, HTTP to the API server, the ceph CLI."""

    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.dir = Path(config.dir)

    # -- Kubernetes API, raw requests ----------------------------------------------------------
    def api(self, path: str) -> dict | None:
        request = urllib.request.Request(f"{self.config.api_url}{path}")
        for attempt in range(20):
            try:
                with apiclient.urlopen(self.config, request) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code < 500 or attempt == 19:
                    raise
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if attempt == 19:
                    raise
            time.sleep(0.25)
        return None

    def node(self) -> dict:
        found = self.api(f"/api/v1/nodes/{NODE}")
        assert found is not None, f"the API server has no Node {NODE}"
        return found

    def lease(self) -> dict | None:
        return self.api(f"/apis/coordination.k8s.io/v1/namespaces/{LOCK[0]}/leases/{LOCK[1]}")

    def node_ready(self) -> bool:
        conditions = self.node().get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    # -- the node's own view over ssh ---------------------------------------------------------------
    def ssh(self, command: str, *, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.dir / "ssh" / "config"), "-o", "ControlMaster=no",
                               "-o", "ControlPath=none", "-o", "ConnectTimeout=5", NODE, command],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def node_facts(self, *, timeout: float = 90) -> dict:
        """os-release, boot id, watched packages, dpkg audit, legacy keyring; waits (bounded) for a
        node that is rebooting to answer again."""
        script = ("set -u; . /etc/os-release; echo \"release=$VERSION_ID\"; "
                  "echo \"boot=$(cat /proc/sys/kernel/random/boot_id)\"; "
                  "dpkg-query -W -f '${db:Status-Abbrev}|${Package}|${Version}\\n' " + " ".join(HELD) + "; "
                  "echo \"audit=$(dpkg --audit 2>&1 | head -1)\"; "
                  "if [ -e /etc/apt/trusted.gpg ]; then echo legacy=1; else echo legacy=0; fi")
        deadline = time.monotonic() + timeout
        while True:
            done = self.ssh(script)
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{NODE} does not answer over ssh: rc {done.returncode} {done.stderr.strip()}")
            time.sleep(0.5)
        facts: dict = {"held": {}, "versions": {}}
        for line in done.stdout.splitlines():
            if line.count("|") == 2:
                status, name, version = line.split("|")
                facts["versions"][name] = version
                if status.startswith("h"):
                    facts["held"][name] = version
            elif "=" in line:
                key, _, value = line.partition("=")
                facts[key] = value.strip()
        return facts

    def node_processes(self) -> list[str]:
        """Command lines of what runs inside node4 (seen through /proc from this machine)."""
        root = str(self.dir / "nodes" / NODE / "root")
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "root") != root:
                    continue
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip())
            except OSError:
                continue
        return found

    def package_tool_running(self) -> bool:
        return any(word.rsplit("/", 1)[-1] in PACKAGE_TOOLS
                   for cmd in self.node_processes() for word in cmd.split(" ")[:2])

    def lab_state(self) -> dict:
        """The lab supervisor's record of node4 (up/down, boot id): only to time an interruption."""
        try:
            return json.loads((self.dir / "nodes" / NODE / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    # -- the ceph CLI ---------------------------------------------------------------------------------
    def ceph(self, *args: str) -> dict:
        env = dict(os.environ, CEPH_CONF=str(self.dir / "ceph.conf"))
        done = subprocess.run(["ceph", *args, "-f", "json"], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, f"ceph {' '.join(args)}: rc {done.returncode} {done.stderr.strip()}"
        return json.loads(done.stdout)

    # -- all of it ------------------------------------------------------------------------------------------
    def live(self) -> Live:
        facts = self.node_facts()
        node = self.node()
        meta = node.get("metadata", {})
        annotations = meta.get("annotations") or {}
        raw = annotations.get(UPGRADE_ANNOTATION)
        lease = self.lease()
        spec = (lease or {}).get("spec", {})
        lease_annotations = (lease or {}).get("metadata", {}).get("annotations") or {}
        holder = spec.get("holderIdentity") or None
        crush = self.ceph("osd", "dump").get("crush_node_flags") or {}
        health = self.ceph("health").get("status", "?")
        return Live(release=facts.get("release", "?"), boot_id=facts.get("boot", "?"), held=facts["held"],
                    versions=facts["versions"], audit=facts.get("audit", ""), legacy_keyring=facts.get("legacy") == "1",
                    cordoned=bool(node.get("spec", {}).get("unschedulable")), cordoned_by=annotations.get(CORDONED_BY),
                    annotation=json.loads(raw) if raw else None, ready=self.node_ready(),
                    noout="noout" in crush.get(NODE, []), lock_holder=holder,
                    lock_node=lease_annotations.get("nodegate.io/node") if holder else None, health=health)


# --------------------------------------------------------------------------- the journal against the node

def attempt(journal: list[dict]) -> list[dict]:
    """The records of the current upgrade attempt (from its last `begin` on)."""
    begins = [i for i, r in enumerate(journal) if r["step"] == "begin"]
    return journal[begins[-1]:] if begins else []


def last_status(records: list[dict], step: str) -> str | None:
    found = [r["status"] for r in records if r["step"] == step]
    return found[-1] if found else None


def value(records: list[dict], key: str):
    found = None
    for r in records:
        if key in (r.get("data") or {}):
            found = r["data"][key]
    return found


def finished(records: list[dict], step: str) -> bool:
    return last_status(records, step) in ("done", "skipped")


def touched(records: list[dict], step: str) -> bool:
    return last_status(records, step) is not None


def disagreements(journal: list[dict], live: Live, *, before: Live) -> list[str]:
    """Every way the journal and the node disagree (empty: they agree)."""
    bad: list[str] = []
    recs = attempt(journal)
    # every step a run started has an end in the journal (done, skipped, failed or interrupted)
    for run in dict.fromkeys(r["run_id"] for r in recs):
        open_step = None
        for r in (r for r in recs if r["run_id"] == run and r["step"] not in ("begin", "complete")):
            if r["status"] == "started":
                open_step = r["step"]
            elif r["step"] == open_step or open_step is None:
                open_step = None
        if open_step is not None:
            bad.append(f"run {run}: step {open_step} started and has no end in the journal")
    if live.lock_holder:
        bad.append(f"the upgrade lock is still held by {live.lock_holder} (node {live.lock_node})")

    # cordon: drain cordons, uncordon undoes it
    if not touched(recs, "drain") and live.cordoned:
        bad.append("node cordoned, and the journal has no drain step")
    if finished(recs, "drain") and not touched(recs, "uncordon") and not live.cordoned:
        bad.append("journal: drain finished, but the node is schedulable")
    if finished(recs, "uncordon") and live.cordoned:
        bad.append("journal: uncordon finished, but the node is cordoned")
    if live.cordoned and live.cordoned_by and value(recs, "cordoned_by") != live.cordoned_by:
        bad.append(f"node cordoned by {live.cordoned_by}, the journal does not know it "
                   f"(cordoned_by={value(recs, 'cordoned_by')})")
    # noout: the noout step sets it (noted before), unset_noout clears it
    if live.noout and not (value(recs, "noout_by_us") or finished(recs, "noout")):
        bad.append("noout is set, and the journal does not say this upgrade set it")
    if finished(recs, "noout") and not touched(recs, "unset_noout") and not live.noout:
        bad.append("journal: noout finished, but the flag is not set")
    if finished(recs, "unset_noout") and live.noout:
        bad.append("journal: unset_noout finished, but the flag is set")
    # held packages: unhold (versions noted before), hold at the target builds
    unheld = [n for n in HELD if n not in live.held]
    if unheld and not value(recs, "held_before"):
        bad.append(f"{', '.join(unheld)} not held, and the journal has no held_before record")
    # (Kubespray's docker role holds the docker packages itself, as on a real cluster)
    if finished(recs, "unhold") and not touched(recs, "hold") and not touched(recs, "kubespray") and live.held:
        bad.append(f"journal: unhold finished, but held: {sorted(live.held)}")
    if not touched(recs, "unhold") and live.held != before.held:
        bad.append(f"held packages changed before the unhold step: {live.held} (was {before.held})")
    if finished(recs, "hold"):
        wrong = {n: v for n, v in live.held.items() if "focal" in v} or {n: None for n in HELD if n not in live.held}
        if wrong:
            bad.append(f"journal: hold finished, but held packages are {live.held}")
    # package runs: dpkg half done only inside an unfinished package step
    if live.audit and not any(touched(recs, s) and not finished(recs, s)
                              for s in ("dist_upgrade", "release_upgrade", "hold", "kubespray")):
        bad.append(f"dpkg is half done ({live.audit}) and no package step is unfinished in the journal")
    if finished(recs, "dist_upgrade") and not touched(recs, "release_upgrade") and live.audit:
        bad.append(f"journal: dist_upgrade finished, but dpkg is half done: {live.audit}")
    # reboots: a finished reboot shows a new boot id
    for step in ("reboot", "reboot_release"):
        was = value(recs, f"{step}_boot_id_before")
        if finished(recs, step) and was == live.boot_id:
            bad.append(f"journal: {step} finished, but the boot id is still {was}")
    # the release
    if finished(recs, "release_upgrade") and live.release != "22.04":
        bad.append(f"journal: release_upgrade finished, but the node runs {live.release}")
    if live.release != before.release and not touched(recs, "release_upgrade"):
        bad.append(f"the node runs {live.release}, and the journal has no release_upgrade step")
    if finished(recs, "repair") and live.legacy_keyring:
        bad.append("journal: repair finished, but /etc/apt/trusted.gpg is still there")
    # the Node annotation mirrors the journal's last word on a step
    last = recs[-1] if recs else None
    if last is not None and last["step"] not in ("begin", "complete") and last["status"] != "started":
        shown = (live.annotation or {}).get("step"), (live.annotation or {}).get("status")
        if shown != (last["step"], last["status"]):
            bad.append(f"the Node annotation says {shown}, the journal's last record {last['step']} {last['status']}")
    return bad


# --------------------------------------------------------------------------- starting and interrupting a run

@dataclass
class Started:
    proc: subprocess.Popen
    junit: Path
    log: Path
    since: int            # journal length when the run started
    unheeded: list[str] | None = None    # journal records a run wrote after a signal it did not heed


class Interrupter(Operator):
    """The scenario suite's operator, whose runs get their own session: SIGINT is then sent to the
    whole process group, as a terminal's Ctrl-C reaches pytest and every program it started."""

    def begin(self, profile: Path, *extra: str) -> Started:
        argv, junit = self.argv(profile, *extra)
        log = self.work / f"run-{self.count}.log"
        since = len(self.journal())
        # Stack dumps: a run still alive long after its signal is sent SIGUSR1 (the stackdump plugin)
        # and, past its bound, SIGABRT (PYTHONFAULTHANDLER); both write every thread's stack into its
        # log: where it hangs, not just that it does.
        env = dict(self.env(), PYTHONFAULTHANDLER="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
        proc = subprocess.Popen([*argv, "-p", "stackdump"], cwd=self.work, env=env,
                                stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115 - the child writes it
                                preexec_fn=terminal_signals,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        return Started(proc, junit, log, since)

    def journal(self) -> list[dict]:
        """The journal's records; a line being written right now (no newline yet) is not one."""
        path = self.reports / "runs" / "journal" / "nodegate-lab" / f"{NODE}-22.04.jsonl"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]

    def new_records(self, run: Started) -> list[dict]:
        return self.journal()[run.since:]

    def wait_for(self, run: Started, what: str, ready: Callable[[list[dict]], bool], *, timeout: float = 240,
                 interval: float = 0.05) -> None:
        """Poll until ``ready(records of this run)``; fail if the run ends first or it takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready(self.new_records(run)):
                return
            if run.proc.poll() is not None:
                raise AssertionError(f"the run ended (rc {run.proc.returncode}) before {what}:\n"
                                     + run.log.read_text()[-3000:])
            time.sleep(interval)
        raise AssertionError(f"{what}: not seen within {timeout}s; the run's journal: "
                             f"{[(r['step'], r['status']) for r in self.new_records(run)]}")

    @staticmethod
    def send(run: Started, sig: signal.Signals) -> None:
        if sig == signal.SIGINT:
            os.killpg(run.proc.pid, signal.SIGINT)        # Ctrl-C: the terminal's whole foreground group
        else:
            run.proc.send_signal(sig)                    # kill PID

    def stop(self, run: Started, *, timeout: float, resend: signal.Signals | None = None,
             unheeded_after: float = 12.0) -> tuple[int, float, list[str]]:
        """Wait for the interrupted run to end; returns (rc, seconds, processes of its session still running).
        With ``resend``: a run still alive ``unheeded_after`` seconds later, whose journal moved on since
        the signal, did not heed it: it is recorded in ``run.unheeded`` and signalled once more."""
        started = time.monotonic()
        seen = len(self.new_records(run))
        try:
            if resend is not None:
                try:
                    run.proc.wait(timeout=unheeded_after)
                except subprocess.TimeoutExpired:
                    # a run that records its step as interrupted did heed the signal (a busy machine
                    # may take a while to end it); only other progress means it went on
                    moved = [f"{r['step']} {r['status']}" for r in self.new_records(run)[seen:]
                             if r["status"] != "interrupted"]
                    if moved:
                        run.unheeded = moved
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(run.proc.pid, signal.SIGUSR1)     # its stacks into the log first
                        time.sleep(1.0)
                        self.send(run, resend)
            run.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            hung = session_leftovers(run.proc.pid)
            for pid in [run.proc.pid] + [int(p.split()[0]) for p in hung if " -m pytest " in p]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGABRT)     # faulthandler: the stacks of every thread into the log
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(timeout=10)
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait(timeout=30)
            raise AssertionError(f"the run did not end within {timeout}s of the signal; its processes then: {hung}; "
                                 f"log {run.log}:\n{run.log.read_text()[-8000:]}") from None
        seconds = time.monotonic() - started
        # What the run started ends with it, but the last of it may take a moment on a busy machine:
        # a bounded wait for the session to empty, then whatever is still there is reported.
        deadline = time.monotonic() + LEFTOVERS_GRACE_S
        while (left := session_leftovers(run.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return run.proc.returncode, seconds, left


def session_leftovers(sid: int) -> list[str]:
    """Processes still in the run's session, other than an ssh connection master (ControlPersist keeps it
    on purpose and it ends by itself)."""
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != sid:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ProcessLookupError):
            continue
        if cmd and not (cmd.startswith("ssh: ") and "[mux]" in cmd):
            left.append(f"{entry.name} {cmd[:160]}")
    return left


def end_session(sid: int) -> None:
    """Stop what is left of a run's session (cleanup after a failed assertion)."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
