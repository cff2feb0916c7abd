"""The kubelets: pods start after their node is up, restart after a reboot, graceful deletions
finish, csi-rbdplugin crash-loops where cephcsi cannot load `rbd`; pod logs and exec.

Each function takes the Cluster (nodegate.lab.apiserver.cluster) it works on."""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time

from aiohttp import WSMsgType, web

from nodegate.lab.apiserver import status
from nodegate.lab.apiserver.faults import CSI_RBD_BROKEN
from nodegate.lab.apiserver.nodes import LOST, READY, NodeView
from nodegate.lab.apiserver.objects import (
    CEPHCSI_FIXED,
    POD_START_S,
    PODS,
    TERMINATE_CAP_S,
    TOOLBOX_BINARIES,
    TOOLBOX_LABEL,
    image_tag,
    safe_hash,
    version_tuple,
)
from nodegate.lab.apiserver.podstate import CSI_CONTAINER, CrashLoop, PodRuntime, pod_ip, pod_status
from nodegate.lab.apiserver.store import clone, now_rfc3339

log = logging.getLogger("nodegate.lab.apiserver.cluster")

# -- kubelets ----------------------------------------------------------------------------
def csi_crashing(cluster, pod: dict, view: NodeView) -> bool:
    """Whether this RBD node-plugin pod's plugin container fails on its node (rook #14507).
    Recognised by what it runs (the csi-rbdplugin container, cephcsi as an RBD node server),
    so Rook's csi-rbdplugin and ceph-csi-operator's <driver>-nodeplugin crash alike."""
    container = next((c for c in pod["spec"].get("containers") or [] if c["name"] == CSI_CONTAINER), None)
    if container is None or not {"--type=rbd", "--nodeserver=true"} <= set(container.get("args") or ()):
        return False
    if view.node.name in cluster.faults.nodes(CSI_RBD_BROKEN):
        return True
    on_noble = view.version_id.startswith("24.04")
    old_csi = version_tuple(image_tag(container.get("image", ""))) < CEPHCSI_FIXED
    return on_noble and old_csi and "rbd" not in view.modules

def run_kubelets(cluster, now: float) -> None:
    live = set()
    for pod in cluster.store.peek(PODS):
        uid = pod["metadata"]["uid"]
        live.add(uid)
        node_name = pod["spec"].get("nodeName")
        view = cluster.mirror.views.get(node_name or "")
        if view is None:
            continue  # unbound, or bound to a node no kubelet runs on
        rt = cluster.runtimes.get(uid)
        if rt is None:
            rt = cluster.runtimes[uid] = PodRuntime()
            rt.ip = (pod.get("status") or {}).get("podIP") or ""
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                # A pod from before this server started keeps its counts (and its IP).
                rt.restarts[cs["name"]] = int(cs.get("restartCount") or 0)
                if cs.get("lastState"):
                    rt.last_state[cs["name"]] = cs["lastState"]
        if rt.bound_at is None:
            rt.bound_at = now
        if view.up and view.kubelet_boot_id and rt.boot_id != view.kubelet_boot_id:
            if rt.started_at is not None and rt.stopped_at is None:  # the node rebooted under the pod: its containers died
                for c in pod["spec"]["containers"]:
                    rt.restarts[c["name"]] = rt.restarts.get(c["name"], 0) + 1
                    rt.last_state[c["name"]] = {"terminated": {
                        "exitCode": 255, "reason": "Error", "startedAt": now_rfc3339(rt.started_at),
                        "finishedAt": now_rfc3339(view.changed_at)}}
            rt.started_at = None
            rt.crash = None
            rt.boot_id = view.kubelet_boot_id
        if pod["metadata"].get("deletionTimestamp"):
            if view.up and (rt.terminate_at is None or rt.started_at is None):
                # The kubelet (back) on the node finds a deleted pod: it stops it at once.
                at = now + (0.0 if rt.started_at is None else min(
                    float(pod["metadata"].get("deletionGracePeriodSeconds", 0)), TERMINATE_CAP_S))
                rt.terminate_at = at if rt.terminate_at is None else min(at, rt.terminate_at)
            if view.up and rt.terminate_at is not None and now >= rt.terminate_at:
                if not pod["metadata"].get("finalizers"):
                    cluster.runtimes.pop(uid, None)
                    cluster.store.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
                    continue
                if rt.stopped_at is None:
                    # Its containers have ended; the kubelet's final delete (grace 0) cannot
                    # remove an object with finalizers: it stays Terminating until they go.
                    rt.stopped_at = now
                    pod = cluster.store.mark_deleting(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"],
                                                   grace_s=0)
            elif rt.terminate_at is not None:
                cluster.due(rt.terminate_at)
        if view.up and rt.started_at is None and not pod["metadata"].get("deletionTimestamp"):
            can_run_since = view.changed_at if pod["spec"].get("hostNetwork") else view.ready_since
            if can_run_since is not None and view.phase in ("starting", READY):
                start_at = max(rt.bound_at, can_run_since) + POD_START_S
                if cluster.warm and view.phase == READY:
                    start_at = now
                if now >= start_at:
                    rt.started_at = start_at
                    if not (cluster.warm and rt.ip):  # a new sandbox, a new address
                        counter = cluster.ip_counter.get(view.node.name, 0) + 1
                        cluster.ip_counter[view.node.name] = counter
                        rt.ip = pod_ip(pod, view, counter)
                    cluster.event(pod, "Started", f"Started container {pod['spec']['containers'][0]['name']}",
                               host=view.node.kube_name)
                else:
                    cluster.due(start_at)
        crashing = False
        if view.up and rt.started_at is not None:
            crashing = cluster.csi_crashing(pod, view)
            if crashing and rt.crash is None:
                rt.crash = CrashLoop(since=max(rt.started_at, now), restarts_before=rt.restarts.get(CSI_CONTAINER, 0))
                rt.backoff_seen = -1
            elif not crashing and rt.crash is not None:
                # The cause is gone: the next restart succeeds.
                count, start, end, _, _ = rt.crash.restarts(now)
                total = rt.crash.restarts_before + count + 1
                rt.restarts[CSI_CONTAINER] = total
                rt.last_state[CSI_CONTAINER] = {"terminated": {
                    "exitCode": 1, "reason": "Error", "startedAt": now_rfc3339(start),
                    "finishedAt": now_rfc3339(min(end, now))}}
                rt.crash = None
            if rt.crash is not None:
                count, start, end, _, _ = rt.crash.restarts(now)
                cluster.due(end if now < end else end + rt.crash.backoff_s(count))
                if count != rt.backoff_seen and now >= end:
                    rt.backoff_seen = count
                    cluster.event(pod, "BackOff", "Back-off restarting failed container", type_="Warning",
                               host=view.node.kube_name)
        if pod["spec"].get("nodeName") and (view.up or rt.started_at is not None or view.phase == LOST):
            new_status = pod_status(pod, rt, view, now, crashing)
            if new_status != pod.get("status"):
                pod = clone(pod)
                pod["status"] = new_status
                cluster.store.update(PODS, pod)
    for uid in list(cluster.runtimes):
        if uid not in live:
            del cluster.runtimes[uid]

# ------------------------------------------------------------------ logs
def _kubelet_reachable(cluster, pod: dict) -> None:
    """Logs and exec go through the kubelet on the pod's node: a down node refuses, as the
    API server's proxy to port 10250 reports it."""
    view = cluster.mirror.views.get(pod["spec"].get("nodeName") or "")
    if view is not None and not view.up:
        raise status.ApiError(500, "InternalError", f"Internal error occurred: error dialing backend: dial tcp "
                                                    f"{view.node.address}:10250: connect: connection refused")

def pod_log(cluster, namespace: str, name: str, query) -> str:
    pod = cluster.store.get(PODS, namespace, name)
    cluster._kubelet_reachable(pod)
    containers = [c["name"] for c in pod["spec"]["containers"]]
    container = query.get("container")
    if not container:
        if len(containers) > 1:
            raise status.bad_request(f"a container name must be specified for pod {name}, "
                                     f"choose one of: [{' '.join(containers)}]")
        container = containers[0]
    if container not in containers:
        raise status.bad_request(f"container {container} is not valid for pod {name}")
    rt = cluster.runtimes.get(pod["metadata"]["uid"])
    previous = query.get("previous") in ("true", "1")
    if rt is None or (rt.started_at is None and not previous):
        reason = "ContainerCreating"
        raise status.bad_request(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
    crash = rt.crash if container == CSI_CONTAINER else None
    if previous and not rt.last_state.get(container) and not (crash and crash.restarts(time.time())[0]):
        raise status.bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
    lines = cluster._log_lines(pod, container, rt, previous)
    if query.get("timestamps") in ("true", "1"):
        lines = [f"{now_rfc3339(t)[:-1]}.000000000Z {text}" for t, text in lines]
    else:
        lines = [text for _, text in lines]
    tail = query.get("tailLines")
    if tail is not None and tail.lstrip("-").isdigit() and int(tail) >= 0:
        lines = lines[-int(tail):] if int(tail) else []
    text = "".join(line + "\n" for line in lines)
    limit = query.get("limitBytes")
    if limit and limit.isdigit():
        text = text[:int(limit)]
    return text

def _log_lines(cluster, pod: dict, container: str, rt: PodRuntime, previous: bool) -> list[tuple[float, str]]:
    """What the container printed, in the shape its real image prints it."""
    node = pod["spec"].get("nodeName", "")
    now = time.time()
    start = rt.started_at or now
    klog = lambda t, lvl, src, msg: f"{lvl}{time.strftime('%m%d %H:%M:%S', time.gmtime(t))}.{int(t % 1 * 1e6):06d}       1 {src}] {msg}"  # noqa: E731
    image = next(c.get("image", "") for c in pod["spec"]["containers"] if c["name"] == container)
    crash = rt.crash
    crashed_before = (rt.last_state.get(container) or {}).get("terminated", {}).get("exitCode") == 1
    if container == CSI_CONTAINER and (crash is not None or (previous and crashed_before)):
        since = crash.restarts(now)[1] if crash else start
        return [(since, klog(since, "I", "cephcsi.go:196", f"Driver version: {image_tag(image)} and Git version: "
                                                            f"{safe_hash(image, 40)}")),
                (since, klog(since, "I", "cephcsi.go:274", "Initial PID limit is set to 4194304")),
                (since, klog(since, "E", "rbd_util.go:303", "modprobe failed (an error (exit status 1) occurred while "
                                                           "running modprobe args: [rbd]): \"modprobe: ERROR: could not "
                                                           "insert 'rbd': Exec format error\\n\"")),
                (since, klog(since, "F", "driver.go:150", "failed to load kernel module rbd"))]
    if container == "driver-registrar":
        lines = [(start, klog(start, "I", "main.go:167", "Version: v2.11.1")),
                 (start, klog(start, "I", "main.go:168", "Running node-driver-registrar in mode="))]
        if crash is not None:
            t = start + 1.0
            while t < now:
                lines.append((t, klog(t, "W", "connection.go:234", "Still connecting to unix:///csi/csi.sock")))
                t += 10
        else:
            lines.append((start, klog(start, "I", "main.go:102", "Received GetInfo call: &InfoRequest{}")))
            lines.append((start, klog(start, "I", "main.go:109", "\"Kubelet registration probe created\" "
                                                                "path=\"/var/lib/kubelet/plugins/rook-ceph.rbd.csi.ceph.com/registration\"")))
        return lines
    if container == "osd":
        return [(start, f"debug {now_rfc3339(start)} 7f0000000000  0 set uid:gid to 167:167 (ceph:ceph)"),
                (start, f"debug {now_rfc3339(start)} 7f0000000000  0 ceph version 16.2.15 "
                        "(618f440892089921c3e944a991122ddc44e60516) pacific (stable), process ceph-osd, pid 1"),
                (start, f"debug {now_rfc3339(start)} 7f0000000000  1 osd.{pod['metadata'].get('labels', {}).get('ceph-osd-id', '0')} "
                        f"start on host {node}")]
    return [(start, f"{container} started on {node} ({image})")]

# ------------------------------------------------------------------ exec
async def exec_in_pod(cluster, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
    """pods/exec over the websocket streaming protocol (v4.channel.k8s.io): channel 1 stdout,
    2 stderr, 3 the final Status. The toolbox's ceph/rados/rbd run on the host against the
    lab's Ceph with CEPH_CONF set; argv goes to exec directly, never through a shell."""
    pod = cluster.store.get(PODS, namespace, name)
    q = request.query
    command = q.getall("command", [])
    containers = [c["name"] for c in pod["spec"]["containers"]]
    container = q.get("container") or (containers[0] if len(containers) == 1 else "")
    if not container:
        raise status.bad_request(f"a container name must be specified for pod {name}, "
                                 f"choose one of: [{' '.join(containers)}]")
    if container not in containers:
        raise status.bad_request(f"container {container} is not valid for pod {name}")
    if not command:
        raise status.bad_request("you must specify at least 1 command")
    cluster._kubelet_reachable(pod)
    rt = cluster.runtimes.get(pod["metadata"]["uid"])
    if rt is None or rt.started_at is None or (pod.get("status") or {}).get("phase") != "Running":
        raise status.bad_request(f"unable to upgrade connection: container not found (\"{container}\")")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise status.bad_request("Upgrade request required")
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    # v4 is what a 1.25 API server speaks (and the python client offers it); kubectl from
    # 1.30 offers only v5 (v4 plus a stdin-close signal) before falling back to SPDY.
    protocol = "v4.channel.k8s.io" if "v4.channel.k8s.io" in offered else \
        "v5.channel.k8s.io" if "v5.channel.k8s.io" in offered else "channel.k8s.io"
    ws = web.WebSocketResponse(protocols=(protocol,), autoping=True)
    await ws.prepare(request)
    want_stdin = q.get("stdin") in ("true", "1")

    async def send(channel: int, data: bytes) -> None:
        if data and not ws.closed:
            await ws.send_bytes(bytes([channel]) + data)

    labels = pod["metadata"].get("labels") or {}
    binary = shutil.which(command[0]) if command[0] in TOOLBOX_BINARIES else None
    is_toolbox = labels.get(TOOLBOX_LABEL[0]) == TOOLBOX_LABEL[1]
    conf = cluster.config.dir / "ceph.conf"
    if not (is_toolbox and binary):
        msg = (f'OCI runtime exec failed: exec failed: unable to start container process: exec: "{command[0]}": '
               "executable file not found in $PATH: unknown\r\n")
        await send(1, msg.encode())
        await send(3, json.dumps(cluster._exec_status(126)).encode())
        await ws.close()
        return ws
    env = {"CEPH_CONF": str(conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
    proc = await asyncio.create_subprocess_exec(
        binary, *command[1:], env=env, cwd="/tmp",
        stdin=asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)

    async def pump(stream, channel: int) -> None:
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            await send(channel, chunk)

    async def feed() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY and msg.data[:2] == b"\xff\x00" and proc.stdin is not None:
                proc.stdin.close()  # v5: the client closed stdin
            elif msg.type == WSMsgType.BINARY and msg.data[:1] == b"\x00" and proc.stdin is not None:
                proc.stdin.write(msg.data[1:])
                await proc.stdin.drain()
            elif msg.type == WSMsgType.TEXT and msg.data[:1] == "0" and proc.stdin is not None:
                proc.stdin.write(msg.data[1:].encode())
                await proc.stdin.drain()
        if proc.returncode is None:  # the client went away: so does the command
            proc.kill()

    feeder = asyncio.create_task(feed())
    try:
        await asyncio.gather(pump(proc.stdout, 1), pump(proc.stderr, 2))
        rc = await proc.wait()
        await send(3, json.dumps(cluster._exec_status(rc)).encode())
    finally:
        feeder.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if not ws.closed:
            await ws.close()
    return ws

def _exec_status(rc: int) -> dict:
    if rc == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: Error executing in Docker Container: {rc}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]}}
