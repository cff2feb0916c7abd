"""Storage gates against the Rook and Ceph that clusters run (field-facts.md "Real clusters against
the lab"), on one lab of their own brought up the way production differs from the default lab:

- ``--domain example.internal``: Nodes are FQDNs (Kubespray's kube_override_hostname), the inventory
  keeps short names, and Rook's CRUSH hosts read ``node4-example-internal`` (NormalizeCrushName);
- ``--rook v1.18.9``: the RBD node plugin is ceph-csi-operator's ``rook-ceph.rbd.csi.ceph.com-nodeplugin``;
- ``--manage-pod-budgets --osd-maintenance-timeout 20``: the lab's Rook disruption controller sets
  noout on a drained node's CRUSH host and takes it back after 20 s (rook clusterdisruption/osd.go);
- ``--boot-delay 30 --osd-down-out-interval 30``: every reboot keeps the OSD down longer than Rook's
  noout lasts, and Ceph marks a down OSD out once it has been down 30 s without noout.

The tests run in file order and share node4's one upgrade (20.04 -> 22.04).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from labkit import LabAccess, fixed_kubespray_checkout, net_beside, nodegate
from scenariotools import QUIET_PLUGINS, Operator, write_profile

from nodegate.lab.config import LabConfig

ROOT = Path(__file__).resolve().parents[2]
NODE, FQDN, CRUSH = "node4", "node4.example.internal", "node4-example-internal"
OSD = 3
PLUGIN = "rook-ceph.rbd.csi.ceph.com-nodeplugin"
LIMITS = dict(reboot_timeout_worker_s=180, storage_timeout_s=180, lock_stale_after_s=120, settle_s=0)
FIGURES: dict[str, str] = {}


class FieldLab(LabAccess):
    def flags(self) -> dict:
        """`ceph osd dump` and `ceph status` reduced to what these tests decide on; ``t`` is when
        the dump was asked for, ``t_end`` when both answers were in."""
        asked = time.time()
        dump = json.loads(self.ceph.run(["osd", "dump", "-f", "json"]).stdout)
        status = json.loads(self.ceph.run(["status", "-f", "json"]).stdout)
        osd = next(o for o in dump["osds"] if o["osd"] == OSD)
        states = [s["state_name"] for s in (status.get("pgmap") or {}).get("pgs_by_state") or []]
        return {"t": asked, "t_end": time.time(), "global": dump.get("flags", ""), "crush": dump.get("crush_node_flags") or {},
                "up": osd["up"], "in": osd["in"], "own": [s for s in osd["state"] if s not in ("exists", "up")],
                "pgs": states}


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    lab_dir = tmp_path_factory.mktemp("field") / "lab"
    nodegate("lab", "up", "--dir", str(lab_dir), "--nodes", "4", "--net", str(net_beside("storage-field")),
             "--domain", "example.internal", "--rook", "v1.18.9", "--manage-pod-budgets",
             "--osd-maintenance-timeout", "20", "--boot-delay", "30", "--osd-down-out-interval", "30", timeout=600)
    lab = FieldLab(LabConfig.load(lab_dir))
    work = lab_dir.parent / "work"
    work.mkdir()
    checkout = fixed_kubespray_checkout(lab.config, work)
    profile = write_profile(lab.config, work / "fixed.toml", kubespray=checkout, **LIMITS)
    yield lab, Operator(work, lab.config), profile
    lab.kube.close()
    shutil.rmtree(Operator(work, lab.config).control, ignore_errors=True)
    if os.environ.get("NODEGATE_KEEP_LAB") != "1":
        nodegate("lab", "down", "--dir", str(lab_dir), check=False)


def _pytest(op: Operator, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider", "-p", "no:randomly",
                           *QUIET_PLUGINS, "--color=no", "-rA"], cwd=op.work, env=op.env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _checks(op: Operator, profile: Path, *args: str, target: str = "22.04") -> subprocess.CompletedProcess:
    return _pytest(op, str(ROOT / "checks"), "--cluster", str(profile), "--node", NODE, "--target-release", target,
                   "-m", "preflight", *args)


def _failed(run: subprocess.CompletedProcess) -> set[str]:
    """The failed checks of a run, as `file::test[id]` (the summary lines of -rA)."""
    return {line.split()[1].rsplit("/", 1)[-1] for line in run.stdout.splitlines() if line.startswith("FAILED ")}


def test_lab_names_things_as_production_does(field):
    """rook NormalizeCrushName: the CRUSH host is the hostname label with '.' -> '-'; Rook's OSD
    containers get NODE_NAME, which ceph osd metadata reports as hostname (rook osd/envs.go)."""
    lab, _, _ = field
    node = lab.kube.node(FQDN)
    assert node.labels["kubernetes.io/hostname"] == FQDN
    assert lab.ceph.osd_ids_by_host()[CRUSH] == (OSD,)
    assert lab.ceph.osd_metadata_hosts()[OSD] == FQDN
    assert [n.kube_node for n in lab.profile.nodes if n.name == NODE] == [FQDN]
    plugins = lab.kube.list_objects("/apis/apps/v1/namespaces/rook-ceph/daemonsets", what="ds")
    assert [d["metadata"]["name"] for d in plugins] == [PLUGIN]


def test_plan_shows_the_mapping(field):
    lab, op, profile = field
    run = _pytest(op, str(ROOT / "procedures"), "--cluster", str(profile), "--node", NODE, "--target-release", "22.04",
                  "-s")
    assert run.returncode == 0, run.stdout[-3000:]
    out = run.stdout
    assert f"{NODE} -> Node {FQDN} -> kubernetes.io/hostname={FQDN} -> CRUSH host {CRUSH} (osd.{OSD}" in out, out
    assert "managePodBudgets true, osdMaintenanceTimeout 1 min" in out, out   # the CR carries whole minutes
    assert f"[ceph] ceph osd add-noout osd.{OSD}" in out and f"ceph osd rm-noout osd.{OSD}" in out, out
    assert f"kubectl drain {FQDN}" in out, out


def test_preflight_finds_the_operator_nodeplugin_and_catches_csi_rbd_broken(field):
    lab, op, profile = field
    ok = _checks(op, profile, "-k", "csi or cephcsi or osds or noout or rbd_module")
    assert ok.returncode == 0, ok.stdout[-4000:]
    lab.cli("fault", "csi-rbd-broken", "--node", NODE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:   # the plugin's container crashes ~1 s after the fault
            pods = lab.kube.list_pods(node=FQDN, namespace="rook-ceph", selector=f"app={PLUGIN}")
            if pods and not pods[0].ready:
                break
            time.sleep(0.5)
        broken = _checks(op, profile, "-k", "csi_rbdplugin")
    finally:
        lab.cli("fault", "--clear", "csi-rbd-broken", "--node", NODE)
    assert broken.returncode == 1, broken.stdout[-4000:]
    assert _failed(broken) == {f"test_storage.py::test_csi_rbdplugin_healthy[{NODE}]"}, broken.stdout[-3000:]
    assert f"the RBD node plugin rook-ceph/{PLUGIN}-" in broken.stdout and f"on {FQDN} is not healthy" in broken.stdout
    FIGURES["csi-rbd-broken on v1.18.9"] = "storage gate failed naming rook-ceph/" + PLUGIN + "-…"


def test_rook_alone_lets_the_osd_be_marked_out(field):
    """The danger, shown without nodegate: drain node4's OSD by hand; Rook sets noout on its CRUSH
    host, takes it back after osdMaintenanceTimeout (20 s), and Ceph marks osd.3 out."""
    lab, _, _ = field
    lab.kube.cordon(FQDN)
    started = time.monotonic()
    seen_rook_noout = marked_out = None
    try:
        for pod in lab.kube.list_pods(node=FQDN, namespace="rook-ceph", selector="app=rook-ceph-osd"):
            lab.kube.evict(pod)
        while time.monotonic() - started < 120 and marked_out is None:
            f = lab.flags()
            if seen_rook_noout is None and "noout" in f["crush"].get(CRUSH, []):
                seen_rook_noout = time.monotonic() - started
            if f["in"] == 0:
                marked_out = time.monotonic() - started
            time.sleep(1)
    finally:
        lab.kube.uncordon(FQDN)
    assert seen_rook_noout is not None, "the lab's Rook never set noout on the drained node's CRUSH host"
    assert marked_out is not None and marked_out >= seen_rook_noout + 20, (seen_rook_noout, marked_out)
    lab.wait_healthy(timeout=300)
    FIGURES["Rook alone"] = (f"Rook noout on {CRUSH} at {seen_rook_noout:.0f} s, taken back, osd.{OSD} marked out "
                             f"at {marked_out:.0f} s")


def test_upgrade_keeps_the_osds_protected_longer_than_rook_does(field):
    lab, op, profile = field
    samples: list[dict] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                samples.append(lab.flags())
            except Exception:  # noqa: BLE001 - a missed sample is a gap, not a failure
                pass
            stop.wait(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run = op.run(profile, timeout=900)
    finally:
        stop.set()
        watcher.join(10)
    assert run.rc == 0, run.text[-5000:]
    journal = op.journal()
    at: dict = {}
    for r in journal:   # a step records "started" more than once (its plan, then its run): the first counts
        key = (r["step"], r["status"])
        if r["status"] != "started" or key not in at:
            at[key] = r["at"]
    window = (at[("noout", "done")], at[("unset_noout", "started")])
    release = at[("release_upgrade", "started")]
    inside = [s for s in samples if window[0] <= s["t"] and s["t_end"] <= window[1]]
    # samples from the release upgrade on (it lasts seconds in the lab, one sample may miss it; the
    # reboot into the new release after it keeps the OSD down for more than Rook's 20 s)
    from_release = [s for s in inside if s["t"] >= release]
    assert inside and from_release, (window, len(samples))
    for s in inside:
        assert "noout" in s["own"], f"osd.{OSD} lost its own noout flag at {s}"
    assert all(s["in"] == 1 for s in samples), "osd.3 was marked out"
    # No data moved: no PG backfilled. A PG may read "remapped" while osd.3 is down, and that moves
    # nothing: Ceph keeps it active on a temporary acting set, e.g. one with the complete copy that
    # the test before (osd.3 out, then in again) left on another OSD (seen in the lab's mgr log:
    # "1 active+clean+remapped" from the drain until osd.3 was back, no backfill).
    assert not any("backfill" in st for s in samples for st in s["pgs"]), "backfill started"
    down = [s for s in inside if s["up"] == 0]
    assert down and any("noout" not in s["crush"].get(CRUSH, []) for s in down), \
        "Rook's own noout never expired while the OSD was down: the test would not show anything"
    end = lab.flags()
    assert "noout" not in end["own"] and "noout" not in end["crush"].get(CRUSH, []) and "noout" not in end["global"]
    starts = sorted((r["at"], r["step"]) for r in journal if r["status"] == "started")

    def step_at(t: float) -> str:
        return next((step for at_, step in reversed(starts) if at_ <= t), "?")

    shown = [f"{time.strftime('%H:%M:%S', time.gmtime(s['t']))} [{step_at(s['t'])}] osd.{OSD} up={s['up']} "
             f"in={s['in']} own flags={s['own']} crush_node_flags={s['crush']}"
             for s in inside[:: max(1, len(inside) // 12)] + from_release[:3]]
    print("ceph osd dump while nodegate protected node4's OSD (release upgrade marked [release_upgrade]):\n"
          + "\n".join(sorted(set(shown))))
    FIGURES["upgrade"] = (f"{run.seconds:.0f} s; OSD protected {window[1] - window[0]:.0f} s, down "
                          f"{len(down)} samples; {len(samples)} samples, none out, no backfill")


def test_missing_node_plugin_fails_the_gates(field):
    """node4 now runs 22.04, so the 24.04 gate applies: first it reads cephcsi from the operator's
    nodeplugin; then, with the DaemonSet gone and the StorageClass still there, both gates fail
    and say what they looked for."""
    lab, op, profile = field
    found = _checks(op, profile, "-k", "cephcsi", target="24.04")
    assert found.returncode == 0, found.stdout[-3000:]
    path = f"/apis/apps/v1/namespaces/rook-ceph/daemonsets/{PLUGIN}"
    saved = lab.kube._get("read the plugin", path)
    lab.kube._request("delete the plugin", "DELETE", path)
    try:
        run = _checks(op, profile, "-k", "cephcsi or csi_rbdplugin", target="24.04")
    finally:
        body = {k: v for k, v in saved.items() if k != "status"}
        body["metadata"] = {k: v for k, v in saved["metadata"].items()
                            if k in ("name", "namespace", "labels", "annotations")}
        lab.kube._request("restore the plugin", "POST", "/apis/apps/v1/namespaces/rook-ceph/daemonsets", body=body)
    out = run.stdout
    assert run.returncode == 1, out[-3000:]
    assert _failed(run) == {f"test_storage.py::test_csi_rbdplugin_healthy[{NODE}]",
                            f"test_compat.py::test_cephcsi_for_target[{NODE}]"}, out[-3000:]
    assert out.count("uses RBD driver(s) rook-ceph.rbd.csi.ceph.com but no DaemonSet runs its node plugin") >= 2
    assert "--type=rbd --nodeserver=true" in out and "csi_rbd_daemonset" in out and "csi_rbd = false" in out
    print("figures:", json.dumps(FIGURES, indent=1))
