"""Faults the lab can inject, and DIR/faults.json that records which are on.

faults.json: {"<fault-name>": {"nodes": ["node4"], "since": epoch, ...params}}, written by
`nodegate lab fault` only (atomic rename). Who acts on each fault:
- the supervisor: hang-on-reboot (a node that goes down stays down until the fault is cleared);
- this module, inside the node over SSH: held-version-drift, pending-updates, reboot-required;
- the API server (reads faults.json): pdb-block, api-flaky, csi-rbd-broken;
- Ceph (LabCeph.inject_warning/clear_warning): ceph-warn.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nodegate.core.errors import PermanentError, TransientError, UsageError
from nodegate.lab.config import LabConfig

HELD_DRIFT_PACKAGE = "containerd.io"
PENDING_PACKAGE = "lab-tools"     # focal-updates 2.0 over focal 1.9 in the archive stand-in


@dataclass(frozen=True)
class FaultSpec:
    name: str
    summary: str
    per_node: bool          # True: applies to named nodes; False: cluster-wide
    acted_on_by: str


FAULTS: dict[str, FaultSpec] = {spec.name: spec for spec in (
    FaultSpec("hang-on-reboot", "the node goes down on its next reboot and stays down until cleared "
              "(clearing boots it), like hardware that needs out-of-band access", True, "supervisor"),
    FaultSpec("held-version-drift", f"a held {HELD_DRIFT_PACKAGE} at another version than the inventory expects",
              True, "node (apt over SSH)"),
    FaultSpec("pending-updates", "an ordinary package on the node gets a pending update", True,
              "node (apt over SSH)"),
    FaultSpec("reboot-required", "the node needs a reboot (a new kernel installed): /var/run/reboot-required "
              "names linux-image-*; gone after the next reboot", True, "node (over SSH)"),
    FaultSpec("pdb-block", "a PodDisruptionBudget blocks evicting the node's pods", True, "API server"),
    FaultSpec("api-flaky", "the API server fails a share of requests (--ratio, --for SECONDS)", False,
              "API server"),
    FaultSpec("csi-rbd-broken", "csi-rbdplugin crash-loops on the node (the Ubuntu 24.04 kmod issue)", True,
              "API server"),
    FaultSpec("ceph-warn", "Ceph reports HEALTH_WARN (a flag left set)", False, "Ceph"),
)}


class FaultBook:
    """DIR/faults.json as a dict of fault name -> {"nodes": [...], "since": epoch, ...params}."""

    def __init__(self, lab_dir: Path) -> None:
        self.path = Path(lab_dir) / "faults.json"
        self.data: dict[str, dict] = {}
        self.reload()

    def reload(self) -> None:
        try:
            self.data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {}

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def active(self, name: str) -> bool:
        return name in self.data

    def nodes(self, name: str) -> list[str]:
        return list(self.data.get(name, {}).get("nodes", []))

    def node_has(self, name: str, node: str) -> bool:
        return node in self.nodes(name)

    def add(self, name: str, node: str | None, params: dict) -> None:
        entry = self.data.setdefault(name, {"nodes": [], "since": time.time()})
        if node and node not in entry["nodes"]:
            entry["nodes"].append(node)
        entry.update(params)

    def remove(self, name: str, node: str | None) -> None:
        """Remove the fault from one node (the whole entry once no node is left), or entirely."""
        entry = self.data.get(name)
        if entry is None:
            return
        if node is None or not FAULTS[name].per_node:
            del self.data[name]
            return
        if node in entry["nodes"]:
            entry["nodes"].remove(node)
        for key in list(entry):
            if isinstance(entry[key], dict) and node in entry[key]:
                del entry[key][node]
        if not entry["nodes"]:
            del self.data[name]


@dataclass(frozen=True)
class FaultChange:
    fault: str
    node: str | None
    action: str            # "set" | "cleared"
    detail: str


def check_names(config: LabConfig, name: str, node: str | None, *, clearing: bool) -> FaultSpec:
    """Refuse an unknown fault or node before anything changes, naming what exists."""
    spec = FAULTS.get(name)
    if spec is None:
        raise UsageError(f"unknown fault {name!r}", fix=f"use one of: {', '.join(FAULTS)}")
    if node is not None:
        known = [n.name for n in config.nodes]
        if node not in known:
            raise UsageError(f"no lab node {node!r}", fix=f"use one of: {', '.join(known)}")
    elif spec.per_node and not clearing:
        raise UsageError(f"fault {name} needs --node NODE",
                         fix=f"use one of: {', '.join(n.name for n in config.nodes)}")
    return spec


def set_fault(config: LabConfig, name: str, *, node: str | None = None, params: dict | None = None) -> FaultChange:
    check_names(config, name, node, clearing=False)
    book = FaultBook(config.dir)
    params = dict(params or {})
    if book.node_has(name, node) if node else book.active(name):
        return FaultChange(name, node, "set", "already set; nothing changed")
    detail = ""
    if name == "held-version-drift":
        params, detail = _drift_on(config, node, book)
    elif name == "pending-updates":
        params, detail = _pending_on(config, node, book)
    elif name == "reboot-required":
        detail = _reboot_required_on(config, node)
    elif name == "ceph-warn":
        _lab_ceph(config).inject_warning()
        detail = "Ceph warning injected"
    elif name == "api-flaky":
        ratio = float(params.get("ratio", 0.5))
        if not 0 < ratio <= 1:
            raise UsageError(f"--ratio must be in (0, 1], not {ratio}")
        params["ratio"] = ratio
        if params.get("for_s"):
            params["until"] = time.time() + float(params["for_s"])
    book.add(name, node, params)
    book.save()
    return FaultChange(name, node, "set", detail)


def clear_fault(config: LabConfig, name: str, *, node: str | None = None) -> list[FaultChange]:
    """Clear the fault on one node, or (node None) everywhere it is set."""
    spec = check_names(config, name, node, clearing=True)
    book = FaultBook(config.dir)
    if spec.per_node:
        targets = [node] if node else book.nodes(name)
        targets = [t for t in targets if book.node_has(name, t)]
    else:
        targets = [None] if book.active(name) else []
    changes = []
    for target in targets:
        detail = ""
        if name == "held-version-drift":
            detail = _drift_off(config, target, book.data[name].get("restore", {}).get(target))
        elif name == "pending-updates":
            detail = _pending_off(config, target, book.data[name].get("restore", {}).get(target))
        elif name == "reboot-required":
            detail = _reboot_required_off(config, target)
        elif name == "ceph-warn":
            _lab_ceph(config).clear_warning()
            detail = "Ceph warning cleared"
        book.remove(name, target)
        book.save()
        changes.append(FaultChange(name, target, "cleared", detail))
    if not changes:
        changes.append(FaultChange(name, node, "cleared", "was not set; nothing changed"))
    return changes


def clear_node_faults(config: LabConfig, node: str) -> list[str]:
    """Forget every per-node fault on `node` (after `lab reset`: its disk is fresh again)."""
    book = FaultBook(config.dir)
    cleared = [name for name in list(book.data)
               if name in FAULTS and FAULTS[name].per_node and book.node_has(name, node)]
    for name in cleared:
        book.remove(name, node)
    if cleared:
        book.save()
    return cleared


# -- node-side faults (real apt inside the node, over real SSH) ----------------------------------
def run_on_node(config: LabConfig, node: str, command: str, *, timeout_s: float = 120.0,
                check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ssh", "-F", str(config.dir / "ssh/config"), node, command]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise TransientError(f"{node}: command did not finish in {timeout_s:.0f} s: {command}") from exc
    if check and result.returncode != 0:
        raise PermanentError(f"{node}: `{command}` failed with exit {result.returncode}: "
                             f"{(result.stderr or result.stdout).strip()[-800:]}")
    return result


_APT = "DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Options::=--force-confold"


def _versions(config: LabConfig, node: str, package: str) -> tuple[str, list[str]]:
    """(installed version, every version the node's apt knows, newest first)."""
    out = run_on_node(config, node, f"apt-get update -qq >/dev/null 2>&1; "
                                    f"dpkg-query -W -f='${{Version}}\\n' {shlex.quote(package)} 2>/dev/null; "
                                    f"echo ---; apt-cache madison {shlex.quote(package)}").stdout
    installed, _, madison = out.partition("---")
    versions = []
    for line in madison.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 2 and parts[1] not in versions:
            versions.append(parts[1])
    return installed.strip(), versions


def _install_version(config: LabConfig, node: str, package: str, version: str, *, hold: bool) -> None:
    spec = shlex.quote(f"{package}={version}")
    command = f"{_APT} install --allow-downgrades --allow-change-held-packages {spec}"
    if hold:
        command += f" && apt-mark hold {shlex.quote(package)}"
    run_on_node(config, node, command)


def _drift_on(config: LabConfig, node: str, book: FaultBook) -> tuple[dict, str]:
    package = HELD_DRIFT_PACKAGE
    installed, versions = _versions(config, node, package)
    others = [v for v in versions if v != installed]
    if not installed or not others:
        raise PermanentError(f"{node}: no other version of {package} in the lab repository "
                             f"(installed {installed or 'none'}, known {versions})")
    target = others[0]
    _install_version(config, node, package, target, hold=True)
    restore = dict(book.data.get("held-version-drift", {}).get("restore", {}))
    restore[node] = {"package": package, "version": installed}
    return {"restore": restore}, f"{package} {installed} -> {target} (held)"


def _drift_off(config: LabConfig, node: str, restore: dict | None) -> str:
    if not restore:
        return "nothing recorded to restore"
    _install_version(config, node, restore["package"], restore["version"], hold=True)
    return f"{restore['package']} back to {restore['version']} (held)"


def _pending_on(config: LabConfig, node: str, book: FaultBook) -> tuple[dict, str]:
    """Downgrade one ordinary (not held) package that has an older build in the lab repository,
    so `apt list --upgradable` shows it again, as a fresh update published upstream would."""
    script = (
        "apt-get update -qq >/dev/null 2>&1; held=$(apt-mark showhold); "
        "for p in $(dpkg-query -W -f='${Package}\\n'); do "
        "  echo \"$held\" | grep -qx \"$p\" && continue; "
        "  n=$(apt-cache madison \"$p\" | awk -F'|' '{gsub(/ /,\"\",$2); print $2}' | sort -u | wc -l); "
        "  [ \"$n\" -ge 2 ] && echo \"$p\"; "
        "done; true"   # the loop's status is its last test's: a last package with one version is not an error
    )
    # The archive's lab-tools is built for this fault (aptrepo.LAB_TOOLS), so it is tried first and
    # the scan is needed only without it: during an upgrade run the docker packages are unheld and
    # would come first alphabetically, but they are the run's own business, not an ordinary update.
    looked = [PENDING_PACKAGE]
    found = _downgrade_one(config, node, PENDING_PACKAGE)
    if found is None:
        looked += [p for p in run_on_node(config, node, script).stdout.split() if p != PENDING_PACKAGE]
        found = next(filter(None, (_downgrade_one(config, node, p) for p in looked[1:])), None)
    if found is None:
        raise PermanentError(f"{node}: no ordinary package with an older build in the lab repository "
                             f"(looked at {', '.join(looked)})")
    package, installed, older = found
    restore = dict(book.data.get("pending-updates", {}).get("restore", {}))
    restore[node] = {"package": package, "version": installed, "pending_from": older}
    return {"restore": restore}, f"{package} {installed} -> {older}; {installed} now pending"


def _downgrade_one(config: LabConfig, node: str, package: str) -> tuple[str, str, str] | None:
    """(package, installed, older) after installing an older build of it, or None if it has none."""
    installed, versions = _versions(config, node, package)
    older = [v for v in versions if v != installed and _version_lt(v, installed)]
    if not (installed and older):
        return None
    _install_version(config, node, package, older[0], hold=False)
    return package, installed, older[0]


def _pending_off(config: LabConfig, node: str, restore: dict | None) -> str:
    if not restore:
        return "nothing recorded to restore"
    installed, _ = _versions(config, node, restore["package"])
    still = installed == restore["pending_from"] if "pending_from" in restore else \
        _version_lt(installed, restore["version"])
    if installed and not still:
        # The pending update was installed since (a dist-upgrade, a release upgrade): nothing to
        # undo, and the recorded build may no longer exist in the node's new release.
        return f"{restore['package']} is at {installed} already (the pending update was installed)"
    _install_version(config, node, restore["package"], restore["version"], hold=False)
    return f"{restore['package']} back to {restore['version']}"


# What the kernel packages' postinst leaves behind on Ubuntu after `apt dist-upgrade` brings a new kernel.
REBOOT_REQUIRED_PKGS = ("linux-image-5.4.0-150-generic", "linux-base")


def _reboot_required_on(config: LabConfig, node: str) -> str:
    pkgs = "\\n".join(REBOOT_REQUIRED_PKGS)
    run_on_node(config, node, "echo '*** System restart required ***' > /var/run/reboot-required && "
                              f"printf '{pkgs}\\n' >> /var/run/reboot-required.pkgs")
    return f"/var/run/reboot-required names {', '.join(REBOOT_REQUIRED_PKGS)} (cleared by a reboot)"


def _reboot_required_off(config: LabConfig, node: str) -> str:
    # /run is emptied by a reboot: a node that rebooted or is down has nothing left to clear.
    result = run_on_node(config, node, "rm -f /var/run/reboot-required /var/run/reboot-required.pkgs",
                         check=False, timeout_s=20)
    return "removed /var/run/reboot-required" if result.returncode == 0 else "node not reachable; nothing to remove"


def _version_lt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0


def _lab_ceph(config: LabConfig):
    try:
        from nodegate.lab.ceph import LabCeph
    except ImportError as exc:
        raise PermanentError("this lab has no Ceph module (nodegate.lab.ceph)") from exc
    return LabCeph(config)
