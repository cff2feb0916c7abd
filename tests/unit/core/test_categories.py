"""Report categories come from error types (nodegate.core.categories.classify with the error's
``category``), before any message regex; every typed error names a category the report has."""
from __future__ import annotations

import pytest

import nodegate.cluster.lock
import nodegate.upgrade  # every step module, so that their error classes are known
from nodegate.cluster.kube.drain import DrainOptions, DrainResult, PodDrainOutcome
from nodegate.cluster.kube.errors import DrainBlocked, DrainError
from nodegate.core.categories import CATEGORIES, classify
from nodegate.core.errors import NodegateError

NAMES = [c["name"] for c in CATEGORIES]


def _subclasses(cls: type) -> list[type]:
    return [cls] + [s for sub in cls.__subclasses__() for s in _subclasses(sub)]


def _drain_result(*outcomes: PodDrainOutcome) -> DrainResult:
    return DrainResult(node="node4", options=DrainOptions(), cordon=None, outcomes=outcomes, duration_s=300.0)


def test_every_typed_category_is_a_report_category():
    typed = {cls.__name__: cls.category for cls in _subclasses(NodegateError) if cls.category}
    assert {"NodeDidNotComeBack", "LockHeld", "DrainError", "DrainBlocked"} <= set(typed), typed
    unknown = {name: category for name, category in typed.items() if category not in NAMES}
    assert not unknown, f"categories the report does not have (nodegate.core.categories.CATEGORIES): {unknown}"


def test_pods_that_do_not_go_away_are_not_filed_as_a_budget():
    # the drain's own message says no PodDisruptionBudget holds them: the regexes alone would
    # still file it under the budget, the type does not
    exc = DrainError("drain of node node4: pods still terminating after 300s: default/web-0 (their eviction "
                     "was accepted, no PodDisruptionBudget holds them, but they do not go away)",
                     result=_drain_result(PodDrainOutcome(pod="default/web-0", action="terminating", reason="x")))
    assert classify("failed", str(exc)) == "Blocked by a PodDisruptionBudget"
    assert classify("failed", str(exc), error_category=exc.category) == "Node not ready for the change"


def test_a_drain_held_by_a_budget_is_filed_under_it():
    blocked = PodDrainOutcome(pod="default/web-0", action="blocked", reason="evictable", blocked_by="web-pdb")
    exc = DrainBlocked("drain of node node4 timed out after 300s (limit 300s): default/web-0: refused",
                       result=_drain_result(blocked))
    assert isinstance(exc, DrainError) and exc.result.outcomes == (blocked,)
    assert classify("failed", "timed out", error_category=exc.category) == "Blocked by a PodDisruptionBudget"


@pytest.mark.parametrize("status", ["failed", "broken"])
def test_the_type_wins_over_the_message(status):
    held = nodegate.cluster.lock.LockHeld.category
    assert classify(status, "HEALTH_WARN noout", error_category=held) == "Another upgrade holds the lock"
    assert classify(status, "HEALTH_WARN noout") == "Storage unhealthy"
