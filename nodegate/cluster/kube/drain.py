"""Drain with kubectl's semantics: which pods are skipped, refused or evicted, PodDisruptionBudget
refusals retried every ``PDB_RETRY_S`` seconds, and a finite timeout (Kubespray's ``drain_timeout``).
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from nodegate.cluster.kube.errors import DrainBlocked, DrainError, _first_line, _status_body
from nodegate.cluster.kube.models import CordonResult, EvictionBlocker, EvictionResult, PdbSummary, PodSummary, _q
from nodegate.core.errors import PermanentError, TransientError
from nodegate.core.waits import Done, NotYet, ProgressReporter, WaitProgress, wait_for

if TYPE_CHECKING:
    pass

log = logging.getLogger("nodegate.kube")


PDB_RETRY_S = 5.0                 # kubectl drain asks again every 5 s after a PDB refusal
DRAIN_TIMEOUT_S = 360.0           # Kubespray's drain_timeout: finite, unlike kubectl's default


@dataclass(frozen=True)
class DrainOptions:
    """kubectl drain's flags, with a finite timeout by default."""
    ignore_daemonsets: bool = True               # --ignore-daemonsets
    delete_emptydir_data: bool = False           # --delete-emptydir-data
    force: bool = False                          # --force: also pods no controller recreates
    grace_period_s: int | None = None            # --grace-period (None: each pod's own)
    timeout_s: float = DRAIN_TIMEOUT_S           # --timeout (finite: a drain never hangs)
    pdb_retry_s: float = PDB_RETRY_S             # ask again this long after a PDB refusal

    def flags(self) -> str:
        parts = [f"--ignore-daemonsets={str(self.ignore_daemonsets).lower()}",
                 f"--delete-emptydir-data={str(self.delete_emptydir_data).lower()}",
                 f"--force={str(self.force).lower()}", f"--timeout={self.timeout_s:g}s"]
        if self.grace_period_s is not None:
            parts.append(f"--grace-period={self.grace_period_s}")
        return " ".join(parts)


@dataclass(frozen=True)
class PodDrainOutcome:
    """What the drain did with one pod (evidence for the report)."""
    pod: str                                     # namespace/name
    action: Literal["evicted", "skipped", "refused", "blocked", "pending", "terminating"]
    reason: str                                  # why: "DaemonSet-managed", "mirror pod", a PDB, …
    attempts: int = 0                            # eviction requests sent
    blocked_by: str | None = None                # last PDB that refused it
    gone: bool = False                           # the pod (this uid) no longer exists
    evicted_s: float = 0.0                       # from the drain's start until the eviction was accepted
    seconds: float = 0.0                         # from the drain's start until the pod was gone
    refusal: str = ""                            # the last refusal, e.g. the PDB's numbers


@dataclass(frozen=True)
class DrainResult:
    node: str
    options: DrainOptions
    cordon: CordonResult | None
    outcomes: tuple[PodDrainOutcome, ...]
    duration_s: float
    warnings: tuple[str, ...] = ()

    @property
    def evicted(self) -> tuple[PodDrainOutcome, ...]:
        return tuple(o for o in self.outcomes if o.action == "evicted")

    @property
    def skipped(self) -> tuple[PodDrainOutcome, ...]:
        return tuple(o for o in self.outcomes if o.action == "skipped")

    def evidence(self) -> str:
        lines = [f"drain {self.node} ({self.options.flags()}) in {self.duration_s:.1f}s"]
        lines += [f"warning: {w}" for w in self.warnings]
        for o in self.outcomes:
            extra = f", {o.attempts} eviction request(s)" if o.attempts else ""
            extra += f", last refused: {o.refusal}" if o.refusal else ""
            extra += f", evicted at {o.evicted_s:.1f}s" if o.evicted_s else ""
            extra += f", gone at {o.seconds:.1f}s" if o.gone else ""
            lines.append(f"{o.action:<11} {o.pod}: {o.reason}{extra}")
        return "\n".join(lines)


_PDB_CAUSE = re.compile(r"The disruption budget (?P<pdb>\S+) needs (?P<needs>\d+) healthy pods? "
                        r"and has (?P<has>\d+) currently")


def _drain_verdict(pod: PodSummary, options: DrainOptions) -> tuple[Literal["skip", "refuse", "evict"], str]:
    """kubectl drain's pod filters, in its order: (verdict, reason/warning)."""
    if pod.daemonset:
        if options.ignore_daemonsets:
            return "skip", "DaemonSet-managed"
        return "refuse", "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets / ignore_daemonsets)"
    if pod.mirror:
        return "skip", "mirror pod (static pod: the kubelet owns it)"
    if pod.finished:
        return "evict", ""  # finished pods go whatever the flags say
    warnings = []
    if pod.uses_emptydir:
        if not options.delete_emptydir_data:
            return "refuse", "cannot delete Pods with local storage (use --delete-emptydir-data / delete_emptydir_data)"
        warnings.append("deleting Pods with local storage")
    if pod.unmanaged:
        if not options.force:
            return "refuse", "cannot delete Pods that declare no controller (use --force / force)"
        warnings.append("deleting Pods that declare no controller")
    return "evict", "; ".join(warnings)


def _eviction_refusal(pod: PodSummary, code: int, body: str | bytes | None) -> EvictionResult | None:
    """An eviction answer that is not an error: 404 (gone) or a 429 naming a disruption budget.
    None for anything else (a plain 429 is throttling, retried as transient)."""
    message, _, raw_causes = _status_body(body)
    causes = tuple(str(c.get("message") or "") for c in raw_causes)
    if code == 404:
        return EvictionResult(pod=pod.ref, outcome="gone", code=404, message=message or "not found", causes=causes)
    if code != 429:
        return None
    budget = any(c.get("reason") == "DisruptionBudget" for c in raw_causes) or "disruption budget" in message
    if not budget:
        return None
    pdb = needs = has = None
    for cause in causes:
        found = _PDB_CAUSE.search(cause)
        if found:
            pdb, needs, has = f"{pod.namespace}/{found.group('pdb')}", int(found.group("needs")), int(found.group("has"))
            break
    return EvictionResult(pod=pod.ref, outcome="blocked", code=429, message=message or "too many requests",
                          pdb=pdb, pdb_needs=needs, pdb_has=has, causes=causes)


class DrainCalls:
    """Kube's eviction and drain calls (part of ``Kube``; they use its pod and node calls)."""

    def evict(self, pod: PodSummary, *, grace_period_s: int | None = None,
              attempts: int | None = None) -> EvictionResult:
        """Ask the Eviction API to evict one pod: 201 evicted, 429 with a DisruptionBudget cause
        blocked (the PDB named), 404 already gone. A 429 without that cause is throttling and is
        retried like any transient error."""
        self._load()
        from kubernetes.client.exceptions import ApiException

        body: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "Eviction",
                                "metadata": {"name": pod.name, "namespace": pod.namespace}}
        if grace_period_s is not None:
            body["deleteOptions"] = {"gracePeriodSeconds": grace_period_s}

        def once() -> EvictionResult:
            try:
                self._raw("POST", f"/api/v1/namespaces/{_q(pod.namespace)}/pods/{_q(pod.name)}/eviction", body=body)
            except ApiException as exc:
                refusal = _eviction_refusal(pod, exc.status or 0, exc.body)
                if refusal is not None:
                    return refusal
                raise
            return EvictionResult(pod=pod.ref, outcome="evicted", code=201, message="evicted")

        return self._call(f"evict pod {pod.ref}", once, attempts=attempts)

    def list_pdbs(self, *, namespace: str | None = None) -> list[PdbSummary]:
        if namespace:
            pdbs = self._get(f"list PodDisruptionBudgets in {namespace}",
                             f"/apis/policy/v1/namespaces/{_q(namespace)}/poddisruptionbudgets")
        else:
            pdbs = self._get("list PodDisruptionBudgets", "/apis/policy/v1/poddisruptionbudgets")
        result = []
        for raw in pdbs.get("items") or ():
            meta, spec, status = raw.get("metadata") or {}, raw.get("spec") or {}, raw.get("status") or {}
            result.append(PdbSummary(
                namespace=meta.get("namespace") or "", name=meta.get("name") or "",
                selector=spec.get("selector"),
                min_available=spec.get("minAvailable"), max_unavailable=spec.get("maxUnavailable"),
                disruptions_allowed=int(status.get("disruptionsAllowed") or 0),
                current_healthy=int(status.get("currentHealthy") or 0),
                desired_healthy=int(status.get("desiredHealthy") or 0),
                expected_pods=int(status.get("expectedPods") or 0)))
        return result

    def pods_blocking_eviction(self, node: str, *, pods: Sequence[PodSummary] | None = None,
                               pdbs: Sequence[PdbSummary] | None = None) -> list[EvictionBlocker]:
        """Pods on ``node`` that a drain would have to evict and that a PodDisruptionBudget
        protects with no disruption allowed now (status.disruptionsAllowed < 1). Read-only:
        the preflight check asks this instead of trying an eviction. ``pods`` (the pods on the
        node) and ``pdbs`` (every PDB) may be handed in when already read for many nodes."""
        pods = [p for p in (self.list_pods(node=node) if pods is None else pods)
                if not (p.daemonset or p.mirror or p.finished or p.deleting)]
        pdbs = (self.list_pdbs() if pdbs is None else pdbs) if pods else []
        return [EvictionBlocker(pod=pod, pdb=pdb) for pod in pods for pdb in pdbs
                if pdb.matches(pod) and pdb.disruptions_allowed < 1]

    def drain(self, name: str, *, options: DrainOptions = DrainOptions(), cordon_by: str | None = None,
              on_progress: Callable[[WaitProgress], None] | None = None) -> DrainResult:
        """``kubectl drain`` through the Eviction API: cordon (recording ``cordon_by``), refuse up
        front (naming pods and the flag) what the options do not allow, evict the rest — asking
        again every ``pdb_retry_s`` while a PodDisruptionBudget refuses — and wait until every
        evicted pod is gone. All within ``options.timeout_s``; on timeout a DrainError names each
        pod still there and the PDB that blocks it. The node stays cordoned either way."""
        __tracebackhide__ = True
        started = time.monotonic()
        deadline = started + options.timeout_s
        what = f"drain of node {name}"
        reporter = ProgressReporter(what=what, limit=options.timeout_s, every=5.0, on_progress=on_progress)
        cordon = self.cordon(name, by=cordon_by)
        pods = self.list_pods(node=name)
        outcomes: dict[str, PodDrainOutcome] = {}
        to_evict: dict[str, PodSummary] = {}
        refused: dict[str, list[str]] = {}
        warned: dict[str, list[str]] = {}     # kubectl's warnings, one line per reason naming the pods
        for pod in sorted(pods, key=lambda p: p.ref):
            verdict, reason = _drain_verdict(pod, options)
            if verdict == "skip":
                outcomes[pod.ref] = PodDrainOutcome(pod=pod.ref, action="skipped", reason=reason)
                if pod.daemonset:
                    warned.setdefault("ignoring DaemonSet-managed Pods", []).append(pod.ref)
            elif verdict == "refuse":
                outcomes[pod.ref] = PodDrainOutcome(pod=pod.ref, action="refused", reason=reason)
                refused.setdefault(reason, []).append(pod.ref)
            else:
                for warning in filter(None, reason.split("; ")):
                    warned.setdefault(warning, []).append(pod.ref)
                outcomes[pod.ref] = PodDrainOutcome(pod=pod.ref, action="pending", reason=reason or "evictable")
                to_evict[pod.ref] = pod
        warnings = [f"{why}: {', '.join(refs)}" for why, refs in warned.items()]

        def result() -> DrainResult:
            return DrainResult(node=name, options=options, cordon=cordon, outcomes=tuple(outcomes.values()),
                               duration_s=time.monotonic() - started, warnings=tuple(warnings))

        if refused:
            problems = "; ".join(f"{why}: {', '.join(refs)}" for why, refs in refused.items())
            raise DrainError(f"cannot drain node {name}: {problems}", result=result(),
                             fix="rerun with the option named above if losing those pods is acceptable "
                                 "(the node stays cordoned; nothing was evicted)")
        for warning in warnings:
            log.warning("drain %s: %s", name, warning)

        # Evict in rounds: every pod still refused is asked again after pdb_retry_s (kubectl asks
        # every 5 s); evicted pods are then awaited until this uid is gone.
        blocked: dict[str, EvictionResult] = {}
        leaving: dict[str, PodSummary] = {}
        attempts: dict[str, int] = {}
        while to_evict:
            for ref, pod in list(to_evict.items()):
                if pod.deleting:  # already terminating: nothing to ask, just wait for it
                    outcomes[ref] = replace(outcomes[ref], action="terminating")
                    leaving[ref] = to_evict.pop(ref)
                    continue
                attempts[ref] = attempts.get(ref, 0) + 1
                try:
                    # Few quick retries here: the drain's own rounds ask again within its timeout.
                    answer = self.evict(pod, grace_period_s=options.grace_period_s, attempts=2)
                except TransientError as exc:
                    reporter.seen(f"evicting {ref}: {_first_line(exc)}")
                    continue
                except PermanentError as exc:
                    outcomes[ref] = replace(outcomes[ref], action="refused", attempts=attempts[ref],
                                            reason=_first_line(exc))
                    raise DrainError(f"drain of node {name} stopped: cannot evict pod {ref}: {exc.message}",
                                     result=result(), fix=exc.fix) from exc
                if answer.ok:
                    at = time.monotonic() - started
                    outcomes[ref] = replace(outcomes[ref], action="evicted", attempts=attempts[ref], evicted_s=at,
                                            gone=answer.outcome == "gone",
                                            seconds=at if answer.outcome == "gone" else 0.0)
                    blocked.pop(ref, None)
                    pod = to_evict.pop(ref)
                    if answer.outcome == "evicted":
                        leaving[ref] = pod
                    log.info("drain %s: evicted %s", name, ref)
                else:
                    blocked[ref] = answer
                    outcomes[ref] = replace(outcomes[ref], action="blocked", attempts=attempts[ref],
                                            blocked_by=answer.pdb, refusal=answer.describe())
            if not to_evict:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                still = [blocked[r].describe() if r in blocked else f"pod {r}: no answer from the API"
                         for r in to_evict]
                pdbs = sorted({b.pdb for b in blocked.values() if b.pdb})
                raise (DrainBlocked if blocked else DrainError)(
                    f"drain of node {name} timed out after {time.monotonic() - started:.0f}s "
                    f"(limit {options.timeout_s:g}s): " + "; ".join(still), result=result(),
                    fix=(f"let PodDisruptionBudget {', '.join(pdbs)} allow a disruption (more healthy replicas "
                         "elsewhere, or relax it), or raise the drain timeout; the node stays cordoned"
                         if pdbs else "check the API server and rerun; the node stays cordoned"))
            reporter.seen("; ".join(blocked[r].describe() if r in blocked else f"{r}: retrying"
                                    for r in to_evict) + f" — asking again in {options.pdb_retry_s:g}s")
            # Meanwhile note when evicted pods are gone (their times are evidence).
            ask_again = time.monotonic() + min(options.pdb_retry_s, left)
            while (now := time.monotonic()) < ask_again:
                if leaving:
                    self._note_gone(name, leaving, outcomes, started=started)
                time.sleep(min(0.5, ask_again - now))

        if leaving:
            self._wait_gone(name, leaving, outcomes, started=started, deadline=deadline,
                            reporter=reporter, result=result)
        done = result()
        log.info("drain %s: done in %.1fs (%d evicted, %d skipped)", name, done.duration_s,
                 len(done.evicted), len(done.skipped))
        return done

    def _wait_gone(self, node: str, leaving: dict[str, PodSummary], outcomes: dict[str, PodDrainOutcome], *,
                   started: float, deadline: float, reporter: ProgressReporter,
                   result: Callable[[], DrainResult]) -> None:
        """Wait until every pod in ``leaving`` (this uid) has disappeared from the node."""
        __tracebackhide__ = True
        while True:
            self._note_gone(node, leaving, outcomes, started=started)
            if not leaving:
                return
            if time.monotonic() >= deadline:
                # Not a PodDisruptionBudget: these were evicted (or already being deleted) and do not
                # go away; say so, or the operator looks for a budget that is not there.
                raise DrainError(f"drain of node {node}: pods still terminating after "
                                 f"{time.monotonic() - started:.0f}s: {', '.join(sorted(leaving))} (their eviction "
                                 "was accepted, no PodDisruptionBudget holds them, but they do not go away)",
                                 result=result(),
                                 fix="find what keeps them: a finalizer nobody removes (`kubectl get pod -n NS NAME "
                                     "-o jsonpath='{.metadata.finalizers}'`; only its owner should remove it) or a "
                                     "kubelet that does not answer; the node stays cordoned; once they are gone, "
                                     "run the same command again")
            reporter.seen(f"waiting for {len(leaving)} evicted pod(s) to terminate: {', '.join(sorted(leaving))}")
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def _note_gone(self, node: str, leaving: dict[str, PodSummary], outcomes: dict[str, PodDrainOutcome], *,
                   started: float) -> None:
        """Move pods whose uid is no longer on the node out of ``leaving``, noting when."""
        try:
            present = {(p.namespace, p.name): p.uid for p in self.list_pods(node=node)}
        except TransientError as exc:  # asked again on the next look
            log.info("drain %s: could not list pods: %s", node, _first_line(exc))
            return
        for ref, pod in list(leaving.items()):
            if present.get((pod.namespace, pod.name)) != pod.uid:
                outcomes[ref] = replace(outcomes[ref], gone=True, seconds=time.monotonic() - started)
                del leaving[ref]

    def wait_pods_gone(self, node: str, *, timeout: float, include_daemonsets: bool = False,
                       progress_every: float = 5.0) -> None:
        """Wait until no evictable pod is left on the node (DaemonSet and mirror pods do not count
        unless ``include_daemonsets``; finished pods never do)."""
        __tracebackhide__ = True

        def probe() -> Done | NotYet:
            left = [p.ref for p in self.list_pods(node=node)
                    if not p.finished and not p.mirror and (include_daemonsets or not p.daemonset)]
            return Done(None) if not left else NotYet(f"{len(left)} pod(s) on {node}: {', '.join(left[:5])}")

        wait_for(probe, what=f"pods to leave node {node}", timeout=timeout, interval=0.5,
                 progress_every=progress_every, fix=f"drain node {node} again, or look at the pods still there")
