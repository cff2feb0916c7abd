"""The OSD coupling: an OSD runs iff its node is up and its rook-ceph-osd pod runs
(LabCeph.start_osd/stop_osd).

Each function takes the Cluster (nodegate.lab.apiserver.cluster) it works on."""
from __future__ import annotations

import asyncio
import json
import logging

from nodegate.lab.apiserver.objects import PODS

log = logging.getLogger("nodegate.lab.apiserver.cluster")

# ------------------------------------------------------------------ OSDs follow pods
def _ceph_ready(cluster):
    """LabCeph once the supervisor has created the cluster (before that, creation owns the OSDs)."""
    if cluster._ceph is not None:
        return cluster._ceph
    try:
        book = json.loads((cluster.config.dir / "supervisor-status.json").read_text())
    except (OSError, ValueError):
        return None
    if (book.get("ceph") or {}).get("state") != "created":
        return None
    if cluster._ceph_factory is not None:
        cluster._ceph = cluster._ceph_factory(cluster.config)
    else:
        from nodegate.lab.ceph import LabCeph

        cluster._ceph = LabCeph(cluster.config)
    return cluster._ceph

def osd_wanted(cluster) -> dict[str, bool]:
    """node -> whether its OSD should run: node up and its rook-ceph-osd pod running."""
    want = {n.name: False for n in cluster.config.nodes}
    for pod in cluster.store.peek(PODS, "rook-ceph"):
        labels = pod["metadata"].get("labels") or {}
        if labels.get("app") != "rook-ceph-osd":
            continue
        node = pod["spec"].get("nodeName")
        view = cluster.mirror.views.get(node or "")
        rt = cluster.runtimes.get(pod["metadata"]["uid"])
        if view is None or not view.up or rt is None or rt.started_at is None:
            continue
        if pod["metadata"].get("deletionTimestamp"):
            continue  # SIGTERM went to ceph-osd with the deletion
        want[view.node.name] = True
    return want

def couple_osds(cluster, now: float) -> None:
    ceph = cluster._ceph_ready()
    if ceph is None:
        return
    want = cluster.osd_wanted()
    recheck = now - cluster._osd_checked >= 5.0  # catch an OSD that died or was started behind our back
    if recheck:
        cluster._osd_checked = now
    for node, run in want.items():
        task = cluster._osd_tasks.get(node)
        if task is not None and not task.done():
            continue
        if cluster._osd_state.get(node) == run and not recheck:
            continue
        cluster._osd_state[node] = run
        cluster._osd_tasks[node] = asyncio.get_running_loop().create_task(cluster._set_osd(ceph, node, run))

async def _set_osd(cluster, ceph, node: str, run: bool) -> None:
    try:
        running = await asyncio.to_thread(ceph.osd_running, node)
        if run and not running:
            log.info("starting the OSD of %s", node)
            await asyncio.to_thread(ceph.start_osd, node)
        elif not run and running:
            log.info("stopping the OSD of %s", node)
            await asyncio.to_thread(ceph.stop_osd, node)
    except Exception as exc:  # the next pass retries
        log.error("OSD of %s (%s): %s", node, "start" if run else "stop", exc)
        cluster._osd_state.pop(node, None)
