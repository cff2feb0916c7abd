"""Validating access before any check runs: every selected node answers over SSH, the API and Ceph
answer; a refused login or an unknown host key is one clear message before anything runs. Also
the reads prefetched for the whole fleet at once.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from nodegate.plugin.options import NodegateRun, _is_ours
from nodegate.plugin.reads import Reads, reads_for

if TYPE_CHECKING:
    from nodegate.core.parsing import OsRelease
    from nodegate.profile.model import NodeSpec


_SSH_FIXTURES = ("host", "nodes", "reads", "releases")
_KUBE_FIXTURES = ("kube", "ceph", "reads")


def _uses(item: pytest.Item, names: Iterable[str]) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(name in info.names_closure and _is_ours(info.name2fixturedefs.get(name)) for name in names)


def _refuse_postflight_without_target(run: NodegateRun, phases: set[str]) -> None:
    if "postflight" in phases and run.options.target_release is None:
        raise pytest.UsageError(
            "postflight checks compare the node with the release it was upgraded to, but no --target-release "
            "was given\n  fix: add --target-release 22.04 or 24.04 (the release the node was upgraded to)")


def _connect_or_refuse(reads: "Reads", run: NodegateRun) -> None:
    from nodegate.core.errors import TransientError, UsageError

    try:
        reads.connect()
    except TransientError as exc:
        raise UsageError(f"the cluster of kubeconfig {run.profile.kube.kubeconfig} is unreachable: {exc.message}",
                         fix=exc.fix or "check the API server address in the kubeconfig") from None


def _xdist_controller(config: pytest.Config) -> bool:
    """The process that deals the checks out to xdist workers: it collects nothing itself."""
    return getattr(config, "workerinput", None) is None and config.pluginmanager.has_plugin("dsession")


CHECKED_BY_CONTROLLER = pytest.StashKey[bool]()


def validate_access(config: pytest.Config, run: NodegateRun, items: list[pytest.Item], phases: set[str]) -> None:
    """Reach the API server and every selected node once, before any test runs; then start the
    reads the selected checks will make, so they are answered while the first checks run."""
    needs_kube = any(_uses(i, _KUBE_FIXTURES) for i in items)
    needs_ssh = bool(run.nodes) and any(_uses(i, _SSH_FIXTURES) for i in items)
    workerinput = getattr(config, "workerinput", None)
    # under xdist the controller has checked every node before starting the workers (else the
    # first worker does: xdist starts no test before every worker has collected); a worker reads
    # only the nodes dealt to it
    validating = workerinput is None or (workerinput.get("workerid", "gw0") == "gw0"
                                         and not workerinput.get("nodegate_checked"))
    reads = reads_for(config)
    reads.fleet = len(run.nodes) > 1
    if needs_ssh:
        for spec in run.nodes:
            reads.host(spec.name)          # built here, in one thread
    if needs_kube:
        reads.prefetch(reads.connect)   # importing the client and the first request: ~0.5 s
    if needs_ssh and validating and len(run.nodes) > 1:
        reads.prefetch(*[functools.partial(reads.snapshot, spec.name) for spec in run.nodes[1:]])
    # an xdist worker runs only its share of the checks: reading everything ahead in every
    # worker would multiply the load on the nodes, the API server and Ceph
    ahead = workerinput is None
    if ahead and needs_kube:
        # the API and Ceph reads start now (each waits for the client, and fails with its error):
        # the Ceph commands, one ok-to-stop per node, are the longest chain of a fleet's preflight
        _prefetch(reads, run, items, phases, needs_kube=True, needs_ssh=False)
    if not ahead:
        # an xdist worker reads ahead node by node, as the nodes are dealt to it (pytest_runtest_protocol)
        config.stash[WORKER_AHEAD_KEY] = WorkerAhead(run=run, items=items, phases=phases, needs_kube=needs_kube,
                                                     needs_ssh=needs_ssh)
    snapshots = {spec.name: reads.snapshot(spec.name) for spec in run.nodes} if needs_ssh and validating else {}
    for spec in run.nodes:
        if spec.name in snapshots and phases == {"preflight"} and run.target is not None:
            _check_target(spec, snapshots[spec.name].os_release, run)
    if needs_ssh and validating:
        # root's commands go through sudo: one that asks for a password and was given none is
        # refused here, naming the node and the fix, before any check or step needs it
        for spec in run.nodes:
            reads.host(spec.name).privilege()
    if ahead and needs_ssh:
        # the nodes' reads (apt-get update: seconds) start now, while the API client still loads
        _prefetch(reads, run, items, phases, needs_kube=False, needs_ssh=True)
    if needs_kube:
        _connect_or_refuse(reads, run)


@dataclass
class WorkerAhead:
    """What an xdist worker reads ahead, and for which nodes it has started already."""
    run: NodegateRun
    items: list[pytest.Item]
    phases: set[str]
    needs_kube: bool
    needs_ssh: bool
    started: set[str] = field(default_factory=set)


WORKER_AHEAD_KEY = pytest.StashKey[WorkerAhead]()


def _prefetch(reads: Reads, run: NodegateRun, items: list[pytest.Item], phases: set[str], *,
              needs_kube: bool, needs_ssh: bool, only: "Sequence[NodeSpec] | None" = None) -> None:
    """Start what the selected checks will read (by check name, so `-k` on one check stays lean);
    ``only``: the reads of these nodes (and the cluster's, each taken once)."""
    selected = {getattr(i, "originalname", i.name) for i in items}
    specs = list(only) if only is not None else list(run.nodes)
    names = [spec.name for spec in specs]
    wanted: list[Callable[[], Any]] = []
    if needs_kube and selected & {"test_node_ready", "test_node_no_pressure", "test_node_schedulable",
                                  "test_kubelet_version", "test_os_release_matches_phase", "test_other_nodes_ready",
                                  "test_one_node_at_a_time", "test_control_plane_can_lose_node"}:
        wanted.append(reads.node_statuses)
    storage = {"test_ceph_healthy", "test_node_osds_up", "test_osds_ok_to_stop", "test_noout_as_expected"}
    if needs_kube and selected & storage:
        # side by side (see CEPH_PARALLEL); each node's ok-to-stop waits for the one OSD tree
        ceph_reads: list[Callable[[], Any]] = [reads.osd_tree, reads.ceph_status, reads.osd_dump,
                                               reads.osd_metadata_hosts]
        if "test_osds_ok_to_stop" in selected:
            def ok_to_stop(spec: "NodeSpec") -> None:
                ids = reads.crush_mapping(spec).osd_ids
                if ids:
                    reads.ok_to_stop(tuple(ids))
            ceph_reads += [functools.partial(ok_to_stop, spec) for spec in specs]
        reads.prefetch(*ceph_reads, ceph=True)
    if needs_kube and selected & {"test_csi_rbdplugin_healthy", "test_rbd_module"}:
        wanted += [functools.partial(reads.csi_rbdplugin, spec.kube_node) for spec in specs]
    if needs_kube and "test_upgrade_lock_free" in selected:
        wanted.append(reads.lock)
    if needs_kube and "test_pods_evictable" in selected:
        wanted += [functools.partial(reads.eviction_blockers, spec.kube_node) for spec in specs]
        wanted += [reads.pdbs, reads.rook_settings]     # the drain preview's budgets and Rook's setting
    if needs_ssh and "test_apt_update_clean" in selected:
        wanted += [functools.partial(reads.apt_update, n) for n in names]
    if needs_ssh and "test_nothing_upgradable" in selected:
        if "test_apt_update_clean" in selected:
            reads.update_before_upgradable(names)   # never beside it on the same node
        wanted += [functools.partial(reads.upgradable, n) for n in names]
    if needs_ssh and "test_etcd_healthy" in selected:
        wanted += [functools.partial(reads.etcd_health, spec.name) for spec in specs if spec.is_etcd]
    if wanted:
        reads.prefetch(*wanted)


def _check_target(spec: "NodeSpec", osr: "OsRelease", run: NodegateRun) -> None:
    """--target-release must be the next LTS after the node's release (do-release-upgrade goes one step)."""
    from nodegate.core.errors import UsageError
    from nodegate.core.knowledge import next_release, ubuntu_release

    target = run.target
    current = ubuntu_release(osr.version_id or "") if (osr.id or "").lower() == "ubuntu" else None
    if current is None:
        raise UsageError(f"--target-release {target.version}: {spec.name} runs {osr.label}, which is not an "
                         "Ubuntu release nodegate upgrades (20.04, 22.04)",
                         fix=f"check that {spec.name} is the node you mean; nodegate upgrades Ubuntu LTS nodes only")
    if current == target:
        raise UsageError(f"--target-release {target.version}: {spec.name} runs {current.version} "
                         f"({current.codename}) already",
                         fix="to check the node after its upgrade, run -m postflight with the same --target-release")
    following = next_release(current.version)
    if following != target:
        nxt = f"the next is {following.version} ({following.codename})" if following else "it is the newest LTS known"
        raise UsageError(f"--target-release {target.version} is not the next release for {spec.name}, which runs "
                         f"Ubuntu {current.version} ({current.codename}): {nxt}; do-release-upgrade moves one LTS "
                         "at a time",
                         fix=(f"use --target-release {following.version} first" if following
                              else "there is nothing to upgrade to"))
