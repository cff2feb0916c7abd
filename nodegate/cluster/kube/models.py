"""What the API answers, reduced to frozen dataclasses: callers never see the client's generated
models. Also the small conversions between the API's JSON and these (timestamps, selectors).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

if TYPE_CHECKING:
    pass


MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
PRESSURE_CONDITIONS = ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
# Written in the same patch as spec.unschedulable, so "did we cordon it?" survives a crash and is
# visible from any machine (Kubespray's needs_cordoning idea, but recorded on the Node).
CORDONED_BY_ANNOTATION = "nodegate.io/cordoned-by"


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
