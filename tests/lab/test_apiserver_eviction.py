"""PodDisruptionBudget arithmetic of the lab API server (pure functions, no server)."""
from __future__ import annotations

import pytest

from nodegate.lab.apiserver import eviction


def pod(name: str, *, ready: bool = True, deleting: bool = False, labels: dict | None = None,
        owner: str | None = "rs-1", ns: str = "demo") -> dict:
    meta: dict = {"name": name, "namespace": ns, "labels": labels if labels is not None else {"app": "web"}}
    if owner:
        meta["ownerReferences"] = [{"kind": "ReplicaSet", "name": owner, "uid": owner, "controller": True}]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pdb(**spec) -> dict:
    return {"metadata": {"name": "web", "namespace": "demo", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, **spec}}


def scale(n: int):
    return lambda p: n


@pytest.mark.parametrize("spec, ready, replicas, want", [
    # minAvailable as a number: expected = matching pods, desired = the number
    ({"minAvailable": 2}, [True, True, True], 3, (3, 3, 2, 1)),
    ({"minAvailable": 2}, [True, True, False], 3, (3, 2, 2, 0)),
    ({"minAvailable": 3}, [True, True, True], 3, (3, 3, 3, 0)),
    # percentages round up for minAvailable, over the controller's scale
    ({"minAvailable": "50%"}, [True, True, True], 3, (3, 3, 2, 1)),
    # maxUnavailable: desired = scale - maxUnavailable (percent rounds up)
    ({"maxUnavailable": 1}, [True, True, True, True], 4, (4, 4, 3, 1)),
    ({"maxUnavailable": 1}, [True, True, True, False], 4, (4, 3, 3, 0)),
    ({"maxUnavailable": "34%"}, [True, True, True], 3, (3, 3, 1, 2)),
    ({"maxUnavailable": 0}, [True, True], 2, (2, 2, 2, 0)),
    # the scale counts, not the pods that exist: a missing replica lowers nothing
    ({"maxUnavailable": 1}, [True, True], 3, (3, 2, 2, 0)),
])
def test_budget_arithmetic(spec, ready, replicas, want):
    pods = [pod(f"p{i}", ready=r) for i, r in enumerate(ready)]
    b = eviction.compute(pdb(**spec), pods, scale(replicas))
    assert (b.expected, b.current_healthy, b.desired_healthy, b.disruptions_allowed) == want


def test_terminating_pods_are_not_healthy():
    pods = [pod("a"), pod("b"), pod("c", deleting=True)]
    b = eviction.compute(pdb(minAvailable=2), pods, scale(3))
    assert (b.current_healthy, b.disruptions_allowed) == (2, 0)


def test_selector_and_namespace_limit_the_pods():
    pods = [pod("a"), pod("b", labels={"app": "other"}), pod("c", ns="elsewhere")]
    assert [p["metadata"]["name"] for p in eviction.matching_pods(pdb(minAvailable=1), pods)] == ["a"]


def test_percent_needs_a_controller():
    b = eviction.compute(pdb(maxUnavailable="50%"), [pod("bare", owner=None)], scale(1))
    assert b.disruptions_allowed == 0
    assert 'found no controllers for pod "bare"' in b.sync_error


def test_status_keeps_transition_time_while_unchanged():
    p = pdb(minAvailable=1)
    b = eviction.compute(p, [pod("a"), pod("b")], scale(2))
    first = eviction.pdb_status(p, b, "2026-01-01T00:00:00Z", {})
    assert first["disruptionsAllowed"] == 1
    assert first["conditions"][0]["reason"] == "SufficientPods"
    again = eviction.pdb_status(p, b, "2026-01-01T00:05:00Z", first)
    assert again["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    blocked = eviction.compute(p, [pod("a")], scale(2))
    changed = eviction.pdb_status(p, blocked, "2026-01-01T00:06:00Z", again)
    assert (changed["disruptionsAllowed"], changed["conditions"][0]["reason"]) == (0, "InsufficientPods")
    assert changed["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:06:00Z"


def test_scaled_rounding():
    assert eviction.scaled("25%", 3, round_up=True) == 1
    assert eviction.scaled("25%", 3, round_up=False) == 0
    assert eviction.scaled(2, 10, round_up=True) == 2
    assert eviction.scaled("7", 10, round_up=True) == 7
