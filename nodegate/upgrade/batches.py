"""Which candidate nodes may be upgraded together: batches chosen from the cluster's own answers.

Read-only. A batch is a set of nodes whose OSDs Ceph says may stop together, that lie in failure
domains the pools' CRUSH rules allow to be down together, and whose pods can all be evicted at
once under the PodDisruptionBudgets. etcd and control-plane nodes always go alone, and ``limit 1``
is the one-node-at-a-time run.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodegate.core.errors import UsageError

if TYPE_CHECKING:
    from nodegate.cluster.session import Access
    from nodegate.profile.model import NodeSpec, Profile


@dataclass(frozen=True)
class Batch:
    """Nodes upgraded side by side (profile node names, in rolling order) and, in one line, what
    made them a batch."""
    nodes: tuple[str, ...]
    why: str


def alone_reason(node: "NodeSpec") -> str | None:
    """Why ``node`` never shares a batch (None: it may)."""
    if node.is_control_plane:
        return f"{node.name}: control plane alone"
    if node.is_etcd:
        return f"{node.name}: etcd member alone"
    return None


def check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"a batch limit is a whole number of nodes of at least 1, or None for auto, not {limit!r}",
                         fix="use --parallel auto, or --parallel N with N >= 1")


def plan_batches(access: "Access", profile: "Profile", candidates: Sequence["NodeSpec"],
                 limit: int | None) -> list[Batch]:
    """The candidates (in the order a rolling run takes them) in batches. ``limit`` None: as large
    as the cluster allows; N: at most N nodes a batch; 1: one node at a time. Reads only."""
    check_limit(limit)
    batches = []
    for node in candidates:
        why = alone_reason(node) or f"{node.name}: one node at a time"
        batches.append(Batch(nodes=(node.name,), why=why))
    return batches
