"""What nodegate will ask the Kubernetes API to do, as RBAC names it, and which of it this user may.

One SelfSubjectAccessReview per (verb, resource) before any change, so a user who may cordon but
not evict is refused at the gate, with every missing permission named, and never halfway
through a drain. The table follows the requests nodegate makes (nodegate.kube): nodes are read
and patched (cordon/uncordon and the run annotation), pods listed and evicted, their logs read,
PodDisruptionBudgets listed, the upgrade lock kept as a Lease, and, in toolbox mode, `ceph`
run in the Rook toolbox through pods/exec.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Permission:
    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    namespace: str = ""          # "" = every namespace (cluster-wide)
    why: str = ""

    @property
    def name(self) -> str:
        """RBAC's spelling: `create pods/eviction`, `update leases.coordination.k8s.io`."""
        res = self.resource + (f".{self.group}" if self.group else "")
        sub = f"/{self.subresource}" if self.subresource else ""
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.verb} {res}{sub}{where}"


def required(*, lock_namespace: str, ceph_toolbox_namespace: str | None) -> tuple[Permission, ...]:
    """Every permission a preflight-to-uncordon run of one node uses."""
    needed = [
        Permission("get", "nodes", why="read the node and its conditions"),
        Permission("list", "nodes", why="see the other nodes (one at a time, control plane quorum)"),
        Permission("patch", "nodes", why="cordon and uncordon the node, and mark it with the run"),
        Permission("list", "pods", why="find the pods on the node"),
        Permission("get", "pods", why="follow each evicted pod until it is gone"),
        Permission("get", "pods", subresource="log", why="show why a pod on the node fails"),
        Permission("create", "pods", subresource="eviction", why="drain the node through the eviction API"),
        Permission("list", "poddisruptionbudgets", group="policy", why="find what would block the drain"),
        Permission("get", "leases", group="coordination.k8s.io", namespace=lock_namespace,
                   why="read the upgrade lock"),
        Permission("create", "leases", group="coordination.k8s.io", namespace=lock_namespace,
                   why="take the upgrade lock (one node at a time)"),
        Permission("update", "leases", group="coordination.k8s.io", namespace=lock_namespace,
                   why="renew and release the upgrade lock"),
    ]
    if ceph_toolbox_namespace is not None:
        needed.append(Permission("create", "pods", subresource="exec", namespace=ceph_toolbox_namespace,
                                 why="run `ceph` in the Rook toolbox ([ceph] mode = toolbox)"))
    return tuple(needed)


def missing(review: Callable[[Permission], bool], needed: Sequence[Permission]) -> list[Permission]:
    """The permissions `review` (one SelfSubjectAccessReview each) says this user lacks."""
    return [p for p in needed if not review(p)]
