"""What each pod's containers are doing, derived from its node and a little memory per pod.

The store holds what clients see; `PodRuntime` holds what the kubelet would know (when the
containers started, on which boot, how often they restarted). `pod_status` turns both into
the pod's status; it is a pure function of them, so an unchanged pod is never rewritten.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from nodegate.lab.apiserver.nodes import LOST, NodeView
from nodegate.lab.apiserver.store import now_rfc3339

POD_START_S = 1.0        # scheduled on a Ready node -> Running and Ready
SHUTDOWN_S = 1.0         # SIGTERM -> containers gone (capped by the grace period)
CRASH_RUN_S = 1.0        # a crash-looping container lives this long each attempt
BACKOFF_START_S = 10.0   # kubelet's CrashLoopBackOff: 10 s, doubling, capped at 5 min
BACKOFF_MAX_S = 300.0
CSI_CONTAINER = "csi-rbdplugin"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def image_id(image: str) -> str:
    repo = image.rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
    return f"docker-pullable://{repo}@sha256:{digest(image)}"


@dataclass
class CrashLoop:
    since: float                      # first start of the failing container on this boot
    restarts_before: int              # restartCount when the crash loop began

    def restarts(self, now: float) -> tuple[int, float, float, float | None, float | None]:
        """(restarts so far, start and end of the current attempt, start and end of the one
        before, if any). Each attempt runs CRASH_RUN_S; the kubelet restarts the first failure at
        once, then waits 10 s, 20 s, 40 s ... up to 5 min (so RESTARTS reads 1 when the first
        CrashLoopBackOff shows)."""
        count, start = 0, self.since
        prev: tuple[float | None, float | None] = (None, None)
        while True:
            end = start + CRASH_RUN_S
            nxt = end + self.backoff_s(count)
            if nxt > now:
                return count, start, end, prev[0], prev[1]
            count += 1
            prev = (start, end)
            start = nxt

    @staticmethod
    def backoff_s(restarts: int) -> int:
        """The wait after the failure of attempt number `restarts` (0 for the first)."""
        if restarts <= 0:
            return 0
        return int(min(BACKOFF_START_S * 2 ** (restarts - 1), BACKOFF_MAX_S))


@dataclass
class PodRuntime:
    bound_at: float | None = None
    started_at: float | None = None
    boot_id: str = ""
    restarts: dict[str, int] = field(default_factory=dict)
    last_state: dict[str, dict] = field(default_factory=dict)
    crash: CrashLoop | None = None
    recover_at: float | None = None
    terminate_at: float | None = None
    stopped_at: float | None = None   # containers ended on deletion; the object waits for its finalizers
    ip: str = ""
    backoff_seen: int = -1            # the crash-loop attempt last reported as a BackOff event


def pod_ip(pod: dict, view: NodeView | None, counter: int) -> str:
    if pod["spec"].get("hostNetwork") and view:
        return view.node.address
    index = view.node.index if view else 1
    return f"10.233.{64 + index - 1}.{10 + counter % 240}"


def _condition(ctype: str, status: str, ts: str, old: dict, reason: str = "", message: str = "") -> dict:
    prev = next((c for c in old.get("conditions") or [] if c["type"] == ctype), None)
    cond = {"type": ctype, "status": status, "lastProbeTime": None,
            "lastTransitionTime": prev["lastTransitionTime"] if prev and prev["status"] == status else ts}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def pending_unscheduled(pod: dict, message: str, now: float) -> dict:
    old = pod.get("status") or {}
    return {"phase": "Pending", "qosClass": "BestEffort",
            "conditions": [_condition("PodScheduled", "False", now_rfc3339(now), old, "Unschedulable", message)]}


def pod_status(pod: dict, rt: PodRuntime, view: NodeView, now: float, crashing: bool) -> dict:
    """Status of a pod bound to `view`'s node."""
    old = pod.get("status") or {}
    ts = now_rfc3339(now)
    spec = pod["spec"]
    containers = spec.get("containers") or []
    terminating = bool(pod["metadata"].get("deletionTimestamp"))
    base = {"hostIP": view.node.address, "hostIPs": [{"ip": view.node.address}], "qosClass": "BestEffort"}
    if rt.stopped_at is not None:
        return _stopped_status(pod, rt, old, base, ts)
    if rt.started_at is None:
        # Not (yet, or not again) running on this boot.
        phase = old.get("phase") if old.get("phase") == "Running" else "Pending"
        statuses = []
        for c in containers:
            prev = next((s for s in old.get("containerStatuses") or [] if s["name"] == c["name"]), None)
            st = {"name": c["name"], "image": c.get("image", ""), "imageID": prev["imageID"] if prev else "",
                  "ready": False, "restartCount": rt.restarts.get(c["name"], 0), "started": False,
                  "state": {"waiting": {"reason": "ContainerCreating"}},
                  "lastState": rt.last_state.get(c["name"], {})}
            statuses.append(st)
        status = {**base, "phase": phase, "conditions": [
            _condition("Initialized", "True", ts, old), _condition("Ready", "False", ts, old, "ContainersNotReady",
                                                                   f"containers with unready status: [{' '.join(c['name'] for c in containers)}]"),
            _condition("ContainersReady", "False", ts, old, "ContainersNotReady",
                       f"containers with unready status: [{' '.join(c['name'] for c in containers)}]"),
            _condition("PodScheduled", "True", ts, old)], "containerStatuses": statuses}
        if old.get("startTime"):
            status["startTime"] = old["startTime"]
        if rt.ip and phase == "Running":
            status.update(podIP=rt.ip, podIPs=[{"ip": rt.ip}])
        if view.phase == LOST and phase == "Pending":
            status["containerStatuses"] = []
        return status

    started_ts = now_rfc3339(rt.started_at)
    statuses = []
    unready = []
    for c in containers:
        name = c["name"]
        cid = f"docker://{digest(pod['metadata']['uid'] + name + str(rt.restarts.get(name, 0)))}"
        st = {"name": name, "image": c.get("image", ""), "imageID": image_id(c.get("image", "")),
              "containerID": cid, "ready": not terminating, "restartCount": rt.restarts.get(name, 0),
              "started": True, "state": {"running": {"startedAt": started_ts}},
              "lastState": rt.last_state.get(name, {})}
        if name == CSI_CONTAINER and rt.crash is not None:
            count, start, end, prev_start, prev_end = rt.crash.restarts(now)
            total = rt.crash.restarts_before + count
            cid = f"docker://{digest(pod['metadata']['uid'] + name + str(total))}"
            st.update(restartCount=total, ready=False, containerID=cid)
            if now >= end:  # this attempt failed too: backing off
                last = (start, end)
                st["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message":
                    f"back-off {rt.crash.backoff_s(count)}s restarting failed container={name} "
                    f"pod={pod['metadata']['name']}_{pod['metadata']['namespace']}({pod['metadata']['uid']})"}}
                st["started"] = False
            else:
                last = (prev_start, prev_end)
                st["state"] = {"running": {"startedAt": now_rfc3339(start)}}
            if last[0] is not None:
                st["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": now_rfc3339(last[0]),
                                                  "finishedAt": now_rfc3339(last[1]), "containerID": cid}}
        if not st["ready"]:
            unready.append(name)
        statuses.append(st)
    node_lost = view.phase == LOST
    ready = "False" if (unready or node_lost or terminating) else "True"
    msg = f"containers with unready status: [{' '.join(unready)}]" if unready else ""
    conditions = [_condition("Initialized", "True", ts, old),
                  _condition("Ready", ready, ts, old, "ContainersNotReady" if unready else "", msg),
                  _condition("ContainersReady", "False" if unready else "True", ts, old,
                             "ContainersNotReady" if unready else "", msg),
                  _condition("PodScheduled", "True", ts, old)]
    if node_lost:
        # What the node lifecycle controller writes when the kubelet stops posting.
        statuses = old.get("containerStatuses") or statuses
    status = {**base, "phase": "Running", "conditions": conditions, "podIP": rt.ip, "podIPs": [{"ip": rt.ip}],
              "startTime": old.get("startTime") or started_ts, "containerStatuses": statuses}
    return status


def _stopped_status(pod: dict, rt: PodRuntime, old: dict, base: dict, ts: str) -> dict:
    """A deleted pod whose containers have ended but whose object stays (finalizers): as a 1.25
    kubelet reports it, phase unchanged, every container terminated, not Ready."""
    containers = pod["spec"].get("containers") or []
    finished = now_rfc3339(rt.stopped_at)
    statuses = []
    for c in containers:
        prev = next((s for s in old.get("containerStatuses") or [] if s["name"] == c["name"]), {})
        started = ((prev.get("state") or {}).get("running") or {}).get("startedAt") or \
            ((prev.get("state") or {}).get("terminated") or {}).get("startedAt") or finished
        st = {"name": c["name"], "image": c.get("image", ""), "imageID": prev.get("imageID", ""),
              "ready": False, "restartCount": rt.restarts.get(c["name"], 0), "started": False,
              "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started,
                                       "finishedAt": finished}},
              "lastState": rt.last_state.get(c["name"], {})}
        if prev.get("containerID"):
            st["containerID"] = st["state"]["terminated"]["containerID"] = prev["containerID"]
        statuses.append(st)
    unready = f"containers with unready status: [{' '.join(c['name'] for c in containers)}]"
    status = {**base, "phase": old.get("phase") or "Running", "conditions": [
        _condition("Initialized", "True", ts, old), _condition("Ready", "False", ts, old, "ContainersNotReady", unready),
        _condition("ContainersReady", "False", ts, old, "ContainersNotReady", unready),
        _condition("PodScheduled", "True", ts, old)], "containerStatuses": statuses}
    for key in ("startTime", "podIP", "podIPs"):
        if old.get(key):
            status[key] = old[key]
    return status
