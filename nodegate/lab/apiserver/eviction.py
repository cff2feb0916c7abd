"""PodDisruptionBudget arithmetic, as the disruption controller and the eviction REST
handler compute it (pkg/controller/disruption, pkg/registry/core/pod/storage/eviction.go)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from nodegate.lab.apiserver.selectors import match_label_selector

BLOCK_LABEL = "lab.nodegate.io/pdb-block"   # set on pods the `pdb-block` fault holds


def is_ready(pod: dict) -> bool:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def is_healthy(pod: dict) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and is_ready(pod)


def scaled(value, total: int, *, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent."""
    if isinstance(value, int):
        return value
    text = str(value)
    if text.endswith("%"):
        pct = int(text[:-1])
        exact = pct * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(text)


@dataclass(frozen=True)
class Budget:
    expected: int
    current_healthy: int
    desired_healthy: int
    disruptions_allowed: int
    sync_error: str = ""


def matching_pods(pdb: dict, pods: list[dict]) -> list[dict]:
    ns = pdb["metadata"]["namespace"]
    selector = pdb.get("spec", {}).get("selector")
    return [p for p in pods if p["metadata"].get("namespace") == ns
            and match_label_selector(selector, p["metadata"].get("labels") or {})]


def compute(pdb: dict, pods: list[dict], scale_of: Callable[[dict], int | None]) -> Budget:
    """scale_of(pod) is the replica count of the pod's controller, or None for a bare pod."""
    spec = pdb.get("spec", {})
    matched = matching_pods(pdb, pods)
    healthy = sum(1 for p in matched if is_healthy(p))
    min_available = spec.get("minAvailable")
    if isinstance(min_available, int) or (isinstance(min_available, str) and not min_available.endswith("%")):
        expected, desired = len(matched), int(min_available)
    else:
        # Percentages and maxUnavailable need the controllers' scale (as the real controller does).
        scales: dict[str, int] = {}
        for pod in matched:
            owner = next((o for o in pod["metadata"].get("ownerReferences") or [] if o.get("controller")), None)
            scale = scale_of(pod) if owner else None
            if scale is None:
                return Budget(len(matched), healthy, 0, 0,
                              f"found no controllers for pod \"{pod['metadata']['name']}\"")
            scales[owner["uid"]] = scale
        expected = sum(scales.values())
        if min_available is not None:
            desired = scaled(min_available, expected, round_up=True)
        else:
            desired = max(0, expected - scaled(spec.get("maxUnavailable", 0), expected, round_up=True))
    return Budget(expected, healthy, desired, max(0, healthy - desired))


def pdb_status(pdb: dict, budget: Budget, now_ts: str, old: dict) -> dict:
    allowed = budget.disruptions_allowed > 0
    if budget.sync_error:
        cond = ("False", "SyncFailed", budget.sync_error)
    else:
        cond = ("True", "SufficientPods", "") if allowed else ("False", "InsufficientPods", "")
    old_cond = next((c for c in old.get("conditions") or [] if c["type"] == "DisruptionAllowed"), None)
    ts = old_cond["lastTransitionTime"] if old_cond and old_cond["status"] == cond[0] and old_cond["reason"] == cond[1] else now_ts
    return {"observedGeneration": pdb["metadata"].get("generation", 1),
            "disruptionsAllowed": budget.disruptions_allowed, "currentHealthy": budget.current_healthy,
            "desiredHealthy": budget.desired_healthy, "expectedPods": budget.expected,
            "conditions": [{"type": "DisruptionAllowed", "status": cond[0], "reason": cond[1],
                            "message": cond[2], "observedGeneration": pdb["metadata"].get("generation", 1),
                            "lastTransitionTime": ts}]}
