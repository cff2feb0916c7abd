"""The checks' shared reads: a node's `apt-get -s dist-upgrade` never runs beside its `apt-get update`.

Upstream fact (apt 2.x, apt-pkg/acquire-worker.cc): while `apt-get update` fetches a list, apt
hands the file in /var/lib/apt/lists to its sandbox user `_apt` with mode 0600 (Worker::QueueItem)
and gives it back as root 0644 when the fetch is done (PrepareFiles). A simulation run beside it
with Debug::NoLocking reads lists half renewed, and a non-root login cannot open the file being
fetched at all ("can not open …_InRelease - fopen (13: Permission denied)"), on a real node as on
the lab's. The node below stands in for the SSH host: it keeps the lists' state as apt would.
"""
from __future__ import annotations

import functools
import threading
import time
from types import SimpleNamespace

from nodegate.plugin.reads import Reads


class AptNode:
    """One node's apt as the reads see it: update renews the lists (the fetched file is _apt's
    0600 meanwhile), the simulation records what it found them to be."""

    def __init__(self, *, update_fails: bool = False) -> None:
        self.lists = "seeded"
        self.updates = 0
        self.seen: list[str] = []
        self.update_fails = update_fails
        self.apt = SimpleNamespace(update=self._update)
        self.packages = SimpleNamespace(upgradable=self._upgradable)

    def _update(self):
        self.updates += 1
        self.lists = "being fetched (_apt 0600)"
        time.sleep(0.3)   # a fetch takes a while; a simulation beside it would see this state
        if self.update_fails:
            self.lists = "seeded"
            raise RuntimeError("apt-get update failed")
        self.lists = "renewed"
        return "update report"

    def _upgradable(self):
        self.seen.append(self.lists)
        return f"simulation over {self.lists} lists"


def _reads(node: AptNode) -> Reads:
    access = SimpleNamespace(nodes=SimpleNamespace(host=lambda name: node))
    return Reads(access)


def test_the_simulation_waits_for_the_update_the_pass_asked_for_whichever_starts_first():
    for order in ("update first", "simulation first"):
        node = AptNode()
        reads = _reads(node)
        reads.update_before_upgradable(["node4"])
        jobs = [functools.partial(reads.apt_update, "node4"), functools.partial(reads.upgradable, "node4")]
        if order == "simulation first":
            jobs.reverse()
        threads = [threading.Thread(target=job) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert node.seen == ["renewed"], order
        assert node.updates == 1, order            # one update per pass, shared by both reads
        assert reads.upgradable("node4") == "simulation over renewed lists"


def test_without_an_update_in_the_pass_the_simulation_reads_the_lists_as_they_are():
    node = AptNode()
    reads = _reads(node)
    assert reads.upgradable("node4") == "simulation over seeded lists"
    assert node.updates == 0


def test_a_failed_update_still_lets_the_simulation_answer_after_it():
    node = AptNode(update_fails=True)
    reads = _reads(node)
    reads.update_before_upgradable(["node4"])
    assert reads.upgradable("node4") == "simulation over seeded lists"
    assert node.seen == ["seeded"] and node.updates == 1
