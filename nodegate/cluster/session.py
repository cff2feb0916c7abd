"""The connections of one run: the nodes over SSH, the Kubernetes API and Ceph, built from the
profile on first use. The checks' fixtures, the procedure and plan mode share this one class.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodegate.cluster.ceph import Ceph
    from nodegate.cluster.kube.client import Kube
    from nodegate.cluster.nodes.ssh import Nodes
    from nodegate.profile.model import Profile


class Access:
    """The connections of one run, each built on first use from the profile."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    @functools.cached_property
    def nodes(self) -> Nodes:
        from nodegate.cluster.nodes.ssh import Nodes

        return Nodes(settings=self.profile.ssh, nodes=self.profile.nodes)

    @functools.cached_property
    def kube(self) -> Kube | None:
        from nodegate.cluster.kube.client import Kube

        return Kube.connect(settings=self.profile.kube, check=True)

    @functools.cached_property
    def ceph(self) -> Ceph | None:
        return self.new_ceph()

    def connect_api(self) -> tuple[Kube | None, Ceph | None]:
        """Reach the Kubernetes API now and set up Ceph on it, so that a bad kubeconfig, an
        unreachable cluster or a bad [ceph] table is one error here rather than in the first step
        that needs them."""
        return self.kube, self.ceph

    def without_api(self) -> None:
        """Go on without the Kubernetes API (plan mode when it cannot be reached): ``kube`` and
        ``ceph`` are None from now on."""
        self.__dict__["kube"] = None
        self.__dict__["ceph"] = None

    def new_ceph(self) -> Ceph:
        """Another Ceph (one per command running at once), on the run's API client: Kube.exec opens
        its own websocket per command and leaves the shared client alone, so execs and reads can
        run side by side on it."""
        from nodegate.cluster.ceph import Ceph

        ceph = Ceph(settings=self.profile.ceph, kube=self.kube if self.profile.ceph.mode == "toolbox" else None)
        first = self.__dict__.get("ceph")
        if first is not None:
            ceph._toolbox_pod = first._toolbox_pod   # found once; a replaced pod is looked up again
        return ceph

    def close(self, *, keep_ssh_masters: bool = True) -> None:
        """Close what was opened. An ssh_config's ControlPersist masters are the operator's choice
        (they make the next run's first command fast): kept unless ``keep_ssh_masters`` is False;
        paramiko transports end with the process anyway."""
        kube = self.__dict__.get("kube")
        if kube is not None:
            kube.close()
        if "nodes" in self.__dict__ and (self.profile.ssh.config is None or not keep_ssh_masters):
            self.nodes.close()
