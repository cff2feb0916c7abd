"""The only module that talks to the Kubernetes API (through the official ``kubernetes`` client).

Everything the harness reads or changes in the cluster goes through ``Kube``: nodes (status,
conditions, nodeInfo, cordon, annotations, a watch for Ready), pods (by node, eviction, drain
with kubectl's semantics, logs, exec into the Ceph toolbox), PodDisruptionBudgets, the
csi-rbdplugin health and the cluster-wide upgrade lock (a coordination.k8s.io/v1 Lease).
Results are frozen dataclasses, never client models, so callers do not depend on the
client's generated classes.

Startup cost matters (``pytest --collect-only`` must stay fast), so neither the client nor the
kubeconfig is loaded on import or construction: ``Kube(settings=…)`` is free, the first request
(or ``check()``, which the plugin calls once to validate the profile) loads both.

Errors (nodegate.errors):
- ``UsageError``: the kubeconfig is missing, unreadable or not YAML, the context is not in it,
  or the cluster cannot be reached when ``check()`` validates it; the message names the fix.
- ``TransientError``: connection refused/reset, timeouts, 5xx, a 429 that is throttling (no
  PodDisruptionBudget cause). Retried here with bounded exponential backoff, logging before each
  sleep; re-raised when the bound is reached. ``ConflictError`` (409) is transient but *not*
  retried here: the caller must re-read and decide again.
- ``PermanentError``: 401/403, 404 where an object must exist (``NotFoundError``), 422 and
  every other refusal; a drain refused or timed out (``DrainError``), a lock held by someone
  else (``LockHeld``).
The bearer token is registered with nodegate.secrets, so no log line or report shows it.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import tenacity

from nodegate.errors import PermanentError, TransientError, UsageError
from nodegate.interrupts import checkpoint
from nodegate.secrets import register_secret
from nodegate.waits import Done, NotYet, ProgressReporter, WaitProgress, WaitTimeout, wait_for

if TYPE_CHECKING:
    from nodegate.profile import KubeSettings

log = logging.getLogger("nodegate.kube")

# (connect, read) seconds for one ordinary request: the API answers in milliseconds, so a
# request still open after this is a stuck server, not a slow one.
REQUEST_TIMEOUT = (5.0, 30.0)
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
PRESSURE_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
# Written in the same patch as spec.unschedulable, so "did we cordon it?" survives a crash and is
# visible from any machine (Kubespray's needs_cordoning idea, but recorded on the Node).
CORDONED_BY_ANNOTATION = "nodegate.io/cordoned-by"
LOCK_NAMESPACE = "kube-system"
LOCK_NAME = "nodegate-upgrade-lock"
LOCK_NODE_ANNOTATION = "nodegate.io/node"
LOCK_RUN_ANNOTATION = "nodegate.io/run-id"
LOCK_DURATION_S = 300
CSI_RBD_SELECTOR = "app=csi-rbdplugin"   # Rook <= v1.17 only; callers pass the discovered plugin's selector
CSI_RBD_CONTAINER = "csi-rbdplugin"
CSI_STUCK_LINE = "Still connecting to unix:///csi/csi.sock"     # node-driver-registrar, while the plugin is down
CSI_RBD_ERRORS = ("failed to load kernel module rbd", "modprobe failed")  # the plugin itself (rook #14507)
PDB_RETRY_S = 5.0                 # kubectl drain asks again every 5 s after a PDB refusal
DRAIN_TIMEOUT_S = 360.0           # Kubespray's drain_timeout: finite, unlike kubectl's default


# -- errors ------------------------------------------------------------------------------------

class NotFoundError(PermanentError):
    """The object does not exist (HTTP 404)."""


class ConflictError(TransientError):
    """The object changed since it was read, or already exists (HTTP 409): re-read and decide again."""


class ApiBusy(TransientError):
    """The API server answered 429 or 5xx: it is there, but overloaded or flapping; retrying helps."""


class ClientClosed(PermanentError):
    """A request on a Kube already closed: the run is ending (a read ahead still retrying stops here)."""


class ExecTimeout(TransientError):
    """A command run by exec did not finish in time. Not retried: it may have had effects."""


class LockHeld(PermanentError):
    """The upgrade lock is held by another run (``lock`` says by whom, for which node, since when)."""

    def __init__(self, message: str, *, lock: "LockInfo", fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.lock = lock


class DrainError(PermanentError):
    """The drain was refused before evicting anything, or did not finish in time. ``result`` holds
    the per-pod outcomes so far (evidence); the node stays cordoned."""

    def __init__(self, message: str, *, result: "DrainResult", fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.result = result


# -- results --------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeCondition:
    type: str
    status: str          # "True" / "False" / "Unknown"
    reason: str = ""
    message: str = ""
    last_transition: str = ""


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str
    value: str = ""


@dataclass(frozen=True)
class NodeInfo:
    """status.nodeInfo, as the kubelet reports it (read once per kubelet start)."""
    kubelet_version: str = ""
    kube_proxy_version: str = ""
    os_image: str = ""
    kernel_version: str = ""
    operating_system: str = ""
    architecture: str = ""
    container_runtime_version: str = ""
    boot_id: str = ""
    machine_id: str = ""
    system_uuid: str = ""


@dataclass(frozen=True)
class NodeStatus:
    name: str
    ready: str                                   # "True" / "False" / "Unknown" (also: no Ready condition)
    conditions: tuple[NodeCondition, ...]
    unschedulable: bool
    taints: tuple[Taint, ...]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    info: NodeInfo
    addresses: tuple[tuple[str, str], ...]       # (type, address)
    resource_version: str
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)  # evidence

    @property
    def is_ready(self) -> bool:
        return self.ready == "True"

    @property
    def boot_id(self) -> str:
        return self.info.boot_id

    @property
    def kubelet_version(self) -> str:
        return self.info.kubelet_version

    @property
    def os_image(self) -> str:
        return self.info.os_image

    @property
    def kernel_version(self) -> str:
        return self.info.kernel_version

    @property
    def container_runtime_version(self) -> str:
        return self.info.container_runtime_version

    @property
    def pressures(self) -> tuple[str, ...]:
        """Pressure (and network) conditions that are True: each one is a problem."""
        return tuple(c.type for c in self.conditions if c.type in PRESSURE_CONDITIONS and c.status == "True")

    @property
    def roles(self) -> frozenset[str]:
        prefix = "node-role.kubernetes.io/"
        return frozenset(k[len(prefix):] for k in self.labels if k.startswith(prefix))

    @property
    def cordoned_by(self) -> str | None:
        """Who (which nodegate run) cordoned the node, if nodegate did."""
        return self.annotations.get(CORDONED_BY_ANNOTATION)

    def condition(self, type_: str) -> NodeCondition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def describe(self) -> str:
        ready = self.condition("Ready")
        why = f" ({ready.reason})" if ready is not None and ready.reason and not self.is_ready else ""
        return (f"node {self.name}: Ready={self.ready}{why}, bootID={self.boot_id or '?'}, "
                f"{'cordoned' if self.unschedulable else 'schedulable'}, {self.os_image or 'os ?'}")


@dataclass(frozen=True)
class CordonResult:
    node: str
    unschedulable: bool            # the state after the call
    changed: bool                  # this call changed spec.unschedulable
    cordoned_by: str | None        # the nodegate.io/cordoned-by annotation after the call
    detail: str = ""               # why nothing changed, when it did not


@dataclass(frozen=True)
class ContainerSummary:
    name: str
    ready: bool
    restarts: int
    state: str                    # running / waiting / terminated / unknown
    reason: str = ""              # e.g. CrashLoopBackOff
    image: str = ""


@dataclass(frozen=True)
class PodSummary:
    namespace: str
    name: str
    uid: str
    node: str | None
    phase: str
    owner_kind: str | None        # kind of the controller owner (ReplicaSet, DaemonSet, StatefulSet, Node …)
    owner_name: str | None
    daemonset: bool
    mirror: bool                  # static pod shown by the kubelet; cannot be evicted
    uses_emptydir: bool
    ready: bool
    restarts: int
    deleting: bool                # has a deletionTimestamp (terminating)
    labels: Mapping[str, str]
    containers: tuple[ContainerSummary, ...] = ()
    grace_period_s: int | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def unmanaged(self) -> bool:
        """No controller would recreate it (kubectl drain needs --force for these)."""
        return self.owner_kind is None and not self.mirror

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    def container(self, name: str) -> ContainerSummary | None:
        return next((c for c in self.containers if c.name == name), None)


@dataclass(frozen=True)
class EvictionResult:
    pod: str                                     # namespace/name
    outcome: Literal["evicted", "blocked", "gone"]
    code: int                                    # 201 (or 200), 429, 404
    message: str
    pdb: str | None = None                       # the blocking PodDisruptionBudget (namespace/name), when named
    pdb_needs: int | None = None                 # healthy pods the PDB needs
    pdb_has: int | None = None                   # healthy pods it has now
    causes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The pod is leaving or already gone."""
        return self.outcome in ("evicted", "gone")

    def describe(self) -> str:
        if self.outcome != "blocked":
            return f"pod {self.pod}: {self.outcome}"
        budget = (f"PodDisruptionBudget {self.pdb} needs {self.pdb_needs} healthy pod(s) and has {self.pdb_has}"
                  if self.pdb else "a PodDisruptionBudget")
        return f"pod {self.pod} blocked by {budget} ({self.message})"


@dataclass(frozen=True)
class PdbSummary:
    namespace: str
    name: str
    selector: Mapping[str, Any] | None           # the LabelSelector as the API returns it (camelCase)
    min_available: int | str | None
    max_unavailable: int | str | None
    disruptions_allowed: int
    current_healthy: int
    desired_healthy: int
    expected_pods: int

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def matches(self, pod: PodSummary) -> bool:
        return pod.namespace == self.namespace and selector_matches(self.selector, pod.labels)


@dataclass(frozen=True)
class EvictionBlocker:
    pod: PodSummary
    pdb: PdbSummary

    def __str__(self) -> str:
        p = self.pdb
        return (f"pod {self.pod.ref} is protected by PodDisruptionBudget {p.ref}, which allows "
                f"{p.disruptions_allowed} disruption(s) now (healthy {p.current_healthy}, "
                f"needs {p.desired_healthy}, expected pods {p.expected_pods})")


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


@dataclass(frozen=True)
class CsiPluginHealth:
    """The csi-rbdplugin pod on one node: what the storage checks decide on."""
    node: str
    pod: PodSummary | None                       # None: no csi-rbdplugin pod on the node
    ready: bool
    restarts: int                                # all containers
    crash_looping: tuple[str, ...]               # containers waiting in CrashLoopBackOff
    stuck_lines: tuple[str, ...] = ()            # recent log lines with "Still connecting to …csi.sock"
    error_lines: tuple[str, ...] = ()            # recent plugin log lines about loading the rbd module

    @property
    def healthy(self) -> bool:
        return self.pod is not None and self.ready and not self.crash_looping and not self.stuck_lines

    def describe(self) -> str:
        if self.pod is None:
            return f"no csi-rbdplugin pod on node {self.node}"
        parts = [f"pod {self.pod.ref} {'Ready' if self.ready else 'not Ready'}", f"restarts {self.restarts}"]
        if self.crash_looping:
            parts.append("CrashLoopBackOff in " + ", ".join(self.crash_looping))
        if self.stuck_lines:
            parts.append(f"{len(self.stuck_lines)} recent '{CSI_STUCK_LINE}' log line(s)")
        if self.error_lines:
            parts.append(f"log: {self.error_lines[-1].strip()}")
        return f"csi-rbdplugin on {self.node}: " + ", ".join(parts)


@dataclass(frozen=True)
class ExecResult:
    command: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    duration: float


@dataclass(frozen=True)
class LeaseInfo:
    """A coordination.k8s.io/v1 Lease as read (times are timezone-aware UTC)."""
    namespace: str
    name: str
    holder: str | None
    duration_s: int | None
    acquire_time: dt.datetime | None
    renew_time: dt.datetime | None
    transitions: int
    resource_version: str
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class LockInfo:
    """The upgrade lock as stored in its Lease."""
    namespace: str
    name: str
    holder: str | None                           # spec.holderIdentity (None/"" : free)
    node: str | None                             # the node being upgraded (annotation)
    run_id: str | None                           # the run holding it (annotation)
    duration_s: int | None
    acquired_at: dt.datetime | None
    renewed_at: dt.datetime | None
    transitions: int
    resource_version: str

    @property
    def held(self) -> bool:
        return bool(self.holder)

    @classmethod
    def from_lease(cls, lease: LeaseInfo) -> "LockInfo":
        return cls(namespace=lease.namespace, name=lease.name, holder=lease.holder or None,
                   node=lease.annotations.get(LOCK_NODE_ANNOTATION), run_id=lease.annotations.get(LOCK_RUN_ANNOTATION),
                   duration_s=lease.duration_s, acquired_at=lease.acquire_time, renewed_at=lease.renew_time,
                   transitions=lease.transitions, resource_version=lease.resource_version)

    def age_s(self, now: dt.datetime | None = None) -> float | None:
        """Seconds since the holder last renewed it."""
        stamp = self.renewed_at or self.acquired_at
        if stamp is None:
            return None
        return ((now or _now()) - _aware(stamp)).total_seconds()

    def stale(self, *, after_s: float | None = None, now: dt.datetime | None = None) -> bool:
        """Not renewed for longer than ``after_s`` (default: its own lease duration): its holder is gone."""
        age = self.age_s(now)
        limit = after_s if after_s is not None else (self.duration_s or LOCK_DURATION_S)
        return age is None or age > limit

    def describe(self) -> str:
        if not self.held:
            return f"lock {self.namespace}/{self.name} is free"
        age = self.age_s()
        since = self.acquired_at.isoformat() if self.acquired_at else "?"
        return (f"lock {self.namespace}/{self.name} held by {self.holder} for node {self.node or '?'} "
                f"(run {self.run_id or '?'}, since {since}, last renewed {age:.0f}s ago)"
                if age is not None else f"lock {self.namespace}/{self.name} held by {self.holder}")


# -- label selectors (policy/v1 semantics) --------------------------------------------------

def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (camelCase dict) against labels: null matches nothing, {} everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


_PDB_CAUSE = re.compile(r"The disruption budget (?P<pdb>\S+) needs (?P<needs>\d+) healthy pods? "
                        r"and has (?P<has>\d+) currently")


# -- the client wrapper ------------------------------------------------------------------------

class Kube:
    """One cluster's API server, as named by the profile's kubeconfig and context.

    Construction is free; the kubeconfig and the client are loaded at the first request.
    ``attempts``/``retry_limit_s`` bound the retries of one request on transient errors. Ten
    attempts with the back-off capped at 1 s take about 8 s, as six capped at 3 s did: a lasting
    outage fails as soon as before, but a control plane failing 30% of requests no longer fails
    one call in 1,400 outright (0.3^6; a run makes about a hundred calls while the API flaps, and
    the SSH-drop scenario failed that way once) but one in 170,000 (0.3^10)."""

    def __init__(self, *, settings: "KubeSettings", attempts: int = 10, retry_limit_s: float = 30.0,
                 request_timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        self.settings = settings
        self.attempts = attempts
        self.retry_limit_s = retry_limit_s
        self.request_timeout = request_timeout
        self.path = Path(settings.kubeconfig).expanduser()
        self.origin = f"context {settings.context or '(current)'} in {self.path}"
        self.server = "(not loaded yet)"
        self._api: Any = None
        self._load_lock = threading.Lock()
        self._closed = False

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def connect(cls, *, settings: "KubeSettings", check: bool = True, **kwargs: Any) -> "Kube":
        """A Kube for ``settings``; with ``check``, the kubeconfig is loaded and the server asked
        for its version now, so a bad profile or an unreachable cluster is a UsageError up front."""
        __tracebackhide__ = True
        kube = cls(settings=settings, **kwargs)
        if check:
            kube.check()
        return kube

    def check(self, *, attempts: int = 4) -> str:
        """Load the kubeconfig and ask the server's version (four quick tries, so an address where
        nothing listens fails within ~2 s; a server that answers 429/5xx then gets the usual
        bounded retries: a flapping API must not end a run before it starts); return it.
        Any failure is a UsageError naming the fix: this runs before anything changes."""
        __tracebackhide__ = True
        self._load()
        try:
            try:
                return self.server_version(attempts=attempts)
            except ApiBusy:
                # It answers, so the address is right: a flapping server, not a wrong one. Give it
                # the bounded retries every other request gets before refusing to start.
                return self.server_version()
        except TransientError as exc:
            raise UsageError(f"the Kubernetes API at {self.server} ({self.origin}) cannot be reached: "
                             f"{_first_line(exc)}",
                             fix=f"start or reach the API server, or point [kubernetes] kubeconfig/context at the "
                                 f"right cluster; `kubectl --kubeconfig {self.path} get nodes` must work") from None
        except PermanentError as exc:
            raise UsageError(f"the Kubernetes API at {self.server} ({self.origin}) refused a first request: "
                             f"{_first_line(exc)}", fix=exc.fix or "check the kubeconfig's user and cluster") from None

    def load(self) -> None:
        """Read the kubeconfig and build the client now, without any request (UsageError if the
        kubeconfig or its context is unusable). Every request does this on first use anyway."""
        __tracebackhide__ = True
        self._load()

    def _load(self) -> Any:
        """Read the kubeconfig and build the client, once (thread-safe)."""
        __tracebackhide__ = True
        if self._api is not None:
            return self._api
        with self._load_lock:
            if self._api is None:
                self._api = self._build_client()
        return self._api

    def _build_client(self) -> Any:
        __tracebackhide__ = True
        import yaml

        path = self.path
        where = "[kubernetes] kubeconfig in the cluster profile (or KUBECONFIG)"
        if not path.is_file():
            raise UsageError(f"kubeconfig {path} does not exist",
                             fix=f"set {where} to the file kubectl uses for this cluster "
                                 "(often ~/.kube/config or Kubespray's inventory/…/artifacts/admin.conf)")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read kubeconfig {path}: {exc.strerror or exc}",
                             fix=f"make it readable by this user (e.g. chmod 600 and chown), or set {where} "
                                 "to a readable copy") from None
        except UnicodeDecodeError:
            raise UsageError(f"kubeconfig {path} is not a text file",
                             fix=f"set {where} to the kubeconfig itself (YAML), not an archive or a binary") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"kubeconfig {path} is not valid YAML: {_first_line(exc)}",
                             fix="repair the file (`kubectl config view --kubeconfig FILE` shows what is wrong) "
                                 "or fetch it again from the control plane") from None
        if not isinstance(data, dict) or not data.get("contexts"):
            raise UsageError(f"kubeconfig {path} has no contexts",
                             fix="fetch a complete kubeconfig (clusters, users, contexts) from the control plane")
        _register_kubeconfig_secrets(data)
        contexts = [str(c.get("name")) for c in data.get("contexts") or [] if isinstance(c, dict)]
        wanted = self.settings.context or data.get("current-context")
        if not wanted:
            raise UsageError(f"kubeconfig {path} has no current-context and the profile names none",
                             fix=f"set [kubernetes] context to one of: {', '.join(contexts)}")
        if wanted not in contexts:
            raise UsageError(f"context {wanted!r} is not in kubeconfig {path} (it has: {', '.join(contexts)})",
                             fix="set [kubernetes] context in the cluster profile to one of those")

        from kubernetes import client, config  # lazily: importing the client takes ~0.3 s
        from kubernetes.config.config_exception import ConfigException

        configuration = client.Configuration()
        try:
            # From the file (not the dict read above), so relative certificate paths resolve
            # against the kubeconfig's own folder as kubectl resolves them.
            config.load_kube_config(config_file=str(path), context=wanted, client_configuration=configuration,
                                    persist_config=False)
        except (ConfigException, ValueError, TypeError, KeyError) as exc:
            raise UsageError(f"cannot use context {wanted!r} of kubeconfig {path}: {_first_line(exc)}",
                             fix="check that context's cluster (server) and user entries") from None
        token = str(configuration.api_key.get("authorization") or "")
        register_secret(token.split(" ", 1)[-1] if token else None)
        # One retry layer only (ours, with logging): urllib3's silent retries would hide and
        # multiply the waits.
        configuration.retries = False
        # Resolve the environment's proxy now, once, in this thread: otherwise the kubeconfig's
        # refresh hook sets `host` again before every request and the client re-reads os.environ
        # then, from whichever thread calls; iterating os.environ while pytest sets or removes
        # PYTEST_CURRENT_TEST in the main thread raised KeyError (seen in CI).
        configuration.proxy = configuration.proxy
        self.server = configuration.host
        self.origin = f"context {wanted} in {path}"
        # No generated API class (CoreV1Api alone is a 63,000-line module, ~0.5 s to import) and
        # no pydantic model is used: every request goes through ``_raw`` as plain JSON on this
        # client (its TLS, auth and proxy settings), the exec through the client's websocket
        # transport. On a small cluster building those costs more than all the requests.
        return client.ApiClient(configuration)

    def close(self) -> None:
        # Reads still running ahead in other threads (a run refused before its first check, with
        # the API answering 5xx) stop at their next attempt instead of retrying on after the
        # error was shown, and keeping the process alive until they give up.
        self._closed = True
        if self._api is not None:
            self._api.close()

    # -- the one place requests are made -------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], /, *args: Any, attempts: int | None = None,
              **kwargs: Any) -> Any:
        """Make one API request (``fn``, e.g. a ``_raw`` call) with bounded retries on transient errors."""
        __tracebackhide__ = True
        self._load()
        tries = attempts or self.attempts

        def once() -> Any:
            checkpoint()   # a Ctrl-C a finalizer swallowed stops the run before the request
            if self._closed:
                raise ClientClosed(f"the Kubernetes API client of this run was closed before: {what}")
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - translated or re-raised unchanged
                if isinstance(exc.__context__, KeyboardInterrupt):
                    # the client's websocket calls (exec) turn Ctrl-C/SIGTERM into ApiException(status=0):
                    # the operator's interrupt must stop the run, not be retried as a transient error
                    raise exc.__context__ from None
                translated = self._translate(exc, what)
                if translated is None or translated is exc:
                    raise
                raise translated from exc

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_retryable),
            stop=tenacity.stop_after_attempt(tries) | tenacity.stop_after_delay(self.retry_limit_s),
            wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=1.0, jitter=0.2),
            before_sleep=_log_retry(what, tries, quiet=lambda: self._closed),
            reraise=True,
        )
        return retrying(once)

    def _serialize(self, method: str, path: str, query: Sequence[tuple[str, Any]] = (), body: Any = None,
                   content_type: str | None = None) -> tuple:
        """(method, url, headers, body, post_params) for ``path`` (already quoted) with the
        client's authentication, as a generated method would build them."""
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        return self._load().param_serialize(method=method, resource_path=path, query_params=list(query),
                                            header_params=headers, body=body,
                                            collection_formats={"command": "multi"},
                                            auth_settings=["BearerToken"])

    def _raw(self, method: str, path: str, *, query: Sequence[tuple[str, Any]] = (), body: Any = None,
             content_type: str | None = None, text: bool = False, stream: bool = False) -> Any:
        """One request: its JSON answer (``text``: the body as text; ``stream``: the open
        urllib3 response). A status outside 2xx raises the client's ApiException, as a
        generated method would."""
        from kubernetes.client.exceptions import ApiException

        if body is not None and content_type is None:
            content_type = "application/json"
        method, url, headers, body, _ = self._serialize(method, path, query, body, content_type)
        response = self._api.call_api(method, url, header_params=headers, body=body,
                                      _request_timeout=self.request_timeout)
        if stream and 200 <= response.status <= 299:
            return response.response
        data = response.read()
        decoded = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=decoded, data=None)
        if text:
            return decoded
        try:
            return json.loads(decoded) if decoded else {}
        except ValueError:
            raise PermanentError(f"the Kubernetes API at {self.server} answered {method} {path} with no JSON: "
                                 f"{decoded[:200]!r}") from None

    def _request(self, what: str, method: str, path: str, /, *, attempts: int | None = None, **kwargs: Any) -> Any:
        """``_raw`` with the retries and error translation of ``_call``."""
        __tracebackhide__ = True
        return self._call(what, lambda: self._raw(method, path, **kwargs), attempts=attempts)

    def _get(self, what: str, path: str, /, *, query: Sequence[tuple[str, Any]] = (), text: bool = False,
             attempts: int | None = None) -> Any:
        __tracebackhide__ = True
        return self._request(what, "GET", path, query=query, text=text, attempts=attempts)

    def _patch_node(self, what: str, name: str, patch: Mapping[str, Any]) -> Mapping[str, Any]:
        """A strategic merge patch of the Node (what the official client sends for an object patch)."""
        return self._request(what, "PATCH", f"/api/v1/nodes/{_q(name)}", body=patch,
                             content_type="application/strategic-merge-patch+json")

    def _translate(self, exc: BaseException, what: str) -> Exception | None:
        """Map a client/urllib3 exception to nodegate's hierarchy (None: not ours, re-raise)."""
        import urllib3.exceptions as u3
        from kubernetes.client.exceptions import ApiException

        if isinstance(exc, (PermanentError, TransientError, UsageError)):
            return exc
        where = f"the Kubernetes API at {self.server} ({self.origin})"
        check = "check that the API server runs and `kubectl get nodes` works with the same kubeconfig"
        if isinstance(exc, u3.NameResolutionError):
            return TransientError(f"the name of the Kubernetes API server {self.server} ({self.origin}) does not "
                                  f"resolve (while trying to {what})",
                                  fix="check the server address in the kubeconfig and this machine's DNS")
        if isinstance(exc, (u3.NewConnectionError, ConnectionRefusedError)):
            return TransientError(f"{where} refused the connection while trying to {what}", fix=check)
        if isinstance(exc, u3.ConnectTimeoutError):
            return TransientError(f"{where} did not accept a connection in time while trying to {what}", fix=check)
        if isinstance(exc, (u3.ReadTimeoutError, TimeoutError)):
            return TransientError(f"{where} did not answer in time while trying to {what}", fix=check)
        if isinstance(exc, (u3.ProtocolError, u3.MaxRetryError, ConnectionError, u3.HTTPError)):
            return TransientError(f"the connection to {where} broke while trying to {what}: {_first_line(exc)}",
                                  fix=check)
        if not isinstance(exc, ApiException):
            return None
        status = exc.status or 0
        message, reason, _ = _status_body(exc.body)
        said = f"{status} {reason or exc.reason or ''}".strip() + (f": {message}" if message else "")
        if status == 0:  # the websocket layer reports connection and handshake failures this way
            text = str(exc.reason or "")
            found = re.search(r"Handshake status (\d{3})", text)
            code = found.group(1) if found else ""
            if code == "404":
                return NotFoundError(f"cannot {what}: not found (404 from {self.server})")
            if code in ("401", "403"):
                return PermanentError(f"{where} refused to {what} ({code})",
                                      fix="give the kubeconfig's user permission for pods/exec")
            if (not code or code.startswith("5") or code == "429" or "refused" in text.lower()
                    or "reset" in text.lower() or "timed out" in text.lower()):
                return TransientError(f"{where} failed to {what}: {_first_line(text) or type(exc).__name__}",
                                      fix=check)
            return PermanentError(f"{where} failed to {what}: {_first_line(text)}")
        if status == 404:
            return NotFoundError(f"cannot {what}: {message or 'not found'} (404 from {self.server})")
        if status == 409:
            return ConflictError(f"cannot {what}: {said}",
                                 fix="someone changed the object since it was read: read it again and decide again")
        if status == 500 and "more than one PodDisruptionBudget" in message:
            return PermanentError(f"{where} refused to {what}: {message}",
                                  fix="the eviction API allows one PodDisruptionBudget per pod: delete or narrow the "
                                      "overlapping PDBs (`kubectl get pdb -A`)")
        if status == 429 or status >= 500:
            return ApiBusy(f"{where} answered {said} while trying to {what}", fix=check)
        if status == 401:
            return PermanentError(f"{where} rejected the credentials while trying to {what} (401 Unauthorized)",
                                  fix="renew the user's token or certificate in the kubeconfig")
        if status == 403:
            return PermanentError(f"{where} forbids this: {what} ({said})",
                                  fix="give the kubeconfig's user the RBAC permission for this request")
        if status == 422:
            return PermanentError(f"{where} rejected the object as invalid while trying to {what}: {said}",
                                  fix="this is a nodegate bug or an API version mismatch: report it with this message")
        return PermanentError(f"{where} refused to {what}: {said}")

    # -- server -------------------------------------------------------------------------
    def server_version(self, *, attempts: int | None = None) -> str:
        """The API server's gitVersion, e.g. 'v1.25.6'."""
        info = self._get("read the server version", "/version", attempts=attempts)
        return str(info.get("gitVersion") or "")

    def list_objects(self, path: str, *, what: str, missing_ok: bool = False) -> list[Mapping[str, Any]]:
        """The items of a list path as the API's JSON (``/apis/apps/v1/daemonsets``,
        ``/apis/ceph.rook.io/v1/namespaces/rook-ceph/cephclusters``). ``missing_ok``: a path the
        server does not serve (a CRD that is not installed) lists nothing instead of NotFoundError."""
        try:
            answer = self._get(what, path)
        except NotFoundError:
            if missing_ok:
                return []
            raise
        return list(answer.get("items") or ())

    # -- nodes -----------------------------------------------------------------------------
    def get_node(self, name: str) -> NodeStatus | None:
        """The node's status, or None if the cluster has no such node."""
        try:
            return self.node(name)
        except NotFoundError:
            return None

    def node(self, name: str) -> NodeStatus:
        """The node's status; NotFoundError (naming the nodes there are) if there is none."""
        try:
            node = self._get(f"read node {name}", f"/api/v1/nodes/{_q(name)}")
        except NotFoundError:
            known = ", ".join(n.name for n in self.list_nodes()) or "(none)"
            raise NotFoundError(f"the cluster has no node {name!r} (nodes: {known})",
                                fix="use the node name `kubectl get nodes` shows (the inventory name)") from None
        return self._node_status(node)

    def list_nodes(self, *, selector: str | None = None) -> list[NodeStatus]:
        nodes = self._get("list nodes", "/api/v1/nodes", query=[("labelSelector", selector)] if selector else ())
        return [self._node_status(n) for n in nodes.get("items") or ()]

    def cordon(self, name: str, *, by: str | None = None) -> CordonResult:
        """Mark the node unschedulable (``kubectl cordon``). ``changed`` says whether this call did
        it; with ``by`` (a run id) the node also records, in the same write, that nodegate did —
        so only nodes nodegate cordoned are uncordoned by it later."""
        for _ in range(3):
            current = self.node(name)
            if current.unschedulable:
                return CordonResult(node=name, unschedulable=True, changed=False, cordoned_by=current.cordoned_by,
                                    detail="already cordoned" + (f" by {current.cordoned_by}" if current.cordoned_by
                                                                 else " (not by nodegate)"))
            patch: dict[str, Any] = {"metadata": {"resourceVersion": current.resource_version},
                                     "spec": {"unschedulable": True}}
            if by is not None:
                patch["metadata"]["annotations"] = {CORDONED_BY_ANNOTATION: by}
            try:
                done = self._patch_node(f"cordon node {name}", name, patch)
            except ConflictError:
                continue  # the node changed since we read it (the kubelet posts status): read again
            status = self._node_status(done)
            log.info("cordoned node %s%s", name, f" (recorded as {by})" if by else "")
            return CordonResult(node=name, unschedulable=True, changed=True, cordoned_by=status.cordoned_by)
        raise ConflictError(f"node {name} kept changing while cordoning it (3 tries)")

    def uncordon(self, name: str, *, only_if_cordoned_by: str | None = None) -> CordonResult:
        """Mark the node schedulable (``kubectl uncordon``) and drop the cordoned-by record.
        With ``only_if_cordoned_by``, leave the node alone unless that run cordoned it."""
        for _ in range(3):
            current = self.node(name)
            if only_if_cordoned_by is not None and current.cordoned_by != only_if_cordoned_by:
                return CordonResult(node=name, unschedulable=current.unschedulable, changed=False,
                                    cordoned_by=current.cordoned_by,
                                    detail=(f"left as it is: cordoned by {current.cordoned_by}"
                                            if current.cordoned_by else "left as it is: not cordoned by nodegate"
                                            if current.unschedulable else "not cordoned"))
            if not current.unschedulable and current.cordoned_by is None:
                return CordonResult(node=name, unschedulable=False, changed=False, cordoned_by=None,
                                    detail="already schedulable")
            # None removes the field, as kubectl uncordon does.
            patch = {"metadata": {"resourceVersion": current.resource_version,
                                  "annotations": {CORDONED_BY_ANNOTATION: None}},
                     "spec": {"unschedulable": None}}
            try:
                self._patch_node(f"uncordon node {name}", name, patch)
            except ConflictError:
                continue
            log.info("uncordoned node %s", name)
            return CordonResult(node=name, unschedulable=False, changed=current.unschedulable, cordoned_by=None)
        raise ConflictError(f"node {name} kept changing while uncordoning it (3 tries)")

    def node_annotation(self, name: str, *, key: str) -> str | None:
        return self.node(name).annotations.get(key)

    def set_node_annotation(self, name: str, *, key: str, value: str | None) -> None:
        """Set (or with None remove) one annotation on the node (e.g. nodegate.io/upgrade)."""
        verb = (f"set annotation {key} on node {name}" if value is not None
                else f"remove annotation {key} from node {name}")
        self._patch_node(verb, name, {"metadata": {"annotations": {key: value}}})

    def watch_node(self, name: str, *, until: Callable[[NodeStatus], bool], timeout: float,
                   what: str | None = None, progress_every: float = 5.0,
                   on_progress: Callable[[WaitProgress], None] | None = None) -> NodeStatus:
        """Block until ``until(status)`` holds for node ``name``; return that status.

        Reads the node, then watches it from that resourceVersion, so a change is seen as soon
        as the API sends the event (no poll interval). The watch is re-opened every
        ``progress_every`` seconds (or when the server ends it) after a fresh read, which also
        covers missed events and an expired resourceVersion (410); connection failures are
        retried until the deadline. WaitTimeout names what was last seen.
        """
        __tracebackhide__ = True
        self._load()
        from kubernetes import watch

        what = what or f"node {name} to reach the awaited state"
        reporter = ProgressReporter(what=what, limit=timeout, every=progress_every, on_progress=on_progress)
        deadline = time.monotonic() + timeout
        selector = f"metadata.name={name}"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(what=what, limit=timeout, elapsed=reporter.elapsed(),
                                  last_seen=reporter.last_reason,
                                  fix=f"look at the node (kubectl describe node {name}) and its kubelet; if it "
                                      "does not come back, reach it out of band (BMC/IPMI console)")
            stream = watch.Watch()
            try:
                listing = self._get(f"read node {name}", "/api/v1/nodes", query=[("fieldSelector", selector)],
                                    attempts=1)
                if listing.get("items"):
                    status = self._node_status(listing["items"][0])
                    if until(status):
                        return status
                    reporter.seen(status.describe())
                else:
                    reporter.seen(f"node {name} does not exist")
                window = max(1, int(min(progress_every, remaining) + 0.999))
                events = stream.stream(self._watch_nodes, deserialize=False, field_selector=selector,
                                       resource_version=(listing.get("metadata") or {}).get("resourceVersion"),
                                       timeout_seconds=window,
                                       _request_timeout=(self.request_timeout[0], window + 5.0))
                for event in events:
                    if event["type"] == "DELETED":
                        reporter.seen(f"node {name} was deleted")
                        continue
                    if event["type"] not in ("ADDED", "MODIFIED"):
                        continue
                    status = self._node_status(event["object"])
                    if until(status):
                        return status
                    reporter.seen(status.describe())
                    if time.monotonic() >= deadline:
                        break
            except TransientError as exc:
                reporter.seen(_first_line(exc))
                time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))
            except PermanentError:
                raise
            except Exception as exc:  # noqa: BLE001 - errors raised from inside the watch stream
                translated = self._translate(exc, f"watch node {name}")
                if translated is None:
                    raise
                if not isinstance(translated, TransientError) and getattr(exc, "status", None) != 410:
                    raise translated from exc
                reporter.seen(_first_line(translated))  # 410: the resourceVersion expired; read again
                time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))
            finally:
                stream.stop()

    def _watch_nodes(self, *, field_selector: str, resource_version: str | None, timeout_seconds: int,
                     _request_timeout: tuple[float, float], watch: bool = True, _preload_content: bool = False) -> Any:
        """The streaming GET a kubernetes.watch.Watch reads events from (it passes watch and
        _preload_content itself); the events stay the API's JSON (``deserialize=False``)."""
        query: list[tuple[str, Any]] = [("fieldSelector", field_selector), ("watch", "true"),
                                        ("timeoutSeconds", timeout_seconds)]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        method, url, headers, _, _ = self._serialize("GET", "/api/v1/nodes", query)
        response = self._api.call_api(method, url, header_params=headers, _request_timeout=_request_timeout)
        if not 200 <= response.status <= 299:
            from kubernetes.client.exceptions import ApiException

            data = response.read()
            raise ApiException.from_response(http_resp=response, body=data.decode("utf-8", "replace"), data=None)
        return response.response

    def wait_node_ready(self, name: str, *, timeout: float, new_boot_id_than: str | None = None,
                        progress_every: float = 5.0,
                        on_progress: Callable[[WaitProgress], None] | None = None) -> NodeStatus:
        """Watch until the node is Ready (and, given ``new_boot_id_than``, reports another bootID:
        it has rebooted since). Returns within one watch event of the change."""
        __tracebackhide__ = True

        def ready(status: NodeStatus) -> bool:
            if new_boot_id_than is not None and status.boot_id == new_boot_id_than:
                return False
            return status.is_ready

        what = f"node {name} Ready" + (" with a new boot id" if new_boot_id_than else "")
        return self.watch_node(name, until=ready, timeout=timeout, what=what, progress_every=progress_every,
                               on_progress=on_progress)

    def _node_status(self, node: Mapping[str, Any]) -> NodeStatus:
        """A Node as the API's JSON has it (camelCase keys) reduced to what the checks decide on."""
        meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
        conditions = tuple(NodeCondition(type=c.get("type") or "", status=c.get("status") or "",
                                         reason=c.get("reason") or "", message=c.get("message") or "",
                                         last_transition=_stamp(c.get("lastTransitionTime")))
                           for c in status.get("conditions") or ())
        ready = next((c.status for c in conditions if c.type == "Ready"), "Unknown")
        info = status.get("nodeInfo")
        return NodeStatus(
            name=meta.get("name") or "",
            ready=ready,
            conditions=conditions,
            unschedulable=bool(spec.get("unschedulable")),
            taints=tuple(Taint(key=t.get("key") or "", effect=t.get("effect") or "", value=t.get("value") or "")
                         for t in spec.get("taints") or ()),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            info=NodeInfo(
                kubelet_version=info.get("kubeletVersion") or "", kube_proxy_version=info.get("kubeProxyVersion") or "",
                os_image=info.get("osImage") or "", kernel_version=info.get("kernelVersion") or "",
                operating_system=info.get("operatingSystem") or "", architecture=info.get("architecture") or "",
                container_runtime_version=info.get("containerRuntimeVersion") or "", boot_id=info.get("bootID") or "",
                machine_id=info.get("machineID") or "", system_uuid=info.get("systemUUID") or "",
            ) if info is not None else NodeInfo(),
            addresses=tuple((a.get("type") or "", a.get("address") or "") for a in status.get("addresses") or ()),
            resource_version=meta.get("resourceVersion") or "",
            raw=node,
        )

    # -- pods ------------------------------------------------------------------------------
    def list_pods(self, *, node: str | None = None, namespace: str | None = None,
                  selector: str | None = None) -> list[PodSummary]:
        """Pods, narrowed on the server: by node (field selector spec.nodeName), namespace, labels."""
        query: list[tuple[str, str]] = []
        if node:
            query.append(("fieldSelector", f"spec.nodeName={node}"))
        if selector:
            query.append(("labelSelector", selector))
        where = " ".join(filter(None, [f"on node {node}" if node else "",
                                       f"in namespace {namespace}" if namespace else "",
                                       f"matching {selector}" if selector else ""]))
        what = f"list pods {where}".strip()
        path = f"/api/v1/namespaces/{_q(namespace)}/pods" if namespace else "/api/v1/pods"
        pods = self._get(what, path, query=query)
        return [pod_summary(p) for p in pods.get("items") or ()]

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
                raise DrainError(
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

    def pod_log(self, *, namespace: str, name: str, container: str | None = None, tail: int = 200) -> str:
        query: list[tuple[str, Any]] = [("tailLines", tail)]
        if container:
            query.insert(0, ("container", container))
        return self._get(f"read the log of pod {namespace}/{name}",
                         f"/api/v1/namespaces/{_q(namespace)}/pods/{_q(name)}/log", query=query, text=True)

    def csi_rbdplugin(self, node: str, *, namespace: str = "rook-ceph", selector: str = CSI_RBD_SELECTOR,
                      log_lines: int = 100, pods: Sequence[PodSummary] | None = None) -> CsiPluginHealth:
        """The csi-rbdplugin pod on ``node``: Ready, restarts, CrashLoopBackOff, and what its recent
        logs say: the registrar "Still connecting to unix:///csi/csi.sock" (the plugin never came
        up) and the plugin's own failure to load the rbd module (the rbd.ko.zst symptom).
        ``pods``: the plugin pods on the node, when already read (for many nodes at once)."""
        if pods is None:
            pods = self.list_pods(node=node, namespace=namespace, selector=selector)
        pods = [p for p in pods if not p.deleting]
        if not pods:
            return CsiPluginHealth(node=node, pod=None, ready=False, restarts=0, crash_looping=())
        pod = pods[0]
        looping = tuple(c.name for c in pod.containers if c.state == "waiting" and c.reason == "CrashLoopBackOff")
        stuck: list[str] = []
        errors: list[str] = []
        for container in pod.containers if log_lines else ():
            try:
                text = self.pod_log(namespace=namespace, name=pod.name, container=container.name, tail=log_lines)
            except (NotFoundError, TransientError) as exc:  # no log (yet): the state above still counts
                log.info("no log for %s/%s %s: %s", namespace, pod.name, container.name, _first_line(exc))
                continue
            for line in (text or "").splitlines():
                if CSI_STUCK_LINE in line:
                    stuck.append(line)
                elif any(marker in line for marker in CSI_RBD_ERRORS):
                    errors.append(line)
        return CsiPluginHealth(node=node, pod=pod, ready=pod.ready, restarts=pod.restarts, crash_looping=looping,
                               stuck_lines=tuple(stuck), error_lines=tuple(errors))

    # -- exec --------------------------------------------------------------------------------
    def exec(self, *, namespace: str, pod: str, command: Sequence[str], container: str | None = None,
             timeout: float = 60.0) -> ExecResult:
        """Run ``command`` (an argument list, no shell) in a pod over the exec websocket, as
        ``kubectl exec`` does; the exit code comes from the error channel. Opening the stream is
        retried on transient errors (nothing ran yet); a command that does not finish within
        ``timeout`` raises ExecTimeout and is not retried (it may have had effects)."""
        __tracebackhide__ = True
        api = self._load()
        import websocket
        from kubernetes.stream.ws_client import ERROR_CHANNEL, websocket_call

        command = tuple(command)
        what = f"exec `{' '.join(command)}` in pod {namespace}/{pod}"
        # The websocket library has no per-call connect timeout; without a default a stuck
        # handshake would block forever.
        if websocket.getdefaulttimeout() is None:
            websocket.setdefaulttimeout(self.request_timeout[1])

        query: list[tuple[str, Any]] = [("command", list(command))]
        if container:
            query.append(("container", container))
        query += [("stderr", True), ("stdin", False), ("stdout", True), ("tty", False)]

        def open_stream() -> Any:
            # the client's own websocket transport (kubernetes.stream), called with the request a
            # generated connect_get_namespaced_pod_exec would make, on this client's configuration;
            # unlike kubernetes.stream.stream it does not swap the shared client's call_api meanwhile
            _, url, headers, _, _ = self._serialize("GET", f"/api/v1/namespaces/{_q(namespace)}/pods/{_q(pod)}/exec",
                                                    query)
            headers = {**headers, "Accept": "*/*"}
            return websocket_call(api.configuration, "GET", url, headers=headers, _preload_content=False,
                                  _request_timeout=self.request_timeout)

        started = time.monotonic()
        ws = self._call(what, open_stream)
        out: list[str] = []
        err: list[str] = []
        try:
            while ws.is_open():
                left = timeout - (time.monotonic() - started)
                if left <= 0:
                    raise ExecTimeout(f"{what} did not finish within {timeout:g}s (stopped waiting)",
                                      fix="look at the pod; the command may still be running there")
                ws.update(timeout=min(1.0, left))
                if ws.peek_stdout():
                    out.append(ws.read_stdout())
                if ws.peek_stderr():
                    err.append(ws.read_stderr())
            out.append(ws.read_stdout())
            err.append(ws.read_stderr())
            status_text = ws.read_channel(ERROR_CHANNEL)
        except (OSError, websocket.WebSocketException) as exc:
            raise TransientError(f"{what}: the stream broke: {_first_line(exc)}",
                                 fix="check the API server and the pod; the command may have run") from exc
        finally:
            ws.close()
        rc = _exec_rc(status_text, what)
        return ExecResult(command=command, rc=rc, stdout="".join(out), stderr="".join(err),
                          duration=time.monotonic() - started)

    # -- Leases (the primitives; the upgrade lock's policy is built on them) ------------------
    def get_lease(self, namespace: str, name: str) -> LeaseInfo | None:
        """The Lease, or None if there is none."""
        try:
            lease = self._get(f"read lease {namespace}/{name}", f"{_leases(namespace)}/{_q(name)}")
        except NotFoundError:
            return None
        return _lease_info(lease)

    def create_lease(self, *, namespace: str, name: str, holder: str, duration_s: int,
                     annotations: Mapping[str, str] | None = None) -> LeaseInfo:
        """Create the Lease held by ``holder``; ConflictError if it exists already (409)."""
        stamp = _micro(_now())
        body = ({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace, "annotations": dict(annotations or {})},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": int(duration_s), "acquireTime": stamp,
                     "renewTime": stamp, "leaseTransitions": 0}})
        return _lease_info(self._request(f"create lease {namespace}/{name}", "POST", _leases(namespace), body=body))

    def replace_lease(self, lease: LeaseInfo, *, holder: str, duration_s: int | None = None,
                      annotations: Mapping[str, str] | None = None) -> LeaseInfo:
        """Write the Lease as read in ``lease`` (its resourceVersion guards the write): another
        holder takes it over (acquireTime now, one more transition), the same holder renews it
        (renewTime now). ConflictError if it changed since it was read."""
        now = _micro(_now())
        taken_over = holder != lease.holder
        body = ({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease.name, "namespace": lease.namespace, "resourceVersion": lease.resource_version,
                         "annotations": dict(annotations if annotations is not None else lease.annotations)},
            "spec": {"holderIdentity": holder,
                     "leaseDurationSeconds": int(duration_s if duration_s is not None else lease.duration_s or
                                                 LOCK_DURATION_S),
                     "acquireTime": now if taken_over or lease.acquire_time is None else _micro(lease.acquire_time),
                     "renewTime": now,
                     "leaseTransitions": lease.transitions + (1 if taken_over and lease.holder else 0)}})
        return _lease_info(self._request(f"replace lease {lease.namespace}/{lease.name}", "PUT",
                                         f"{_leases(lease.namespace)}/{_q(lease.name)}", body=body))

    def delete_lease(self, namespace: str, name: str, *, resource_version: str | None = None) -> bool:
        """Delete the Lease (only if unchanged since ``resource_version``, when given).
        False if it was already gone; ConflictError if it changed."""
        options = {"preconditions": {"resourceVersion": resource_version}} if resource_version else None
        try:
            self._request(f"delete lease {namespace}/{name}", "DELETE", f"{_leases(namespace)}/{_q(name)}",
                          body=options)
        except NotFoundError:
            return False
        return True

    # -- the upgrade lock (policy on a Lease) -------------------------------------------------
    def read_lock(self, *, namespace: str = LOCK_NAMESPACE, name: str = LOCK_NAME) -> LockInfo | None:
        lease = self.get_lease(namespace, name)
        return LockInfo.from_lease(lease) if lease is not None else None

    def acquire_lock(self, *, holder: str, node: str, run_id: str, namespace: str = LOCK_NAMESPACE,
                     name: str = LOCK_NAME, duration_s: int = LOCK_DURATION_S, take_over_stale: bool = False,
                     stale_after_s: float | None = None) -> LockInfo:
        """Take the cluster-wide upgrade lock for ``node``.

        Free (absent or released): taken. Held by the same ``holder`` for the same ``node``: a
        rerun resuming that upgrade, so it is renewed with the new ``run_id``. Held by anyone else:
        LockHeld naming holder, node, run and age — unless ``take_over_stale`` is set *and* it has
        not been renewed for ``stale_after_s`` (default: its lease duration), i.e. its holder is
        gone. Every write carries the resourceVersion read, so two runs racing for it cannot both
        win: the loser sees a conflict, reads again and decides again."""
        __tracebackhide__ = True
        marks = {LOCK_NODE_ANNOTATION: node, LOCK_RUN_ANNOTATION: run_id}
        for _ in range(5):
            lease = self.get_lease(namespace, name)
            try:
                if lease is None:
                    lock = LockInfo.from_lease(self.create_lease(namespace=namespace, name=name, holder=holder,
                                                                 duration_s=duration_s, annotations=marks))
                else:
                    current = LockInfo.from_lease(lease)
                    if current.held and not (current.holder == holder and current.node == node):
                        if not (take_over_stale and current.stale(after_s=stale_after_s)):
                            raise _lock_held(current, node=node, take_over_stale=take_over_stale,
                                             stale_after_s=stale_after_s)
                        log.warning("taking over stale %s", current.describe())
                    lock = LockInfo.from_lease(self.replace_lease(lease, holder=holder, duration_s=duration_s,
                                                                  annotations={**lease.annotations, **marks}))
            except ConflictError as exc:  # someone else wrote it between our read and write
                log.info("lock %s/%s changed while taking it (%s); reading it again", namespace, name,
                         _first_line(exc))
                continue
            log.info("took %s", lock.describe())
            return lock
        raise ConflictError(f"lock {namespace}/{name} kept changing while taking it (5 tries)",
                            fix="another run is competing for it; wait and run again")

    def renew_lock(self, lock: LockInfo) -> LockInfo:
        """Renew our lock (renewTime = now). LockHeld if it is no longer ours."""
        __tracebackhide__ = True
        for _ in range(3):
            lease = self.get_lease(lock.namespace, lock.name)
            current = LockInfo.from_lease(lease) if lease is not None else None
            if lease is None or current is None or current.holder != lock.holder or current.node != lock.node:
                raise LockHeld(f"lost the upgrade lock: {current.describe() if current else 'it was deleted'}",
                               lock=current or lock, fix="another run took it over; stop and check who holds it")
            try:
                return LockInfo.from_lease(self.replace_lease(lease, holder=lock.holder or ""))
            except ConflictError:
                continue
        raise ConflictError(f"lock {lock.namespace}/{lock.name} kept changing while renewing it")

    def release_lock(self, *, holder: str, namespace: str = LOCK_NAMESPACE, name: str = LOCK_NAME) -> bool:
        """Release the lock if ``holder`` holds it (deleted, guarded by its resourceVersion).
        Returns False when there was nothing of ours to release (free, or someone else's: left alone)."""
        for _ in range(3):
            lease = self.get_lease(namespace, name)
            if lease is None or not lease.holder:
                return False
            if lease.holder != holder:
                log.warning("not releasing %s: it is not ours (%s)", LockInfo.from_lease(lease).describe(), holder)
                return False
            try:
                if not self.delete_lease(namespace, name, resource_version=lease.resource_version):
                    return False
            except ConflictError:
                continue
            log.info("released lock %s/%s (%s, node %s)", namespace, name, holder,
                     lease.annotations.get(LOCK_NODE_ANNOTATION))
            return True
        raise ConflictError(f"lock {namespace}/{name} kept changing while releasing it")


class LockKeeper:
    """Renews a held lock from a daemon thread every third of its duration, so a long step (a
    dist-upgrade, a reboot wait) never lets it look stale while its holder is alive. ``lost``
    is set (with the error) if renewing failed for longer than the lease lasts."""

    def __init__(self, *, kube: Kube, lock: LockInfo, every_s: float | None = None) -> None:
        self.kube = kube
        self.lock = lock
        self.every_s = every_s or max(1.0, (lock.duration_s or LOCK_DURATION_S) / 3)
        self.lost: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lock-keeper-{lock.name}", daemon=True)

    def __enter__(self) -> "LockKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.every_s + 5)

    def _run(self) -> None:
        failing_since: float | None = None
        while not self._stop.wait(self.every_s):
            try:
                self.lock = self.kube.renew_lock(self.lock)
                failing_since = None
            except LockHeld as exc:
                self.lost = exc
                log.error("%s", exc)
                return
            except Exception as exc:  # noqa: BLE001 - keep trying until the lease would expire
                failing_since = failing_since or time.monotonic()
                log.warning("could not renew the upgrade lock: %s", _first_line(exc))
                if time.monotonic() - failing_since > (self.lock.duration_s or LOCK_DURATION_S):
                    self.lost = exc
                    return


# -- helpers ------------------------------------------------------------------------------------

def pod_summary(pod: Mapping[str, Any]) -> PodSummary:
    """A Pod as the API's JSON has it (camelCase keys) reduced to what drain and health checks decide on."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    owner = next((o for o in meta.get("ownerReferences") or () if o.get("controller")), None)
    containers = []
    for cs in status.get("containerStatuses") or ():
        state, reason = "unknown", ""
        current = cs.get("state")
        if current:
            if current.get("running") is not None:
                state = "running"
            elif current.get("waiting") is not None:
                state, reason = "waiting", current["waiting"].get("reason") or ""
            elif current.get("terminated") is not None:
                state, reason = "terminated", current["terminated"].get("reason") or ""
        containers.append(ContainerSummary(name=cs.get("name") or "", ready=bool(cs.get("ready")),
                                           restarts=int(cs.get("restartCount") or 0), state=state, reason=reason,
                                           image=cs.get("image") or ""))
    ready_cond = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
    annotations = meta.get("annotations") or {}
    return PodSummary(
        namespace=meta.get("namespace") or "",
        name=meta.get("name") or "",
        uid=meta.get("uid") or "",
        node=spec.get("nodeName") if spec else None,
        phase=status.get("phase") or "Unknown",
        owner_kind=owner.get("kind") if owner else None,
        owner_name=owner.get("name") if owner else None,
        daemonset=bool(owner and owner.get("kind") == "DaemonSet"),
        mirror=MIRROR_ANNOTATION in annotations,
        uses_emptydir=any(v.get("emptyDir") is not None for v in spec.get("volumes") or ()),
        ready=bool(ready_cond and ready_cond.get("status") == "True"),
        restarts=sum(c.restarts for c in containers),
        deleting=meta.get("deletionTimestamp") is not None,
        labels=dict(meta.get("labels") or {}),
        containers=tuple(containers),
        grace_period_s=spec.get("terminationGracePeriodSeconds") if spec else None,
    )


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


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientError) and not isinstance(exc, (ConflictError, ExecTimeout))


def _log_retry(what: str, attempts: int, *,
               quiet: Callable[[], bool] = lambda: False) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        if quiet():
            return
        exc = state.outcome.exception() if state.outcome else None
        log.warning("retrying %s in %.1fs (attempt %d/%d failed: %s)", what,
                    state.next_action.sleep if state.next_action else 0, state.attempt_number,
                    attempts, _first_line(exc) if exc else "?")
    return before_sleep


def _register_kubeconfig_secrets(data: Mapping[str, Any]) -> None:
    for user in data.get("users") or []:
        entry = (user or {}).get("user") or {} if isinstance(user, dict) else {}
        for key in ("token", "password", "client-key-data"):
            value = entry.get(key)
            if isinstance(value, str):
                register_secret(value)


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else (type(exc).__name__ if isinstance(exc, BaseException) else "")


def _status_body(body: str | bytes | None) -> tuple[str, str, list[dict]]:
    """(message, reason, causes) from a Kubernetes Status body, ('', '', []) if it is not one."""
    if not body:
        return "", "", []
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return str(body)[:200], "", []
    if not isinstance(data, dict):
        return "", "", []
    causes = [c for c in ((data.get("details") or {}).get("causes") or []) if isinstance(c, dict)]
    return str(data.get("message") or ""), str(data.get("reason") or ""), causes


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


def _exec_rc(status_text: str, what: str) -> int:
    """The exit code from the exec error channel (a Status object; '' means success)."""
    if not status_text:
        return 0
    try:
        status = json.loads(status_text)
    except ValueError:
        raise PermanentError(f"{what}: unreadable exec status {status_text[:200]!r}") from None
    if status.get("status") == "Success":
        return 0
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message"))
    raise PermanentError(f"{what} failed: {status.get('message') or status_text[:200]}")


def _lease_info(lease: Mapping[str, Any]) -> LeaseInfo:
    meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
    return LeaseInfo(
        namespace=meta.get("namespace") or "", name=meta.get("name") or "",
        holder=spec.get("holderIdentity") or None,
        duration_s=spec.get("leaseDurationSeconds"),
        acquire_time=_when(spec.get("acquireTime")),
        renew_time=_when(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=meta.get("resourceVersion") or "",
        annotations=dict(meta.get("annotations") or {}))


def _lock_held(current: LockInfo, *, node: str, take_over_stale: bool, stale_after_s: float | None) -> LockHeld:
    limit = stale_after_s if stale_after_s is not None else (current.duration_s or LOCK_DURATION_S)
    age = current.age_s()
    if take_over_stale:
        fix = (f"it was renewed {age:.0f}s ago, within {limit:g}s, so its holder looks alive: wait for that run "
               "to finish (or stop it), then run again")
    elif age is not None and age > limit:
        fix = (f"it was last renewed {age:.0f}s ago (over {limit:g}s): its holder looks gone. Check that no run of "
               "nodegate is still going for that node, then rerun with --take-over-stale-lock")
    else:
        fix = (f"wait for that run to finish; if its holder is gone (not renewed for over {limit:g}s), rerun with "
               "--take-over-stale-lock")
    return LockHeld(f"cannot take the upgrade lock for node {node}: {current.describe()}", lock=current, fix=fix)


def _stamp(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):   # the API's RFC 3339 text, shown as a parsed datetime shows it
        value = _when(value) or value
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _when(value: Any) -> dt.datetime | None:
    """A MicroTime/Time of the API (RFC 3339 text, or a datetime from a generated model), UTC-aware."""
    if not value:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return _aware(value)


def _leases(namespace: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{_q(namespace)}/leases"


def _q(part: str) -> str:
    """One path segment of a request (a node, pod or namespace name), quoted as the client quotes it."""
    return quote(str(part), safe="")


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def _micro(value: dt.datetime) -> str:
    """RFC 3339 with microseconds, as the API's MicroTime is written."""
    return _aware(value).astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
