"""nodegate.cluster.ceph.hosts_osds: one `ceph osd tree` answers `osd ls-tree HOST` for every host."""
import json

import pytest

from nodegate.cluster.ceph import hosts_osds
from nodegate.core.errors import PermanentError


def tree(*nodes: dict) -> str:
    return json.dumps({"nodes": list(nodes), "stray": []})


def test_hosts_and_their_osds():
    text = tree({"id": -1, "name": "default", "type": "root", "children": [-3, -5, -7]},
                {"id": -3, "name": "node1", "type": "host", "children": [0]},
                {"id": 0, "name": "osd.0", "type": "osd"},
                {"id": -5, "name": "node2", "type": "host", "children": [4, 1]},
                {"id": 1, "name": "osd.1", "type": "osd"},
                {"id": 4, "name": "osd.4", "type": "osd"},
                {"id": -7, "name": "node3", "type": "host", "children": []})
    assert hosts_osds(text) == {"node1": (0,), "node2": (1, 4), "node3": ()}


def test_osds_below_a_hosts_own_buckets_count_as_ls_tree_lists_them():
    text = tree({"id": -3, "name": "node1", "type": "host", "children": [-9]},
                {"id": -9, "name": "node1-ssd", "type": "chassis", "children": [2]},
                {"id": 2, "name": "osd.2", "type": "osd"})
    assert hosts_osds(text) == {"node1": (2,)}


def test_no_hosts_and_unreadable_output():
    assert hosts_osds(tree()) == {}
    with pytest.raises(PermanentError, match="osd tree"):
        hosts_osds("not json")
