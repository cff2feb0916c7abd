"""The kinds the lab's controllers act on, their timings, and small helpers on objects."""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime

from nodegate.lab.apiserver import resources

NAMESPACES = resources.find("", "v1", "namespaces")
NODES = resources.find("", "v1", "nodes")
PODS = resources.find("", "v1", "pods")
EVENTS = resources.find("", "v1", "events")
DAEMONSETS = resources.find("apps", "v1", "daemonsets")
DEPLOYMENTS = resources.find("apps", "v1", "deployments")
REPLICASETS = resources.find("apps", "v1", "replicasets")
PDBS = resources.find("policy", "v1", "poddisruptionbudgets")
LEASES = resources.find("coordination.k8s.io", "v1", "leases")
SERVICEACCOUNTS = resources.find("", "v1", "serviceaccounts")

POLL_S = 0.2                 # state.json and faults.json are read this often (the contract's bound)
SAVE_EVERY_S = 2.0            # objects are saved this often when they changed
FULL_EVERY_S = 2.0           # a full reconcile at least this often, whatever changed
POD_START_S = 1.0            # a bound pod's containers run this long after its node can run them
TERMINATE_CAP_S = 3.0        # containers exit on SIGTERM: a pod is gone after its grace or this
MAX_EVENTS = 600
NODE_LEASE_RENEW_S = 10.0    # the kubelet's node lease renew interval (leaseDuration 40 s)
CEPHCSI_FIXED = (3, 12)      # cephcsi from v3.12 loads rbd.ko.zst on Ubuntu 24.04 (rook #14507)
TOOLBOX_LABEL = ("app", "rook-ceph-tools")
TOOLBOX_BINARIES = ("ceph", "rados", "rbd")
BLOCK_PDB = "nodegate-lab-pdb-block"
HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
DS_TOLERATIONS = [  # what the DaemonSet controller adds to every DaemonSet pod
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]
DEFAULT_TOLERATIONS = [  # the DefaultTolerationSeconds admission plugin
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
]

def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])

def image_tag(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"

def safe_hash(data: object, n: int = 10) -> str:
    raw = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).digest()
    return "".join(HASH_ALPHABET[b % len(HASH_ALPHABET)] for b in raw[:n])

def controller_of(obj: dict) -> dict | None:
    return next((o for o in obj["metadata"].get("ownerReferences") or [] if o.get("controller")), None)

def owner_ref(owner: dict) -> dict:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}

def _ts_epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None

def is_terminal(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")

def is_active(pod: dict) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and not is_terminal(pod)
